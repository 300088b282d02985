/**
 * The benchmark suite: hark, its Node peers and a hand-written SQL floor, on the same server,
 * in the same run. docs/benchmarks.md describes the scenarios and holds the latest results.
 *
 *   npm run bench:suite -- [--quick] [--runs=N] [--runs-s7=N ...] [--only=s1,s3]
 *                          [--systems=hark,floor] [--no-report] [--database-url=URL]
 *                          [--pin-seconds=N] [--baseline-seconds=N] [--idle-seconds=N]
 *                          [--idle-one-at-a-time] [--render-only]
 *
 * Starts its own PostgreSQL 15 (Debian's, else the embedded 18) with pg_stat_statements,
 * unless --database-url (or BENCH_DATABASE_URL) names a server to use instead. Every case runs
 * in a database of its own, dropped afterwards. Redis at 127.0.0.1:6379, when one answers,
 * serves BullMQ. Writes bench/results/<time>.json and bench/results/latest.json (scenarios of
 * this run replace those of the last), then rewrites the results of docs/benchmarks.md and the
 * charts in docs/bench/ (--no-report writes only the first; --quick only
 * bench/results/quick.json).
 * --render-only redoes just that last step from latest.json.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { describeMachine, loadAverage, machineFacts } from '../lib/machine.js';
import { formatCount } from '../lib/stats.js';
import type { Target } from './adapter.js';
import { loadAdapter, SYSTEM_IDS, SYSTEMS } from './adapters/index.js';
import { DEFAULT_REDIS_URL, otherRedisClients, redisVersion } from './redis.js';
import {
  consoleScenario,
  markdownResults,
  SCENARIO_TITLES,
  updateDocs,
  writeCharts,
} from './report.js';
import {
  formatJson,
  mergeResults,
  type ResultsFile,
  ScenarioRecorder,
  type ScenarioResult,
} from './results.js';
import {
  backlogScenario,
  type Context,
  enqueueScenario,
  FULL_SIZES,
  idleScenario,
  latencyScenario,
  pinScenario,
  QUICK_SIZES,
  type Sizes,
  type System,
  throughputScenario,
} from './scenarios.js';
import {
  createDatabase,
  dropDatabase,
  nonDefaultSettings,
  openServer,
  StatementMeter,
} from './server.js';
import { Interrupted, WorkerPools } from './workers.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const RESULTS_DIR = path.join(ROOT, 'bench', 'results');
const DOCS_FILE = path.join(ROOT, 'docs', 'benchmarks.md');
const CHART_DIR = path.join(ROOT, 'docs', 'bench');
const SCENARIO_IDS = ['s1', 's2', 's3', 's4', 's5', 's6', 's7', 's8'];
/** Scenarios measured by the run of another (5 and 6 come from 2's processing runs). */
const MEASURED_BY: Record<string, string> = { s5: 's2', s6: 's2' };
const RUNNERS = ['s1', 's2', 's3', 's4', 's7', 's8'];

interface Options {
  quick: boolean;
  runs: number;
  runsPer: Record<string, number>;
  only: string[];
  systems: string[];
  report: boolean;
  /** Only re-render the docs and charts from bench/results/latest.json. */
  renderOnly: boolean;
  databaseUrl: string | undefined;
  sizes: Sizes;
  args: string[];
}

const USAGE =
  'options: --quick, --runs=N, --runs-s1=N ... --runs-s8=N, --only=s1,s3, --systems=hark,floor,' +
  ' --no-report, --database-url=URL, --pin-seconds=N, --baseline-seconds=N,' +
  ' --idle-seconds=N, --idle-one-at-a-time, --render-only';

