import assert from 'node:assert/strict';
import { test } from 'node:test';
import { nextEvent, testContext, waitFor } from './helpers/context.js';
import { closedPort, startProxy, urlWithPort } from './helpers/tcp-proxy.js';

const ctx = testContext(import.meta.url);

test('the circuit breaker opens when the database is unreachable, stops fetching, and closes when it answers again', async (t) => {
  const port = await closedPort();
  let proxy = await startProxy(ctx.url, port);
  t.after(() => proxy.close());
  const producer = await ctx.hark({ workerId: 'producer' });
  await producer.createQueue('b-queue');
  const worker = await ctx.hark({
    workerId: 'behind-proxy',
    connectionString: urlWithPort(ctx.url, port),
    fallbackPollMs: 200,
  });
  await worker.work('b-queue', {}, async (job) => `ok ${job.id}`);
  const first = await producer.send('b-queue', {});
  assert.match(String(await producer.waitForJob(first)), /^ok /);
  assert.equal(worker.health().breaker, 'closed');

  // The database disappears for the worker (connections cut, new ones refused).
  const opened = nextEvent(worker, 'breaker:open', () => true, 20_000);
  await proxy.close();
  const during = await producer.sendMany([
    { queue: 'b-queue', payload: 1 },
    { queue: 'b-queue', payload: 2 },
  ]);
  await opened;
  assert.equal(worker.health().breaker, 'open');
  // While open, workers issue no claims (the breaker's probe is the only statement).
  const claims = worker.statements.byPurpose.claim ?? 0;
  await new Promise((r) => setTimeout(r, 1_000));
  assert.equal(worker.statements.byPurpose.claim ?? 0, claims);

  // The database comes back: a probe answers, the breaker closes, the work gets done.
  const closed = nextEvent(worker, 'breaker:closed', () => true, 40_000);
  proxy = await startProxy(ctx.url, port);
  await closed;
  for (const id of during)
    assert.match(String(await producer.waitForJob(id, { timeoutMs: 20_000 })), /^ok /);
  await waitFor('listener back', () => worker.health().listener.state === 'listening', {
    timeoutMs: 20_000,
  });
  assert.equal(worker.health().breaker, 'closed');
  t.diagnostic(`probes: ${worker.statements.byPurpose.probe ?? 0}`);
});
