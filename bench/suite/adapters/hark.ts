/**
 * hark through its public API only, configured as a production user with a high volume of
 * short jobs would configure it.
 */
import { readFileSync } from 'node:fs';
import { Hark, type QueueOptions, type WorkOptions } from '../../../src/index.js';
import type { Adapter, BenchPayload, Target } from '../adapter.js';

/** Passed as-is to `hark.work` for every queue a worker consumes (tuned by the lead). */
export const HARK_WORK_OPTIONS: WorkOptions = { concurrency: 2_000 };

/**
 * Queue policy for the benchmark queues. At high volume a user deletes completed jobs promptly
 * instead of keeping them for the default 7 days: with `retentionMs: 0` nothing is kept.
 */
export const HARK_QUEUE_OPTIONS: QueueOptions = { retentionMs: 0 };

const VERSION = (
  JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  }
).version;

function open(target: Target): Promise<Hark> {
  return new Hark({ connectionString: target.connectionString, migrate: 'auto' }).start();
}

export const adapter: Adapter = {
  id: 'hark',

  label() {
    const work = Object.entries(HARK_WORK_OPTIONS)
      .map(([k, v]) => `${k} ${String(v)}`)
      .join(', ');
    return (
      `hark ${VERSION} (this repository, public API): work() with ${work} per queue per process,` +
      ` retentionMs ${String(HARK_QUEUE_OPTIONS.retentionMs)} (completed jobs are not kept,` +
      ' as at high volume), other options default; send() / one sendMany() call'
    );
  },

  async unavailable() {
    return null;
  },

  async setup(target, queues) {
    const hark = await open(target);
    try {
      for (const queue of queues) await hark.createQueue(queue, HARK_QUEUE_OPTIONS);
    } finally {
      await hark.stop();
    }
  },

  async teardown() {
    // Everything lives in the run's database, which the orchestrator drops.
  },

  async producer(target) {
    const hark = await open(target);
    return {
      async sendOne(queue, payload) {
        await hark.send(queue, payload);
      },
      async sendBatch(queue, payloads) {
        await hark.sendMany(payloads.map((payload) => ({ queue, payload })));
      },
      close: () => hark.stop(),
    };
  },

  async consume(target, { queues, onJob }) {
    const hark = await open(target);
    try {
      for (const queue of queues) {
        await hark.work<BenchPayload>(queue, HARK_WORK_OPTIONS, (job) => {
          onJob(job.payload);
        });
      }
    } catch (error) {
      await hark.stop().catch(() => undefined);
      throw error;
    }
    return { stop: () => hark.stop() };
  },
};
