import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { describe, test } from 'node:test';
import { nextEvent, testContext, waitFor } from './helpers/context.js';

const ctx = testContext(import.meta.url);

describe('leader', () => {
  test('exactly one leader; a stopping leader hands over at once', async () => {
    const all = [
      await ctx.hark({ workerId: 'L1' }),
      await ctx.hark({ workerId: 'L2' }),
      await ctx.hark({ workerId: 'L3' }),
    ];
    assert.equal(all.filter((h) => h.isLeader).length, 1);
    const leader = all.find((h) => h.isLeader)!;
    const rest = all.filter((h) => h !== leader);
    const elected = Promise.race(rest.map((h) => nextEvent(h, 'leader:elected')));
    await leader.stop();
    await elected;
    assert.equal(rest.filter((h) => h.isLeader).length, 1);
  });

  test('a follower takes over when work is due and the leader was killed', async (t) => {
    // The leader runs in a child process that we SIGKILL: no resignation, no goodbye.
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/hark-process.ts'], {
      env: { ...process.env, HARK_SCHEMA: ctx.schema, LEASE_MS: '1000', WORKER_ID: 'doomed' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    t.after(() => {
      child.kill('SIGKILL');
    });
    const line = await new Promise<string>((resolve, reject) => {
      child.stdout.once('data', (d) => resolve(String(d)));
      child.once('exit', (code) => reject(new Error(`child exited ${code}`)));
    });
    assert.match(line, /ready leader=true/);
    const follower = await ctx.hark({ workerId: 'survivor', leaseMs: 1_000 });
    assert.equal(follower.isLeader, false);
    await follower.createQueue('l-takeover');
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const killedAt = Date.now();
    const elected = nextEvent(follower, 'leader:elected', () => true, 15_000);
    await follower.send('l-takeover', {});
    await elected;
    assert.ok(follower.isLeader);
    t.diagnostic(`new leader ${Date.now() - killedAt} ms after the kill (lease 1000 ms)`);
  });

  test('the pass rescues expired leases, fails exhausted ones to the dead-letter queue, and deletes old finished jobs', async () => {
    const hark = await ctx.hark();
    assert.ok(hark.isLeader);
    await hark.createQueue('l-dlq');
    await hark.createQueue('l-rescue', { deadLetter: 'l-dlq', retentionMs: 60_000 });
    const [again = '', exhausted = '', old = ''] = await hark.sendMany([
      { queue: 'l-rescue', payload: 'again', options: { retryLimit: 2 } },
      { queue: 'l-rescue', payload: 'exhausted', options: { retryLimit: 0 } },
      { queue: 'l-rescue', payload: 'old' },
    ]);
    const jobs = ctx.t('jobs');
    // Two jobs whose worker died mid-attempt (leases already expired), one long finished.
    await ctx.pool.query(
      `UPDATE ${jobs} SET state = 'active', attempt = 1, worker_id = 'dead',
              lease_token = gen_random_uuid(), lease_expires_at = now() - interval '1 second'
        WHERE id = ANY($1::bigint[])`,
      [[again, exhausted]],
    );
    await ctx.pool.query(
      `UPDATE ${jobs} SET state = 'completed', attempt = 1, finished_at = now(),
              keep_until = now() - interval '1 second' WHERE id = $1`,
      [old],
    );
    const pass = await hark.leader.pass();
    assert.deepEqual(
      {
        rescued: pass?.rescued,
        failed: pass?.failed,
        deadLettered: pass?.deadLettered,
        deleted: pass?.deleted,
      },
      { rescued: 1, failed: 1, deadLettered: 1, deleted: 1 },
    );
    const rows = await ctx.pool.query(
      `SELECT id::text, state, queue, source_job_id::text AS src FROM ${jobs} ORDER BY id`,
    );
    const byId = new Map(rows.rows.map((r) => [r.id, r]));
    assert.equal(byId.get(again)?.state, 'available');
    assert.equal(byId.get(exhausted)?.state, 'failed');
    assert.equal(byId.has(old), false);
    assert.ok(rows.rows.some((r) => r.queue === 'l-dlq' && r.src === exhausted));
    // The rescued job runs again; its error history names the dead worker.
    await hark.work('l-rescue', {}, async () => 'rescued');
    assert.equal(await hark.waitForJob(again), 'rescued');
    assert.match(
      (await hark.getJob(again))?.errors[0]?.message ?? '',
      /lease expired: worker dead/,
    );
  });

  test('while jobs are active the leader plans its next pass by the earliest lease', async () => {
    const hark = await ctx.hark({ leaseMs: 5_000 });
    await hark.createQueue('l-plan');
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    await hark.work('l-plan', {}, async () => gate);
    const started = nextEvent(hark, 'job:start', (e) => e.queue === 'l-plan');
    const id = await hark.send('l-plan', {});
    await started;
    const pass = await hark.leader.pass();
    const job = await hark.getJob(id);
    assert.ok(pass?.nextPassAt && job?.leaseExpiresAt);
    assert.ok(Math.abs(pass.nextPassAt - (job.leaseExpiresAt.getTime() + 500)) < 50);
    release();
    await hark.waitForJob(id);
  });

  test('retention keeps failed jobs longer than completed ones, and deletes in batches it counts', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('l-keep', {
      retentionMs: 0,
      failedRetentionMs: 3_600_000,
      retryLimit: 0,
    });
    await hark.work('l-keep', {}, async (job) => {
      if (job.payload === 'fail') throw new Error('kept for inspection');
      return 'done';
    });
    const ok = await hark.send('l-keep', 'ok');
    const bad = await hark.send('l-keep', 'fail');
    await hark.waitForJob(ok);
    await assert.rejects(hark.waitForJob(bad));
    const failed = await hark.getJob(bad);
    assert.ok(failed?.keepUntil && failed.finishedAt);
    assert.ok(failed.keepUntil.getTime() - failed.finishedAt.getTime() >= 3_599_000);
    const deletedBefore = hark.leader.totals.deleted;
    const pass = await hark.leader.pass();
    assert.equal(pass?.deleted, 1);
    assert.equal(hark.leader.totals.deleted - deletedBefore, 1);
    assert.equal(await hark.getJob(ok), null);
    assert.equal((await hark.getJob(bad))?.state, 'failed');
  });

  test('due jobs in a queue nobody works stop keeping the leader busy after a few passes', async (t) => {
    // A schema of its own: the other tests leave due and finished jobs behind.
    const schema = `${ctx.schema}_nobody`;
    t.after(() => ctx.pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`));
    // A long lease keeps the leader's own timer out of the way: only our four passes count.
    const hark = await ctx.hark({ leaseMs: 20_000, schema });
    await hark.createQueue('l-nobody');
    // The election's catch-up pass runs first, on an empty queue.
    await waitFor('the catch-up pass', () => hark.leader.totals.passes >= 1);
    // Each send's notification resets the count: wait for it, so it cannot land between passes.
    let heard = 0;
    const onMessage = hark.leader.onMessage.bind(hark.leader);
    hark.leader.onMessage = (m) => {
      if (m.kind === 'jobs') heard++;
      onMessage(m);
    };
    await hark.send('l-nobody', {});
    await waitFor('the first notification', () => heard === 1);
    const plans: (number | null)[] = [];
    for (let i = 0; i < 4; i++) plans.push((await hark.leader.pass())?.nextPassAt ?? null);
    // The first three passes look again a lease later; the fourth plans nothing.
    for (const at of plans.slice(0, 3)) {
      assert.ok(at !== null && at < Date.now() + 25_000, `${plans}`);
    }
    assert.equal(plans[3], null);
    // New work makes due jobs worth watching again.
    await hark.send('l-nobody', {});
    await waitFor('the second notification', () => heard === 2);
    const again = await hark.leader.pass();
    assert.ok(typeof again?.nextPassAt === 'number', `${again?.nextPassAt}`);
  });
});
