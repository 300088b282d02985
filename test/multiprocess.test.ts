/**
 * Several operating-system processes on one queue: the work is shared with no job run twice,
 * and a job whose process is SIGKILLed mid-run runs again elsewhere once its lease expires, also
 * when the killed process was the leader.
 *
 * Worker processes are test/fixtures/worker-process.ts; each run of a job inserts a row into
 * `<schema>.runs`, which is what the assertions count.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { after, afterEach, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { migrate } from '../src/index.js';
import { leaderLockHolder } from './fixtures/leader-lock.js';
import { nextEvent, testContext, waitFor } from './helpers/context.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const FIXTURE = fileURLToPath(new URL('./fixtures/worker-process.ts', import.meta.url));

// ---- child processes ---------------------------------------------------------------------------
// Registered before testContext(): hooks run in registration order, so children are gone before
// the context stops its instances and drops the schema.

interface WorkerProcess {
  name: string;
  child: ChildProcess;
  /** Resolves when the process printed `ready`; rejects if it exits first or takes too long. */
  ready: Promise<void>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** stdout and stderr so far, for failure messages. */
  output(): string;
}

const live = new Set<WorkerProcess>();

function alive(w: WorkerProcess): boolean {
  return w.child.exitCode === null && w.child.signalCode === null;
}

/** SIGTERM (graceful: the fixture stops hark), then SIGKILL if it has not exited in time. */
async function stopWorker(w: WorkerProcess, graceMs = 8_000): Promise<void> {
  if (!alive(w)) return;
  w.child.kill('SIGTERM');
  w.child.kill('SIGCONT'); // in case a test froze it
  let timer: NodeJS.Timeout | undefined;
  const exited = await Promise.race([
    w.exited.then(() => true),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), graceMs);
    }),
  ]);
  clearTimeout(timer);
  if (!exited) {
    w.child.kill('SIGKILL');
    await w.exited;
  }
}

async function stopAll(): Promise<void> {
  await Promise.all([...live].map((w) => stopWorker(w)));
}

afterEach(stopAll);
after(async () => {
  for (const w of live) if (alive(w)) w.child.kill('SIGKILL');
  await Promise.all([...live].map((w) => w.exited));
});

const ctx = testContext(import.meta.url);

function spawnWorker(name: string, env: Record<string, string>): WorkerProcess {
  const childEnv: NodeJS.ProcessEnv = {
    ...process.env,
    DATABASE_URL: ctx.url,
    HARK_SCHEMA: ctx.schema,
    WORKER_NAME: name,
    STOP_TIMEOUT_MS: '1000',
    EXIT_ON_STDIN_EOF: '1',
    ...env,
  };
  delete childEnv['NODE_TEST_CONTEXT'];
  const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE], {
    cwd: ROOT,
    env: childEnv,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const log: string[] = [];
  const output = () => log.join('').trim();
  child.stdin?.on('error', () => {}); // EPIPE once the child is gone
  child.stderr?.on('data', (chunk: Buffer) => log.push(chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${name} was not ready within 20 s:\n${output()}`)),
      20_000,
    );
    createInterface({ input: child.stdout! }).on('line', (line) => {
      log.push(`${line}\n`);
      if (line === 'ready') {
        clearTimeout(timer);
        resolve();
      }
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${signal ?? code}) before it was ready:\n${output()}`));
    });
  });
  ready.catch(() => {});
  const w: WorkerProcess = { name, child, ready, exited, output };
  live.add(w);
  void exited.then(() => live.delete(w));
  return w;
}

// ---- database helpers --------------------------------------------------------------------------

before(async () => {
  const client = await ctx.pool.connect();
  try {
    await migrate(client, ctx.schema);
  } finally {
    client.release();
  }
  await ctx.pool.query(`CREATE TABLE ${ctx.t('runs')} (
    job_id bigint NOT NULL, worker text NOT NULL, attempt int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp())`);
});

interface Run {
  worker: string;
  attempt: number;
}

async function runsOf(id: string): Promise<Run[]> {
  const r = await ctx.pool.query<Run>(
    `SELECT worker, attempt FROM ${ctx.t('runs')} WHERE job_id = $1 ORDER BY started_at, attempt`,
    [id],
  );
  return r.rows;
}

async function recordRun(id: string, worker: string, attempt: number): Promise<void> {
  await ctx.pool.query(
    `INSERT INTO ${ctx.t('runs')} (job_id, worker, attempt) VALUES ($1, $2, $3)`,
    [id, worker, attempt],
  );
}

/** The application_name of the session holding this schema's leader lock, if any. */
function leaderHolder(): Promise<string | null> {
  return leaderLockHolder(ctx.pool, ctx.schema);
}

