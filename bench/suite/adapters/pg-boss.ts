/**
 * pg-boss 12 as a benchmark peer, at the settings its documentation gives for throughput and
 * pickup latency: LISTEN/NOTIFY wake-ups, batch fetch with burst mode while batches come back
 * full, and two fetch loops per queue.
 *
 * Documentation used (pg-boss 12.x):
 * - node_modules/pg-boss/dist/types.d.ts: ConstructorOptions.useListenNotify, Queue.notify,
 *   JobPollingOptions (pollingIntervalSeconds, notifyPollingIntervalSeconds, burstWhenBatchFull),
 *   JobFetchOptions.batchSize, WorkConcurrencyOptions.localConcurrency, StopOptions.
 * - https://pgboss.io/api/constructor (useListenNotify, supervise, schedule, max)
 * - https://pgboss.io/api/queues (createQueue, notify)
 * - https://pgboss.io/api/workers (work options: batchSize, localConcurrency, polling, burst)
 * - https://pgboss.io/api/jobs (send, insert)
 */
import { type ConstructorOptions, PgBoss, type WorkOptions } from 'pg-boss';
import type { Adapter, BenchPayload, Consumer, Producer, Target } from '../adapter.js';
import { packageVersion } from './package-version.js';

/** pg-boss's default schema; every run gets a fresh database, so the default is private to it. */
export const SCHEMA = 'pgboss';

/**
 * Instance settings. `useListenNotify` holds one LISTEN connection and wakes workers of
 * notify-enabled queues the moment a job is created (types.d.ts ConstructorOptions; pgboss.io
 * /api/constructor). `schedule: false` turns off the cron timekeeper, which the benchmark does
 * not use (pgboss.io/api/constructor "schedule"). `max` is the documented pool default (10).
 */
export const INSTANCE: Pick<ConstructorOptions, 'useListenNotify' | 'schedule' | 'max'> = {
  useListenNotify: true,
  schedule: false,
  max: 10,
};

/**
 * The producer only sends: `supervise: false` leaves maintenance and monitoring to the consuming
 * instances (pgboss.io/api/constructor "supervise"), so enqueue timings carry no maintenance work,
 * and it needs no LISTEN connection (the NOTIFY a send emits depends on the queue's `notify`, not on
 * the sender's `useListenNotify`; dist/manager.js).
 */
export const PRODUCER_INSTANCE: Pick<ConstructorOptions, 'supervise' | 'useListenNotify'> = {
  supervise: false,
  useListenNotify: false,
};

/** Queue options: `notify: true` opts the queue into NOTIFY on job creation (types.d.ts Queue). */
export const QUEUE_OPTIONS = { notify: true } as const;

/**
 * Worker settings (types.d.ts WorkOptions; pgboss.io/api/workers):
 * - batchSize: jobs per fetch, handed to the handler as one array and completed in one statement.
 * - burstWhenBatchFull: keep fetching with no delay while each fetch returns a full batch.
 * - localConcurrency: independent fetch loops for the queue in this process.
 * - pollingIntervalSeconds: the documented minimum (0.5), used only if LISTEN/NOTIFY is
 *   unavailable; with NOTIFY active the backstop is notifyPollingIntervalSeconds (default 30).
 * pg-boss documents no recommended numbers for batchSize and localConcurrency. 200 x 2 was among
 * the fastest of the pairs tried with peer-selftest.ts on the 2-core benchmark machine (batchSize
 * 50-500, localConcurrency 1-8, 1,000 and 20,000-job batches); 4 or 8 loops were slower there.
 */
export const WORK_OPTIONS: WorkOptions = {
  batchSize: 200,
  burstWhenBatchFull: true,
  localConcurrency: 2,
  pollingIntervalSeconds: 0.5,
};

/** Graceful stop bound (types.d.ts StopOptions; default 30 s); handlers here are no-ops. */
export const STOP_TIMEOUT_MS = 10_000;

function makeBoss(target: Target, extra: ConstructorOptions = {}): PgBoss {
  const boss = new PgBoss({
    connectionString: target.connectionString,
    schema: SCHEMA,
    application_name: 'bench-pg-boss',
    ...INSTANCE,
    ...extra,
  });
  boss.on('error', (error: unknown) => {
    console.error('[pg-boss] error:', error instanceof Error ? error.message : error);
  });
  boss.on('warning', (warning: { message?: string }) => {
    console.error('[pg-boss] warning:', warning.message ?? warning);
  });
  return boss;
}

async function stopBoss(boss: PgBoss): Promise<void> {
  await boss.stop({ graceful: true, close: true, timeout: STOP_TIMEOUT_MS });
}

export const adapter: Adapter = {
  id: 'pg-boss',

  label() {
    const w = WORK_OPTIONS;
    return (
      `pg-boss ${packageVersion('pg-boss')} (useListenNotify, queue notify, ` +
      `batchSize ${w.batchSize}, burstWhenBatchFull, localConcurrency ${w.localConcurrency}, ` +
      `pool max ${INSTANCE.max})`
    );
  },

  async unavailable() {
    return null;
  },

  async setup(target, queues) {
    const boss = makeBoss(target, PRODUCER_INSTANCE);
    try {
      await boss.start();
      for (const queue of queues) {
        await boss.createQueue(queue, QUEUE_OPTIONS);
      }
    } finally {
      await stopBoss(boss);
    }
  },

  async teardown() {
    // Everything lives in the run's database, which the orchestrator drops.
  },

  async producer(target): Promise<Producer> {
    const boss = makeBoss(target, PRODUCER_INSTANCE);
    await boss.start();
    return {
      async sendOne(queue: string, payload: BenchPayload) {
        await boss.send(queue, payload);
      },
      async sendBatch(queue: string, payloads: BenchPayload[]) {
        await boss.insert(
          queue,
          payloads.map((data) => ({ data })),
        );
      },
      async close() {
        await stopBoss(boss);
      },
    };
  },

  async consume(target, options): Promise<Consumer> {
    const boss = makeBoss(target);
    await boss.start();
    try {
      for (const queue of options.queues) {
        await boss.work<BenchPayload>(queue, WORK_OPTIONS, async (jobs) => {
          for (const job of jobs) options.onJob(job.data);
        });
      }
    } catch (error) {
      await stopBoss(boss);
      throw error;
    }
    return {
      async stop() {
        await stopBoss(boss);
      },
    };
  },
};
