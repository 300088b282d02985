/**
 * hark behind a real PgBouncer in transaction mode (the Debian `pgbouncer` package; the tests
 * skip when it is not installed).
 *
 * With `connectionString` through the pooler and `listenConnectionString` direct, everything
 * works and nothing polls. With both through the pooler, LISTEN cannot work, and hark must notice:
 * the self-test fails, hark polls, and it stays out of leader election.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { Hark, type HarkOptions } from '../src/index.js';
import { advisoryKey } from '../src/sql/identifiers.js';
import { leaderLockHolder } from './fixtures/leader-lock.js';
import { testContext, waitFor } from './helpers/context.js';
import {
  findPgBouncer,
  type PgBouncer,
  parseVersion,
  pgBouncerAdmin,
  pgBouncerVersion,
  startPgBouncer,
} from './helpers/pgbouncer.js';

const ctx = testContext(import.meta.url);

const bin = findPgBouncer();
const skip =
  bin === undefined
    ? 'pgbouncer is not installed (Debian: apt-get install -y pgbouncer); .ci/run installs it'
    : false;
const version = bin === undefined ? '' : pgBouncerVersion(bin);

/*
 * Regressions guarded here (both found by this file, both fixed):
 * - the self-test used to NOTIFY on the listener's own connection, which a transaction pooler
 *   routes to the same server session as the LISTEN, so a deaf listener passed it;
 * - leader election used to run on a pooled listener session, where the re-entrant session
 *   advisory lock let two instances lead at once.
 */

// ---- helpers -----------------------------------------------------------------------------------

type Cleanup = (fn: () => Promise<unknown>) => void;

/** Clean-ups that run after the test, last registered first (hark before its PgBouncer). */
function cleanups(t: { after: (fn: () => Promise<void>) => void }): Cleanup {
  const fns: (() => Promise<unknown>)[] = [];
  t.after(async () => {
    let first: unknown;
    for (const fn of fns.reverse()) {
      try {
        await fn();
      } catch (error) {
        first ??= error;
      }
    }
    if (first !== undefined) throw first;
  });
  return (fn) => {
    fns.push(fn);
  };
}

async function bouncer(later: Cleanup, defaultPoolSize?: number): Promise<PgBouncer> {
  const b = await startPgBouncer({
    targetUrl: ctx.url,
    poolMode: 'transaction',
    ...(defaultPoolSize === undefined ? {} : { defaultPoolSize }),
  });
  later(() => b.stop());
  return b;
}

/** A started Hark built here (not by ctx) so that events emitted during start() are seen. */
async function startHark(
  later: Cleanup,
  options: HarkOptions,
  subscribe: (hark: Hark) => void = () => {},
): Promise<Hark> {
  const hark = new Hark({ schema: ctx.schema, fallbackPollMs: 3_600_000, ...options });
  subscribe(hark);
  later(() => hark.stop({ timeoutMs: 2_000 }));
  await hark.start();
  return hark;
}

/** Server process ids of PgBouncer's server connections. */
async function serverPids(b: PgBouncer): Promise<number[]> {
  const rows = await pgBouncerAdmin<{ remote_pid: number }>(b, 'SHOW SERVERS');
  return rows.map((r) => Number(r.remote_pid));
}

/** Transactions PgBouncer has passed to the test database so far. */
async function transactions(b: PgBouncer, database: string): Promise<number> {
  const rows = await pgBouncerAdmin<{ database: string; total_xact_count: string }>(
    b,
    'SHOW STATS',
  );
  return Number(rows.find((r) => r.database === database)?.total_xact_count ?? 0);
}

/** PgBouncer 1.21 added prepared statement support in transaction mode. */
function supportsPrepared(v: string): boolean {
  const [major, minor] = parseVersion(v);
  return major > 1 || (major === 1 && minor >= 21);
}

function databaseName(): string {
  return decodeURIComponent(new URL(ctx.url).pathname.slice(1));
}

