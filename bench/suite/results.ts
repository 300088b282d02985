/**
 * What the suite measured: per scenario, per metric, per system, one value per run (null for a
 * run that produced none), kept in run order so hark/peer ratios pair the same runs. This is
 * also the shape of bench/results/*.json.
 */
import { median } from '../lib/stats.js';

export type Better = 'higher' | 'lower' | 'none';

export interface SystemValues {
  /** Index = run - 1. */
  values: (number | null)[];
  /** Set when this system's values count something else (e.g. Redis commands). */
  unit?: string;
  /** Free-form facts per value (e.g. which statement a mean time is of). */
  details: string[];
  errors: string[];
}

export interface MetricResult {
  title: string;
  unit: string;
  better: Better;
  digits: number;
  bySystem: Record<string, SystemValues>;
}

export interface ScenarioResult {
  id: string;
  title: string;
  measuredAt: string;
  commit: string;
  quick: boolean;
  runs: number;
  /** Sizes and durations, for the report. */
  params: Record<string, string | number>;
  systems: string[];
  metrics: Record<string, MetricResult>;
  notes: string[];
}

export interface ResultsFile {
  version: 1;
  generatedAt: string;
  commit: string;
  quick: boolean;
  command: string;
  machine: string[];
  /** Other work on the machine skews the numbers: the load average when the run ended. */
  loadAtEnd?: string;
  server: string;
  settings: Record<string, string>;
  redis: string;
  labels: Record<string, string>;
  unavailable: Record<string, string>;
  scenarios: Record<string, ScenarioResult>;
}

export class ScenarioRecorder {
  readonly result: ScenarioResult;

  constructor(init: Omit<ScenarioResult, 'metrics' | 'notes' | 'measuredAt'>) {
    this.result = { ...init, measuredAt: new Date().toISOString(), metrics: {}, notes: [] };
  }

  /** Declares a metric; columns follow declaration order. */
  metric(id: string, title: string, unit: string, better: Better, digits: number): void {
    this.result.metrics[id] ??= { title, unit, better, digits, bySystem: {} };
  }

  private slot(metric: string, system: string): SystemValues {
    const m = this.result.metrics[metric];
    if (m === undefined) throw new Error(`metric ${metric} not declared`);
    m.bySystem[system] ??= { values: [], details: [], errors: [] };
    return m.bySystem[system]!;
  }

  set(
    metric: string,
    system: string,
    run: number,
    value: number | null,
    extra: { unit?: string; detail?: string } = {},
  ): void {
    const s = this.slot(metric, system);
    while (s.values.length < run) s.values.push(null);
    s.values[run - 1] = value !== null && Number.isFinite(value) ? value : null;
    if (extra.unit !== undefined) s.unit = extra.unit;
    if (extra.detail !== undefined && !s.details.includes(extra.detail))
      s.details.push(extra.detail);
  }

  error(metrics: string[], system: string, run: number, message: string): void {
    for (const metric of metrics) {
      const s = this.slot(metric, system);
      while (s.values.length < run) s.values.push(null);
      const text = `run ${run}: ${message}`;
      if (!s.errors.includes(text)) s.errors.push(text);
    }
  }

  note(text: string): void {
    if (!this.result.notes.includes(text)) this.result.notes.push(text);
  }
}

export interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function summarise(values: readonly (number | null)[]): Summary | null {
  const v = values.filter((x): x is number => x !== null);
  if (v.length === 0) return null;
  return { median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length };
}

/**
 * How many times better hark is than `system` on this metric (>1: hark better), the median of
 * the ratios of the same runs; null without a pair, Infinity when hark is at 0 and it is not.
 */
export function harkAdvantage(metric: MetricResult, system: string): number | null {
  if (metric.better === 'none') return null;
  const hark = metric.bySystem['hark'];
  const other = metric.bySystem[system];
  if (hark === undefined || other === undefined || system === 'hark') return null;
  if (hark.unit !== other.unit) return null; // statements vs Redis commands: not comparable
  const ratios: number[] = [];
  for (let i = 0; i < Math.min(hark.values.length, other.values.length); i++) {
    const h = hark.values[i];
    const o = other.values[i];
    if (h === null || h === undefined || o === null || o === undefined) continue;
    const [num, den] = metric.better === 'higher' ? [h, o] : [o, h];
    if (den === 0) ratios.push(num === 0 ? 1 : Number.POSITIVE_INFINITY);
    else ratios.push(num / den);
  }
  return ratios.length === 0 ? null : median(ratios);
}