async function jobRow(
  id: string,
): Promise<{ state: string; attempt: number; lease_expired: boolean }> {
  const r = await ctx.pool.query(
    `SELECT state, attempt, coalesce(lease_expires_at < now(), false) AS lease_expired
       FROM ${ctx.t('jobs')} WHERE id = $1`,
    [id],
  );
  return r.rows[0];
}

// ---- tests -------------------------------------------------------------------------------------

test('two worker processes share 2000 jobs and run each exactly once', async (t) => {
  const queue = 'mp-share';
  const total = 2_000;
  const hark = await ctx.hark({ workerId: 'share-producer' });
  await hark.createQueue(queue);
  const workers = ['share-a', 'share-b'].map((name) =>
    spawnWorker(name, { QUEUE: queue, CONCURRENCY: '8', JOB_MS: '2' }),
  );
  await Promise.all(workers.map((w) => w.ready));

  const startedAt = performance.now();
  const ids = await hark.sendMany(
    Array.from({ length: total }, (_, i) => ({ queue, payload: { i } })),
  );
  assert.equal(new Set(ids).size, total);
  const completed = async () => {
    const r = await ctx.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${ctx.t('jobs')} WHERE queue = $1 AND state = 'completed'`,
      [queue],
    );
    return r.rows[0]!.n;
  };
  try {
    await waitFor(`${total} completed jobs`, async () => (await completed()) === total, {
      timeoutMs: 40_000,
      everyMs: 100,
    });
  } catch (error) {
    const stats = await hark.stats();
    throw new Error(
      `${(error as Error).message}; stats ${JSON.stringify(stats)}\n` +
        workers.map((w) => `--- ${w.name}\n${w.output()}`).join('\n'),
    );
  }
  const elapsedMs = Math.round(performance.now() - startedAt);

  // Every job completed on its first attempt, with no error recorded.
  const states = await ctx.pool.query(
    `SELECT state, attempt, errors = '[]'::jsonb AS clean, count(*)::int AS n
       FROM ${ctx.t('jobs')} WHERE queue = $1 GROUP BY 1, 2, 3`,
    [queue],
  );
  assert.deepEqual(states.rows, [{ state: 'completed', attempt: 1, clean: true, n: total }]);

  // Exactly one run per job, and the completion came from that run.
  const runs = await ctx.pool.query(
    `SELECT count(*)::int AS runs, count(DISTINCT r.job_id)::int AS jobs,
            count(*) FILTER (WHERE r.attempt <> 1)::int AS retries,
            count(*) FILTER (WHERE j.output->>'worker' IS DISTINCT FROM r.worker)::int AS mismatched
       FROM ${ctx.t('runs')} r JOIN ${ctx.t('jobs')} j ON j.id = r.job_id
      WHERE j.queue = $1`,
    [queue],
  );
  assert.deepEqual(runs.rows[0], { runs: total, jobs: total, retries: 0, mismatched: 0 });
  const missing = await ctx.pool.query(
    `SELECT count(*)::int AS n FROM unnest($1::bigint[]) AS s(id)
      WHERE NOT EXISTS (SELECT 1 FROM ${ctx.t('runs')} r WHERE r.job_id = s.id)`,
    [ids],
  );
  assert.equal(missing.rows[0].n, 0, 'every sent id has a run');

  // Both processes did some of the work.
  const split = await ctx.pool.query<{ worker: string; n: number }>(
    `SELECT r.worker, count(*)::int AS n FROM ${ctx.t('runs')} r
       JOIN ${ctx.t('jobs')} j ON j.id = r.job_id WHERE j.queue = $1 GROUP BY 1 ORDER BY 1`,
    [queue],
  );
  assert.deepEqual(
    split.rows.map((r) => r.worker),
    ['share-a', 'share-b'],
  );
  for (const row of split.rows) assert.ok(row.n > 0, `${row.worker} ran no job`);
  t.diagnostic(
    `${total} jobs in ${elapsedMs} ms; split ${split.rows.map((r) => `${r.worker}=${r.n}`).join(', ')}`,
  );

  // SIGTERM stops each process gracefully.
  for (const w of workers) w.child.kill('SIGTERM');
  for (const w of workers) {
    const exit = await w.exited;
    assert.deepEqual(exit, { code: 0, signal: null }, `${w.name} exit\n${w.output()}`);
  }
});

test('SIGKILL mid-job: the job runs again in another process once its lease expires', async (t) => {
  const queue = 'mp-kill';
  const hark = await ctx.hark({ workerId: 'kill-rescuer', leaseMs: 2_000 });
  await hark.createQueue(queue, { leaseMs: 2_000 });
  const victim = spawnWorker('kill-victim', {
    QUEUE: queue,
    CONCURRENCY: '1',
    JOB_MS: '60000',
    LEASE_MS: '2000',
  });
  await victim.ready;
  assert.equal(await leaderHolder(), 'hark:kill-rescuer', 'the test process leads');

  const id = await hark.send(queue, { n: 1 });
  await waitFor('the victim to start the job', async () => (await runsOf(id)).length === 1);
  assert.deepEqual(await runsOf(id), [{ worker: 'kill-victim', attempt: 1 }]);

  // The second worker starts only now, so it cannot have taken the job before the victim.
  await hark.work(queue, { concurrency: 1 }, async (job) => {
    await recordRun(job.id, 'kill-rescuer', job.attempt);
    return 'rescued';
  });
  const rescued = nextEvent(hark, 'jobs:rescued', () => true, 20_000);
  const restarted = nextEvent(hark, 'job:start', (e) => e.id === id, 20_000);
  const killedAt = performance.now();
  victim.child.kill('SIGKILL');
  assert.equal((await victim.exited).signal, 'SIGKILL');

  assert.deepEqual(await rescued, { rescued: 1, failed: 0 });
  const start = await restarted;
  const recoveryMs = Math.round(performance.now() - killedAt);
  assert.equal(start.attempt, 2);
  assert.equal(await hark.waitForJob(id, { timeoutMs: 10_000 }), 'rescued');

  const job = await hark.getJob(id);
  assert.ok(job);
  assert.equal(job.state, 'completed');
  assert.equal(job.attempt, 2);
  assert.equal(job.errors.length, 1, JSON.stringify(job.errors));
  const [expiry] = job.errors;
  assert.equal(expiry!.attempt, 1);
  assert.equal(expiry!.name, 'LeaseExpired');
  assert.match(expiry!.message, /lease expired/);
  assert.match(expiry!.message, /kill-victim/);
  assert.deepEqual(await runsOf(id), [
    { worker: 'kill-victim', attempt: 1 },
    { worker: 'kill-rescuer', attempt: 2 },
  ]);
  t.diagnostic(`recovery: the job restarted ${recoveryMs} ms after SIGKILL (lease 2000 ms)`);
});

test('SIGKILL of the leader mid-job: a follower process takes over and rescues the job', async (t) => {
  const queue = 'mp-leader-kill';
  // The test process only produces (and later works); it never leads.
  const hark = await ctx.hark({ workerId: 'lk-test', leaseMs: 2_000, leaderEligible: false });
  await hark.createQueue(queue, { leaseMs: 2_000 });
  await hark.createQueue('mp-leader-kill-idle');
  const leader = spawnWorker('lk-leader', {
    QUEUE: queue,
    CONCURRENCY: '1',
    JOB_MS: '60000',
    LEASE_MS: '2000',
  });
  await leader.ready;
  // The follower works another queue: it must not compete for the job, only lead after the kill.
  const follower = spawnWorker('lk-follower', { QUEUE: 'mp-leader-kill-idle', LEASE_MS: '2000' });
  await follower.ready;
  assert.equal(await leaderHolder(), 'hark:lk-leader');

  const id = await hark.send(queue, { n: 1 });
  await waitFor('the leader process to start the job', async () => (await runsOf(id)).length === 1);
  await hark.work(queue, { concurrency: 1 }, async (job) => {
    await recordRun(job.id, 'lk-test', job.attempt);
    return 'rescued';
  });
  const restarted = nextEvent(hark, 'job:start', (e) => e.id === id, 20_000);
  const killedAt = performance.now();
  leader.child.kill('SIGKILL');
  await leader.exited;

  await waitFor(
    'the follower to take the leader lock',
    async () => {
      return (await leaderHolder()) === 'hark:lk-follower';
    },
    { timeoutMs: 20_000, everyMs: 50 },
  );
  const electedMs = Math.round(performance.now() - killedAt);
  await restarted;
  const recoveryMs = Math.round(performance.now() - killedAt);
  assert.equal(await hark.waitForJob(id, { timeoutMs: 10_000 }), 'rescued');
  const job = await hark.getJob(id);
  assert.equal(job?.state, 'completed');
  assert.equal(job?.attempt, 2);
  assert.equal(job?.errors[0]?.name, 'LeaseExpired');
  assert.deepEqual(await runsOf(id), [
    { worker: 'lk-leader', attempt: 1 },
    { worker: 'lk-test', attempt: 2 },
  ]);
  t.diagnostic(
    `new leader ${electedMs} ms after SIGKILL; job restarted ${recoveryMs} ms after SIGKILL`,
  );
});

test('a follower that joined after the last leader announcement takes over when the leader dies', async (t) => {
  // Timeline: leader L takes a job; L freezes (SIGSTOP: its session and lock stay, it sends
  // nothing more); follower F starts and finds the lock held; L dies (SIGKILL). No job is sent
  // afterwards, so F hears no notification: it must still elect itself and rescue the job.
  // (SIGSTOP only makes the timing deterministic: the same happens whenever a process joins
  // after the leader's last announcement and the leader then crashes.)
  const queue = 'mp-late-follower';
  const hark = await ctx.hark({ workerId: 'lf-test', leaseMs: 2_000, leaderEligible: false });
  await hark.createQueue(queue, { leaseMs: 2_000 });
  await hark.createQueue('mp-late-follower-idle');
  const leader = spawnWorker('lf-leader', {
    QUEUE: queue,
    CONCURRENCY: '1',
    JOB_MS: '60000',
    LEASE_MS: '2000',
  });
  await leader.ready;
  assert.equal(await leaderHolder(), 'hark:lf-leader');
  const id = await hark.send(queue, { n: 1 });
  await waitFor('the leader process to start the job', async () => (await runsOf(id)).length === 1);
  leader.child.kill('SIGSTOP');

  const follower = spawnWorker('lf-follower', { QUEUE: 'mp-late-follower-idle', LEASE_MS: '2000' });
  await follower.ready;
  assert.equal(await leaderHolder(), 'hark:lf-leader', 'the frozen leader still holds the lock');
  await hark.work(queue, { concurrency: 1 }, async (job) => {
    await recordRun(job.id, 'lf-test', job.attempt);
    return 'rescued';
  });
  const killedAt = performance.now();
  leader.child.kill('SIGKILL');
  await leader.exited;

  try {
    await hark.waitForJob(id, { timeoutMs: 15_000 });
  } catch (error) {
    const row = await jobRow(id);
    assert.fail(
      `job ${id} was not run again within 15 s of the leader's death (${(error as Error).message}): ` +
        `state ${row.state}, lease expired ${row.lease_expired}, leader lock held by ` +
        `${(await leaderHolder()) ?? 'nobody'}. Likely cause: a follower that joins while a ` +
        'leader holds the lock arms no watchdog, so nobody passes until another job is sent.',
    );
  }
  t.diagnostic(`job finished ${Math.round(performance.now() - killedAt)} ms after SIGKILL`);
  assert.deepEqual(await runsOf(id), [
    { worker: 'lf-leader', attempt: 1 },
    { worker: 'lf-test', attempt: 2 },
  ]);
});

