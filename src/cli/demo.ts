/**
 * `npm run demo`: hark on a real PostgreSQL in one command.
 *
 * DATABASE_URL set: uses that server and starts nothing. Otherwise starts the embedded
 * PostgreSQL on a persistent data directory, `.hark/demo-pg` in the checkout (or, when the
 * server's OS user cannot reach the checkout, a per-checkout directory under the temp dir;
 * HARK_DEMO_DATA_DIR overrides both). Runs a small workload on four queues in schema
 * `hark_demo`, prints a summary (including the statements issued while idle, which must be
 * zero), then stops everything. Exit code: 0 on success, 1 on failure, 2 on a usage error,
 * 130/143 on a signal.
 *
 *   npm run demo [-- --reset]     --reset: drop the demo's schema first
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import {
  type EmbeddedPostgres,
  EmbeddedPostgresError,
  startEmbeddedPostgres,
} from '../embedded/index.js';
import { resolveServerUser } from '../embedded/os-user.js';
import { Hark } from '../index.js';
import { formatMs, percentile, startProgress, table } from './demo-report.js';
import { prepareDemoSchema, type SchemaState } from './demo-schema.js';
import {
  BATCH_QUEUE,
  DEAD_LETTER_QUEUE,
  runWorkload,
  setUpQueues,
  Tracker,
  type WorkloadResult,
} from './demo-workload.js';

const SCHEMA = 'hark_demo';
const IDLE_MS = 3_000;
const RUN_TIMEOUT_MS = 20_000;

const out = process.stdout;

function say(line = ''): void {
  out.write(`${line}\n`);
}

function warn(line: string): void {
  process.stderr.write(`[demo] ${line}\n`);
}

/** The checkout's root: the nearest parent of this file holding package.json. */
function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) return process.cwd();
    dir = parent;
  }
}

interface DemoDatabase {
  url: string;
  /** One line: which server, where. */
  description: string;
  /** Where the data lives (embedded only). */
  dataDir: string | undefined;
  stop(): Promise<void>;
}

function maskUrl(url: string): string {
  return url.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');
}

class DatabaseUnreachable extends Error {
  constructor(message: string, cause: Error) {
    super(`${message}: ${cause.message}`, { cause });
  }
}

async function serverVersion(url: string): Promise<string> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    const r = await client.query<{ v: string }>("select current_setting('server_version') v");
    return r.rows[0]?.v ?? '?';
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * A directory under the (world-writable) temp dir is only used when it is a real directory
 * owned by us or by the server's OS user, so nobody else can plant it for us.
 */
async function checkTempDataDir(dir: string): Promise<void> {
  const info = await lstat(dir).catch(() => undefined);
  if (info === undefined) return;
  const user = await resolveServerUser();
  const owners = new Set([process.getuid?.(), user.uid]);
  if (!info.isDirectory() || !owners.has(info.uid)) {
    throw new Error(
      `${dir} exists but is not a directory owned by this user or the postgres user;` +
        ' remove it, or set HARK_DEMO_DATA_DIR to another directory.',
    );
  }
}

async function startEmbedded(root: string): Promise<{ server: EmbeddedPostgres; note: string }> {
  const fromEnv = process.env['HARK_DEMO_DATA_DIR'];
  const preferred = fromEnv ? path.resolve(fromEnv) : path.join(root, '.hark', 'demo-pg');
  const start = async (dataDir: string) => {
    const existed = existsSync(path.join(dataDir, 'PG_VERSION'));
    const began = performance.now();
    const server = await startEmbeddedPostgres({ dataDir });
    const ms = Math.round(performance.now() - began);
    const how = existed ? 'existing cluster' : 'new cluster (initdb)';
    return { server, note: `${how}, ready in ${ms} ms` };
  };
  try {
    return await start(preferred);
  } catch (error) {
    const unreachable =
      error instanceof EmbeddedPostgresError && error.code === 'DATA_DIR_NOT_SEARCHABLE';
    if (!unreachable || fromEnv) throw error; // a directory asked for by name is not replaced
    const hash = createHash('sha256').update(root).digest('hex').slice(0, 12);
    const fallback = path.join(tmpdir(), `hark-demo-${hash}`);
    warn(`cannot use ${preferred}: ${error.message}`);
    warn(`using ${fallback} instead (kept across runs of this checkout;`);
    warn('set HARK_DEMO_DATA_DIR to choose another directory).');
    await checkTempDataDir(fallback);
    const started = await start(fallback);
    return { ...started, note: `${started.note}; fallback: ${preferred} is not reachable` };
  }
}

