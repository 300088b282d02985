import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  JobFailedError,
  JobTimeoutError,
  NonRetryableError,
  ShutdownError,
  WaitTimeoutError,
} from '../src/index.js';
import { deferred, nextEvent, testContext, waitFor } from './helpers/context.js';

const ctx = testContext(import.meta.url);

describe('work', () => {
  test('runs jobs up to the concurrency limit and stores their output', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-conc');
    let running = 0;
    let peak = 0;
    const gate = deferred();
    await hark.work('w-conc', { concurrency: 3 }, async (job) => {
      running++;
      peak = Math.max(peak, running);
      await gate.promise;
      running--;
      return { doubled: (job.payload as number) * 2 };
    });
    const ids = await hark.sendMany(
      Array.from({ length: 10 }, (_, i) => ({ queue: 'w-conc', payload: i })),
    );
    await waitFor('three running', () => running === 3);
    assert.equal((await hark.stats()).find((s) => s.queue === 'w-conc')?.counts.active, 3);
    gate.resolve();
    const outputs = await Promise.all(ids.map((id) => hark.waitForJob(id)));
    assert.deepEqual(
      outputs,
      ids.map((_, i) => ({ doubled: i * 2 })),
    );
    assert.equal(peak, 3);
  });

  test('claims by priority, then run_at, then id', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-prio');
    await hark.sendMany([
      { queue: 'w-prio', payload: 'low-1', options: { priority: -5 } },
      { queue: 'w-prio', payload: 'mid-1' },
      { queue: 'w-prio', payload: 'high', options: { priority: 10 } },
      { queue: 'w-prio', payload: 'mid-2' },
    ]);
    const order: unknown[] = [];
    await hark.work('w-prio', { concurrency: 1 }, async (job) => {
      order.push(job.payload);
    });
    await waitFor('all four', () => order.length === 4);
    assert.deepEqual(order, ['high', 'mid-1', 'mid-2', 'low-1']);
  });

  test('batch handlers get up to batchSize jobs per call; an array result maps to each job', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-batch');
    const ids = await hark.sendMany(
      Array.from({ length: 25 }, (_, i) => ({ queue: 'w-batch', payload: i })),
    );
    const sizes: number[] = [];
    await hark.workBatch('w-batch', { batchSize: 10, concurrency: 1 }, async (jobs) => {
      sizes.push(jobs.length);
      return jobs.map((j) => (j.payload as number) + 100);
    });
    const outputs = await Promise.all(ids.map((id) => hark.waitForJob(id)));
    assert.deepEqual(
      outputs,
      ids.map((_, i) => i + 100),
    );
    assert.ok(sizes.every((n) => n <= 10));
    assert.equal(
      sizes.reduce((a, b) => a + b, 0),
      25,
    );
    await assert.rejects(
      hark.work('w-batch2', { batchSize: 5 }, async () => {}),
      /needs workBatch/,
    );
  });

  test('retries with backoff, then completes; errors are kept per attempt', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-retry', { retryLimit: 3, retryDelayMs: 100, retryBackoff: false });
    const starts: number[] = [];
    await hark.work('w-retry', {}, async (job) => {
      starts.push(Date.now());
      if (job.attempt < 3) throw new Error(`attempt ${job.attempt} failed`);
      return 'third time lucky';
    });
    const id = await hark.send('w-retry', {});
    assert.equal(await hark.waitForJob(id), 'third time lucky');
    const job = await hark.getJob(id);
    assert.equal(job?.state, 'completed');
    assert.equal(job?.attempt, 3);
    assert.deepEqual(
      job?.errors.map((e) => e.message),
      ['attempt 1 failed', 'attempt 2 failed'],
    );
    // Each retry waited at least its delay (the worker's own timer woke it, no polling).
    for (let i = 1; i < starts.length; i++) assert.ok(starts[i]! - starts[i - 1]! >= 95);
  });

  test('exhausted and non-retryable jobs fail and are copied to the dead-letter queue', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-dlq');
    await hark.createQueue('w-src', { retryLimit: 1, retryDelayMs: 10, deadLetter: 'w-dlq' });
    await hark.work('w-src', {}, async (job) => {
      if (job.payload === 'fatal') throw new NonRetryableError('bad input, do not retry');
      throw new Error('flaky');
    });
    const fatal = await hark.send('w-src', 'fatal');
    const flaky = await hark.send('w-src', 'flaky');
    await assert.rejects(hark.waitForJob(fatal), (e: Error) => {
      assert.ok(e instanceof JobFailedError);
      assert.match(e.message, /bad input, do not retry/);
      return true;
    });
    await assert.rejects(hark.waitForJob(flaky), JobFailedError);
    assert.equal((await hark.getJob(fatal))?.attempt, 1);
    assert.equal((await hark.getJob(flaky))?.attempt, 2);
    const copies = await ctx.pool.query(
      `SELECT payload, source_job_id::text AS source, state FROM ${ctx.t('jobs')} WHERE queue = 'w-dlq' ORDER BY id`,
    );
    assert.deepEqual(
      copies.rows.map((r) => [r.payload, r.source, r.state]).sort(),
      [
        ['fatal', fatal, 'available'],
        ['flaky', flaky, 'available'],
      ].sort(),
    );
  });

  test('a timeout aborts the signal and counts the attempt as failed', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-timeout', { timeoutMs: 100, retryLimit: 0 });
    let sawAbort: unknown;
    await hark.work('w-timeout', {}, async (_job, signal) => {
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve()));
      sawAbort = signal.reason;
    });
    const id = await hark.send('w-timeout', {});
    await assert.rejects(hark.waitForJob(id), JobFailedError);
    assert.ok(sawAbort instanceof JobTimeoutError);
    const job = await hark.getJob(id);
    assert.equal(job?.errors[0]?.name, 'JobTimeoutError');
    // A handler that ignores its signal cannot hold its slot past the timeout either.
    await hark.createQueue('w-timeout-stubborn', { timeoutMs: 50, retryLimit: 0 });
    await hark.work('w-timeout-stubborn', { concurrency: 1 }, async () => {
      await new Promise((r) => setTimeout(r, 2_000));
    });
    const a = await hark.send('w-timeout-stubborn', 'a');
    const b = await hark.send('w-timeout-stubborn', 'b');
    await assert.rejects(hark.waitForJob(a), JobFailedError);
    await assert.rejects(hark.waitForJob(b), JobFailedError);
  });

  test('a delayed job starts when due, woken by its timer', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-delay');
    const started = deferred<number>();
    await hark.work('w-delay', {}, async () => started.resolve(Date.now()));
    const sentAt = Date.now();
    const id = await hark.send('w-delay', {}, { delayMs: 400 });
    const at = await started.promise;
    assert.ok(at - sentAt >= 390, `started ${at - sentAt} ms after send`);
    const job = await hark.getJob(id);
    assert.ok(job?.startedAt && job.startedAt.getTime() >= job.runAt.getTime());
  });

  test('waitForJob, sendAndWait and their errors', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-wait');
    await hark.work('w-wait', {}, async (job) => {
      if (job.payload === 'fail') throw new NonRetryableError('nope');
      if (job.payload === 'slow') await new Promise((r) => setTimeout(r, 1_000));
      return `echo:${job.payload}`;
    });
    assert.equal(await hark.sendAndWait('w-wait', 'hi'), 'echo:hi');
    const id = await hark.send('w-wait', 'done-before-wait');
    await waitFor('completed', async () => (await hark.getJob(id))?.state === 'completed');
    assert.equal(await hark.waitForJob(id), 'echo:done-before-wait');
    await assert.rejects(hark.sendAndWait('w-wait', 'fail'), JobFailedError);
    await assert.rejects(
      hark.sendAndWait('w-wait', 'slow', { waitTimeoutMs: 50 }),
      WaitTimeoutError,
    );
    await assert.rejects(hark.waitForJob('987654321'), /No job with id/);
  });
});