test("a queue's short lease bounds recovery even when the instances use the default leaseMs", async (t) => {
  // The queue promises (JobPolicy.leaseMs) that a dead worker's job runs again after about
  // 2 s. Every instance here keeps the default instance leaseMs (30 s): the leader must plan its
  // pass from the job's lease, not from its own default.
  const queue = 'mp-short-lease';
  const hark = await ctx.hark({ workerId: 'sl-test' });
  await hark.createQueue(queue, { leaseMs: 2_000 });
  const victim = spawnWorker('sl-victim', { QUEUE: queue, CONCURRENCY: '1', JOB_MS: '60000' });
  await victim.ready;
  assert.equal(await leaderHolder(), 'hark:sl-test', 'the test process leads');
  const id = await hark.send(queue, { n: 1 });
  await waitFor('the victim to start the job', async () => (await runsOf(id)).length === 1);
  await hark.work(queue, { concurrency: 1 }, async (job) => {
    await recordRun(job.id, 'sl-test', job.attempt);
    return 'rescued';
  });
  const killedAt = performance.now();
  victim.child.kill('SIGKILL');
  await victim.exited;

  // Generous: five times the queue's lease.
  try {
    await hark.waitForJob(id, { timeoutMs: 10_000 });
  } catch (error) {
    const row = await jobRow(id);
    const next = hark.leader.nextCheckAt;
    assert.fail(
      `job ${id} (lease 2000 ms) was not run again within 10 s of SIGKILL ` +
        `(${(error as Error).message}): state ${row.state}, lease expired ${row.lease_expired}; ` +
        `the leader's next pass is ${next === null ? 'not armed' : `in ${next - Date.now()} ms`} ` +
        "(likely planned from the instance's default leaseMs, 30000, not the job's).",
    );
  }
  t.diagnostic(`job finished ${Math.round(performance.now() - killedAt)} ms after SIGKILL`);
  assert.equal((await hark.getJob(id))?.attempt, 2);
});