async function openDatabase(root: string): Promise<DemoDatabase> {
  const external = process.env['DATABASE_URL'];
  if (external) {
    const version = await serverVersion(external).catch((error: Error) => {
      throw new DatabaseUnreachable(`cannot connect to DATABASE_URL=${maskUrl(external)}`, error);
    });
    return {
      url: external,
      description: `PostgreSQL ${version} at DATABASE_URL=${maskUrl(external)}`,
      dataDir: undefined,
      stop: async () => {},
    };
  }
  const { server, note } = await startEmbedded(root);
  return {
    url: server.url,
    description: `embedded PostgreSQL ${server.version} on 127.0.0.1:${server.port}, ${note}`,
    dataDir: server.dataDir,
    stop: () => server.stop(),
  };
}

/** Waits until no statement has been issued for `quietMs` (bounded): trailing claims settle. */
async function settle(hark: Hark, quietMs: number, maxMs: number): Promise<void> {
  const end = performance.now() + maxMs;
  let last = hark.statements.total;
  let quietSince = performance.now();
  while (performance.now() < end) {
    await sleep(25);
    const now = hark.statements.total;
    if (now !== last || hark.health().activeJobs > 0) {
      last = now;
      quietSince = performance.now();
    } else if (performance.now() - quietSince >= quietMs) return;
  }
}

function purposes(byPurpose: Record<string, number>): string {
  return Object.entries(byPurpose)
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([purpose, n]) => `${purpose} ${n}`)
    .join(', ');
}

function diffPurposes(after: Record<string, number>, before: Record<string, number>) {
  const diff: Record<string, number> = {};
  for (const [purpose, n] of Object.entries(after)) {
    const d = n - (before[purpose] ?? 0);
    if (d !== 0) diff[purpose] = d;
  }
  return diff;
}

interface Measurements {
  tracker: Tracker;
  result: WorkloadResult;
  runMs: number;
  startup: { total: number };
  workload: { total: number; byPurpose: Record<string, number> };
  atEnd: { total: number; byPurpose: Record<string, number> };
  idle: { total: number; byPurpose: Record<string, number> };
  dlqWaiting: number | undefined;
}

/** Prints `text` wrapped at 100 columns, every line indented by `indent`. */
function sayWrapped(text: string, indent: string, firstIndent = indent): void {
  let line = firstIndent;
  let fresh = true;
  for (const word of text.split(' ')) {
    if (!fresh && line.length + 1 + word.length > 100) {
      say(line);
      line = indent;
      fresh = true;
    }
    line += fresh ? word : ` ${word}`;
    fresh = false;
  }
  say(line);
}

function pickupText(values: readonly number[]): string {
  return `p50 ${formatMs(percentile(values, 50))}, max ${formatMs(percentile(values, 100))}`;
}

function printSummary(m: Measurements): void {
  const tallies = m.tracker.tallies();
  const header = ['queue', 'sent', 'completed', 'retries', 'failed', 'dead-lettered', 'pickup'];
  const rows = [header];
  const sum = { sent: 0, completed: 0, retries: 0, failed: 0, dead: 0 };
  const single: number[] = [];
  const batch: number[] = [];
  for (const t of tallies) {
    sum.sent += t.sent;
    sum.completed += t.completed;
    sum.retries += t.retries;
    sum.failed += t.failed;
    sum.dead += t.deadLettered;
    (t.queue === BATCH_QUEUE ? batch : single).push(...t.pickupMs);
    const counts = [t.sent, t.completed, t.retries, t.failed, t.deadLettered].map(String);
    rows.push([t.queue, ...counts, pickupText(t.pickupMs)]);
  }
  const totals = [sum.sent, sum.completed, sum.retries, sum.failed, sum.dead].map(String);
  rows.push(['total', ...totals, '']);
  const lines = table(rows, [false, true, true, true, true, true, false]);
  const rule = `  ${'-'.repeat(Math.max(...lines.map((l) => l.length)))}`;
  say();
  const seconds = (m.runMs / 1000).toFixed(1);
  say(`Summary: this run's jobs only (all ended ${seconds} s after the first send)`);
  say(`  ${lines[0]}`);
  say(rule);
  for (const line of lines.slice(1, -1)) say(`  ${line}`);
  say(rule);
  say(`  ${lines[lines.length - 1]}`);
  say();
  say('Pickup latency, from send (or due time, for delayed jobs) to job:start, first attempts:');
  say(`  single sends and delayed jobs: ${pickupText(single)}`);
  say(`  ${BATCH_QUEUE} batch: ${pickupText(batch)}`);
  say(`    (one sendMany of ${batch.length} jobs into 4 slots: includes waiting for a free slot)`);
  say();
  if (m.dlqWaiting !== undefined) {
    sayWrapped(
      `Dead letters: ${DEAD_LETTER_QUEUE} holds ${m.dlqWaiting} waiting job(s), ${sum.dead}` +
        ' from this run; no worker takes them, they stay for inspection across runs.',
      '  ',
      '',
    );
  }
  if (m.tracker.leftovers > 0) {
    say(`Also finished ${m.tracker.leftovers} job(s) left over by an earlier run.`);
  }
  say();
  say('Results read back with waitForJob:');
  for (const r of m.result.reports) {
    sayWrapped(`reports/${r.name}: ${JSON.stringify(r.output)}`, '    ', '  ');
  }
  sayWrapped(`job that threw NonRetryableError: ${m.result.nonRetryable}`, '    ', '  ');
  say();
  const perJob = sum.completed > 0 ? (m.workload.total / sum.completed).toFixed(2) : '-';
  say(`Statements issued by this hark instance (hark.statements.total): ${m.atEnd.total}`);
  say(`  start-up and queue set-up ${m.startup.total}, workload ${m.workload.total}`);
  sayWrapped(`by purpose: ${purposes(m.atEnd.byPurpose)}`, '    ', '  ');
  say(`  per completed job: ${perJob} (workload statements / ${sum.completed} completed jobs)`);
  const idleNote = m.idle.total === 0 ? '' : ` <- expected 0: ${purposes(m.idle.byPurpose)}`;
  say(`statements while idle: ${m.idle.total} (over ${IDLE_MS / 1000} s)${idleNote}`);
}