function parseArgs(args: string[]): Options {
  const quick = args.includes('--quick');
  const o: Options = {
    quick,
    runs: quick ? 1 : 3,
    runsPer: {},
    only: [],
    systems: [],
    report: !quick,
    renderOnly: false,
    databaseUrl: process.env['BENCH_DATABASE_URL'] || undefined,
    sizes: { ...(quick ? QUICK_SIZES : FULL_SIZES) },
    args,
  };
  const positive = (value: string, arg: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${arg}: expected a positive integer`);
    return n;
  };
  for (const arg of args) {
    const [key, value = ''] = arg.includes('=')
      ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)]
      : [arg];
    const per = /^--runs-(s[1-8])$/.exec(key!);
    if (arg === '--quick') continue;
    if (arg === '--no-report') o.report = false;
    else if (arg === '--idle-one-at-a-time') o.sizes.idleTogether = false;
    else if (arg === '--render-only') o.renderOnly = true;
    else if (key === '--runs') o.runs = positive(value, arg);
    else if (per) o.runsPer[MEASURED_BY[per[1]!] ?? per[1]!] = positive(value, arg);
    else if (key === '--only') o.only = value.split(',').filter(Boolean);
    else if (key === '--systems') o.systems = value.split(',').filter(Boolean);
    else if (key === '--database-url') o.databaseUrl = value;
    else if (key === '--pin-seconds') o.sizes.pinSeconds = positive(value, arg);
    else if (key === '--baseline-seconds') o.sizes.baselineSeconds = positive(value, arg);
    else if (key === '--idle-seconds') o.sizes.idleSeconds = positive(value, arg);
    else throw new Error(`unknown argument ${arg}\n${USAGE}`);
  }
  const badScenario = o.only.filter((s) => !SCENARIO_IDS.includes(s));
  if (badScenario.length > 0) throw new Error(`--only: no scenario ${badScenario.join(', ')}`);
  const badSystem = o.systems.filter((s) => !SYSTEM_IDS.includes(s));
  if (badSystem.length > 0) {
    throw new Error(`--systems: no system ${badSystem.join(', ')} (${SYSTEM_IDS.join(', ')})`);
  }
  return o;
}

function commitLabel(): string {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
      cwd: ROOT,
      encoding: 'utf8',
    }).trim();
    const src = execFileSync('git', ['status', '--porcelain', '--', 'src', 'sql'], {
      cwd: ROOT,
      encoding: 'utf8',
    }).trim();
    return src === '' ? sha : `${sha} + uncommitted changes in src/`;
  } catch {
    return 'unknown';
  }
}

function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms / 1000} s`)), ms);
    }),
  ]);
}

/** Loads the adapters and asks each whether it can run here (in a throwaway database). */
async function chooseSystems(
  o: Options,
  ctx: { admin: pg.Pool; serverUrl: string; redisUrl: string | undefined; tag: string },
): Promise<{
  systems: System[];
  labels: Record<string, string>;
  unavailable: Record<string, string>;
}> {
  const wanted = o.systems.length > 0 ? SYSTEMS.filter((s) => o.systems.includes(s.id)) : SYSTEMS;
  const systems: System[] = [];
  const labels: Record<string, string> = {};
  const unavailable: Record<string, string> = {};
  const probe = await createDatabase(ctx.admin, ctx.serverUrl, 'bench_probe');
  try {
    for (const info of wanted) {
      const loaded = await loadAdapter(info.id);
      if (loaded.unavailable !== undefined) {
        unavailable[info.id] = loaded.unavailable;
        continue;
      }
      const { adapter } = loaded;
      try {
        labels[info.id] = adapter.label();
        const target: Target = {
          connectionString: probe.url,
          namespace: `bench-${ctx.tag}-probe`,
          ...(ctx.redisUrl === undefined ? {} : { redisUrl: ctx.redisUrl }),
        };
        const why = await withTimeout(
          adapter.unavailable(target),
          15_000,
          `${info.id} unavailable()`,
        );
        if (why !== null) unavailable[info.id] = why;
        else systems.push({ id: info.id, store: info.store, adapter });
      } catch (error) {
        unavailable[info.id] = `its adapter failed: ${(error as Error).message.split('\n')[0]}`;
      }
    }
  } finally {
    await dropDatabase(ctx.admin, probe.name);
  }
  return { systems, labels, unavailable };
}