/**
 * Records every named query config (`{ name, text }`, a prepared statement that outlives its
 * transaction) passed to any pg Client in this process, until the returned function is called.
 */
function spyOnNamedStatements(): { names: string[]; calls: () => number; restore: () => void } {
  const proto = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
  const original = proto.query;
  const names: string[] = [];
  let calls = 0;
  proto.query = function (this: unknown, ...args: unknown[]) {
    calls++;
    const config = args[0];
    if (typeof config === 'object' && config !== null && 'name' in config) {
      const name = (config as { name?: unknown }).name;
      if (typeof name === 'string' && name !== '') names.push(name);
    }
    return original.apply(this, args);
  };
  const restore = () => {
    proto.query = original;
  };
  return { names, calls: () => calls, restore };
}

async function connect(url: string, later: Cleanup): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  later(() => client.end().catch(() => {}));
  return client;
}

// ---- tests -------------------------------------------------------------------------------------

test(`the pooler under test (${version || 'not installed'})`, { skip }, (t) => {
  t.diagnostic(`${bin}: ${version}`);
  assert.match(version, /^PgBouncer \d+\.\d+/);
});

test('pooled connectionString + direct listenConnectionString: everything works, nothing polls', {
  skip,
}, async (t) => {
  const later = cleanups(t);
  const b = await bouncer(later);
  const spy = spyOnNamedStatements();
  later(async () => spy.restore());
  const db = databaseName();
  const xactsBefore = await transactions(b, db);

  const events: string[] = [];
  const options: HarkOptions = { connectionString: b.url, listenConnectionString: ctx.url };
  const hark = await startHark(later, { ...options, workerId: 'pooled-1' }, (h) => {
    h.events.on('listener:connect', (e) => events.push(`connect:${e.selfTest}`));
    h.events.on('listener:fallback', () => events.push('fallback'));
    h.events.on('error', (e) => events.push(`error(${e.context}): ${e.error.message}`));
  });
  assert.deepEqual(events, ['connect:ok']);
  const health = hark.health();
  assert.equal(health.listener.state, 'listening');
  assert.equal(health.listener.selfTest, 'ok');
  assert.equal(health.listener.polling, false);

  // The listener (and the leader lock on it) is a direct session, not a pooled one.
  const listenerPid = health.listener.backendPid;
  assert.ok(listenerPid !== null && listenerPid > 0, `listener pid ${listenerPid}`);
  const direct = await ctx.pool.query<{ query: string }>(
    'SELECT query FROM pg_stat_activity WHERE pid = $1',
    [listenerPid],
  );
  assert.equal(direct.rowCount, 1, 'the listener pid is a real backend');
  assert.ok(!(await serverPids(b)).includes(listenerPid), 'not one of pgbouncer’s servers');
  assert.equal(hark.isLeader, true);
  assert.equal(await leaderLockHolder(ctx.pool, ctx.schema), 'hark:pooled-1');

  // Work with concurrency; send and sendMany; waitForJob.
  const queue = await hark.createQueue<{ n: number }>('pooled');
  const ran = new Map<string, number>();
  let active = 0;
  let maxActive = 0;
  await queue.work({ concurrency: 4 }, async (job) => {
    ran.set(job.id, (ran.get(job.id) ?? 0) + 1);
    maxActive = Math.max(maxActive, ++active);
    await sleep(20);
    active--;
    return { doubled: job.payload.n * 2 };
  });
  const many = await queue.sendMany(Array.from({ length: 30 }, (_, n) => ({ n })));
  const one = await queue.send({ n: 100 });
  const outputs = await Promise.all(
    [...many, one].map((id) => hark.waitForJob<{ doubled: number }>(id, { timeoutMs: 10_000 })),
  );
  assert.deepEqual(
    outputs.map((o) => o.doubled),
    [...Array.from({ length: 30 }, (_, n) => n * 2), 200],
  );
  assert.equal(ran.size, 31);
  for (const [id, times] of ran) assert.equal(times, 1, `job ${id} ran once`);
  assert.ok(maxActive > 1 && maxActive <= 4, `max concurrent jobs: ${maxActive}`);

  // Enqueue inside the caller's transaction on a PgBouncer client: nothing is visible (or
  // runs) before COMMIT; a rolled-back send leaves nothing.
  const tx = await connect(b.url, later);
  await tx.query('BEGIN');
  const committed = await queue.send({ n: 7 }, { executor: tx });
  await sleep(200);
  assert.equal(ran.has(committed), false, 'does not run before COMMIT');
  assert.equal(await hark.getJob(committed), null, 'not visible before COMMIT');
  await tx.query('COMMIT');
  assert.deepEqual(await hark.waitForJob(committed, { timeoutMs: 10_000 }), { doubled: 14 });
  await tx.query('BEGIN');
  const rolledBack = await queue.send({ n: 8 }, { executor: tx });
  await tx.query('ROLLBACK');
  assert.equal(await hark.getJob(rolledBack), null, 'a rolled-back send leaves no job');

  // Retries: fails twice, then succeeds on its third attempt.
  const flaky = await hark.createQueue<string>('pooled-flaky', {
    retryLimit: 3,
    retryDelayMs: 100,
    retryBackoff: false,
  });
  const attempts: number[] = [];
  await flaky.work({}, (job) => {
    attempts.push(job.attempt);
    if (job.attempt < 3) throw new Error(`attempt ${job.attempt} fails`);
    return `ok on ${job.attempt}`;
  });
  const flakyId = await flaky.send('x');
  assert.equal(await hark.waitForJob(flakyId, { timeoutMs: 10_000 }), 'ok on 3');
  assert.deepEqual(attempts, [1, 2, 3]);
  const flakyJob = await hark.getJob(flakyId);
  assert.equal(flakyJob?.state, 'completed');
  assert.deepEqual(
    flakyJob?.errors.map((e) => e.message),
    ['attempt 1 fails', 'attempt 2 fails'],
  );

  // A delayed job runs when due, not before (woken by its timer, armed by the notification).
  const delayed = await hark.createQueue<string>('pooled-delayed');
  const startedAt: number[] = [];
  await delayed.work({}, () => {
    startedAt.push(Date.now());
    return 'late';
  });
  const sentAt = Date.now();
  const delayedId = await delayed.send('later', { delayMs: 800 });
  assert.equal(await hark.waitForJob(delayedId, { timeoutMs: 10_000 }), 'late');
  const waited = (startedAt[0] ?? 0) - sentAt;
  assert.ok(waited >= 750, `the delayed job started ${waited} ms after it was sent`);

  // A second instance in this process: both work one queue, each job runs once, one leader.
  const other = await startHark(later, { ...options, workerId: 'pooled-2' });
  assert.equal(other.health().listener.selfTest, 'ok');
  assert.equal(other.isLeader, false);
  const shared = await hark.createQueue<number>('pooled-shared');
  const byWorker = new Map<string, string>();
  const work = (name: string) => (job: { id: string }) => {
    assert.equal(byWorker.has(job.id), false, `job ${job.id} ran twice`);
    byWorker.set(job.id, name);
    return null;
  };
  await hark.work('pooled-shared', { concurrency: 2 }, work('pooled-1'));
  await other.work('pooled-shared', { concurrency: 2 }, work('pooled-2'));
  const sharedIds = await shared.sendMany(Array.from({ length: 40 }, (_, i) => i));
  await Promise.all(sharedIds.map((id) => other.waitForJob(id, { timeoutMs: 10_000 })));
  assert.equal(byWorker.size, 40);

  // Nothing polled, no named prepared statement was used, and the work did go through
  // PgBouncer (its own counters say so).
  for (const h of [hark, other]) {
    assert.equal(h.health().listener.polling, false);
    assert.equal(h.health().listener.selfTest, 'ok');
  }
  assert.deepEqual(spy.names, [], 'hark uses no named prepared statements');
  const clients = await pgBouncerAdmin<{ application_name: string; database: string }>(
    b,
    'SHOW CLIENTS',
  );
  const harkClients = clients.filter((c) => c.application_name.startsWith('hark:pooled-'));
  assert.ok(harkClients.length > 0, 'hark’s pool connects through pgbouncer');
  const xacts = (await transactions(b, db)) - xactsBefore;
  assert.ok(xacts > 50, `transactions through pgbouncer: ${xacts}`);
  assert.deepEqual(
    events.filter((e) => !e.startsWith('connect:')),
    [],
    'no fallback and no error',
  );
  t.diagnostic(
    `${version}: ${xacts} transactions through it, ${harkClients.length} hark client ` +
      `connections; ${hark.statements.total + other.statements.total} statements counted by ` +
      `hark; workers: ${[...new Set(byWorker.values())].join(', ')}`,
  );
});