export function formatNumber(value: number, digits: number): string {
  if (!Number.isFinite(value)) return value > 0 ? '∞' : '-';
  return value.toLocaleString('en-US', {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** "1,234 (1,100-1,300)" or "1,234" for one run; "-" for none. */
export function formatSummary(s: Summary | null, digits: number): string {
  if (s === null) return '-';
  const m = formatNumber(s.median, digits);
  const min = formatNumber(s.min, digits);
  const max = formatNumber(s.max, digits);
  return s.n === 1 || min === max ? m : `${m} (${min}-${max})`;
}

export function formatAdvantage(x: number | null): string {
  if (x === null) return '';
  if (!Number.isFinite(x)) return 'hark 0';
  return `${x >= 10 ? x.toFixed(0) : x.toFixed(2)}x`;
}

/** Scenarios of `latest` replaced by those of `run`, everything else from `run`. */
export function mergeResults(previous: ResultsFile | null, run: ResultsFile): ResultsFile {
  if (previous === null || previous.version !== 1) return run;
  const scenarios: Record<string, ScenarioResult> = {};
  for (const id of [
    ...new Set([...Object.keys(previous.scenarios), ...Object.keys(run.scenarios)]),
  ].sort()) {
    const s = run.scenarios[id] ?? previous.scenarios[id];
    if (s !== undefined) scenarios[id] = s;
  }
  const unavailable = { ...previous.unavailable, ...run.unavailable };
  for (const id of Object.keys(run.labels)) {
    if (run.unavailable[id] === undefined) delete unavailable[id];
  }
  return { ...run, labels: { ...previous.labels, ...run.labels }, unavailable, scenarios };
}

const LINE_WIDTH = 100;

/**
 * JSON as the repository's formatter (Biome) prints it, so result files pass `biome check`:
 * objects one member per line; an array of plain values on one line when that line fits in
 * 100 columns, else numbers filling their lines and anything else one element per line.
 */
export function formatJson(value: unknown): string {
  const write = (v: unknown, indent: string, prefixWidth: number, suffix: string): string => {
    if (Array.isArray(v)) {
      if (v.length === 0) return '[]';
      const plain = v.every((x) => x === null || typeof x !== 'object');
      if (plain) {
        const flat = `[${v.map((x) => JSON.stringify(x ?? null)).join(', ')}]`;
        if (prefixWidth + flat.length + suffix.length <= LINE_WIDTH) return flat;
      }
      const inner = `${indent}  `;
      if (v.every((x) => typeof x === 'number')) {
        // Numbers fill their lines, as many as fit.
        const lines: string[] = [];
        let line = '';
        v.forEach((x, i) => {
          const item = `${JSON.stringify(x)}${i < v.length - 1 ? ',' : ''}`;
          if (line !== '' && inner.length + line.length + 1 + item.length > LINE_WIDTH) {
            lines.push(line);
            line = '';
          }
          line = line === '' ? item : `${line} ${item}`;
        });
        lines.push(line);
        return `[\n${lines.map((l) => inner + l).join('\n')}\n${indent}]`;
      }
      const items = v.map((x, i) => {
        const comma = i < v.length - 1 ? ',' : '';
        return `${inner}${write(x, inner, inner.length, comma)}${comma}`;
      });
      return `[\n${items.join('\n')}\n${indent}]`;
    }
    if (v !== null && typeof v === 'object') {
      const entries = Object.entries(v).filter(([, x]) => x !== undefined);
      if (entries.length === 0) return '{}';
      const inner = `${indent}  `;
      const items = entries.map(([k, x], i) => {
        const comma = i < entries.length - 1 ? ',' : '';
        const key = `${JSON.stringify(k)}: `;
        return `${inner}${key}${write(x, inner, inner.length + key.length, comma)}${comma}`;
      });
      return `{\n${items.join('\n')}\n${indent}}`;
    }
    return JSON.stringify(v ?? null);
  };
  return `${write(value, '', 0, '')}\n`;
}
