/**
 * The reason hark exists: an idle worker issues zero statements, and a job sent to it starts at
 * once, woken by NOTIFY, not by any interval. (Every instance here has fallbackPollMs = 1 hour,
 * the only interval hark has, and it runs only while the listener is down.)
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { deferred, nextEvent, testContext, waitFor } from './helpers/context.js';

const ctx = testContext(import.meta.url);

describe('idle budget', () => {
  test('idle workers and the leader issue zero statements', async () => {
    // Short leases so the leader's follow-up pass after the burst comes quickly.
    const leader = await ctx.hark({ workerId: 'idle-1', leaseMs: 1_000 });
    const follower = await ctx.hark({ workerId: 'idle-2', leaseMs: 1_000 });
    for (const q of ['i-a', 'i-b', 'i-c']) await leader.createQueue(q);
    for (const h of [leader, follower]) {
      for (const q of ['i-a', 'i-b', 'i-c']) await h.work(q, { concurrency: 5 }, async () => 'ok');
    }
    // Some work first, so timers and caches have been through a cycle.
    const ids = await leader.sendMany(
      ['i-a', 'i-b', 'i-c'].map((queue) => ({ queue, payload: {} })),
    );
    await Promise.all(ids.map((id) => leader.waitForJob(id)));
    // The leader's follow-up pass sees nothing active, due or scheduled, and plans no pass
    // sooner than the retention of finished jobs (days away); followers hear that and disarm.
    const quiet = (h: typeof leader) => {
      const next = h.leader.nextCheckAt;
      return next === null || next > Date.now() + 60_000;
    };
    await waitFor('the cluster to settle', () => quiet(leader) && quiet(follower), {
      timeoutMs: 15_000,
    });
    const before = [leader.statements.total, follower.statements.total];
    await new Promise((r) => setTimeout(r, 2_500));
    const after = [leader.statements.total, follower.statements.total];
    assert.deepEqual(after, before, 'statements issued while idle');
  });

  test('a follower that joins an idle cluster stays silent (no watchdog lock attempts)', async () => {
    const schema = `${ctx.schema}_join`;
    try {
      const leader = await ctx.hark({ workerId: 'join-1', leaseMs: 1_000, schema });
      await leader.createQueue('i-join');
      await leader.work('i-join', {}, async () => 'ok');
      const follower = await ctx.hark({ workerId: 'join-2', leaseMs: 1_000, schema });
      await follower.work('i-join', {}, async () => 'ok');
      assert.equal(follower.isLeader, false);
      // Nothing is active: the follower arms no watchdog, so a lease (1 s) plus its grace
      // (2.5 s) and more pass without a statement from either.
      assert.equal(follower.leader.nextCheckAt, null);
      const before = [leader.statements.total, follower.statements.total];
      await new Promise((r) => setTimeout(r, 4_000));
      assert.deepEqual([leader.statements.total, follower.statements.total], before);
    } finally {
      await ctx.pool.query(`DROP SCHEMA IF EXISTS "${ctx.schema}_join" CASCADE`);
    }
  });

  test('a job sent to an idle worker starts at once, woken by its notification', async (t) => {
    const producer = await ctx.hark({ workerId: 'producer' });
    const worker = await ctx.hark({ workerId: 'worker' });
    await producer.createQueue('i-wake');
    const started = deferred<number>();
    await worker.work('i-wake', {}, async () => started.resolve(Date.now()));
    // Idle for a while: nothing is due, nothing runs.
    await new Promise((r) => setTimeout(r, 500));
    const claims = worker.statements.byPurpose.claim ?? 0;
    const sentAt = Date.now();
    const id = await producer.send('i-wake', {});
    const startedAt = await started.promise;
    // One claim: the one the notification triggered.
    assert.equal((worker.statements.byPurpose.claim ?? 0) - claims, 1);
    assert.equal((await producer.getJob(id))?.workerId, 'worker');
    // Not a timing assertion: a record of the pickup for the test log.
    t.diagnostic(`pickup ${startedAt - sentAt} ms after send`);
  });

  test('statements per job stay well under one for claim and complete under load', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('i-load');
    await hark.sendMany(Array.from({ length: 2_000 }, (_, i) => ({ queue: 'i-load', payload: i })));
    const before = hark.statements.byPurpose;
    let done = 0;
    const all = deferred();
    await hark.work('i-load', { concurrency: 200 }, async () => {
      if (++done === 2_000) all.resolve();
    });
    await all.promise;
    await waitFor('completions written', async () => {
      const s = (await hark.stats()).find((x) => x.queue === 'i-load');
      return s?.counts.completed === 2_000;
    });
    const after = hark.statements.byPurpose;
    const used = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
    const perJob = (used('claim') + used('complete')) / 2_000;
    assert.ok(perJob < 0.5, `claim+complete statements per job: ${perJob}`);
  });

  test('a listener that drops and comes back catches up on what it missed', async () => {
    const producer = await ctx.hark({ workerId: 'p2' });
    const worker = await ctx.hark({ workerId: 'w2' });
    await producer.createQueue('i-catchup');
    let runs = 0;
    await worker.work('i-catchup', {}, async () => {
      runs++;
    });
    const reconnected = nextEvent(worker, 'listener:connect');
    worker.dropListenerConnection();
    // Sent while the worker cannot hear it.
    const id = await producer.send('i-catchup', {});
    await reconnected;
    await producer.waitForJob(id);
    assert.equal(runs, 1);
    assert.equal(worker.health().listener.state, 'listening');
  });
});
