/**
 * The scenarios of the suite (docs/benchmarks.md says what each measures and why). Every case
 * runs one system in a database of its own, created for it and dropped afterwards; runs of
 * different systems are interleaved (run 1 of every system, then run 2, ...).
 */
import pg from 'pg';
import { formatCount } from '../lib/stats.js';
import type { Adapter, BenchPayload, Producer, Target } from './adapter.js';
import type { Store } from './adapters/index.js';
import { commandDelta, commandStats } from './redis.js';
import type { ScenarioRecorder } from './results.js';
import {
  type BenchDatabase,
  createDatabase,
  dropDatabase,
  type StatementCounts,
  type StatementMeter,
} from './server.js';
import { CaseWorkers, Interrupted, sleep, type WorkerPools } from './workers.js';

export const QUEUE = 'bench';
const SEND_IN_FLIGHT = 10;
const ENQUEUE_CHUNK = 10_000;

export interface Sizes {
  sendOne: number;
  sendBatch: number;
  processJobs: number;
  latencyRate: number;
  latencySeconds: number;
  idleSettleSeconds: number;
  idleSeconds: number;
  idleWorkers: number;
  idleQueues: number;
  /** Run all systems' idle cases in the same windows (they only count; see docs). */
  idleTogether: boolean;
  pinSeconds: number;
  baselineSeconds: number;
  pinWarmSeconds: number;
  pinBatch: number;
  pinBacklog: number;
  backlogSmall: number;
  backlogLarge: number;
  claimJobs: number;
  /** After the last job of a processing case: lets its completions land before counting. */
  settleAfterMs: number;
  /** s3: after the warm-up jobs, before the timed sends: the worker goes idle again. */
  idleBeforeMs: number;
  /** s7: for the workers' statistics to reach the cumulative statistics system. */
  statsWaitMs: number;
}

export const FULL_SIZES: Sizes = {
  sendOne: 5_000,
  sendBatch: 100_000,
  processJobs: 50_000,
  latencyRate: 50,
  latencySeconds: 20,
  idleSettleSeconds: 5,
  idleSeconds: 60,
  idleWorkers: 10,
  idleQueues: 5,
  idleTogether: true,
  pinSeconds: 120,
  baselineSeconds: 30,
  pinWarmSeconds: 3,
  pinBatch: 500,
  pinBacklog: 5_000,
  backlogSmall: 1_000,
  backlogLarge: 1_000_000,
  claimJobs: 1_000,
  settleAfterMs: 500,
  idleBeforeMs: 1_000,
  statsWaitMs: 1_500,
};

/** Tiny sizes for a smoke run (CI): the numbers mean nothing. */
export const QUICK_SIZES: Sizes = {
  sendOne: 500,
  sendBatch: 1_000,
  processJobs: 2_000,
  latencyRate: 50,
  latencySeconds: 2,
  idleSettleSeconds: 1,
  idleSeconds: 5,
  idleWorkers: 3,
  idleQueues: 5,
  idleTogether: true,
  pinSeconds: 3,
  baselineSeconds: 3,
  pinWarmSeconds: 0.5,
  pinBatch: 200,
  pinBacklog: 1_000,
  backlogSmall: 1_000,
  backlogLarge: 10_000,
  claimJobs: 1_000,
  settleAfterMs: 200,
  idleBeforeMs: 300,
  statsWaitMs: 300,
};

export interface System {
  id: string;
  store: Store;
  adapter: Adapter;
}

export interface Context {
  sizes: Sizes;
  serverUrl: string;
  admin: pg.Pool;
  statements: StatementMeter;
  redisUrl: string | undefined;
  pools: WorkerPools;
  signal: AbortSignal;
  /** Unique per suite run: Redis namespaces. */
  tag: string;
  log(line: string): void;
}

export function now(): number {
  return performance.timeOrigin + performance.now();
}

function payload(n: number): BenchPayload {
  return { n, t: now() };
}

function range(from: number, count: number): BenchPayload[] {
  const t = now();
  return Array.from({ length: count }, (_, i) => ({ n: from + i, t }));
}

function message(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split('\n')[0]!.slice(0, 300);
}