describe('graceful shutdown', () => {
  test('lets active jobs finish before the deadline', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-stop-ok');
    await hark.work('w-stop-ok', {}, async () => {
      await new Promise((r) => setTimeout(r, 200));
      return 'finished';
    });
    const started = nextEvent(hark, 'job:start', (e) => e.queue === 'w-stop-ok');
    const id = await hark.send('w-stop-ok', {});
    await started;
    await hark.stop({ timeoutMs: 5_000 });
    const r = await ctx.pool.query(`SELECT state, output FROM ${ctx.t('jobs')} WHERE id = $1`, [
      id,
    ]);
    assert.deepEqual(r.rows[0], { state: 'completed', output: 'finished' });
  });

  test('past the deadline aborts and releases jobs without spending an attempt', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-stop-abort', { retryLimit: 0 });
    let reason: unknown;
    await hark.work('w-stop-abort', {}, async (_job, signal) => {
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve()));
      reason = signal.reason;
    });
    const started = nextEvent(hark, 'job:start', (e) => e.queue === 'w-stop-abort');
    const id = await hark.send('w-stop-abort', {});
    await started;
    const released = nextEvent(hark, 'job:release', (e) => e.id === id);
    await hark.stop({ timeoutMs: 100 });
    await released;
    assert.ok(reason instanceof ShutdownError);
    const r = await ctx.pool.query(
      `SELECT state, attempt, lease_token, errors FROM ${ctx.t('jobs')} WHERE id = $1`,
      [id],
    );
    assert.deepEqual(r.rows[0], { state: 'available', attempt: 0, lease_token: null, errors: [] });
    // Another worker picks it up and it still has its one attempt.
    const next = await ctx.hark();
    await next.work('w-stop-abort', {}, async () => 'second worker');
    assert.equal(await next.waitForJob(id), 'second worker');
  });
});

