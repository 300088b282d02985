import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { z } from 'zod';
import {
  ConfigError,
  DEFAULT_LEASE_MS,
  DEFAULT_RETENTION_MS,
  DEFAULT_RETRY_LIMIT,
  InvalidStateError,
  JobNotFoundError,
  PayloadError,
  UnknownQueueError,
} from '../src/index.js';
import { deferred, nextEvent, testContext, waitFor } from './helpers/context.js';

const ctx = testContext(import.meta.url);

describe('send', () => {
  test('resolves options: send over queue over library defaults', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('p-defaults', { retryLimit: 7, timeoutMs: 5_000, priority: 3 });
    const a = await hark.getJob(await hark.send('p-defaults', { a: 1 }));
    assert.ok(a);
    assert.equal(a.state, 'available');
    assert.equal(a.maxAttempts, 8);
    assert.equal(a.timeoutMs, 5_000);
    assert.equal(a.priority, 3);
    assert.equal(a.leaseMs, DEFAULT_LEASE_MS);
    assert.equal(a.retentionMs, DEFAULT_RETENTION_MS);
    assert.deepEqual(a.payload, { a: 1 });
    const b = await hark.getJob(
      await hark.send('p-defaults', null, { retryLimit: 0, priority: -1, timeoutMs: null }),
    );
    assert.ok(b);
    assert.equal(b.maxAttempts, 1);
    assert.equal(b.priority, -1);
    assert.equal(b.timeoutMs, null);
    await hark.createQueue('p-plain');
    const c = await hark.getJob(await hark.send('p-plain'));
    assert.equal(c?.maxAttempts, DEFAULT_RETRY_LIMIT + 1);
    assert.equal(c?.payload, null);
  });

  test('delayMs and runAt make a scheduled job', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('p-delay');
    const before = Date.now();
    const a = await hark.getJob(await hark.send('p-delay', 1, { delayMs: 60_000 }));
    assert.equal(a?.state, 'scheduled');
    assert.ok(a && a.runAt.getTime() >= before + 59_000);
    const at = new Date(Date.now() + 3_600_000);
    const b = await hark.getJob(await hark.send('p-delay', 2, { runAt: at }));
    assert.equal(b?.state, 'scheduled');
    assert.equal(b?.runAt.getTime(), at.getTime());
    const past = await hark.getJob(await hark.send('p-delay', 3, { runAt: new Date(0) }));
    assert.equal(past?.state, 'available');
  });

  test('sendMany inserts in one statement and returns ids in input order', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('p-many-a');
    await hark.createQueue('p-many-b');
    const before = hark.statements.byPurpose.send ?? 0;
    const input = Array.from({ length: 500 }, (_, i) => ({
      queue: i % 2 ? 'p-many-a' : 'p-many-b',
      payload: { i },
    }));
    const ids = await hark.sendMany(input);
    assert.equal((hark.statements.byPurpose.send ?? 0) - before, 1);
    assert.equal(ids.length, 500);
    const r = await ctx.pool.query(
      `SELECT id::text, queue, payload FROM ${ctx.t('jobs')} WHERE id = ANY($1::bigint[])`,
      [ids],
    );
    const byId = new Map(r.rows.map((row) => [row.id, row]));
    ids.forEach((id, i) => {
      assert.equal(byId.get(id)?.payload.i, i);
      assert.equal(byId.get(id)?.queue, input[i]?.queue);
    });
    assert.deepEqual(await hark.sendMany([]), []);
  });

  test('singleton key: at most one queued-or-active job; a second send returns the holder', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('p-single');
    const first = await hark.send('p-single', 1, { singletonKey: 'k' });
    const second = await hark.send('p-single', 2, { singletonKey: 'k' });
    assert.equal(second, first);
    const other = await hark.send('p-single', 3, { singletonKey: 'other' });
    assert.notEqual(other, first);
    const many = await hark.sendMany([
      { queue: 'p-single', payload: 4, options: { singletonKey: 'k' } },
      { queue: 'p-single', payload: 5 },
      { queue: 'p-single', payload: 6, options: { singletonKey: 'new' } },
      { queue: 'p-single', payload: 7, options: { singletonKey: 'new' } },
    ]);
    assert.equal(many[0], first);
    assert.notEqual(many[1], first);
    assert.equal(many[2], many[3]);
    const count = await ctx.pool.query(
      `SELECT count(*)::int AS n FROM ${ctx.t('jobs')} WHERE queue = 'p-single'`,
    );
    assert.equal(count.rows[0].n, 4);
    // Once the holder has ended, the key is free again.
    await hark.cancel(first);
    const third = await hark.send('p-single', 8, { singletonKey: 'k' });
    assert.notEqual(third, first);
  });

  test('bad input gets typed errors naming the value and what was expected', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('p-bad');
    await assert.rejects(hark.send('nope', {}), (e: Error) => {
      assert.ok(e instanceof UnknownQueueError);
      assert.match(e.message, /Unknown queue `nope`/);
      return true;
    });
    await assert.rejects(hark.send('bad name!', {}), (e: Error) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, /expected `queue` to be a queue name.*got `"bad name!"` \(string\)/);
      return true;
    });
    await assert.rejects(
      hark.send('p-bad', {}, { retryLimt: 3 } as never),
      /unknown option `retryLimt`; did you mean `retryLimit`\?/,
    );
    await assert.rejects(
      hark.send('p-bad', {}, { priority: 1.5 }),
      /expected `priority` to be an integer from -1000000 to 1000000, got `1.5` \(number\)/,
    );
    await assert.rejects(
      hark.send('p-bad', {}, { delayMs: 10, runAt: new Date() }),
      /at most one of `runAt` and `delayMs`/,
    );
    await assert.rejects(hark.send('p-bad', {}, { runAt: new Date('x') }), /a valid Date/);
    await assert.rejects(
      hark.send('p-bad', {}, { retryDelayMs: 10_000, retryDelayMaxMs: 5 }),
      /`retryDelayMaxMs` \(5\) to be at least `retryDelayMs` \(10000\)/,
    );
    await assert.rejects(hark.send('p-bad', {}, { deadLetter: 'missing-dlq' }), UnknownQueueError);
    await assert.rejects(hark.send('p-bad', { n: 1n }), PayloadError);
    await assert.rejects(
      hark.send('p-bad', () => 1),
      PayloadError,
    );
    await assert.rejects(
      hark.send('p-bad', 'x'.repeat(2_000_000)),
      /bytes; expected at most 1048576/,
    );
    await assert.rejects(
      hark.createQueue('p-bad', { concurrency: 3 } as never),
      /unknown option `concurrency`/,
    );
    await assert.rejects(
      hark.work('p-bad', { concurrency: 0 }, async () => {}),
      /expected `concurrency` to be an integer from 1 to 10000, got `0` \(number\)/,
    );
    await assert.rejects(hark.cancel('abc'), /expected `id` to be a job id/);
    // Nothing was half-written by any of the rejected calls.
    const r = await ctx.pool.query(
      `SELECT count(*)::int AS n FROM ${ctx.t('jobs')} WHERE queue = 'p-bad'`,
    );
    assert.equal(r.rows[0].n, 0);
  });

  test('a Standard Schema validator rejects a bad payload naming the field, and a batch as a whole', async () => {
    const hark = await ctx.hark();
    const q = await hark.createQueue('p-typed', {
      payloadSchema: z.object({ to: z.string().email(), count: z.number().int().default(1) }),
    });
    const id = await q.send({ to: 'a@example.com' } as never);
    assert.deepEqual((await hark.getJob(id))?.payload, { to: 'a@example.com', count: 1 });
    await assert.rejects(q.send({ to: 'not-an-email', count: 1 }), (e: Error) => {
      assert.ok(e instanceof PayloadError);
      assert.match(e.message, /Invalid payload for queue `p-typed`: `to`:/);
      assert.equal(e.issues[0]?.path, 'to');
      return true;
    });
    await assert.rejects(
      hark.sendMany([
        { queue: 'p-typed', payload: { to: 'b@example.com', count: 1 } },
        { queue: 'p-typed', payload: { to: 'c@example.com', count: 'two' } },
      ]),
      /\(job 1\): `count`/,
    );
    const r = await ctx.pool.query(
      `SELECT count(*)::int AS n FROM ${ctx.t('jobs')} WHERE queue = 'p-typed'`,
    );
    assert.equal(r.rows[0].n, 1);
  });
});

