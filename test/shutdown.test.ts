import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { describe, test } from 'node:test';
import { testContext } from './helpers/context.js';

const ctx = testContext(import.meta.url);

function startWorker(env: Record<string, string>) {
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/signal-worker.ts'], {
    env: { ...process.env, HARK_SCHEMA: ctx.schema, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  const waiters: { pattern: RegExp; resolve: () => void }[] = [];
  child.stdout.on('data', (d) => {
    out += d;
    for (const w of [...waiters]) {
      if (w.pattern.test(out)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  });
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  const seen = (pattern: RegExp) =>
    new Promise<void>((resolve, reject) => {
      if (pattern.test(out)) return resolve();
      waiters.push({ pattern, resolve });
      exited.then((code) =>
        reject(new Error(`worker exited (${code}) before printing ${pattern}`)),
      );
    });
  return { child, seen, exited };
}

describe('SIGTERM', () => {
  test('a worker process stops on SIGTERM, releasing unfinished jobs without spending an attempt', async (t) => {
    const hark = await ctx.hark();
    await hark.createQueue('s-term', { retryLimit: 0 });
    const w = startWorker({ QUEUE: 's-term', JOB_MS: '60000', STOP_TIMEOUT_MS: '200' });
    t.after(() => w.child.kill('SIGKILL'));
    await w.seen(/ready/);
    const id = await hark.send('s-term', {});
    await w.seen(new RegExp(`started ${id}`));
    w.child.kill('SIGTERM');
    assert.equal(await w.exited, 0);
    const job = await hark.getJob(id);
    assert.equal(job?.state, 'available');
    assert.equal(job?.attempt, 0);
    assert.deepEqual(job?.errors, []);
  });

  test('a job that finishes within the deadline completes before the process exits', async (t) => {
    const hark = await ctx.hark();
    await hark.createQueue('s-term-ok');
    const w = startWorker({ QUEUE: 's-term-ok', JOB_MS: '300', STOP_TIMEOUT_MS: '10000' });
    t.after(() => w.child.kill('SIGKILL'));
    await w.seen(/ready/);
    const id = await hark.send('s-term-ok', {});
    await w.seen(new RegExp(`started ${id}`));
    w.child.kill('SIGTERM');
    assert.equal(await w.exited, 0);
    const job = await hark.getJob(id);
    assert.equal(job?.state, 'completed');
    assert.equal(job?.output, 'finished');
  });
});
