/**
 * BullMQ 6 on its PostgreSQL backend as a benchmark peer. BullMQ 6 ships the backend in the main
 * package (`createPostgresBackend`, bound here with `withBackend`): the same Queue / Worker API,
 * jobs in tables of one schema (default `bullmq`), claims with FOR UPDATE SKIP LOCKED and the
 * blocking wait on a dedicated LISTEN connection. Schema migrations are explicit
 * (`runMigrations`), done once in setup.
 *
 * Documentation used (BullMQ 6.7):
 * - https://docs.bullmq.io/guide/postgresql (getting started with withBackend, connection options,
 *   schema, migrations, and "Performance" / "Tuning tips": concurrency 8-32 in its table, pool
 *   `max` sized for the concurrency, removeOnComplete / removeOnFail)
 * - https://docs.bullmq.io/guide/workers/concurrency (local concurrency factor)
 * - https://docs.bullmq.io/guide/queues/adding-bulks (addBulk)
 * - node_modules/bullmq/dist/esm/postgres/postgres-connection.d.ts (PostgresPoolConfig) and
 *   postgres/migrator.d.ts (runMigrations, DEFAULT_SCHEMA)
 */
import {
  createPostgresBackend,
  type DefaultJobOptions,
  DEFAULT_SCHEMA,
  type PostgresPoolConfig,
  runMigrations,
  withBackend,
} from 'bullmq';
import pg from 'pg';
import type { Adapter, BenchPayload, Consumer, Producer, Target } from '../adapter.js';
import { packageVersion } from './package-version.js';

const { Queue, Worker } = withBackend(createPostgresBackend);
type PgQueue = InstanceType<typeof Queue>;

/** BullMQ's default schema (`bullmq`); every run gets a fresh database. */
export const SCHEMA = DEFAULT_SCHEMA;

/**
 * Jobs one Worker processes at once. The PostgreSQL guide's performance table gives its best
 * processing figure for "concurrency 8-32" (docs.bullmq.io/guide/postgresql); on the 2-core
 * benchmark machine peer-selftest.ts measured 8, 16 and 32 (3 interleaved rounds each) and 8 was as
 * fast as the others with the lowest pickup latency, so the low end of the documented range.
 */
export const CONCURRENCY = 8;

/** Worker pool size: one connection per concurrent job ("Size the pool", same guide). */
export const WORKER_POOL_MAX = CONCURRENCY;

/** Producer pool size per Queue: the node-postgres default. */
export const PRODUCER_POOL_MAX = 10;

/** Finished jobs are deleted ("Let retention do its work", same guide). */
export const JOB_OPTIONS: DefaultJobOptions = { removeOnComplete: true, removeOnFail: true };

function connection(target: Target, max: number): PostgresPoolConfig {
  return { connectionString: target.connectionString, schema: SCHEMA, max };
}

function logErrors(emitter: { on(event: 'error', fn: (error: Error) => void): unknown }) {
  emitter.on('error', (error) => console.error('[bullmq-pg] error:', error.message));
}

export const adapter: Adapter = {
  id: 'bullmq-pg',

  label() {
    return (
      `BullMQ ${packageVersion('bullmq')} on PostgreSQL (createPostgresBackend; ` +
      `Worker concurrency ${CONCURRENCY}, pool max ${WORKER_POOL_MAX}, addBulk, ` +
      `removeOnComplete/removeOnFail)`
    );
  },

  async unavailable() {
    if (typeof createPostgresBackend !== 'function') {
      return `bullmq ${packageVersion('bullmq')} has no PostgreSQL backend (createPostgresBackend)`;
    }
    return null;
  },

  async setup(target) {
    const client = new pg.Client({ connectionString: target.connectionString });
    await client.connect();
    try {
      await runMigrations(client, SCHEMA);
    } finally {
      await client.end();
    }
  },

  async teardown() {
    // Everything lives in the run's database, which the orchestrator drops.
  },

  async producer(target): Promise<Producer> {
    const queues = new Map<string, PgQueue>();
    const queueFor = (name: string): PgQueue => {
      let queue = queues.get(name);
      if (!queue) {
        queue = new Queue(name, {
          connection: connection(target, PRODUCER_POOL_MAX),
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
    const workers = options.queues.map((name) => {
      const worker = new Worker<BenchPayload>(
        name,
        async (job) => {
          options.onJob(job.data);
        },
        { connection: connection(target, WORKER_POOL_MAX), concurrency: CONCURRENCY },
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
