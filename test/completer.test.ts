/**
 * The completer and heartbeat keep attempts apart by (id, lease token), and poison values
 * (NUL characters jsonb cannot store) fail a job instead of blocking a worker.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PayloadError } from '../src/index.js';
import { Database } from '../src/db/database.js';
import { HarkEventEmitter } from '../src/events.js';
import { Completer } from '../src/runtime/completer.js';
import { buildQueries } from '../src/sql/queries.js';
import { testContext } from './helpers/context.js';

const ctx = testContext(import.meta.url);

test('two attempts of one job in one flush: only the attempt holding the lease completes', async (t) => {
  const hark = await ctx.hark();
  await hark.createQueue('c-two');
  const id = await hark.send('c-two', {});
  const stale = '00000000-0000-4000-8000-00000000000a';
  const live = '00000000-0000-4000-8000-00000000000b';
  await ctx.pool.query(
    `UPDATE ${ctx.t('jobs')} SET state = 'active', attempt = 2, lease_token = $2,
            lease_expires_at = now() + interval '1 minute' WHERE id = $1`,
    [id, live],
  );
  const db = new Database({
    connectionString: ctx.url,
    poolMax: 2,
    applicationName: 'completer-test',
    onIdleError: () => {},
  });
  t.after(() => db.end());
  const completer = new Completer(db, buildQueries(ctx.schema), new HarkEventEmitter());
  const [first, second] = await Promise.all([
    completer.complete(id, stale, JSON.stringify('from attempt 1')),
    completer.complete(id, live, JSON.stringify('from attempt 2')),
  ]);
  assert.equal(first, false);
  assert.equal(second, true);
  assert.equal((await hark.getJob(id))?.output, 'from attempt 2');
});

test('jsonb-unstorable text: a payload is refused, an output fails the job, an error message is cleaned', async () => {
  const hark = await ctx.hark();
  await hark.createQueue('c-nul', { retryLimit: 0 });
  await assert.rejects(hark.send('c-nul', { s: 'a\u0000b' }), (e: Error) => {
    assert.ok(e instanceof PayloadError);
    assert.match(e.message, /NUL character/);
    return true;
  });
  await assert.rejects(hark.send('c-nul', { s: 'x\ud800y' }), /unpaired UTF-16 surrogate/);
  // A literal backslash followed by "u0000", and a paired surrogate (an emoji), are fine.
  const ok = await hark.send('c-nul', { s: '\\u0000' });
  const smile = await hark.send('c-nul', { s: 'smile \ud83d\ude00' });
  await hark.work('c-nul', { concurrency: 5 }, async (job) => {
    const p = job.payload as { s: string; mode?: string };
    if (p.mode === 'output') return 'bad\u0000output';
    if (p.mode === 'error') throw new Error('bad\u0000message \udc00');
    return p.s;
  });
  assert.equal(await hark.waitForJob(ok), '\\u0000');
  assert.equal(await hark.waitForJob(smile), 'smile \ud83d\ude00');
  const badOutput = await hark.send('c-nul', { s: '', mode: 'output' });
  await assert.rejects(hark.waitForJob(badOutput), /not JSON-serialisable \(or holds a NUL/);
  const badError = await hark.send('c-nul', { s: '', mode: 'error' });
  await assert.rejects(hark.waitForJob(badError), /bad\uFFFDmessage \uFFFD/);
  // The worker is not blocked: more jobs still complete.
  assert.equal(await hark.sendAndWait('c-nul', { s: 'after' }), 'after');
});