test('a handler output that cannot be stored fails the job instead of crashing the worker', async () => {
  const hark = await ctx.hark();
  await hark.createQueue('w-output', { retryLimit: 2 });
  await hark.work('w-output', {}, async (job) => (job.payload === 'big' ? { n: 1n } : 'fine'));
  const bad = await hark.send('w-output', 'big');
  await assert.rejects(hark.waitForJob(bad), /not JSON-serialisable/);
  assert.equal((await hark.getJob(bad))?.attempt, 1);
  assert.equal(await hark.sendAndWait('w-output', 'ok'), 'fine');
});

test('several delayed jobs sent one by one all run when due (the timer re-arms for the next)', async () => {
  const hark = await ctx.hark();
  await hark.createQueue('w-delays');
  const ran: number[] = [];
  await hark.work('w-delays', {}, async (job) => {
    ran.push(job.payload as number);
  });
  const ids: string[] = [];
  for (const [i, delayMs] of [300, 350, 400, 700, 701].entries()) {
    ids.push(await hark.send('w-delays', i, { delayMs }));
  }
  await Promise.all(ids.map((id) => hark.waitForJob(id, { timeoutMs: 10_000 })));
  assert.deepEqual([...ran].sort(), [0, 1, 2, 3, 4]);
});

describe('the hot path', () => {
  test('job.signal: a one-parameter handler reaches the same signal, aborted on timeout', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-job-signal', { timeoutMs: 100, retryLimit: 0 });
    let reason: unknown;
    await hark.work('w-job-signal', {}, async (job) => {
      await new Promise<void>((resolve) => job.signal.addEventListener('abort', () => resolve()));
      reason = job.signal.reason;
    });
    const id = await hark.send('w-job-signal', {});
    await assert.rejects(hark.waitForJob(id), JobFailedError);
    assert.ok(reason instanceof JobTimeoutError);
    // Dates of the job view are real Dates, and JSON shows the job without its signal.
    await hark.createQueue('w-job-view');
    let seen: Record<string, unknown> | undefined;
    await hark.work('w-job-view', {}, async (job) => {
      assert.ok(job.runAt instanceof Date && job.createdAt instanceof Date);
      assert.ok(job.runAt.getTime() >= job.createdAt.getTime() - 1);
      seen = JSON.parse(JSON.stringify(job));
    });
    const viewId = await hark.send('w-job-view', { a: 1 });
    await hark.waitForJob(viewId);
    assert.deepEqual(Object.keys(seen ?? {}).sort(), [
      'attempt',
      'createdAt',
      'id',
      'leaseMs',
      'maxAttempts',
      'payload',
      'priority',
      'queue',
      'runAt',
      'singletonKey',
      'timeoutMs',
    ]);
    assert.deepEqual(seen?.['payload'], { a: 1 });
  });

  test('retention 0: a completed job is deleted by its completion, unless someone waits for it', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-gone', { retentionMs: 0 });
    await hark.work('w-gone', {}, async (job) => `out-${job.payload}`);
    const done = nextEvent(hark, 'job:complete', (e) => e.queue === 'w-gone');
    const id = await hark.send('w-gone', 1);
    await done;
    assert.equal(await hark.getJob(id), null);
    // A waiter marks the job: its output is kept until the waiter has read it.
    assert.equal(await hark.sendAndWait('w-gone', 2), 'out-2');
    // Retention above 0 keeps the job completed, with its output.
    await hark.createQueue('w-kept', { retentionMs: 60_000 });
    await hark.work('w-kept', {}, async () => 'kept');
    const keptDone = nextEvent(hark, 'job:complete', (e) => e.queue === 'w-kept');
    const kept = await hark.send('w-kept', {});
    await keptDone;
    const job = await hark.getJob(kept);
    assert.equal(job?.state, 'completed');
    assert.equal(job?.output, 'kept');
  });

  test('minFetch: while handlers run, the worker claims again only once enough slots are free', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-min-fetch');
    const gates = new Map<number, ReturnType<typeof deferred<void>>>();
    const started: number[] = [];
    await hark.work('w-min-fetch', { concurrency: 4, minFetch: 2 }, async (job) => {
      const n = job.payload as number;
      started.push(n);
      const g = deferred();
      gates.set(n, g);
      await g.promise;
    });
    await hark.sendMany(
      Array.from({ length: 8 }, (_, i) => ({ queue: 'w-min-fetch', payload: i })),
    );
    await waitFor('four running', () => started.length === 4);
    const claims = () => hark.statements.byPurpose['claim'] ?? 0;
    const before = claims();
    gates.get(started[0]!)!.resolve();
    // One free slot of four, with three handlers still running: no claim.
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(claims(), before);
    assert.equal(started.length, 4);
    gates.get(started[1]!)!.resolve();
    await waitFor('two more started', () => started.length === 6);
    assert.equal(claims(), before + 1);
    for (const g of gates.values()) g.resolve();
    await waitFor('all eight', () => started.length === 8);
    for (const g of gates.values()) g.resolve();
  });
});