describe('transactional enqueue', () => {
  test('a job sent on the caller’s transaction commits with it, and wakes a worker only after commit', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('p-tx');
    const started = deferred<string>();
    await hark.work('p-tx', {}, async (job) => started.resolve(job.id));
    const client = await ctx.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('CREATE TEMP TABLE orders (id int)');
      await client.query('INSERT INTO orders VALUES (1)');
      const id = await hark.send('p-tx', { order: 1 }, { executor: client });
      // Not visible outside the transaction, and no worker was woken for it.
      assert.equal(await hark.getJob(id), null);
      const woke = await Promise.race([
        started.promise.then(() => true),
        new Promise((r) => setTimeout(() => r(false), 300)),
      ]);
      assert.equal(woke, false);
      assert.equal((await hark.getJob(id, { executor: client }))?.state, 'available');
      await client.query('COMMIT');
      assert.equal(await started.promise, id);
    } finally {
      client.release();
    }
  });

  test('a rolled-back transaction leaves no job and wakes nobody', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('p-tx-rb');
    let runs = 0;
    await hark.work('p-tx-rb', {}, async () => {
      runs++;
    });
    // Let the worker's start-up fetch finish, then count claims: a wake-up would add one.
    await waitFor('start-up fetch', () => (hark.statements.byPurpose.claim ?? 0) >= 1);
    await new Promise((r) => setTimeout(r, 100));
    const claimsBefore = hark.statements.byPurpose.claim ?? 0;
    const client = await ctx.pool.connect();
    let ids: string[];
    try {
      await client.query('BEGIN');
      ids = await hark.sendMany(
        [
          { queue: 'p-tx-rb', payload: 1 },
          { queue: 'p-tx-rb', payload: 2 },
        ],
        { executor: client },
      );
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
    // Nothing is woken by a rolled-back send (a negative: give a wake-up time to show).
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(hark.statements.byPurpose.claim ?? 0, claimsBefore);
    for (const id of ids) assert.equal(await hark.getJob(id), null);
    // A committed job afterwards proves the worker was listening all along.
    const later = await hark.send('p-tx-rb', 3);
    await hark.waitForJob(later);
    assert.equal(runs, 1);
  });
});

