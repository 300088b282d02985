/**
 * The listener: it survives its backend being terminated while jobs keep arriving, falls back to
 * polling (and only then) while it cannot connect, and tests itself on every connect.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Hark, type HarkOptions } from '../src/index.js';
import { leaderLockHolder } from './fixtures/leader-lock.js';
import { nextEvent, testContext, waitFor } from './helpers/context.js';
import { closedPort, startProxy, urlWithPort } from './helpers/tcp-proxy.js';

const ctx = testContext(import.meta.url);

// ---- helpers -----------------------------------------------------------------------------------

/** A started Hark built here (not by ctx) so that events emitted during start() are seen. */
async function startHark(
  t: { after: (fn: () => Promise<void>) => void },
  options: HarkOptions,
  subscribe: (hark: Hark) => void,
): Promise<Hark> {
  const hark = new Hark({
    connectionString: ctx.url,
    schema: ctx.schema,
    fallbackPollMs: 3_600_000,
    ...options,
  });
  subscribe(hark);
  t.after(() => hark.stop({ timeoutMs: 2_000 }));
  await hark.start();
  return hark;
}

/**
 * The backend pids of a hark instance's listener session, found independently of hark: all of an
 * instance's sessions carry application_name `hark:<workerId>`; the listener's is the only one
 * whose last statement is LISTEN, the self-test NOTIFY, or leader work (pool sessions never run
 * those).
 */
async function listenerPids(workerId: string): Promise<number[]> {
  const r = await ctx.pool.query<{ pid: number }>(
    `SELECT pid FROM pg_stat_activity
      WHERE application_name = $1 AND backend_type = 'client backend'
        AND (query LIKE 'LISTEN %' OR query = 'SELECT pg_notify($1, $2)'
             OR query LIKE 'SELECT pg_try_advisory_lock(%'
             OR query LIKE 'SELECT pg_advisory_unlock(%' OR query LIKE '%WITH expired AS%'
             OR query LIKE '%min(lease_expires_at)%')`,
    [`hark:${workerId}`],
  );
  return r.rows.map((row) => row.pid);
}