const NOTES: Record<string, string> = {
  s4: 'pg_stat_statements calls in each database over the window (reset after the settle time), per minute, divided by its worker processes.',
  s5: 'pg_stat_statements calls in the database from the reset after the enqueue (worker start-up included) to the settle time after the last job started, divided by the jobs.',
  s6: 'user + system CPU of the worker process from its first handler start to its report of the last one (1-worker run).',
  s7: 'A closed-loop producer keeps a backlog of jobs waiting; the pinning session (REPEATABLE READ, txid_current(), then idle) is connected to the same database. Size and dead tuples are read at the end of the window, with the pin still held.',
  s8: 'Statement ms: mean execution time (pg_stat_statements) of the claim while the first jobs ran: the most-called statement with FOR UPDATE SKIP LOCKED, else the most-called one that is neither an insert nor a utility command (PostgreSQL systems only). ANALYZE runs after the backlog is enqueued.',
};

function scenarioRuns(o: Options, id: string): number {
  return o.runsPer[id] ?? o.runs;
}

function paramsFor(id: string, s: Sizes): Record<string, string | number> {
  switch (id) {
    case 's1':
      return { 'sendOne jobs': s.sendOne, 'in flight': 10, 'sendBatch jobs': s.sendBatch };
    case 's2':
    case 's5':
    case 's6':
      return { 'pre-enqueued no-op jobs': s.processJobs };
    case 's3':
      return { 'jobs/s': s.latencyRate, seconds: s.latencySeconds };
    case 's4':
      return {
        'settle s': s.idleSettleSeconds,
        'window s': s.idleSeconds,
        'systems measured together': s.idleTogether ? 'yes' : 'no',
      };
    case 's7':
      return {
        'baseline s': s.baselineSeconds,
        'pin s': s.pinSeconds,
        'warm-up s': s.pinWarmSeconds,
        'producer batch': s.pinBatch,
        'backlog kept': s.pinBacklog,
      };
    case 's8':
      return {
        'small backlog': s.backlogSmall,
        'large backlog': s.backlogLarge,
        'jobs timed': s.claimJobs,
      };
    default:
      return {};
  }
}