describe('the claim cursor', () => {
  test('jobs that appear before the cursor still run: a late commit, a higher priority, a delayed job', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-cursor');
    const ran: string[] = [];
    await hark.work('w-cursor', { concurrency: 4 }, async (job) => {
      ran.push(job.payload as string);
    });
    // A transaction that started first (earlier run_at) but commits after later jobs ran.
    const client = await ctx.pool.connect();
    try {
      await client.query('BEGIN');
      await hark.send('w-cursor', 'late-commit', { executor: client });
      await new Promise((r) => setTimeout(r, 20));
      for (let i = 0; i < 20; i++) await hark.send('w-cursor', `plain-${i}`);
      await waitFor('the plain jobs', () => ran.filter((p) => p.startsWith('plain')).length === 20);
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    await waitFor('the late commit', () => ran.includes('late-commit'));
    // A higher priority sent after the cursor moved on, and a delayed high-priority job that
    // the cursor passes while it waits.
    await hark.send('w-cursor', 'delayed-high', { priority: 10, delayMs: 300 });
    for (let i = 0; i < 10; i++) await hark.send('w-cursor', `more-${i}`);
    await hark.send('w-cursor', 'high', { priority: 5 });
    await waitFor('the high-priority job', () => ran.includes('high'));
    await waitFor('the delayed job', () => ran.includes('delayed-high'));
    await waitFor('everything', () => ran.length === 33);
    assert.equal(new Set(ran).size, 33);
  });
});