async function completedCount(ids: string[]): Promise<number> {
  const r = await ctx.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${ctx.t('jobs')} WHERE id = ANY($1::bigint[]) AND state = 'completed'`,
    [ids],
  );
  return r.rows[0]!.n;
}

/** The application_name of the session holding this schema's leader lock, if any. */
function leaderHolder(): Promise<string | null> {
  return leaderLockHolder(ctx.pool, ctx.schema);
}

function claims(hark: Hark): number {
  return hark.statements.byPurpose['claim'] ?? 0;
}

// ---- tests -------------------------------------------------------------------------------------

test('the listener survives pg_terminate_backend while jobs keep arriving; no job is missed', async (t) => {
  const queue = 'chaos';
  const rounds = 5;
  const producer = await ctx.hark({ workerId: 'chaos-producer' });
  await producer.createQueue(queue);
  // No polling to hide a missed wake-up: ctx instances poll once an hour while disconnected.
  const worker = await ctx.hark({ workerId: 'chaos-worker' });
  const seen = { disconnect: 0, reconnect: 0, connect: 0 };
  worker.events.on('listener:disconnect', () => seen.disconnect++);
  worker.events.on('listener:reconnect', () => seen.reconnect++);
  worker.events.on('listener:connect', () => seen.connect++);
  const ran = new Map<string, number>();
  await worker.work(queue, { concurrency: 4 }, (job) => {
    ran.set(job.id, (ran.get(job.id) ?? 0) + 1);
    return null;
  });

  const sent: string[] = [];
  let sentWhileDown = 0;
  let producing = true;
  const production = (async () => {
    for (let i = 0; producing; i++) {
      const down = worker.health().listener.state !== 'listening';
      sent.push(await producer.send(queue, { i }));
      if (down && worker.health().listener.state !== 'listening') sentWhileDown++;
      await sleep(5); // pacing the producer
    }
  })();

  const pids: number[] = [];
  try {
    for (let round = 0; round < rounds; round++) {
      await waitFor('the worker to listen', () => worker.health().listener.state === 'listening');
      const pid = worker.health().listener.backendPid;
      assert.ok(pid, 'health reports the listener backend pid');
      assert.deepEqual(await listenerPids('chaos-worker'), [pid], 'pg_stat_activity agrees');
      pids.push(pid);
      const disconnected = nextEvent(worker, 'listener:disconnect');
      const connected = nextEvent(worker, 'listener:connect');
      // Handled below; this keeps a failure before then from becoming an unhandled rejection.
      disconnected.catch(() => {});
      connected.catch(() => {});
      const r = await ctx.pool.query<{ ok: boolean }>(
        'SELECT pg_terminate_backend($1, 5000) AS ok',
        [pid],
      );
      assert.equal(r.rows[0]!.ok, true, `terminated backend ${pid}`);
      const { error } = await disconnected;
      assert.ok(error, 'the disconnect carries the error');
      assert.equal((await connected).selfTest, 'ok');
      await sleep(200); // pacing the rounds, not waiting for an outcome
    }
  } finally {
    producing = false;
    await production;
  }

  await waitFor(
    'every sent job to complete',
    async () => (await completedCount(sent)) === sent.length,
    {
      timeoutMs: 15_000,
      everyMs: 50,
    },
  ).catch(async (error: Error) => {
    throw new Error(
      `${error.message}: ${await completedCount(sent)} of ${sent.length} completed, ` +
        `${ran.size} ran; stats ${JSON.stringify(await producer.stats())}`,
    );
  });
  assert.equal(ran.size, sent.length, 'every job ran');
  for (const id of sent) assert.equal(ran.get(id), 1, `job ${id} ran once`);
  assert.equal(new Set(pids).size, rounds, 'each round killed a new session');
  assert.ok(seen.disconnect >= rounds, `disconnects: ${seen.disconnect}`);
  assert.ok(seen.reconnect >= rounds, `reconnects: ${seen.reconnect}`);
  assert.ok(seen.connect >= rounds, `connects: ${seen.connect}`);
  assert.ok(sentWhileDown > 0, 'some jobs were sent while the listener was down');
  const health = worker.health();
  assert.equal(health.listener.state, 'listening');
  assert.equal(health.listener.polling, false);
  assert.equal(health.listener.selfTest, 'ok');
  assert.equal(health.listener.lastError, null);
  const final = health.listener.backendPid;
  assert.ok(final !== null && !pids.includes(final), 'the final session is a new one');
  assert.deepEqual(await listenerPids('chaos-worker'), [final]);
  t.diagnostic(
    `${sent.length} jobs, ${sentWhileDown} sent while the listener was down; ` +
      `events: ${seen.disconnect} disconnect, ${seen.reconnect} reconnect, ${seen.connect} connect`,
  );
});

test('while the listener cannot connect, the worker polls, runs jobs, and stops polling once it connects', async (t) => {
  const queue = 'poll';
  const port = await closedPort();
  const producer = await ctx.hark({ workerId: 'poll-producer' });
  await producer.createQueue(queue);
  await producer.createQueue('poll-idle');
  await producer.createQueue('poll-clock');
  // A listening instance working an idle queue: it must issue no claim while idle.
  await producer.work('poll-idle', {}, () => null);
  // A clock: another instance whose listener never connects, polling an empty queue.
  const clock = await ctx.hark({
    workerId: 'poll-clock',
    listenConnectionString: urlWithPort(ctx.url, await closedPort()),
    fallbackPollMs: 100,
  });
  await clock.work('poll-clock', {}, () => null);
  const ticks = async (n: number) => {
    const from = claims(clock);
    await waitFor(`${n} polls of the clock`, () => claims(clock) >= from + n);
  };

  const worker = await ctx.hark({
    workerId: 'poll-worker',
    listenConnectionString: urlWithPort(ctx.url, port),
    fallbackPollMs: 200,
  });
  const ran = new Set<string>();
  await worker.work(queue, { concurrency: 4 }, (job) => {
    ran.add(job.id);
    return null;
  });
  let health = worker.health();
  assert.notEqual(health.listener.state, 'listening');
  assert.equal(health.listener.polling, true);
  assert.match(health.listener.lastError ?? '', /ECONNREFUSED/);

  // Jobs sent by another instance run.
  const ids = await producer.sendMany(
    Array.from({ length: 10 }, (_, i) => ({ queue, payload: i })),
  );
  await Promise.all(ids.map((id) => producer.waitForJob(id, { timeoutMs: 10_000 })));
  assert.deepEqual([...ran].sort(), [...ids].sort());

  // Idle, it keeps polling; the listening instance does not.
  const idleClaims = claims(producer);
  const before = claims(worker);
  await waitFor('5 more polls', () => claims(worker) >= before + 5, { timeoutMs: 10_000 });
  assert.equal(claims(producer), idleClaims, 'a listening instance does not poll');
  t.diagnostic(`claims while idle and disconnected: ${claims(worker) - before}`);

  // The database becomes reachable on that port: the listener connects and polling stops.
  const proxy = await startProxy(ctx.url, port);
  t.after(() => proxy.close());
  const connected = nextEvent(worker, 'listener:connect', () => true, 20_000);
  const openedAt = performance.now();
  assert.equal((await connected).selfTest, 'ok');
  health = worker.health();
  assert.equal(health.listener.state, 'listening');
  assert.equal(health.listener.polling, false);
  t.diagnostic(
    `listener connected ${Math.round(performance.now() - openedAt)} ms after the port opened`,
  );
  // A poll in flight when the listener connected may still finish: let one tick pass first.
  await ticks(1);
  const after = claims(worker);
  await ticks(5);
  assert.equal(claims(worker), after, 'no polling once listening');
  // And it is woken by notifications again.
  const id = await producer.send(queue, 'after');
  await producer.waitForJob(id, { timeoutMs: 10_000 });
  assert.ok(ran.has(id));
});

test('the self-test: a normal connect reports ok; a connection that swallows NOTIFY reports failed and polls', async (t) => {
  const queue = 'selftest';
  const producer = await ctx.hark({ workerId: 'selftest-producer' });
  await producer.createQueue(queue);

  // Direct connection: the echo comes back.
  const okConnects: string[] = [];
  let okFallbacks = 0;
  const ok = await startHark(t, { workerId: 'selftest-ok' }, (h) => {
    h.events.on('listener:connect', (e) => okConnects.push(e.selfTest));
    h.events.on('listener:fallback', () => okFallbacks++);
  });
  assert.deepEqual(okConnects, ['ok']);
  assert.equal(okFallbacks, 0);
  let health = ok.health();
  assert.equal(health.listener.state, 'listening');
  assert.equal(health.listener.selfTest, 'ok');
  assert.equal(health.listener.polling, false);
  // ...and again after a reconnect.
  const again = nextEvent(ok, 'listener:connect');
  ok.dropListenerConnection();
  assert.equal((await again).selfTest, 'ok');
  assert.equal(ok.health().listener.selfTest, 'ok');

  // Through a proxy that drops notifications (a transaction pooler): the self-test fails, the
  // instance says so, and polls.
  const proxy = await startProxy(ctx.url, await closedPort(), { mode: 'swallow' });
  t.after(() => proxy.close());
  const events: string[] = [];
  const bad = await startHark(
    t,
    {
      workerId: 'selftest-bad',
      listenConnectionString: urlWithPort(ctx.url, proxy.port),
      fallbackPollMs: 200,
    },
    (h) => {
      h.events.on('listener:connect', (e) => events.push(`connect:${e.selfTest}`));
      h.events.on('listener:fallback', (e) => events.push(`fallback:${e.reason.slice(0, 20)}`));
    },
  );
  assert.deepEqual(events, ['fallback:LISTEN self-test fai', 'connect:failed']);
  assert.ok(proxy.swallowed() >= 1, 'the echo was swallowed');
  health = bad.health();
  assert.equal(health.listener.state, 'listening');
  assert.equal(health.listener.selfTest, 'failed');
  assert.equal(health.listener.polling, true);
  const ran: string[] = [];
  await bad.work(queue, {}, (job) => {
    ran.push(job.id);
    return null;
  });
  const id = await producer.send(queue, 'polled');
  await producer.waitForJob(id, { timeoutMs: 10_000 });
  assert.deepEqual(ran, [id]);
});

test('a session lost while the self-test awaits its echo does not poison the next session', async (t) => {
  // The first listener connection dies between the self-test NOTIFY and its echo; the listener
  // reconnects at once and the second session is healthy (and takes the leader lock: no other
  // instance runs on this schema now). The first attempt's leftovers must not overwrite the
  // second session's state.
  const proxy = await startProxy(ctx.url, await closedPort(), { mode: 'lose-first-echo' });
  t.after(() => proxy.close());
  const events: string[] = [];
  const hark = await startHark(
    t,
    { workerId: 'race-worker', listenConnectionString: urlWithPort(ctx.url, proxy.port) },
    (h) => {
      h.events.on('listener:connect', (e) => events.push(`connect:${e.selfTest}`));
      h.events.on('listener:disconnect', () => events.push('disconnect'));
      h.events.on('listener:fallback', () => events.push('fallback'));
      h.events.on('leader:elected', () => events.push('leader:elected'));
      h.events.on('leader:lost', () => events.push('leader:lost'));
      h.events.on('error', (e) => events.push(`error(${e.context}): ${e.error.message}`));
    },
  );
  await waitFor('the listener to connect', () => hark.health().listener.state === 'listening');
  assert.ok(proxy.connections() >= 2, 'the first connection was lost and the listener reconnected');
  const health = hark.health();
  assert.deepEqual(
    {
      selfTest: health.listener.selfTest,
      polling: health.listener.polling,
      isLeader: hark.isLeader,
      lockHeldBy: await leaderHolder(),
    },
    { selfTest: 'ok', polling: false, isLeader: true, lockHeldBy: 'hark:race-worker' },
    `events: ${JSON.stringify(events)}`,
  );
});