/** Rewrites the results section of docs/benchmarks.md and the charts from `results`. */
function render(results: ResultsFile): void {
  const charts = writeCharts(results, CHART_DIR);
  updateDocs(DOCS_FILE, markdownResults(results, charts, 'bench'));
  const count = [...charts.values()].flat().length;
  log(`rewrote the results in docs/benchmarks.md and ${count} charts in docs/bench/`);
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  if (o.renderOnly) {
    const file = path.join(RESULTS_DIR, 'latest.json');
    if (!existsSync(file)) throw new Error('--render-only: no bench/results/latest.json yet');
    render(JSON.parse(readFileSync(file, 'utf8')) as ResultsFile);
    return 0;
  }
  const controller = new AbortController();
  setMaxListeners(0, controller.signal); // every wait of every case listens to it
  let signals = 0;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      signals++;
      if (signals === 1) {
        process.stderr.write(
          `\n${signal}: stopping the workers, dropping the databases, stopping the server...` +
            ' (again to exit at once)\n',
        );
        controller.abort();
      } else {
        process.exit(130); // the exit hooks SIGKILL our workers and stop our server
      }
    });
  }
  const began = performance.now();
  const runners = RUNNERS.filter(
    (id) => o.only.length === 0 || o.only.some((s) => (MEASURED_BY[s] ?? s) === id),
  );
  const server = await openServer({ databaseUrl: o.databaseUrl, throwaway: o.quick, log });
  const admin = new pg.Pool({
    connectionString: server.url,
    max: 4,
    application_name: 'bench:suite',
  });
  admin.on('error', (error) => process.stderr.write(`admin connection: ${error.message}\n`));
  const pools = new WorkerPools(o.quick);
  try {
    const facts = await machineFacts(admin);
    const machine = describeMachine(facts);
    const settings = await nonDefaultSettings(admin);
    const statements = await StatementMeter.open(admin);
    const redisAt = await redisVersion(DEFAULT_REDIS_URL);
    const redisUrl = redisAt === null ? undefined : DEFAULT_REDIS_URL;
    let redis =
      redisAt === null ? 'none answered at 127.0.0.1:6379' : `Redis ${redisAt} at 127.0.0.1:6379`;
    if (redisUrl !== undefined) {
      const others = await otherRedisClients(redisUrl).catch(() => 0);
      if (others > 0)
        redis += ` (${others} other client(s) connected at the start: they skew Redis command counts)`;
    }
    const tag = randomBytes(3).toString('hex');
    const commit = commitLabel();

    log(`hark benchmark suite${o.quick ? ' --quick (smoke sizes: the numbers mean nothing)' : ''}`);
    for (const line of machine) log(`  ${line}`);
    log(`  server: ${server.label}`);
    log(
      `  settings not at their defaults: ${Object.entries(settings)
        .map(([k, v]) => `${k}=${v}`)
        .join(', ')}`,
    );
    log(
      `  pg_stat_statements: ${statements.unavailable ?? 'yes (track=top, filtered by database)'}`,
    );
    log(`  redis: ${redis}`);
    log(`  commit: ${commit}`);

    const chosen = await chooseSystems(o, { admin, serverUrl: server.url, redisUrl, tag });
    log('systems:');
    for (const info of SYSTEMS) {
      if (chosen.labels[info.id] === undefined && chosen.unavailable[info.id] === undefined)
        continue;
      const why = chosen.unavailable[info.id];
      log(`  ${info.id}: ${why === undefined ? chosen.labels[info.id] : `UNAVAILABLE: ${why}`}`);
    }
    const systems = chosen.systems;
    if (systems.length === 0) throw new Error('no system is available');
    log(
      `scenarios: ${runners.map((id) => `${id} (${scenarioRuns(o, id)} run${scenarioRuns(o, id) === 1 ? '' : 's'})`).join(', ')}`,
    );

    const ctx: Context = {
      sizes: o.sizes,
      serverUrl: server.url,
      admin,
      statements,
      redisUrl,
      pools,
      signal: controller.signal,
      tag,
      log,
    };
    const recorders = new Map<string, ScenarioRecorder>();
    const rec = (id: string) => {
      let r = recorders.get(id);
      if (r === undefined) {
        r = new ScenarioRecorder({
          id,
          title: SCENARIO_TITLES[id]!,
          commit,
          quick: o.quick,
          runs: scenarioRuns(o, MEASURED_BY[id] ?? id),
          params: paramsFor(id, o.sizes),
          systems: systems.map((s) => s.id),
        });
        if (NOTES[id] !== undefined) r.note(NOTES[id]);
        if (statements.unavailable !== null && ['s4', 's5', 's8'].includes(id)) {
          r.note(`statement counts n/a: ${statements.unavailable}`);
        }
        recorders.set(id, r);
      }
      return r;
    };
    const runScenario = async (id: string, group: System[]) => {
      const runs = scenarioRuns(o, id);
      if (id === 's1') await enqueueScenario(ctx, group, rec('s1'), runs);
      if (id === 's2') {
        await throughputScenario(ctx, group, { s2: rec('s2'), s5: rec('s5'), s6: rec('s6') }, runs);
      }
      if (id === 's3') await latencyScenario(ctx, group, rec('s3'), runs);
      if (id === 's4') {
        await idleScenario(ctx, group, rec('s4'), runs);
        await pools.trim(
          2,
          group.map((s) => s.id),
        );
      }
      if (id === 's7') await pinScenario(ctx, group, rec('s7'), runs);
      if (id === 's8') await backlogScenario(ctx, group, rec('s8'), runs);
    };
    const printScenario = (id: string) => {
      for (const r of id === 's2' ? ['s2', 's5', 's6'] : [id]) {
        for (const line of consoleScenario(rec(r).result)) log(line);
      }
    };

    if (o.quick) {
      // Side by side: one chain of scenarios per system, all at once. Every path runs; the
      // numbers compete for the same two cores and mean nothing.
      log('');
      log('-- quick: every system runs its chain of scenarios at the same time');
      const chains = await Promise.allSettled(
        systems.map(async (system) => {
          for (const id of runners) {
            if (controller.signal.aborted) break;
            await runScenario(id, [system]);
          }
        }),
      );
      const failed = chains.find((c): c is PromiseRejectedResult => c.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
      for (const id of runners) printScenario(id);
    } else {
      for (const id of runners) {
        if (controller.signal.aborted) break;
        log('');
        log(`-- ${id} ${SCENARIO_TITLES[id]}${id === 's2' ? ' (and s5, s6)' : ''}`);
        const t0 = performance.now();
        await runScenario(id, systems);
        printScenario(id);
        log(`   (${id} took ${((performance.now() - t0) / 1000).toFixed(0)} s)`);
      }
    }
    const scenarios: Record<string, ScenarioResult> = {};
    for (const [id, r] of [...recorders].sort(([a], [b]) => a.localeCompare(b))) {
      scenarios[id] = r.result;
    }
    if (controller.signal.aborted) throw new Interrupted();

    const results: ResultsFile = {
      version: 1,
      generatedAt: new Date().toISOString(),
      commit,
      quick: o.quick,
      command: `npm run bench:suite${o.args.length > 0 ? ` -- ${o.args.join(' ')}` : ''}`,
      machine,
      loadAtEnd: loadAverage(),
      server: server.label,
      settings,
      redis,
      labels: chosen.labels,
      unavailable: chosen.unavailable,
      scenarios,
    };
    mkdirSync(RESULTS_DIR, { recursive: true });
    if (o.quick) {
      writeFileSync(path.join(RESULTS_DIR, 'quick.json'), formatJson(results));
      log(`\nwrote bench/results/quick.json`);
    } else {
      const stamp = results.generatedAt.replace(/[:.]/g, '-');
      writeFileSync(path.join(RESULTS_DIR, `${stamp}.json`), formatJson(results));
      if (o.report) {
        const latestFile = path.join(RESULTS_DIR, 'latest.json');
        const previous = existsSync(latestFile)
          ? (JSON.parse(readFileSync(latestFile, 'utf8')) as ResultsFile)
          : null;
        const merged = mergeResults(previous, results);
        writeFileSync(latestFile, formatJson(merged));
        log(`\nwrote bench/results/${stamp}.json and bench/results/latest.json`);
        render(merged);
      } else {
        log(`\nwrote bench/results/${stamp}.json (--no-report: latest.json and docs untouched)`);
      }
    }
    log(
      `total ${formatCount((performance.now() - began) / 1000)} s; load average ${loadAverage()}`,
    );
    return 0;
  } catch (error) {
    if (error instanceof Interrupted || controller.signal.aborted) {
      process.stderr.write('interrupted: nothing written\n');
      return 130;
    }
    throw error;
  } finally {
    await pools.closeAll().catch(() => undefined);
    await admin.end().catch(() => undefined);
    await server
      .stop()
      .catch((error: unknown) =>
        process.stderr.write(`stopping the server: ${(error as Error).message}\n`),
      );
  }
}

// A database is dropped WITH (FORCE) after its case: a library's pool that lets a session
// outlive its close() emits an 'error' nobody handles. That must not end the suite.
const TERMINATED = new Set(['57P01', '57P02', '57P03', 'ECONNRESET']);
process.on('uncaughtException', (error) => {
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && TERMINATED.has(code)) {
    process.stderr.write(`  (ignored a terminated connection: ${error.message})\n`);
    return;
  }
  console.error(error.stack ?? error.message);
  process.exit(1);
});

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
    process.exit(1);
  },
);
