/**
 * graphile-worker 0.18 as a benchmark peer, at the configuration its performance page uses for its
 * own throughput and latency figures: a local queue that fetches and locks jobs in batches,
 * batched job completion/failure, and 24 concurrent jobs with a pool of 25.
 *
 * Documentation used (graphile-worker 0.18):
 * - https://worker.graphile.org/docs/performance ("Quick stats" / "With batching" preset:
 *   concurrentJobs 24, maxPoolSize 25, localQueue { size: 500 }, completeJobBatchDelay 0,
 *   failJobBatchDelay 0; "Batching" section for what each does)
 * - node_modules/graphile-worker/dist/index.d.ts (GraphileConfig.WorkerOptions: localQueue,
 *   completeJobBatchDelay, failJobBatchDelay, concurrentJobs, maxPoolSize, pollInterval)
 * - https://worker.graphile.org/docs/library/add-job and .../add-jobs (WorkerUtils addJob, addJobs)
 * - https://worker.graphile.org/docs/library/run (run / runMigrations with pgPool, taskList,
 *   noHandleSignals; Runner.stop)
 */
import {
  Logger,
  makeWorkerUtils,
  type Runner,
  run,
  runMigrations,
  type TaskList,
  type WorkerUtils,
} from 'graphile-worker';
import pg from 'pg';
import type { Adapter, BenchPayload, Consumer, Producer, Target } from '../adapter.js';
import { packageVersion } from './package-version.js';

/** graphile-worker's default schema; every run gets a fresh database. */
export const SCHEMA = 'graphile_worker';

/** Jobs run at once in one worker process (performance page preset). */
export const CONCURRENT_JOBS = 24;
/** Pool size for the worker process (performance page preset: concurrentJobs + 1). */
export const MAX_POOL_SIZE = 25;
/** Jobs fetched and locked per local-queue refill (performance page preset). */
export const LOCAL_QUEUE_SIZE = 500;
/** ms to gather completeJob calls into one statement; 0 = next tick (performance page preset). */
export const COMPLETE_JOB_BATCH_DELAY = 0;
/** ms to gather failJob calls into one statement (performance page preset). */
export const FAIL_JOB_BATCH_DELAY = 0;
/** Pool size for the producer's WorkerUtils (node-postgres default, per SharedOptions.maxPoolSize). */
export const PRODUCER_POOL_SIZE = 10;

const logger = new Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') console.error(`[graphile-worker] ${message}`);
});

/**
 * The adapter owns each pg.Pool and passes it as `pgPool` (RunnerOptions in
 * https://worker.graphile.org/docs/library/run; SharedOptions in interfaces.d.ts). graphile-worker
 * ends a pool it made itself without waiting for it (dist/lib.js makeNewPool) and removes its error
 * handlers first, so stop() resolved with connections still closing and a server-side termination
 * then crashed the process with an unhandled 'error'. Our pools carry the error handlers
 * graphile-worker asks for (https://err.red/wpeh) and stop() awaits pool.end().
 */
function makePool(target: Target, max: number): pg.Pool {
  const pool = new pg.Pool({ connectionString: target.connectionString, max });
  const onError = (error: Error) => console.error(`[graphile-worker] pool: ${error.message}`);
  pool.on('error', onError);
  pool.on('connect', (client) => client.on('error', onError));
  return pool;
}

function workerPreset(): GraphileConfig.Preset {
  return {
    worker: {
      schema: SCHEMA,
      concurrentJobs: CONCURRENT_JOBS,
      maxPoolSize: MAX_POOL_SIZE,
      localQueue: { size: LOCAL_QUEUE_SIZE },
      completeJobBatchDelay: COMPLETE_JOB_BATCH_DELAY,
      failJobBatchDelay: FAIL_JOB_BATCH_DELAY,
      logger,
    },
  };
}

/**
 * A bench queue maps to a task identifier. graphile-worker's own "queueName" is not used: it
 * serialises the jobs in a named queue (TaskSpec.queueName in interfaces.d.ts), which a plain
 * job queue does not do.
 */
export const adapter: Adapter = {
  id: 'graphile-worker',

  label() {
    return (
      `graphile-worker ${packageVersion('graphile-worker')} (concurrentJobs ${CONCURRENT_JOBS}, ` +
      `maxPoolSize ${MAX_POOL_SIZE}, localQueue.size ${LOCAL_QUEUE_SIZE}, ` +
      `completeJobBatchDelay ${COMPLETE_JOB_BATCH_DELAY}, failJobBatchDelay ${FAIL_JOB_BATCH_DELAY})`
    );
  },

  async unavailable() {
    return null;
  },

  async setup(target) {
    const pgPool = makePool(target, 2);
    try {
      await runMigrations({ pgPool, schema: SCHEMA, logger });
    } finally {
      await pgPool.end();
    }
  },

  async teardown() {
    // Everything lives in the run's database, which the orchestrator drops.
  },

  async producer(target): Promise<Producer> {
    const pgPool = makePool(target, PRODUCER_POOL_SIZE);
    let utils: WorkerUtils;
    try {
      utils = await makeWorkerUtils({ pgPool, schema: SCHEMA, logger });
    } catch (error) {
      await pgPool.end();
      throw error;
    }
    return {
      async sendOne(queue: string, payload: BenchPayload) {
        await utils.addJob(queue, payload);
      },
      async sendBatch(queue: string, payloads: BenchPayload[]) {
        await utils.addJobs(payloads.map((payload) => ({ identifier: queue, payload })));
      },
      async close() {
        await utils.release();
        await pgPool.end();
      },
    };
  },

  async consume(target, options): Promise<Consumer> {
    const taskList: TaskList = {};
    for (const queue of options.queues) {
      taskList[queue] = (payload) => {
        options.onJob(payload as BenchPayload);
      };
    }
    const pgPool = makePool(target, MAX_POOL_SIZE);
    let runner: Runner;
    try {
      runner = await run({
        preset: workerPreset(),
        pgPool,
        taskList,
        noHandleSignals: true,
        logger,
      });
    } catch (error) {
      await pgPool.end();
      throw error;
    }
    return {
      async stop() {
        await runner.stop();
        await pgPool.end();
      },
    };
  },
};
