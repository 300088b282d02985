/**
 * End-to-end check of the peer adapters without the orchestrator:
 *
 *   node --import tsx bench/suite/adapters/peer-selftest.ts --db=postgres://user@host:port/db
 *     [--redis=redis://127.0.0.1:6379] [--only=pg-boss,bullmq-pg,...] [--timeout=60]
 *     [--batch=1000] [--singles=200]
 *
 * For each adapter: creates a fresh database `peer_selftest_<id>_<random>` on the --db server
 * (dropped at the end), runs setup and starts `consume` in this process, then
 *   1. sends --batch jobs with one sendBatch and waits for all of them (rough jobs/s);
 *   2. sends --singles jobs with sendOne, 10 in flight, into the empty queue and waits for them
 *      (send-to-handler latency: onJob time minus payload.t; producer and consumer share this
 *      process, so it includes the send loop's own CPU time);
 * checks every `n` arrived exactly once, stops the consumer, closes the producer, tears down, and
 * checks that no connection to the database (and, with --redis, no key under the namespace) is
 * left. Prints the results per adapter; exit code 1 when any adapter fails. Without --redis, BullMQ
 * on Redis reports itself unavailable and is skipped.
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { Adapter, BenchPayload, Consumer, Producer, Target } from '../adapter.js';
import { adapter as bullmqPg } from './bullmq-pg.js';
import { adapter as bullmqRedis } from './bullmq-redis.js';
import { adapter as graphileWorker } from './graphile-worker.js';
import { adapter as pgBoss } from './pg-boss.js';

const ADAPTERS: Adapter[] = [pgBoss, graphileWorker, bullmqRedis, bullmqPg];
const IN_FLIGHT = 10;
const QUEUE = 'selftest';
/** After the last expected job, how long to keep listening for duplicates. */
const SETTLE_MS = 500;
/** How long closed connections may take to leave pg_stat_activity. */
const CLOSE_GRACE_MS = 1_000;

interface Sizes {
  /** Jobs in the one sendBatch call (default 1,000). */
  batch: number;
  /** Jobs sent with sendOne (default 200). */
  singles: number;
}

interface Result {
  id: string;
  label: string;
  status: 'ok' | 'FAILED' | 'skipped';
  detail: string;
}

const now = () => performance.timeOrigin + performance.now();

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

function databaseUrl(base: string, database: string): string {
  const url = new URL(base);
  url.pathname = `/${database}`;
  return url.toString();
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}

async function admin<T>(base: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: base });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