/** Runs `count` calls of `fn` with at most `limit` at once. */
async function inFlight(
  count: number,
  limit: number,
  signal: AbortSignal,
  fn: (i: number) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < count) {
      if (signal.aborted) throw new Interrupted();
      await fn(next++);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, lane));
}

/** Earliest and latest of many values (no spreading: arrays may be long). */
function span(values: readonly number[]): { first: number; last: number } {
  let first = Number.POSITIVE_INFINITY;
  let last = Number.NEGATIVE_INFINITY;
  for (const v of values) {
    if (v < first) first = v;
    if (v > last) last = v;
  }
  return { first, last };
}

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/** `promise`, or an error after `ms` (an adapter that hangs must not hang the suite). */
function limit<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not done in ${ms / 1000} s`)), ms);
    }),
  ]);
}

/** A database for one case of one system, set up by the system's adapter. */
interface CaseDatabase {
  db: BenchDatabase;
  target: Target;
  close(): Promise<void>;
}

async function openCase(
  ctx: Context,
  system: System,
  key: string,
  run: number,
  queues: string[],
): Promise<CaseDatabase> {
  const name = `bench_${system.id.replace(/[^a-z0-9]/g, '_')}_${key}_${run}`;
  const db = await createDatabase(ctx.admin, ctx.serverUrl, name);
  const target: Target = {
    connectionString: db.url,
    namespace: `bench-${ctx.tag}-${system.id}-${key}-${run}`,
    ...(ctx.redisUrl === undefined ? {} : { redisUrl: ctx.redisUrl }),
  };
  const close = async () => {
    await limit(system.adapter.teardown(target), 60_000, `${system.id} teardown`).catch(
      (e: unknown) => ctx.log(`  ${system.id}: teardown: ${message(e)}`),
    );
    await ctx.statements.reset(db.oid).catch(() => undefined);
    await dropDatabase(ctx.admin, name).catch((e: unknown) =>
      ctx.log(`  dropping ${name}: ${message(e)}`),
    );
  };
  try {
    await limit(system.adapter.setup(target, queues), 180_000, `${system.id} setup`);
  } catch (error) {
    await close();
    throw error;
  }
  return { db, target, close };
}

async function inCase<T>(
  ctx: Context,
  system: System,
  key: string,
  run: number,
  queues: string[],
  fn: (c: CaseDatabase) => Promise<T>,
): Promise<T> {
  const c = await openCase(ctx, system, key, run, queues);
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

async function withProducer<T>(
  system: System,
  target: Target,
  fn: (p: Producer) => Promise<T>,
): Promise<T> {
  const producer = await limit(system.adapter.producer(target), 60_000, `${system.id} producer`);
  try {
    return await fn(producer);
  } finally {
    await limit(producer.close(), 60_000, `${system.id} producer close`);
  }
}

async function enqueue(ctx: Context, producer: Producer, count: number): Promise<void> {
  for (let i = 0; i < count; i += ENQUEUE_CHUNK) {
    if (ctx.signal.aborted) throw new Interrupted();
    await producer.sendBatch(QUEUE, range(i, Math.min(ENQUEUE_CHUNK, count - i)));
  }
}

/** Counts what a system issues: PostgreSQL statements, or Redis commands for Redis systems. */
interface Meter {
  unit: 'statements' | 'Redis commands';
  begin(): Promise<void>;
  end(): Promise<StatementCounts>;
}

function meterFor(ctx: Context, system: System, db: BenchDatabase): Meter | null {
  if (system.store === 'redis') {
    const url = ctx.redisUrl;
    if (url === undefined) return null;
    let before = new Map<string, { calls: number; usec: number }>();
    return {
      unit: 'Redis commands',
      begin: async () => {
        before = await commandStats(url);
      },
      end: async () => {
        const d = commandDelta(before, await commandStats(url));
        return {
          calls: d.calls,
          top: d.top && { query: d.top.command, calls: d.top.calls, meanMs: d.top.meanMs },
        };
      },
    };
  }
  if (ctx.statements.unavailable !== null) return null;
  return {
    unit: 'statements',
    begin: () => ctx.statements.reset(db.oid),
    end: async () => (await ctx.statements.read(db.oid)) ?? { calls: 0, top: null },
  };
}

/** Runs one case; a failure is recorded against `metrics` and the suite moves on. */
async function guarded(
  ctx: Context,
  rec: ScenarioRecorder[],
  metrics: string[][],
  system: System,
  run: number,
  what: string,
  fn: () => Promise<void>,
): Promise<void> {
  try {
    await fn();
  } catch (error) {
    if (error instanceof Interrupted || ctx.signal.aborted) throw new Interrupted();
    const text = message(error);
    ctx.log(`  ${what} ${system.id}: FAILED: ${text}`);
    rec.forEach((r, i) => {
      r.error(metrics[i] ?? [], system.id, run, text);
    });
  }
}

function runLabel(run: number, runs: number): string {
  return `run ${run}/${runs}`;
}

// ---- s1 ---------------------------------------------------------------------------------------

export async function enqueueScenario(
  ctx: Context,
  systems: System[],
  rec: ScenarioRecorder,
  runs: number,
): Promise<void> {
  const { sendOne, sendBatch } = ctx.sizes;
  rec.metric('one', `sendOne, ${SEND_IN_FLIGHT} in flight`, 'jobs/s', 'higher', 0);
  rec.metric('batch', `sendBatch of ${formatCount(sendBatch)}`, 'jobs/s', 'higher', 0);
  for (let run = 1; run <= runs; run++) {
    for (const system of systems) {
      await guarded(ctx, [rec], [['one']], system, run, 's1a', () =>
        inCase(ctx, system, 's1a', run, [QUEUE], ({ target }) =>
          withProducer(system, target, async (producer) => {
            // Warm: open the producer's connections and prepare its statements.
            await inFlight(SEND_IN_FLIGHT, SEND_IN_FLIGHT, ctx.signal, (i) =>
              producer.sendOne(QUEUE, payload(-1 - i)),
            );
            const t0 = performance.now();
            await inFlight(sendOne, SEND_IN_FLIGHT, ctx.signal, (i) =>
              producer.sendOne(QUEUE, payload(i)),
            );
            const ms = performance.now() - t0;
            rec.set('one', system.id, run, (sendOne * 1000) / ms);
            ctx.log(
              `  ${runLabel(run, runs)} ${system.id}: sendOne ${formatCount(sendOne)} in` +
                ` ${(ms / 1000).toFixed(2)} s = ${formatCount((sendOne * 1000) / ms)} jobs/s`,
            );
          }),
        ),
      );
      await guarded(ctx, [rec], [['batch']], system, run, 's1b', () =>
        inCase(ctx, system, 's1b', run, [QUEUE], ({ target }) =>
          withProducer(system, target, async (producer) => {
            await producer.sendBatch(QUEUE, range(-100, 100));
            const jobs = range(0, sendBatch);
            const t = now();
            for (const j of jobs) j.t = t;
            const t0 = performance.now();
            await producer.sendBatch(QUEUE, jobs);
            const ms = performance.now() - t0;
            rec.set('batch', system.id, run, (sendBatch * 1000) / ms);
            ctx.log(
              `  ${runLabel(run, runs)} ${system.id}: sendBatch ${formatCount(sendBatch)} in` +
                ` ${(ms / 1000).toFixed(2)} s = ${formatCount((sendBatch * 1000) / ms)} jobs/s`,
            );
          }),
        ),
      );
    }
  }
}

// ---- s2 (with s5 and s6) ----------------------------------------------------------------------

export async function throughputScenario(
  ctx: Context,
  systems: System[],
  rec: { s2: ScenarioRecorder; s5: ScenarioRecorder; s6: ScenarioRecorder },
  runs: number,
): Promise<void> {
  const jobs = ctx.sizes.processJobs;
  const counts = [1, 2];
  for (const w of counts) {
    const name = `${w} worker${w === 1 ? '' : 's'}`;
    rec.s2.metric(`w${w}`, name, 'jobs/s', 'higher', 0);
    rec.s5.metric(`w${w}`, name, 'statements/job', 'lower', 4);
  }
  rec.s6.metric('w1', '1 worker', 'CPU ms/1,000 jobs', 'lower', 0);
  for (let run = 1; run <= runs; run++) {
    for (const w of counts) {
      for (const system of systems) {
        const metrics = [[`w${w}`], [`w${w}`], w === 1 ? ['w1'] : []];
        const name = `${w} worker${w === 1 ? '' : 's'}`;
        await guarded(ctx, [rec.s2, rec.s5, rec.s6], metrics, system, run, `s2 ${w}w`, () =>
          inCase(ctx, system, `s2w${w}`, run, [QUEUE], async ({ db, target }) => {
            await withProducer(system, target, (p) => enqueue(ctx, p, jobs));
            const workers = await ctx.pools.acquire(system.id, w, ctx.signal);
            const group = new CaseWorkers(workers, `${system.id}/s2w${w}/${run}`);
            try {
              const meter = meterFor(ctx, system, db);
              await meter?.begin();
              await group.start(system.id, target, [QUEUE], ctx.signal);
              await group.until(() => group.distinct.size >= jobs, {
                what: `s2 ${system.id}`,
                timeoutMs: Math.max(120_000, jobs * 10),
                stallMs: 30_000,
                signal: ctx.signal,
              });
              const { first, last } = span(group.starts);
              const rate = (jobs * 1000) / (last - first);
              const cpuMs = group.cpuWindowMs();
              await sleep(ctx.sizes.settleAfterMs, ctx.signal);
              const counted = await meter?.end();
              const duplicates = group.n.length - group.distinct.size;
              const detail = duplicates > 0 ? `${duplicates} duplicate deliveries` : undefined;
              rec.s2.set(`w${w}`, system.id, run, rate, detail ? { detail } : {});
              let line =
                `  ${runLabel(run, runs)} ${system.id} ${name}: ${formatCount(jobs)} jobs in` +
                ` ${((last - first) / 1000).toFixed(2)} s = ${formatCount(rate)} jobs/s`;
              if (counted !== undefined && meter !== null) {
                const perJob = counted.calls / jobs;
                rec.s5.set(`w${w}`, system.id, run, perJob, { unit: meter.unit });
                line += `; ${perJob.toFixed(2)} ${meter.unit}/job`;
              }
              if (w === 1) {
                rec.s6.set('w1', system.id, run, cpuMs / (jobs / 1000));
                line += `; worker CPU ${formatCount(cpuMs / (jobs / 1000))} ms/1,000 jobs`;
              }
              if (detail) line += ` (${detail})`;
              ctx.log(line);
            } finally {
              const problem = await group.stop();
              if (problem) ctx.log(`  ${system.id}: stopping: ${problem}`);
              await ctx.pools.release(workers);
            }
          }),
        );
      }
    }
  }
}

// ---- s3 ---------------------------------------------------------------------------------------

export async function latencyScenario(
  ctx: Context,
  systems: System[],
  rec: ScenarioRecorder,
  runs: number,
): Promise<void> {
  const { latencyRate, latencySeconds } = ctx.sizes;
  const count = Math.round(latencyRate * latencySeconds);
  const ids = ['p50', 'p95', 'p99', 'max'];
  for (const id of ids) rec.metric(id, id, 'ms', 'lower', 2);
  for (let run = 1; run <= runs; run++) {
    for (const system of systems) {
      await guarded(ctx, [rec], [ids], system, run, 's3', () =>
        inCase(ctx, system, 's3', run, [QUEUE], async ({ target }) => {
          const workers = await ctx.pools.acquire(system.id, 1, ctx.signal);
          const group = new CaseWorkers(workers, `${system.id}/s3/${run}`);
          try {
            await group.start(system.id, target, [QUEUE], ctx.signal);
            await withProducer(system, target, async (producer) => {
              const wait = (done: () => boolean, what: string) =>
                group.until(done, {
                  what,
                  timeoutMs: 60_000,
                  stallMs: 30_000,
                  signal: ctx.signal,
                });
              // Warm both sides, one job at a time, then let the worker go idle again.
              for (let i = 1; i <= 5; i++) {
                await producer.sendOne(QUEUE, payload(-i));
                await wait(() => group.distinct.has(-i), `s3 ${system.id} warm-up`);
              }
              await sleep(ctx.sizes.idleBeforeMs, ctx.signal);
              const interval = 1000 / latencyRate;
              const sends: Promise<void>[] = [];
              let sendError: unknown;
              const t0 = performance.now();
              for (let i = 0; i < count; i++) {
                const due = t0 + i * interval - performance.now();
                if (due > 0) await sleep(due, ctx.signal);
                const sending = producer.sendOne(QUEUE, payload(i)).catch((error: unknown) => {
                  sendError ??= error;
                });
                sends.push(sending);
              }
              await Promise.all(sends);
              if (sendError !== undefined) throw sendError;
              const seen = new Set<number>();
              const done = () => {
                for (const n of group.distinct) if (n >= 0) seen.add(n);
                return seen.size >= count;
              };
              await wait(done, `s3 ${system.id}`);
            });
            const firstSeen = new Map<number, number>();
            group.n.forEach((n, i) => {
              if (n >= 0 && !firstSeen.has(n)) firstSeen.set(n, group.latency[i]!);
            });
            const sorted = [...firstSeen.values()].sort((a, b) => a - b);
            const values: Record<string, number> = {
              p50: percentile(sorted, 50),
              p95: percentile(sorted, 95),
              p99: percentile(sorted, 99),
              max: sorted[sorted.length - 1]!,
            };
            for (const id of ids) rec.set(id, system.id, run, values[id]!);
            ctx.log(
              `  ${runLabel(run, runs)} ${system.id}: ${count} jobs at ${latencyRate}/s:` +
                ` p50 ${values['p50']!.toFixed(2)} ms, p95 ${values['p95']!.toFixed(2)},` +
                ` p99 ${values['p99']!.toFixed(2)}, max ${values['max']!.toFixed(2)}`,
            );
          } finally {
            const problem = await group.stop();
            if (problem) ctx.log(`  ${system.id}: stopping: ${problem}`);
            await ctx.pools.release(workers);
          }
        }),
      );
    }
  }
}

// ---- s4 ---------------------------------------------------------------------------------------

interface IdleCase {
  system: System;
  kind: 'one' | 'many';
  workers: number;
  queues: string[];
}

export async function idleScenario(
  ctx: Context,
  systems: System[],
  rec: ScenarioRecorder,
  runs: number,
): Promise<void> {
  const { idleWorkers, idleQueues } = ctx.sizes;
  const manyQueues = Array.from({ length: idleQueues }, (_, i) => `${QUEUE}-${i}`);
  rec.metric('one', '1 worker, 1 queue', 'statements/min per worker', 'lower', 1);
  rec.metric(
    'many',
    `${idleWorkers} workers x ${idleQueues} queues`,
    'statements/min per worker',
    'lower',
    1,
  );
  const cases: IdleCase[] = systems.flatMap((system) => [
    { system, kind: 'one' as const, workers: 1, queues: [QUEUE] },
    { system, kind: 'many' as const, workers: idleWorkers, queues: manyQueues },
  ]);
  // Windows of cases measured together: PostgreSQL statements are counted per database, so
  // any number share a window; Redis counts are server-wide, so one Redis case per window.
  const windows: IdleCase[][] = [];
  if (ctx.sizes.idleTogether) {
    for (const kind of ['one', 'many'] as const) {
      const pg = cases.filter((c) => c.kind === kind && c.system.store === 'postgres');
      const redis = cases.filter((c) => c.kind === kind && c.system.store === 'redis');
      windows.push([...pg, ...redis.slice(0, 1)]);
      for (const c of redis.slice(1)) windows.push([c]);
    }
  } else {
    for (const c of cases) windows.push([c]);
  }
  for (let run = 1; run <= runs; run++) {
    for (const window of windows.filter((w) => w.length > 0)) {
      await idleWindow(ctx, rec, run, runs, window);
    }
  }
}

async function idleWindow(
  ctx: Context,
  rec: ScenarioRecorder,
  run: number,
  runs: number,
  cases: IdleCase[],
): Promise<void> {
  const { idleSeconds, idleSettleSeconds } = ctx.sizes;
  interface Open {
    c: IdleCase;
    db?: CaseDatabase;
    group?: CaseWorkers;
    meter?: Meter | null;
  }
  const metricsOf = (c: IdleCase) => [c.kind];
  const fail = (o: Open, error: unknown) => {
    if (error instanceof Interrupted || ctx.signal.aborted) throw new Interrupted();
    const text = message(error);
    ctx.log(`  s4 ${o.c.system.id} (${o.c.kind}): FAILED: ${text}`);
    rec.error(metricsOf(o.c), o.c.system.id, run, text);
  };
  const open: Open[] = cases.map((c) => ({ c }));
  const alive = () => open.filter((o) => o.group !== undefined);
  try {
    await Promise.all(
      open.map(async (o) => {
        try {
          o.db = await openCase(ctx, o.c.system, `s4${o.c.kind}`, run, o.c.queues);
          const workers = await ctx.pools.acquire(o.c.system.id, o.c.workers, ctx.signal);
          o.group = new CaseWorkers(workers, `${o.c.system.id}/s4${o.c.kind}/${run}`);
          await o.group.start(o.c.system.id, o.db.target, o.c.queues, ctx.signal);
          o.meter = meterFor(ctx, o.c.system, o.db.db);
        } catch (error) {
          fail(o, error);
          if (o.group !== undefined) {
            await o.group.stop();
            await ctx.pools.release(o.group.workers);
            o.group = undefined;
          }
        }
      }),
    );
    await sleep(idleSettleSeconds * 1000, ctx.signal);
    for (const o of alive()) {
      try {
        await o.meter?.begin();
      } catch (error) {
        fail(o, error);
        o.meter = null;
      }
    }
    const t0 = performance.now();
    await sleep(idleSeconds * 1000, ctx.signal);
    const minutes = (performance.now() - t0) / 60_000;
    for (const o of alive()) {
      const { system, kind, workers } = o.c;
      try {
        if (!o.meter) continue; // nothing to count with (no pg_stat_statements)
        const counted = await o.meter.end();
        const perMin = counted.calls / minutes / workers;
        rec.set(kind, system.id, run, perMin, { unit: `${o.meter.unit}/min per worker` });
        ctx.log(
          `  ${runLabel(run, runs)} ${system.id} ${kind === 'one' ? '1 worker' : `${workers} workers`}:` +
            ` ${formatCount(counted.calls)} ${o.meter.unit} in ${(minutes * 60).toFixed(1)} s =` +
            ` ${perMin.toFixed(1)}/min per worker`,
        );
      } catch (error) {
        fail(o, error);
      }
    }
  } finally {
    await Promise.all(
      open.map(async (o) => {
        if (o.group !== undefined) {
          const problem = await o.group.stop();
          if (problem) ctx.log(`  ${o.c.system.id}: stopping: ${problem}`);
          await ctx.pools.release(o.group.workers);
        }
        await o.db?.close();
      }),
    );
  }
}

// ---- s7 ---------------------------------------------------------------------------------------

/** A session that holds the xmin horizon of its database back until release(). */
async function pinHorizon(url: string): Promise<{ xid: string; release(): Promise<void> }> {
  const client = new pg.Client({ connectionString: url, application_name: 'bench:xmin-pin' });
  await client.connect();
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    const r = await client.query<{ xid: string }>('SELECT txid_current()::text AS xid');
    return {
      xid: r.rows[0]!.xid,
      release: async () => {
        await client.query('ROLLBACK').catch(() => undefined);
        await client.end().catch(() => undefined);
      },
    };
  } catch (error) {
    await client.end().catch(() => undefined);
    throw error;
  }
}

async function tableFacts(url: string, admin: pg.Pool, name: string) {
  const size = await admin.query<{ bytes: string }>('SELECT pg_database_size($1)::text AS bytes', [
    name,
  ]);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const dead = await client.query<{ dead: string }>(
      'SELECT coalesce(sum(n_dead_tup), 0)::text AS dead FROM pg_stat_user_tables',
    );
    return { mb: Number(size.rows[0]!.bytes) / 2 ** 20, dead: Number(dead.rows[0]!.dead) };
  } finally {
    await client.end();
  }
}

export async function pinScenario(
  ctx: Context,
  systems: System[],
  rec: ScenarioRecorder,
  runs: number,
): Promise<void> {
  const s = ctx.sizes;
  rec.metric('base', `baseline (${s.baselineSeconds} s)`, 'jobs/s', 'higher', 0);
  rec.metric('pin', `xmin pinned (${s.pinSeconds} s)`, 'jobs/s', 'higher', 0);
  rec.metric('ratio', 'pinned / baseline', 'ratio', 'higher', 2);
  rec.metric('trend', 'pinned: last / first quarter', 'ratio', 'higher', 2);
  rec.metric('mbBase', 'DB size after baseline', 'MiB', 'lower', 1);
  rec.metric('mbPin', 'DB size after pin', 'MiB', 'lower', 1);
  rec.metric('deadBase', 'dead tuples after baseline', 'tuples', 'lower', 0);
  rec.metric('deadPin', 'dead tuples after pin', 'tuples', 'lower', 0);
  for (let run = 1; run <= runs; run++) {
    for (const system of systems) {
      const rates: Record<string, number> = {};
      for (const kind of ['base', 'pin'] as const) {
        const metrics =
          kind === 'base' ? ['base', 'mbBase', 'deadBase'] : ['pin', 'trend', 'mbPin', 'deadPin'];
        await guarded(ctx, [rec], [metrics], system, run, `s7 ${kind}`, () =>
          inCase(ctx, system, `s7${kind}`, run, [QUEUE], async ({ db, target }) => {
            const seconds = kind === 'base' ? s.baselineSeconds : s.pinSeconds;
            const workers = await ctx.pools.acquire(system.id, 1, ctx.signal);
            const group = new CaseWorkers(workers, `${system.id}/s7${kind}/${run}`);
            let pin: Awaited<ReturnType<typeof pinHorizon>> | undefined;
            try {
              await group.start(system.id, target, [QUEUE], ctx.signal);
              await withProducer(system, target, async (producer) => {
                // A closed-loop producer: keeps about pinBacklog jobs waiting, so the worker
                // is never short of work and the backlog never grows without bound.
                let sent = 0;
                let stop = false;
                const produce = (async () => {
                  while (!stop) {
                    if (sent - group.distinct.size < s.pinBacklog) {
                      await producer.sendBatch(QUEUE, range(sent, s.pinBatch));
                      sent += s.pinBatch;
                    } else {
                      await sleep(5);
                    }
                  }
                })();
                produce.catch(() => undefined); // awaited below; never unhandled meanwhile
                try {
                  await sleep(s.pinWarmSeconds * 1000, ctx.signal);
                  if (kind === 'pin') pin = await pinHorizon(db.url);
                  const w0 = now();
                  await Promise.race([sleep(seconds * 1000, ctx.signal), produce]);
                  const w1 = now();
                  stop = true;
                  await produce;
                  const quarter = (w1 - w0) / 4;
                  let inWindow = 0;
                  let firstQ = 0;
                  let lastQ = 0;
                  for (const t of group.starts) {
                    if (t < w0 || t > w1) continue;
                    inWindow++;
                    if (t < w0 + quarter) firstQ++;
                    if (t > w1 - quarter) lastQ++;
                  }
                  const rate = (inWindow * 1000) / (w1 - w0);
                  rates[kind] = rate;
                  rec.set(kind, system.id, run, rate);
                  if (kind === 'pin' && firstQ > 0)
                    rec.set('trend', system.id, run, lastQ / firstQ);
                  // Let the workers' statistics reach the cumulative stats system.
                  await sleep(s.statsWaitMs, ctx.signal);
                  const facts = await tableFacts(db.url, ctx.admin, db.name);
                  rec.set(kind === 'base' ? 'mbBase' : 'mbPin', system.id, run, facts.mb);
                  rec.set(kind === 'base' ? 'deadBase' : 'deadPin', system.id, run, facts.dead);
                  ctx.log(
                    `  ${runLabel(run, runs)} ${system.id} ${kind === 'base' ? 'baseline' : 'pinned'}` +
                      ` ${seconds} s: ${formatCount(rate)} jobs/s` +
                      (kind === 'pin'
                        ? ` (last/first quarter ${(lastQ / Math.max(1, firstQ)).toFixed(2)})`
                        : '') +
                      `; database ${facts.mb.toFixed(1)} MiB, ${formatCount(facts.dead)} dead tuples`,
                  );
                } finally {
                  stop = true;
                  await produce.catch(() => undefined);
                }
              });
            } finally {
              await pin?.release();
              const problem = await group.stop();
              if (problem) ctx.log(`  ${system.id}: stopping: ${problem}`);
              await ctx.pools.release(workers);
            }
          }),
        );
      }
      if (rates['base'] !== undefined && rates['pin'] !== undefined && rates['base'] > 0) {
        rec.set('ratio', system.id, run, rates['pin'] / rates['base']);
      }
    }
  }
}

// ---- s8 ---------------------------------------------------------------------------------------

export async function backlogScenario(
  ctx: Context,
  systems: System[],
  rec: ScenarioRecorder,
  runs: number,
): Promise<void> {
  const { backlogSmall, backlogLarge, claimJobs } = ctx.sizes;
  const small = formatCount(backlogSmall);
  const large = formatCount(backlogLarge);
  rec.metric('small', `backlog ${small}`, 'jobs/s', 'higher', 0);
  rec.metric('large', `backlog ${large}`, 'jobs/s', 'higher', 0);
  rec.metric('ratio', `${large} / ${small}`, 'ratio', 'higher', 2);
  rec.metric('msSmall', `statement ms, ${small}`, 'ms', 'lower', 3);
  rec.metric('msLarge', `statement ms, ${large}`, 'ms', 'lower', 3);
  rec.metric('msRatio', `statement ms ${large} / ${small}`, 'ratio', 'lower', 2);
  for (let run = 1; run <= runs; run++) {
    for (const system of systems) {
      const got: Record<string, { rate: number; ms: number | null }> = {};
      for (const [kind, backlog] of [
        ['small', backlogSmall],
        ['large', backlogLarge],
      ] as const) {
        const ms = kind === 'small' ? 'msSmall' : 'msLarge';
        await guarded(ctx, [rec], [[kind, ms]], system, run, `s8 ${kind}`, () =>
          inCase(ctx, system, `s8${kind}`, run, [QUEUE], async ({ db, target }) => {
            const t0 = performance.now();
            await withProducer(system, target, (p) => enqueue(ctx, p, backlog));
            const enqueueS = (performance.now() - t0) / 1000;
            // Current planner statistics, as autovacuum would have them soon after a bulk load.
            const client = new pg.Client({ connectionString: db.url });
            await client.connect();
            await client.query('ANALYZE').finally(() => client.end());
            const workers = await ctx.pools.acquire(system.id, 1, ctx.signal);
            const group = new CaseWorkers(workers, `${system.id}/s8${kind}/${run}`);
            try {
              const meter = meterFor(ctx, system, db);
              await meter?.begin();
              await group.start(system.id, target, [QUEUE], ctx.signal);
              await group.until(() => group.distinct.size >= claimJobs, {
                what: `s8 ${system.id}`,
                timeoutMs: 300_000,
                stallMs: 60_000,
                signal: ctx.signal,
              });
              const counted = await meter?.end();
              const firsts: number[] = [];
              const seen = new Set<number>();
              group.n.forEach((n, i) => {
                if (!seen.has(n)) {
                  seen.add(n);
                  firsts.push(group.starts[i]!);
                }
              });
              firsts.sort((a, b) => a - b);
              const span = firsts[claimJobs - 1]! - firsts[0]!;
              const rate = (claimJobs * 1000) / span;
              rec.set(kind, system.id, run, rate);
              // Redis command times say nothing about a claim's cost: PostgreSQL systems only.
              const top = system.store === 'postgres' ? (counted?.top ?? null) : null;
              if (top !== null) {
                const what = `${formatCount(top.calls)} calls of ${top.query.slice(0, 160)}`;
                rec.set(ms, system.id, run, top.meanMs, { detail: `${kind}: ${what}` });
              }
              got[kind] = { rate, ms: top?.meanMs ?? null };
              ctx.log(
                `  ${runLabel(run, runs)} ${system.id} backlog ${formatCount(backlog)}` +
                  ` (enqueued in ${enqueueS.toFixed(1)} s): first ${formatCount(claimJobs)} jobs at` +
                  ` ${formatCount(rate)} jobs/s` +
                  (top
                    ? `; most-called: ${formatCount(top.calls)} calls, ${top.meanMs.toFixed(3)} ms mean`
                    : ''),
              );
            } finally {
              const problem = await group.stop();
              if (problem) ctx.log(`  ${system.id}: stopping: ${problem}`);
              await ctx.pools.release(workers);
            }
          }),
        );
      }
      const sm = got['small'];
      const lg = got['large'];
      if (sm && lg) {
        rec.set('ratio', system.id, run, lg.rate / sm.rate);
        if (sm.ms !== null && lg.ms !== null && sm.ms > 0) {
          rec.set('msRatio', system.id, run, lg.ms / sm.ms);
        }
      }
    }
  }
}
