/**
 * A hark worker process for the chaos suite (test/chaos/suite.ts).
 *
 *   node --import tsx test/chaos/worker.ts
 *
 * Environment:
 *   DATABASE_URL   the database (required)
 *   HARK_SCHEMA    hark's schema (required; the suite has migrated it and created `runs`)
 *   QUEUE          the queue to work (required; it must exist)
 *   WORKER_NAME    hark's workerId (so application_name is `hark:<WORKER_NAME>`) and the
 *                  `worker` column of `runs` (required)
 *   CONCURRENCY    jobs at once (default 20)
 *   LEASE_MS       the instance's leaseMs (default 2000; the suite's queues set it too)
 *   JOB_MS_MIN, JOB_MS_MAX  each job sleeps a uniform random time in this range, honouring
 *                  its AbortSignal (default 20..60)
 *
 * Each handler run first records itself in `<schema>.runs (run_id, job_id, attempt, worker,
 * started_at)`, then does its "work" (the sleep), then returns `{ worker, attempt, runId }`,
 * which becomes the job's output. The run is recorded before the work, so a run that did any
 * work is always on record. When the insert fails (database down, connection terminated, server
 * full) the handler retries it with backoff, under the same run id, until it succeeds or the
 * attempt's signal aborts (lease lost); `ON CONFLICT (run_id) DO NOTHING` makes a retried insert
 * that had in fact committed harmless. If the run cannot be recorded at all the handler throws,
 * so the attempt fails and is retried: no job ever completes without a recorded run.
 *
 * Protocol on stdout, one line each: `ready` once working; `C <id> <attempt>` for every
 * completion hark accepted (the token-guarded UPDATE returned the row); `E <event>` for
 * breaker, listener, leader and lease events. Diagnostics go to stderr. SIGTERM, SIGINT or the
 * end of stdin stop hark gracefully; the suite SIGKILLs these processes on purpose.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { Hark } from '../../src/index.js';
import { checkSchemaName } from '../../src/sql/identifiers.js';
import { fixtureEnv } from '../fixtures/env.js';

const { required, integer } = fixtureEnv('chaos-worker');

const url = required('DATABASE_URL');
const schema = required('HARK_SCHEMA');
const queue = required('QUEUE');
const name = required('WORKER_NAME');
const concurrency = integer('CONCURRENCY', 20, 1);
const leaseMs = integer('LEASE_MS', 2_000, 1_000);
const jobMsMin = integer('JOB_MS_MIN', 20, 0);
const jobMsMax = Math.max(jobMsMin, integer('JOB_MS_MAX', 60, 0));
/** A run that cannot be recorded for this long fails its attempt instead. */
const RECORD_GIVE_UP_MS = 30_000;

checkSchemaName('HARK_SCHEMA', schema);
const insertRun = `INSERT INTO "${schema}".runs (run_id, job_id, attempt, worker, started_at)
  VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id) DO NOTHING`;

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

function log(line: string): void {
  process.stderr.write(`${Date.now()} [${name}] ${line}\n`);
}

// The side table's own pool: not hark's, so the suite's checks do not depend on hark's
// connections (and pg_terminate_backend on `hark:*` sessions leaves it alone).
const runsPool = new pg.Pool({
  connectionString: url,
  max: 4,
  application_name: `chaos-runs:${name}`.slice(0, 63),
});
runsPool.on('error', () => {}); // idle clients die with the server; the next query reconnects

const hark = new Hark({ connectionString: url, schema, migrate: 'off', leaseMs, workerId: name });
hark.events.on('error', ({ error, context }) => log(`error (${context}): ${error.message}`));
hark.events.on('worker:error', ({ error }) => log(`worker error: ${error.message}`));
hark.events.on('job:complete', ({ id, attempt }) => say(`C ${id} ${attempt}`));
hark.events.on('job:lease-lost', ({ id, attempt }) => say(`E job:lease-lost ${id} ${attempt}`));
hark.events.on('jobs:rescued', ({ rescued, failed }) => say(`E jobs:rescued ${rescued} ${failed}`));
for (const event of [
  'breaker:open',
  'breaker:half-open',
  'breaker:closed',
  'listener:disconnect',
  'listener:connect',
  'leader:elected',
  'leader:lost',
  'worker:event-loop-blocked',
] as const) {
  hark.events.on(event, () => say(`E ${event}`));
}

async function recordRun(
  runId: string,
  id: string,
  attempt: number,
  startedAt: Date,
  signal: AbortSignal,
): Promise<void> {
  const giveUpAt = Date.now() + RECORD_GIVE_UP_MS;
  for (let failures = 0; ; failures++) {
    try {
      await runsPool.query(insertRun, [runId, id, attempt, name, startedAt]);
      return;
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      if (Date.now() > giveUpAt) throw error;
      // Rejects with the signal's reason when the attempt is aborted meanwhile.
      await sleep(Math.min(1_000, 50 * 2 ** failures), undefined, { signal });
    }
  }
}

let stopping: Promise<void> | undefined;
function shutdown(code: number): Promise<void> {
  stopping ??= (async () => {
    try {
      await hark.stop({ timeoutMs: 2_000 });
      await runsPool.end();
    } catch (error) {
      log(`stop failed: ${(error as Error).message}`);
      code = code || 1;
    }
    process.exit(code);
  })();
  return stopping;
}

process.once('SIGTERM', () => void shutdown(0));
process.once('SIGINT', () => void shutdown(0));
process.stdin.on('end', () => void shutdown(0));
process.stdin.on('error', () => void shutdown(0));
process.stdin.resume();

try {
  await hark.start();
  await hark.work(queue, { concurrency }, async (job, signal) => {
    const runId = randomUUID();
    await recordRun(runId, job.id, job.attempt, new Date(), signal);
    const ms = jobMsMin + Math.floor(Math.random() * (jobMsMax - jobMsMin + 1));
    if (ms > 0) await sleep(ms, undefined, { signal });
    return { worker: name, attempt: job.attempt, runId };
  });
} catch (error) {
  log(`failed to start: ${(error as Error).stack}`);
  await shutdown(1);
}

say('ready');

// CHAOS_TRACE=1: every 200 ms, the statements issued so far by purpose, and what is in flight.
if (process.env['CHAOS_TRACE'] === '1') {
  let last = '';
  setInterval(() => {
    const h = hark.health();
    const b = hark.statements.byPurpose;
    const line =
      `hb=${b['heartbeat'] ?? 0} claim=${b['claim'] ?? 0} complete=${b['complete'] ?? 0} ` +
      `active=${h.activeJobs} breaker=${h.breaker} listener=${h.listener.state}`;
    if (line !== last) log(`trace ${line}`);
    last = line;
  }, 200).unref();
  hark.events.on('job:lease-lost', ({ id, attempt }) => log(`lease-lost ${id}#${attempt}`));
  hark.events.on('jobs:rescued', ({ rescued }) => log(`rescued ${rescued}`));
}
