/**
 * BullMQ 6 on Redis as a benchmark peer: `Queue.add` / `Queue.addBulk` to enqueue, one `Worker`
 * per queue with a high concurrency factor, jobs removed as they finish. All keys live under the
 * run's namespace (BullMQ's key `prefix`), and teardown deletes every key under it.
 *
 * Documentation used (BullMQ 6):
 * - https://docs.bullmq.io/guide/workers/concurrency (local concurrency factor; example uses 50)
 * - https://docs.bullmq.io/guide/parallelism-and-concurrency (how concurrency relates to
 *   throughput for IO-light jobs)
 * - https://docs.bullmq.io/guide/queues/adding-bulks (addBulk: many jobs in one atomic call)
 * - https://docs.bullmq.io/guide/queues/auto-removal-of-jobs and
 *   https://docs.bullmq.io/guide/going-to-production (removeOnComplete / removeOnFail)
 * - node_modules/bullmq/dist/esm/interfaces/worker-options.d.ts and queue-options.d.ts
 *   (concurrency, prefix, defaultJobOptions; Redis `connection.url`)
 */
import { type DefaultJobOptions, Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { Adapter, BenchPayload, Consumer, Producer, Target } from '../adapter.js';
import { packageVersion } from './package-version.js';

/** Jobs one Worker processes at once (docs.bullmq.io/guide/workers/concurrency). */
export const CONCURRENCY = 50;

/**
 * Finished jobs are deleted rather than kept in the completed/failed sets, so the store does not
 * grow with the run (docs.bullmq.io/guide/queues/auto-removal-of-jobs).
 */
export const JOB_OPTIONS: DefaultJobOptions = { removeOnComplete: true, removeOnFail: true };

/** How long `unavailable` waits for Redis to answer. */
export const PROBE_TIMEOUT_MS = 2_000;

function redisUrl(target: Target): string {
  if (!target.redisUrl) throw new Error('bullmq-redis needs target.redisUrl');
  return target.redisUrl;
}

/** BullMQ's key prefix for the run: its keys are `<prefix>:<queue>:...`. */
function prefix(target: Target): string {
  return target.namespace;
}

/** Escapes Redis glob characters so SCAN MATCH treats the prefix literally. */
function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

function logErrors(emitter: { on(event: 'error', fn: (error: Error) => void): unknown }) {
  emitter.on('error', (error) => console.error('[bullmq-redis] error:', error.message));
}

export const adapter: Adapter = {
  id: 'bullmq-redis',

  label() {
    return (
      `BullMQ ${packageVersion('bullmq')} on Redis (ioredis ${packageVersion('ioredis')}; ` +
      `Worker concurrency ${CONCURRENCY}, addBulk, removeOnComplete/removeOnFail)`
    );
  },

  async unavailable(target) {
    if (!target.redisUrl) return 'no Redis URL given';
    const client = new Redis(target.redisUrl, {
      lazyConnect: true,
      connectTimeout: PROBE_TIMEOUT_MS,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      enableOfflineQueue: false,
    });
    let cause: string | undefined;
    client.on('error', (error: Error) => {
      cause ??= error.message;
    });
    try {
      await client.connect();
      const pong = await client.ping();
      return pong === 'PONG' ? null : `Redis at ${target.redisUrl} answered ${pong}`;
    } catch (error) {
      return `no Redis at ${target.redisUrl}: ${cause ?? (error instanceof Error ? error.message : error)}`;
    } finally {
      client.disconnect();
    }
  },

  async setup() {
    // BullMQ creates a queue's keys on first use.
  },

  async teardown(target) {
    if (!target.redisUrl) return;
    const client = new Redis(target.redisUrl, { maxRetriesPerRequest: 1 });
    try {
      const match = `${globEscape(prefix(target))}:*`;
      let cursor = '0';
      do {
        const [next, keys] = await client.scan(cursor, 'MATCH', match, 'COUNT', 1000);
        cursor = next;
        if (keys.length > 0) await client.unlink(...keys);
      } while (cursor !== '0');
    } finally {
      await client.quit();
    }
  },

  async producer(target): Promise<Producer> {
    const url = redisUrl(target);
    const queues = new Map<string, Queue>();
    const queueFor = (name: string): Queue => {
      let queue = queues.get(name);
      if (!queue) {
        queue = new Queue(name, {
          connection: { url },
          prefix: prefix(target),
          defaultJobOptions: JOB_OPTIONS,
        });
        logErrors(queue);
        queues.set(name, queue);
      }
      return queue;
    };
    return {
      async sendOne(queue: string, payload: BenchPayload) {
        await queueFor(queue).add(queue, payload);
      },
      async sendBatch(queue: string, payloads: BenchPayload[]) {
        await queueFor(queue).addBulk(payloads.map((data) => ({ name: queue, data })));
      },
      async close() {
        await Promise.all([...queues.values()].map((queue) => queue.close()));
        queues.clear();
      },
    };
  },

  async consume(target, options): Promise<Consumer> {
    const url = redisUrl(target);
    const workers = options.queues.map((name) => {
      const worker = new Worker<BenchPayload>(
        name,
        async (job) => {
          options.onJob(job.data);
        },
        {
          // Workers need maxRetriesPerRequest: null (docs.bullmq.io/guide/going-to-production).
          connection: { url, maxRetriesPerRequest: null },
          prefix: prefix(target),
          concurrency: CONCURRENCY,
        },
      );
      logErrors(worker);
      return worker;
    });
    try {
      await Promise.all(workers.map((worker) => worker.waitUntilReady()));
    } catch (error) {
      await Promise.allSettled(workers.map((worker) => worker.close()));
      throw error;
    }
    return {
      async stop() {
        await Promise.all(workers.map((worker) => worker.close()));
      },
    };
  },
};