describe('reading and steering jobs', () => {
  test('getJob, cancel, retry, stats and failedJobs', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('p-admin', { retryLimit: 0 });
    assert.equal(await hark.getJob('999999999'), null);
    assert.equal(await hark.getJob('not-an-id'), null);
    const scheduled = await hark.send('p-admin', 'later', { delayMs: 3_600_000 });
    await hark.cancel(scheduled);
    assert.equal((await hark.getJob(scheduled))?.state, 'cancelled');
    await assert.rejects(hark.cancel(scheduled), InvalidStateError);
    await assert.rejects(hark.cancel('424242424'), JobNotFoundError);
    await hark.retry(scheduled);
    const back = await hark.getJob(scheduled);
    assert.equal(back?.state, 'available');
    assert.equal(back?.finishedAt, null);
    await assert.rejects(hark.retry(scheduled), InvalidStateError);

    const failing = await hark.send('p-admin', 'boom');
    const failedEvent = nextEvent(hark, 'job:fail', (e) => e.id === failing);
    await hark.work('p-admin', {}, async (job) => {
      if (job.payload === 'boom') throw new Error('it broke');
      return 'ok';
    });
    const failed = await failedEvent;
    assert.equal(failed.error.message, 'it broke');
    const list = await hark.failedJobs({ queue: 'p-admin' });
    assert.equal(list[0]?.id, failing);
    assert.equal(list[0]?.lastError?.message, 'it broke');
    const stats = await hark.stats();
    const mine = stats.find((s) => s.queue === 'p-admin');
    assert.ok(mine);
    assert.equal(mine.counts.failed, 1);
    assert.equal(mine.counts.completed, 1);
    assert.equal(mine.paused, false);
    // A manual retry of a failed job gives it one more attempt.
    const againEvent = nextEvent(hark, 'job:fail', (e) => e.id === failing);
    await hark.retry(failing);
    const again = await againEvent;
    assert.equal(again.attempt, 2);
  });
});

describe('micro-batching', () => {
  test('concurrent sends share statements; each gets its own id, in order', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('p-coalesce');
    const before = hark.statements.byPurpose['send'] ?? 0;
    const ids = await Promise.all(
      Array.from({ length: 50 }, (_, i) => hark.send('p-coalesce', { i })),
    );
    const statements = (hark.statements.byPurpose['send'] ?? 0) - before;
    assert.ok(statements < 50, `${statements} statements for 50 concurrent sends`);
    assert.equal(new Set(ids).size, 50);
    for (const [i, id] of ids.entries()) {
      assert.deepEqual((await hark.getJob(id))?.payload, { i });
    }
  });

  test('a row the database refuses fails only its own send', async () => {
    const hark = await ctx.hark();
    await hark.createQueue('p-refuse');
    const jobs = `"${ctx.schema}".jobs`;
    await ctx.pool.query(`
      CREATE FUNCTION "${ctx.schema}".refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.payload ? 'bad' THEN RAISE EXCEPTION 'refused by test trigger'; END IF;
        RETURN NEW;
      END $$`);
    await ctx.pool.query(`CREATE TRIGGER refuse_bad BEFORE INSERT ON ${jobs}
      FOR EACH ROW WHEN (NEW.queue = 'p-refuse') EXECUTE FUNCTION "${ctx.schema}".refuse_bad()`);
    try {
      const results = await Promise.allSettled(
        Array.from({ length: 10 }, (_, i) =>
          hark.send('p-refuse', i === 4 ? { bad: true } : { i }),
        ),
      );
      assert.deepEqual(
        results.map((r) => r.status),
        results.map((_, i) => (i === 4 ? 'rejected' : 'fulfilled')),
      );
      assert.match(String((results[4] as PromiseRejectedResult).reason), /refused by test trigger/);
      const stored = await ctx.pool.query(
        `SELECT count(*)::int AS n FROM ${jobs} WHERE queue = 'p-refuse'`,
      );
      assert.equal(stored.rows[0].n, 9);
    } finally {
      await ctx.pool.query(`DROP TRIGGER refuse_bad ON ${jobs}`);
    }
  });
});