test('why no named prepared statements: they break through PgBouncer < 1.21 in transaction mode', {
  skip: skip || (supportsPrepared(version) && `${version} may support them`),
}, async (t) => {
  const later = cleanups(t);
  const b = await bouncer(later);
  const a = await connect(b.url, later);
  const other = await connect(b.url, later);
  const statement = { name: 'hark_probe', text: 'SELECT 1 AS one' };
  // Prepared on one server connection...
  assert.deepEqual((await a.query(statement)).rows, [{ one: 1 }]);
  // ...which another client now holds in a transaction, so `a` gets a different one next time.
  await other.query('BEGIN');
  await other.query('SELECT 1');
  await assert.rejects(a.query(statement), /prepared statement "hark_probe" does not exist/);
  await other.query('COMMIT');
  // Unnamed statements with parameters (all hark issues) are parsed afresh each time: fine.
  await other.query('BEGIN');
  await other.query('SELECT 1');
  assert.deepEqual((await a.query('SELECT $1::int AS n', [5])).rows, [{ n: 5 }]);
  await other.query('COMMIT');
});

test('LISTEN through PgBouncer in transaction mode: the own echo returns, nothing else does', {
  skip,
}, async (t) => {
  // Plain pg clients, no hark: the behaviour the listener's self-test runs into.
  const later = cleanups(t);
  const b = await bouncer(later);
  const listener = await connect(b.url, later);
  const got: string[] = [];
  listener.on('notification', (m) => got.push(m.payload ?? ''));
  await listener.query('LISTEN pooler_probe');
  // The NOTIFY runs on the same server connection (PgBouncer reuses idle servers LIFO), so its
  // own echo comes back, as on a direct connection...
  await listener.query(`SELECT pg_notify('pooler_probe', 'own echo')`);
  await waitFor('the own echo', () => got.includes('own echo'), { timeoutMs: 2_000 });
  // ...but a NOTIFY from any other session reaches that server connection while it idles in
  // the pool with no client linked: PgBouncer drops it (logging "got packet 'A' from server when
  // not linked"), or, if the server sends it a moment later, hands it to whichever client holds
  // that server connection then.
  await ctx.pool.query(`SELECT pg_notify('pooler_probe', 'from a direct session')`);
  const pooled = await connect(b.url, later);
  const misdelivered: string[] = [];
  pooled.on('notification', (m) => misdelivered.push(m.payload ?? ''));
  // One sent by another pooler client lands on that client (it got the LISTENing server).
  await pooled.query(`SELECT pg_notify('pooler_probe', 'from a pooled session')`);
  await sleep(500);
  assert.deepEqual(got, ['own echo'], 'the listener hears only its own echo');
  assert.ok(misdelivered.includes('from a pooled session'), 'delivered to the wrong client');
  for (const payload of misdelivered) {
    assert.ok(['from a pooled session', 'from a direct session'].includes(payload), payload);
  }
  const warnings = (await b.log()).split('\n').filter((l) => /when not linked/.test(l));
  t.diagnostic(
    `${version}: the direct NOTIFY was ` +
      `${misdelivered.includes('from a direct session') ? 'handed to another client' : 'dropped'}` +
      `; ${warnings.length} "not linked" warning(s) in its log`,
  );
});