describe('review fixes', () => {
  test('a delayed job that shares an insert with a due one still gets its timer', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-mixed');
    const ran: string[] = [];
    await hark.work('w-mixed', {}, async (job) => {
      ran.push(job.payload as string);
    });
    // Sent in the same tick, the two sends share one statement (and one notification).
    const before = hark.statements.byPurpose['send'] ?? 0;
    await Promise.all([
      hark.send('w-mixed', 'now'),
      hark.send('w-mixed', 'later', { delayMs: 300 }),
    ]);
    assert.equal((hark.statements.byPurpose['send'] ?? 0) - before, 1);
    await waitFor('the due job', () => ran.includes('now'));
    // Nothing else happens on this queue: only the timer can start the delayed job.
    await waitFor('the delayed job', () => ran.includes('later'), { timeoutMs: 5_000 });
    // The same for sendMany.
    await hark.sendMany([
      { queue: 'w-mixed', payload: 'many-now' },
      { queue: 'w-mixed', payload: 'many-later', options: { delayMs: 300 } },
    ]);
    await waitFor('the delayed job of a batch', () => ran.includes('many-later'), {
      timeoutMs: 5_000,
    });
  });

  test('a claim the database refuses is retried with backoff, not in a loop', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-refused');
    const jobs = ctx.t('jobs');
    await ctx.pool.query(`CREATE TABLE IF NOT EXISTS "${ctx.schema}".refuse_claims (on_ boolean)`);
    await ctx.pool.query(`
      CREATE OR REPLACE FUNCTION "${ctx.schema}".refuse_claim() RETURNS trigger
      LANGUAGE plpgsql AS $$
      BEGIN
        IF EXISTS (SELECT 1 FROM "${ctx.schema}".refuse_claims) THEN
          RAISE EXCEPTION 'claims refused by test trigger';
        END IF;
        RETURN NEW;
      END $$`);
    await ctx.pool.query(`CREATE TRIGGER refuse_claim BEFORE UPDATE ON ${jobs}
      FOR EACH ROW WHEN (NEW.queue = 'w-refused' AND NEW.state = 'active')
      EXECUTE FUNCTION "${ctx.schema}".refuse_claim()`);
    try {
      const ran: number[] = [];
      await hark.work('w-refused', { concurrency: 4 }, async (job) => {
        ran.push(job.payload as number);
      });
      // A full claim first, so the worker believes more is waiting when the refusals begin.
      await hark.sendMany(
        Array.from({ length: 8 }, (_, i) => ({ queue: 'w-refused', payload: i })),
      );
      await waitFor('the first jobs', () => ran.length >= 2);
      await ctx.pool.query(`INSERT INTO "${ctx.schema}".refuse_claims VALUES (true)`);
      await hark.sendMany(
        Array.from({ length: 8 }, (_, i) => ({ queue: 'w-refused', payload: 100 + i })),
      );
      const claims = () => hark.statements.byPurpose['claim'] ?? 0;
      const before = claims();
      await new Promise((r) => setTimeout(r, 600));
      // Backoff from 200 ms: a handful of attempts, not one per round trip.
      assert.ok(claims() - before <= 6, `${claims() - before} claims in 600 ms`);
      await ctx.pool.query(`DELETE FROM "${ctx.schema}".refuse_claims`);
      await waitFor('every job', () => ran.length === 16, { timeoutMs: 15_000 });
    } finally {
      await ctx.pool.query(`DROP TRIGGER IF EXISTS refuse_claim ON ${jobs}`);
    }
  });

  test('a handler returning a thenable whose then throws fails the job and frees the slot', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('w-thenable', { retryLimit: 0 });
    await hark.work('w-thenable', { concurrency: 1 }, (job) => {
      if (job.payload === 'bad')
        return {
          // biome-ignore lint/suspicious/noThenProperty: the point of the test
          then() {
            throw new Error('then exploded');
          },
        } as unknown as Promise<string>;
      return 'fine';
    });
    const bad = await hark.send('w-thenable', 'bad');
    await assert.rejects(hark.waitForJob(bad), /then exploded/);
    assert.equal(await hark.sendAndWait('w-thenable', 'ok'), 'fine');
  });
});
