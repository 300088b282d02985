import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LeaseLostError } from '../src/index.js';
import { deferred, nextEvent, testContext, waitFor } from './helpers/context.js';

const ctx = testContext(import.meta.url);

describe('fenced leases', () => {
  test('a worker that lost its lease is aborted and its late completion never overwrites the new attempt', async () => {
    const a = await ctx.hark({ workerId: 'A' });
    const b = await ctx.hark({ workerId: 'B', leaderEligible: false });
    await a.createQueue('f-lease', { leaseMs: 60_000 });
    const releaseA = deferred();
    let aSignal: AbortSignal | undefined;
    // Concurrency 1: A's only slot stays busy, so A cannot take the rescued job itself.
    await a.work('f-lease', { concurrency: 1 }, async (_job, signal) => {
      aSignal = signal;
      await releaseA.promise;
      return 'from A';
    });
    const started = nextEvent(a, 'job:start', (e) => e.queue === 'f-lease');
    const id = await a.send('f-lease', {});
    await started;
    // A stalls; its lease runs out (we expire it instead of waiting a minute).
    await ctx.pool.query(
      `UPDATE ${ctx.t('jobs')} SET lease_expires_at = now() - interval '1 second' WHERE id = $1`,
      [id],
    );
    assert.ok(a.isLeader);
    const pass = await a.leader.pass();
    assert.equal(pass?.rescued, 1);
    // B takes the job (attempt 2) and completes it.
    await b.work('f-lease', {}, async (job) => `from B, attempt ${job.attempt}`);
    assert.equal(await b.waitForJob(id), 'from B, attempt 2');
    // A's next heartbeat finds the lease gone and aborts A's signal.
    const lost = nextEvent(a, 'job:lease-lost', (e) => e.id === id);
    await a.heartbeatNow();
    await lost;
    assert.ok(aSignal?.aborted);
    assert.ok(aSignal?.reason instanceof LeaseLostError);
    // A finishing late changes nothing.
    releaseA.resolve();
    await new Promise((r) => setTimeout(r, 100));
    const job = await a.getJob(id);
    assert.equal(job?.state, 'completed');
    assert.equal(job?.output, 'from B, attempt 2');
    assert.equal(job?.attempt, 2);
    assert.match(job?.errors[0]?.message ?? '', /lease expired: worker A/);
  });

  test('transitions are guarded by state and token at the database', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('f-guard');
    const id = await hark.send('f-guard', {});
    const jobs = ctx.t('jobs');
    // Claim by hand with a known token, then try to finish with a wrong one.
    const token = '00000000-0000-4000-8000-000000000001';
    await ctx.pool.query(
      `UPDATE ${jobs} SET state = 'active', attempt = 1, lease_token = $2, lease_expires_at = now() + interval '1 minute' WHERE id = $1`,
      [id, token],
    );
    const wrong = await ctx.pool.query(
      `UPDATE ${jobs} j SET state = 'completed', finished_at = now(), lease_token = NULL, lease_expires_at = NULL
         FROM unnest($1::bigint[], $2::uuid[]) AS i(id, token)
        WHERE j.id = i.id AND j.lease_token = i.token AND j.state = 'active' RETURNING j.id`,
      [[id], ['00000000-0000-4000-8000-000000000002']],
    );
    assert.equal(wrong.rowCount, 0);
    // The CHECK constraints hold the state machine.
    await assert.rejects(
      ctx.pool.query(
        `UPDATE ${jobs} SET state = 'bogus', lease_token = NULL, lease_expires_at = NULL WHERE id = $1`,
        [id],
      ),
      /jobs_state_valid/,
    );
    await assert.rejects(
      ctx.pool.query(`UPDATE ${jobs} SET lease_token = NULL WHERE id = $1`, [id]),
      /jobs_active_has_lease/,
    );
    await assert.rejects(
      ctx.pool.query(
        `UPDATE ${jobs} SET state = 'completed', lease_token = NULL, lease_expires_at = NULL WHERE id = $1`,
        [id],
      ),
      /jobs_finished_has_time/,
    );
    await assert.rejects(
      ctx.pool.query(`UPDATE ${jobs} SET attempt = 99 WHERE id = $1`, [id]),
      /jobs_attempts_valid/,
    );
  });

  test('cancelling an active job aborts its handler at once and refuses its completion', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('f-cancel');
    const seen = deferred<unknown>();
    await hark.work('f-cancel', {}, async (_job, signal) => {
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve()));
      seen.resolve(signal.reason);
      return 'too late';
    });
    const started = nextEvent(hark, 'job:start', (e) => e.queue === 'f-cancel');
    const id = await hark.send('f-cancel', {});
    await started;
    await hark.cancel(id);
    assert.ok((await seen.promise) instanceof LeaseLostError);
    await waitFor('handler slot free', () => hark.health().activeJobs === 0);
    const job = await hark.getJob(id);
    assert.equal(job?.state, 'cancelled');
    assert.equal(job?.output, null);
  });

  test('the heartbeat renews every lease of the process in one statement', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('f-beat', { leaseMs: 3_000 });
    const gate = deferred();
    await hark.work('f-beat', { concurrency: 5 }, async () => gate.promise);
    const ids = await hark.sendMany(
      Array.from({ length: 5 }, () => ({ queue: 'f-beat', payload: {} })),
    );
    await waitFor('all active', () => hark.health().activeJobs === 5);
    const before = await ctx.pool.query(
      `SELECT max(lease_expires_at) AS t FROM ${ctx.t('jobs')} WHERE id = ANY($1::bigint[])`,
      [ids],
    );
    const beats = hark.statements.byPurpose.heartbeat ?? 0;
    await new Promise((r) => setTimeout(r, 20));
    await hark.heartbeatNow();
    assert.equal((hark.statements.byPurpose.heartbeat ?? 0) - beats, 1);
    const after = await ctx.pool.query(
      `SELECT min(lease_expires_at) AS t FROM ${ctx.t('jobs')} WHERE id = ANY($1::bigint[])`,
      [ids],
    );
    assert.ok(after.rows[0].t > before.rows[0].t);
    gate.resolve();
    await Promise.all(ids.map((id) => hark.waitForJob(id)));
  });
});

test('a handler that blocks the event loop is reported before it costs the lease', async () => {
  const hark = await ctx.hark();
  await hark.createQueue('f-block', { leaseMs: 1_500 });
  const blocked = nextEvent(hark, 'worker:event-loop-blocked');
  await hark.work('f-block', {}, async () => {
    const until = Date.now() + 1_200; // blocks past one heartbeat interval (500 ms)
    while (Date.now() < until) {
      // busy: no timers run
    }
    return 'done';
  });
  const id = await hark.send('f-block', {});
  const event = await blocked;
  assert.ok(event.lateMs > 500);
  assert.equal(event.leaseMs, 1_500);
  assert.equal(await hark.waitForJob(id), 'done');
});