test('both URLs through PgBouncer in transaction mode: self-test fails, hark polls', {
  skip,
}, async (t) => {
  const later = cleanups(t);
  const b = await bouncer(later);
  // A correctly configured producer on the same schema (pooled queries, direct listener).
  const producer = await startHark(later, {
    connectionString: b.url,
    listenConnectionString: ctx.url,
    workerId: 'both-producer',
  });
  await producer.createQueue('both-pooled');

  const events: string[] = [];
  const reasons: string[] = [];
  const hark = await startHark(
    later,
    { connectionString: b.url, workerId: 'both-pooled', fallbackPollMs: 200 },
    (h) => {
      h.events.on('listener:connect', (e) => events.push(`connect:${e.selfTest}`));
      h.events.on('listener:fallback', (e) => {
        events.push('fallback');
        reasons.push(e.reason);
      });
      h.events.on('listener:disconnect', () => events.push('disconnect'));
    },
  );
  assert.equal(hark.options.listenConnectionString, b.url, 'listens through the pooler');
  const ran: string[] = [];
  await hark.work('both-pooled', { concurrency: 2 }, (job) => {
    ran.push(job.id);
    return null;
  });
  // Sent after the worker is idle: only a notification (or a poll) can wake it.
  await sleep(300);
  const fromProducer = await producer.sendMany(
    [1, 2, 3].map((payload) => ({ queue: 'both-pooled', payload })),
  );
  const fromItself = await hark.send('both-pooled', 4);
  const ids = [...fromProducer, fromItself];
  await waitFor('the jobs to run', () => ran.length >= ids.length, { timeoutMs: 5_000 }).catch(
    () => {},
  );
  const health = hark.health();
  const observed = {
    events,
    reasonNamesListenConnectionString: reasons.map((r) => r.includes('listenConnectionString')),
    selfTest: health.listener.selfTest,
    polling: health.listener.polling,
    ran: ran.length,
  };
  t.diagnostic(
    `observed: ${JSON.stringify({ ...observed, backendPid: health.listener.backendPid })}`,
  );
  assert.deepEqual(observed, {
    events: ['fallback', 'connect:failed'],
    reasonNamesListenConnectionString: [true],
    selfTest: 'failed',
    polling: true,
    ran: ids.length,
  });
  assert.deepEqual([...ran].sort(), [...ids].sort());
});