/** The run timed out: show where the jobs that never ended are. */
async function reportStuck(hark: Hark, tracker: Tracker, why: string): Promise<void> {
  warn(`${why}: ${tracker.pending} of ${tracker.total} jobs have not ended.`);
  for (const { id, queue } of tracker.pendingJobs(10)) {
    const job = await hark.getJob(id).catch(() => null);
    const where =
      job === null
        ? 'not found'
        : `state ${job.state}, attempt ${job.attempt}/${job.maxAttempts},` +
          ` run_at ${job.runAt.toISOString()} (${Date.now() - job.runAt.getTime()} ms ago)`;
    warn(`  ${queue} job ${id}: ${where}`);
  }
  warn(`now ${new Date().toISOString()}; health: ${JSON.stringify(hark.health())}`);
}

const SCHEMA_NOTES: Record<SchemaState, string> = {
  new: 'created',
  kept: 'kept from earlier runs',
  recreated: 'recreated',
  reset: 'dropped and created again (--reset)',
};

interface DemoOptions {
  /** Drop the demo's schema first (jobs of earlier runs go with it). */
  reset: boolean;
}

function parseArgs(argv: string[]): DemoOptions | undefined {
  const options: DemoOptions = { reset: false };
  for (const arg of argv) {
    if (arg === '--reset') options.reset = true;
    else {
      warn(`unknown argument ${arg}`);
      warn(`usage: npm run demo [-- --reset]   (--reset: drop schema ${SCHEMA} first)`);
      return undefined;
    }
  }
  return options;
}

