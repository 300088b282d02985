/**
 * Renders results: a table per scenario for the terminal, the generated section of
 * docs/benchmarks.md, and the SVG charts under docs/bench/.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { table } from '../lib/stats.js';
import { barChart } from './chart.js';
import {
  formatAdvantage,
  formatSummary,
  harkAdvantage,
  type ResultsFile,
  type ScenarioResult,
  summarise,
} from './results.js';

export const SCENARIO_TITLES: Record<string, string> = {
  s1: 'Enqueue',
  s2: 'Processing throughput',
  s3: 'Pickup latency',
  s4: 'Idle statements',
  s5: 'Statements per job under load',
  s6: 'Worker CPU per 1,000 jobs',
  s7: 'Throughput with the xmin horizon pinned',
  s8: 'Claim cost with a backlog',
};

export const RESULTS_START = '<!-- results:start -->';
export const RESULTS_END = '<!-- results:end -->';

interface Grid {
  header: string[];
  rows: string[][];
  /** hark vs each other system; null when there is nothing to compare. */
  advantage: { header: string[]; rows: string[][] } | null;
  footnotes: string[];
}

function unitMark(unit: string | undefined): string {
  return unit?.startsWith('Redis') ? ' †' : '';
}

function grid(s: ScenarioResult): Grid {
  const metricIds = Object.keys(s.metrics);
  const header = [
    'system',
    ...metricIds.map((id) => `${s.metrics[id]!.title} (${s.metrics[id]!.unit})`),
  ];
  const rows: string[][] = [];
  const footnotes: string[] = [];
  for (const system of s.systems) {
    const row = [system];
    for (const id of metricIds) {
      const m = s.metrics[id]!;
      const v = m.bySystem[system];
      const summary = v ? summarise(v.values) : null;
      let cell = formatSummary(summary, m.digits);
      if (summary === null && v !== undefined && v.errors.length > 0) cell = 'failed';
      else if (summary !== null && summary.n < s.runs) cell += ` [${summary.n} of ${s.runs} runs]`;
      row.push(cell + unitMark(v?.unit));
      for (const e of v?.errors ?? []) footnotes.push(`${system}, ${m.title}: ${e}`);
      for (const d of v?.details ?? []) footnotes.push(`${system}, ${m.title}: ${d}`);
      if (v?.unit?.startsWith('Redis')) {
        const note = `† ${system} counts Redis commands (INFO commandstats, commands run inside Lua scripts included), not SQL statements`;
        if (!footnotes.includes(note)) footnotes.push(note);
      }
    }
    rows.push(row);
  }
  const compared = metricIds.filter((id) => s.metrics[id]!.better !== 'none');
  let advantage: Grid['advantage'] = null;
  const others = s.systems.filter((x) => x !== 'hark');
  if (s.systems.includes('hark') && others.length > 0 && compared.length > 0) {
    const advRows = others.map((system) => [
      system,
      ...compared.map((id) => formatAdvantage(harkAdvantage(s.metrics[id]!, system)) || '-'),
    ]);
    advantage = {
      header: ['hark vs', ...compared.map((id) => s.metrics[id]!.title)],
      rows: advRows,
    };
  }
  return { header, rows, advantage, footnotes };
}

function describeRuns(s: ScenarioResult): string {
  const params = Object.entries(s.params)
    .map(([k, v]) => `${k} ${typeof v === 'number' ? v.toLocaleString('en-US') : v}`)
    .join(', ');
  const runs = `${s.runs} run${s.runs === 1 ? '' : 's'}${s.runs > 1 ? ', median (min-max)' : ''}`;
  return `${runs}${s.quick ? ', QUICK sizes (smoke run: not meaningful)' : ''}; ${params}`;
}

/** The terminal rendering of one scenario. */
export function consoleScenario(s: ScenarioResult): string[] {
  const g = grid(s);
  const lines = [
    '',
    `== ${s.id} ${s.title} (${describeRuns(s)})`,
    ...table(
      [g.header, ...g.rows],
      g.header.map((_, i) => i > 0),
    ),
  ];
  if (g.advantage) {
    lines.push(
      '',
      '  how many times better hark is (>1: hark better; median of the ratios of the same runs):',
      ...table(
        [g.advantage.header, ...g.advantage.rows],
        g.advantage.header.map((_, i) => i > 0),
      ).map((l) => `  ${l}`),
    );
  }
  for (const n of [...s.notes, ...g.footnotes]) lines.push(`  note: ${n}`);
  return lines;
}

function mdRow(cells: string[]): string {
  return `| ${cells.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |`;
}

/** A markdown table; columns after the first are right-aligned (numbers) unless `left`. */
function mdTable(header: string[], rows: string[][], left = false): string[] {
  return [
    mdRow(header),
    `| ${header.map((_, i) => (i === 0 || left ? '---' : '---:')).join(' | ')} |`,
    ...rows.map(mdRow),
  ];
}

interface ChartDef {
  file: string;
  scenario: string;
  metrics: string[];
}