async function runOne(
  adapter: Adapter,
  base: string,
  redis: string | undefined,
  timeoutMs: number,
  { batch: BATCH, singles: SINGLES }: Sizes,
): Promise<Result> {
  const safeId = adapter.id.replace(/[^a-z0-9]/gi, '_').toLowerCase();
  const name = `peer_selftest_${safeId}_${randomBytes(4).toString('hex')}`;
  const target: Target = {
    connectionString: databaseUrl(base, name),
    namespace: name,
    ...(redis ? { redisUrl: redis } : {}),
  };
  const result: Result = { id: adapter.id, label: adapter.label(), status: 'ok', detail: '' };

  const reason = await adapter.unavailable(target);
  if (reason !== null) {
    return { ...result, status: 'skipped', detail: reason };
  }

  await admin(base, (c) => c.query(`CREATE DATABASE ${quoteIdent(name)}`));
  let consumer: Consumer | undefined;
  let producer: Producer | undefined;
  let setupDone = false;
  try {
    const t0 = performance.now();
    await adapter.setup(target, [QUEUE]);
    setupDone = true;
    const setupMs = performance.now() - t0;

    const total = BATCH + SINGLES;
    const counts = new Uint32Array(total);
    const latencies: number[] = [];
    let received = 0;
    let stray = 0;
    let lastAt = 0;
    let waiter: { count: number; resolve: () => void } | undefined;
    const onJob = (payload: BenchPayload) => {
      const at = now();
      const n = payload?.n;
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n >= total) {
        stray++;
        return;
      }
      counts[n]!++;
      if (n >= BATCH) latencies.push(at - payload.t);
      received++;
      lastAt = at;
      if (waiter && received >= waiter.count) waiter.resolve();
    };
    /** Resolves true once `count` jobs have arrived, false after the timeout. */
    const arrived = async (count: number): Promise<boolean> => {
      if (received >= count) return true;
      let timer: NodeJS.Timeout | undefined;
      const ok = await Promise.race([
        new Promise<boolean>((resolve) => {
          waiter = { count, resolve: () => resolve(true) };
        }),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(false), timeoutMs);
        }),
      ]);
      clearTimeout(timer);
      waiter = undefined;
      return ok;
    };

    const t1 = performance.now();
    consumer = await adapter.consume(target, { queues: [QUEUE], onJob });
    const consumeStartMs = performance.now() - t1;
    producer = await adapter.producer(target);

    // Phase 1: one sendBatch of BATCH jobs, consumed to the last one.
    const payloads: BenchPayload[] = [];
    for (let n = 0; n < BATCH; n++) payloads.push({ n, t: 0 });
    const batchStart = now();
    for (const p of payloads) p.t = batchStart;
    await producer.sendBatch(QUEUE, payloads);
    const batchSendMs = now() - batchStart;
    const batchOk = await arrived(BATCH);
    const batchDrainMs = (batchOk ? lastAt : now()) - batchStart;

    // Phase 2: SINGLES sendOne calls, IN_FLIGHT at a time, into an empty queue.
    const singlesStart = now();
    let next = BATCH;
    const p = producer;
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (next < total) {
          const n = next++;
          await p.sendOne(QUEUE, { n, t: now() });
        }
      }),
    );
    const singlesSendMs = now() - singlesStart;
    const singlesOk = await arrived(total);
    await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));

    let missing = 0;
    let duplicated = 0;
    for (const c of counts) {
      if (c === 0) missing++;
      else if (c > 1) duplicated++;
    }
    latencies.sort((a, b) => a - b);
    const perSecond = (count: number, ms: number) => Math.round((count / ms) * 1000);
    const parts = [
      `received ${received}/${total}, missing ${missing}, duplicated ${duplicated}, stray ${stray}`,
      `batch: sendBatch(${BATCH}) ${batchSendMs.toFixed(0)} ms, all consumed after ` +
        `${batchDrainMs.toFixed(0)} ms = ${perSecond(BATCH, batchDrainMs)} jobs/s`,
      `singles: sendOne ${perSecond(SINGLES, singlesSendMs)}/s (${IN_FLIGHT} in flight), ` +
        `send-to-handler latency p50 ${percentile(latencies, 50).toFixed(1)} ms ` +
        `p99 ${percentile(latencies, 99).toFixed(1)} ms`,
      `setup ${setupMs.toFixed(0)} ms, consume start ${consumeStartMs.toFixed(0)} ms`,
    ];
    if (!batchOk || !singlesOk || missing > 0 || duplicated > 0 || stray > 0) {
      result.status = 'FAILED';
    }
    if (!batchOk || !singlesOk) parts.unshift(`timed out (${timeoutMs} ms per phase)`);
    result.detail = parts.join('\n        ');
  } catch (error) {
    result.status = 'FAILED';
    result.detail = error instanceof Error ? (error.stack ?? error.message) : String(error);
  } finally {
    const closing: string[] = [];
    const t = performance.now();
    try {
      await consumer?.stop();
    } catch (error) {
      closing.push(`consumer.stop: ${error instanceof Error ? error.message : error}`);
    }
    const stopMs = performance.now() - t;
    try {
      await producer?.close();
    } catch (error) {
      closing.push(`producer.close: ${error instanceof Error ? error.message : error}`);
    }
    try {
      if (setupDone) await adapter.teardown(target);
    } catch (error) {
      closing.push(`teardown: ${error instanceof Error ? error.message : error}`);
    }
    if (redis) {
      // Teardown must leave no Redis key under the run's namespace.
      const client = new Redis(redis, { maxRetriesPerRequest: 1 });
      try {
        let cursor = '0';
        let left = 0;
        do {
          const [next, keys] = await client.scan(cursor, 'MATCH', `${name}*`, 'COUNT', 1000);
          cursor = next;
          left += keys.length;
        } while (cursor !== '0');
        if (left > 0) closing.push(`${left} Redis key(s) left under ${name}`);
      } catch (error) {
        closing.push(`redis scan: ${error instanceof Error ? error.message : error}`);
      } finally {
        client.disconnect();
      }
    }
    try {
      // stop() and close() must have closed every connection: anything left would keep a worker
      // child process alive. A backend leaves pg_stat_activity a moment after its client sends
      // Terminate, so allow CLOSE_GRACE_MS before calling a connection left open.
      const deadline = performance.now() + CLOSE_GRACE_MS;
      for (;;) {
        const { rows } = await admin(base, (c) =>
          c.query<{ application_name: string; state: string | null; query: string }>(
            'SELECT application_name, state, query FROM pg_stat_activity WHERE datname = $1',
            [name],
          ),
        );
        if (rows.length === 0) break;
        if (performance.now() > deadline) {
          const list = rows.map(
            (r) =>
              `${r.application_name || '?'}/${r.state}: ${r.query.replace(/\s+/g, ' ').trim().slice(0, 40)}`,
          );
          closing.push(
            `${rows.length} connection(s) still open ${CLOSE_GRACE_MS} ms after stop/close: ${list.join(' | ')}`,
          );
          break;
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    } catch (error) {
      closing.push(`pg_stat_activity: ${error instanceof Error ? error.message : error}`);
    }
    try {
      await admin(base, (c) => c.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`));
    } catch (error) {
      closing.push(`drop database: ${error instanceof Error ? error.message : error}`);
    }
    if (closing.length > 0) {
      result.status = 'FAILED';
      result.detail += `\n        ${closing.join('; ')}`;
    }
    result.detail += `, consumer stop ${stopMs.toFixed(0)} ms`;
  }
  return result;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      db: { type: 'string' },
      redis: { type: 'string' },
      only: { type: 'string' },
      timeout: { type: 'string', default: '60' },
      batch: { type: 'string', default: '1000' },
      singles: { type: 'string', default: '200' },
    },
  });
  if (!values.db) {
    console.error(
      'usage: peer-selftest.ts --db=postgres://... [--redis=redis://...] [--only=a,b] ' +
        '[--timeout=s] [--batch=n] [--singles=n]',
    );
    process.exitCode = 2;
    return;
  }
  const only = values.only ? new Set(values.only.split(',')) : null;
  const timeoutMs = Number(values.timeout) * 1000;
  const sizes: Sizes = { batch: Number(values.batch), singles: Number(values.singles) };
  const results: Result[] = [];
  for (const adapter of ADAPTERS) {
    if (only && !only.has(adapter.id)) continue;
    const result = await runOne(adapter, values.db, values.redis, timeoutMs, sizes);
    results.push(result);
    console.log(
      `${result.status.padEnd(7)} ${result.id}: ${result.label}\n        ${result.detail}`,
    );
  }
  if (results.some((r) => r.status === 'FAILED')) process.exitCode = 1;
  // Whatever is still open here would keep a worker child process alive (after a moment for
  // in-flight callbacks to finish).
  await new Promise((resolve) => setTimeout(resolve, 200));
  const open = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap' && r !== 'PipeWrap');
  if (open.length > 0) console.log(`still open after all adapters: ${open.join(', ')}`);
}

await main();