async function main(shutdown: AbortSignal): Promise<number> {
  const options = parseArgs(process.argv.slice(2));
  if (options === undefined) return 2;
  const root = repoRoot();
  say('hark demo');
  let db: DemoDatabase | undefined;
  let hark: Hark | undefined;
  try {
    try {
      db = await openDatabase(root);
    } catch (error) {
      if (error instanceof EmbeddedPostgresError) {
        warn(`could not start the embedded PostgreSQL (${error.code}): ${error.message}`);
        warn('set DATABASE_URL to use another PostgreSQL server instead.');
        return 1;
      }
      if (error instanceof DatabaseUnreachable) {
        warn(error.message);
        return 1;
      }
      throw error;
    }
    say(`  database: ${db.description}`);
    if (db.dataDir !== undefined) say(`  data directory: ${db.dataDir}`);
    shutdown.throwIfAborted();

    const began = performance.now();
    const schemaState = await prepareDemoSchema(db.url, SCHEMA, options.reset);
    hark = new Hark({ connectionString: db.url, schema: SCHEMA, migrate: 'auto' });
    let errors = 0;
    hark.events.on('error', (e) => {
      errors++;
      warn(`hark error (${e.context}): ${e.error.message}`);
    });
    hark.events.on('worker:error', (e) => {
      errors++;
      warn(`worker error on ${e.queue}: ${e.error.message}`);
    });
    await hark.start();
    await setUpQueues(hark);
    const startupMs = Math.round(performance.now() - began);
    say(`  schema: ${SCHEMA}, ${SCHEMA_NOTES[schemaState]}; ready in ${startupMs} ms`);
    if (schemaState === 'recreated') {
      say('    (it differed from a fresh migration: sql/migrations was edited since it was made;');
      say('    jobs of earlier runs were dropped)');
    }
    say('  queues: emails, thumbnails (concurrency 4), reports (delayed 1-2 s),');
    say(`          webhooks (retryLimit 2, dead letters to ${DEAD_LETTER_QUEUE})`);
    say();
    shutdown.throwIfAborted();

    const tracker = new Tracker(hark.events);
    const startup = { total: hark.statements.total };
    const before = hark.statements;
    const t0 = performance.now();
    const progress = startProgress(tracker, out);
    let result: WorkloadResult;
    const run = new AbortController();
    const onShutdown = () => run.abort(shutdown.reason);
    shutdown.addEventListener('abort', onShutdown, { once: true });
    const timedOut = new Error(`the workload did not end within ${RUN_TIMEOUT_MS / 1000} s`);
    const timer = setTimeout(() => run.abort(timedOut), RUN_TIMEOUT_MS);
    try {
      result = await runWorkload(hark, tracker, run.signal);
    } catch (error) {
      if (run.signal.reason !== timedOut) throw error;
      progress.stop();
      await reportStuck(hark, tracker, timedOut.message);
      return 1;
    } finally {
      clearTimeout(timer);
      shutdown.removeEventListener('abort', onShutdown);
      progress.stop();
    }
    const runMs = performance.now() - t0;
    await settle(hark, 200, 2_000);
    const afterRun = hark.statements;
    say(`All ${tracker.total} jobs ended; now idle for ${IDLE_MS / 1000} s...`);
    await sleep(IDLE_MS, undefined, { signal: shutdown });
    const afterIdle = hark.statements;
    const stats = await hark.stats();
    const dlq = stats.find((s) => s.queue === DEAD_LETTER_QUEUE);
    const dlqWaiting = dlq === undefined ? undefined : dlq.counts.available + dlq.counts.scheduled;
    tracker.dispose();

    printSummary({
      tracker,
      result,
      runMs,
      startup,
      workload: {
        total: afterRun.total - before.total,
        byPurpose: diffPurposes(afterRun.byPurpose, before.byPurpose),
      },
      atEnd: afterIdle,
      idle: {
        total: afterIdle.total - afterRun.total,
        byPurpose: diffPurposes(afterIdle.byPurpose, afterRun.byPurpose),
      },
      dlqWaiting,
    });

    const stopBegan = performance.now();
    await hark.stop();
    hark = undefined;
    await db.stop();
    const what = db.dataDir === undefined ? 'hark' : 'hark and the embedded PostgreSQL';
    const kept = db.dataDir === undefined ? '' : `; data kept in ${db.dataDir}`;
    say(`Stopped ${what} in ${Math.round(performance.now() - stopBegan)} ms${kept}.`);
    db = undefined;
    if (afterIdle.total !== afterRun.total) {
      warn('statements were issued while idle: expected none.');
      return 1;
    }
    if (errors > 0) {
      warn(`${errors} error event(s) during the run.`);
      return 1;
    }
    return 0;
  } finally {
    // Reached with hark or db still set only on a failure or a signal.
    if (hark !== undefined) await hark.stop({ timeoutMs: 2_000 }).catch(() => {});
    if (db !== undefined) {
      await db.stop().catch((error: Error) => warn(`stopping the database: ${error.message}`));
      if (db.dataDir !== undefined) warn(`stopped the embedded PostgreSQL (${db.dataDir}).`);
    }
  }
}

const controller = new AbortController();
const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };
let received: NodeJS.Signals | undefined;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (received !== undefined) {
      warn(`${signal} again: exiting now.`);
      process.exit(SIGNAL_EXIT[signal] ?? 1); // the launcher's exit hook stops the server
    }
    received = signal;
    out.write('\n');
    warn(`${signal}: stopping hark and the database (again to force)...`);
    controller.abort(new Error(`interrupted by ${signal}`));
  });
}

main(controller.signal).then(
  (code) => process.exit(received === undefined ? code : (SIGNAL_EXIT[received] ?? 1)),
  (error: unknown) => {
    if (received !== undefined) process.exit(SIGNAL_EXIT[received] ?? 1);
    const text = error instanceof Error ? (error.stack ?? error.message) : String(error);
    warn(`failed: ${text}`);
    process.exit(1);
  },
);