const CHARTS: ChartDef[] = [
  { file: 's1-send-one.svg', scenario: 's1', metrics: ['one'] },
  { file: 's1-send-batch.svg', scenario: 's1', metrics: ['batch'] },
  { file: 's2-throughput.svg', scenario: 's2', metrics: ['w1', 'w2'] },
  { file: 's3-latency.svg', scenario: 's3', metrics: ['p50', 'p95', 'p99'] },
  { file: 's4-idle.svg', scenario: 's4', metrics: ['one', 'many'] },
  { file: 's5-statements-per-job.svg', scenario: 's5', metrics: ['w1', 'w2'] },
  { file: 's6-worker-cpu.svg', scenario: 's6', metrics: ['w1'] },
  { file: 's7-xmin-pin.svg', scenario: 's7', metrics: ['base', 'pin'] },
  { file: 's8-backlog.svg', scenario: 's8', metrics: ['small', 'large'] },
];

/** Writes the charts of `results` into `dir`; returns the files written, per scenario. */
export function writeCharts(results: ResultsFile, dir: string): Map<string, string[]> {
  mkdirSync(dir, { recursive: true });
  const written = new Map<string, string[]>();
  for (const def of CHARTS) {
    const s = results.scenarios[def.scenario];
    const metrics = def.metrics.filter((id) => s?.metrics[id] !== undefined);
    if (s === undefined || metrics.length === 0) {
      rmSync(path.join(dir, def.file), { force: true }); // a chart of results no longer held
      continue;
    }
    const first = s.metrics[metrics[0]!]!;
    const redis = s.systems.some((sys) =>
      metrics.some((id) => s.metrics[id]!.bySystem[sys]?.unit?.startsWith('Redis')),
    );
    const svg = barChart({
      title: `${s.id} ${s.title}${metrics.length === 1 ? `: ${first.title}` : ''}`,
      unit: first.unit,
      digits: first.digits,
      categories: s.systems.map(
        (sys) =>
          sys + unitMark(metrics.map((id) => s.metrics[id]!.bySystem[sys]?.unit).find(Boolean)),
      ),
      series: metrics.map((id) => ({
        name: s.metrics[id]!.title,
        values: s.systems.map((sys) => {
          const v = s.metrics[id]!.bySystem[sys];
          return v ? summarise(v.values) : null;
        }),
      })),
      note:
        `${describeRuns(s)}` +
        (redis ? '; † Redis commands, not SQL statements' : '') +
        `; measured ${s.measuredAt.slice(0, 10)}`,
    });
    writeFileSync(path.join(dir, def.file), svg);
    written.set(def.scenario, [...(written.get(def.scenario) ?? []), def.file]);
  }
  return written;
}

/** The generated section of docs/benchmarks.md. */
export function markdownResults(
  results: ResultsFile,
  charts: Map<string, string[]>,
  chartDir: string,
): string {
  const out: string[] = [];
  out.push(
    `_Generated by \`${results.command}\` at ${results.generatedAt} (commit ${results.commit}); do not edit by hand._`,
    '',
    '**Machine**',
    '',
    ...results.machine.map((l) => `- ${l}`),
    `- load average at the end: ${results.loadAtEnd ?? 'not recorded'}`,
    `- server: ${results.server}`,
    `- settings not at their built-in default: ${Object.entries(results.settings)
      .map(([k, v]) => `\`${k}=${v}\``)
      .join(', ')}`,
    `- Redis: ${results.redis}`,
    '',
    '**Systems**',
    '',
    ...mdTable(
      ['system', 'version and settings'],
      Object.entries(results.labels).map(([id, label]) => [id, label]),
      true,
    ),
  );
  const unavailable = Object.entries(results.unavailable);
  if (unavailable.length > 0) {
    out.push('', 'Not measured:', '', ...unavailable.map(([id, why]) => `- ${id}: ${why}`));
  }
  for (const id of Object.keys(SCENARIO_TITLES)) {
    const s = results.scenarios[id];
    if (s === undefined) continue;
    const g = grid(s);
    out.push(
      '',
      `### ${s.id} ${s.title}`,
      '',
      `${describeRuns(s)}. Measured ${s.measuredAt} (commit ${s.commit}).`,
      '',
      ...mdTable(g.header, g.rows),
    );
    if (g.advantage) {
      out.push(
        '',
        'How many times better hark is (above 1: hark better; median of the ratios of the same runs):',
        '',
        ...mdTable(g.advantage.header, g.advantage.rows),
      );
    }
    const notes = [...s.notes, ...g.footnotes];
    if (notes.length > 0) out.push('', ...notes.map((n) => `- ${n}`));
    for (const file of charts.get(id) ?? []) {
      out.push('', `![${s.id} ${s.title}](${chartDir}/${file})`);
    }
  }
  return out.join('\n');
}

/** Replaces the generated section of `file` (between the markers), or appends one. */
export function updateDocs(file: string, section: string): void {
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmarks\n';
  const block = `${RESULTS_START}\n${section}\n${RESULTS_END}`;
  const start = text.indexOf(RESULTS_START);
  const end = text.indexOf(RESULTS_END);
  const next =
    start >= 0 && end > start
      ? text.slice(0, start) + block + text.slice(end + RESULTS_END.length)
      : `${text.trimEnd()}\n\n## Results\n\n${block}\n`;
  writeFileSync(file, next);
}