test('both URLs through PgBouncer in transaction mode: never two leaders', {
  skip,
}, async (t) => {
  const later = cleanups(t);
  // One server connection, as a small pool would have under load: every client gets it, so the
  // second instance's pg_try_advisory_lock runs in the session that already holds the lock.
  const b = await bouncer(later, 1);
  const pooled = { connectionString: b.url };
  const first = await startHark(later, { ...pooled, workerId: 'leader-a' });
  const second = await startHark(later, { ...pooled, workerId: 'leader-b' });
  const leaders = [first, second].filter((h) => h.isLeader).map((h) => h.options.workerId);
  // The database's view: which backends hold this schema's leader lock.
  const key = BigInt.asUintN(64, BigInt(advisoryKey(ctx.schema, 'leader')));
  const locks = await ctx.pool.query<{ pid: number }>(
    `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
        AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1`,
    [(key >> 32n).toString(), (key & 0xffffffffn).toString()],
  );
  t.diagnostic(
    `leaders: ${JSON.stringify(leaders)}; leader lock held by backends ` +
      `${JSON.stringify(locks.rows.map((r) => r.pid))}; pgbouncer servers ` +
      `${JSON.stringify(await serverPids(b))}`,
  );
  assert.ok(leaders.length <= 1, `at most one leader, got ${JSON.stringify(leaders)}`);
});
