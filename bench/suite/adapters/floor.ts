/**
 * The floor: the least a PostgreSQL queue can do and still be one, written by hand for this
 * suite. One table, a partial index that serves the claim, a batched claim with
 * FOR UPDATE SKIP LOCKED, a batched delete of finished jobs, and LISTEN/NOTIFY to wake the
 * worker (pg_notify in the insert statement itself), refetching while claims come back full.
 *
 * What it leaves out, and a real queue cannot: retries, failure handling, leases and the rescue
 * of a crashed worker's jobs (locked_at is there for a rescuer it does not have), reconnecting,
 * priorities, scheduling beyond run_at. Its numbers are the floor a real queue's costs are
 * compared with, not a competitor.
 */
import { createRequire } from 'node:module';
import pg from 'pg';
import type { Adapter, BenchPayload } from '../adapter.js';

/** Jobs claimed by one statement (and the most a claim asks for). */
export const FLOOR_BATCH_SIZE = 500;
/** Jobs claimed but not yet deleted, per queue per worker process. */
export const FLOOR_IN_FLIGHT = 2_000;
/** Connections per worker process for claims and deletes (the LISTEN session is extra). */
const POOL_MAX = 4;
const SEND_POOL_MAX = 10;
const RETRY_MS = 500;
const CHANNEL = 'floor_jobs';
const PG_VERSION = (createRequire(import.meta.url)('pg/package.json') as { version: string })
  .version;

const SCHEMA = `
  CREATE TABLE floor_jobs (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    payload jsonb NOT NULL,
    run_at timestamptz NOT NULL DEFAULT now(),
    locked boolean NOT NULL DEFAULT false,
    locked_at timestamptz
  );
  -- Only unclaimed rows, in claim order within a queue.
  CREATE INDEX floor_jobs_claim ON floor_jobs (queue, id) WHERE NOT locked;
`;

// The NOTIFY rides in the insert statement: one round trip, delivered at commit.
const INSERT_ONE = `
  WITH inserted AS (INSERT INTO floor_jobs (queue, payload) VALUES ($1, $2))
  SELECT pg_notify('${CHANNEL}', $1)`;

const INSERT_MANY = `
  WITH inserted AS (
    INSERT INTO floor_jobs (queue, payload) SELECT $1, p FROM unnest($2::jsonb[]) AS p)
  SELECT pg_notify('${CHANNEL}', $1)`;

const CLAIM = `
  UPDATE floor_jobs SET locked = true, locked_at = now()
   WHERE id IN (SELECT id FROM floor_jobs
                 WHERE queue = $1 AND NOT locked AND run_at <= now()
                 ORDER BY id LIMIT $2
                   FOR UPDATE SKIP LOCKED)
  RETURNING id, payload`;

const DELETE = `DELETE FROM floor_jobs WHERE id = ANY($1::bigint[])`;

function report(context: string, error: unknown): void {
  const text = error instanceof Error ? error.message : String(error);
  process.stderr.write(`floor: ${context}: ${text}\n`);
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** One queue in one worker process: claims while there is room and work, deletes what ran. */
class QueueLoop {
  private wanted = true;
  private running: Promise<void> | undefined;
  private inFlight = 0;
  private done: string[] = [];
  private deleting: Promise<void> | undefined;
  private roomWaiters: (() => void)[] = [];
  private stopped = false;

  constructor(
    private readonly pool: pg.Pool,
    private readonly queue: string,
    private readonly onJob: (payload: BenchPayload) => void,
  ) {}

  /** A notification, or start: there may be work. */
  wake(): void {
    this.wanted = true;
    if (this.running === undefined && !this.stopped) this.running = this.loop();
  }

  private async loop(): Promise<void> {
    try {
      while (this.wanted && !this.stopped) {
        const room = FLOOR_IN_FLIGHT - this.inFlight;
        if (room <= 0) {
          await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
          continue;
        }
        this.wanted = false;
        const limit = Math.min(FLOOR_BATCH_SIZE, room);
        let rows: { id: string; payload: BenchPayload }[];
        try {
          rows = (await this.pool.query(CLAIM, [this.queue, limit])).rows;
        } catch (error) {
          report('claim', error);
          this.wanted = true;
          await sleep(RETRY_MS);
          continue;
        }
        // A full claim means more may be waiting; a short one that the queue is drained.
        if (rows.length === limit) this.wanted = true;
        this.inFlight += rows.length;
        for (const row of rows) {
          this.onJob(row.payload); // the no-op handler
          this.done.push(row.id);
        }
        this.flush();
      }
    } finally {
      this.running = undefined;
    }
  }

  /** Deletes finished jobs, one statement at a time, each taking all that finished meanwhile. */
  private flush(): void {
    if (this.deleting !== undefined || this.done.length === 0) return;
    const ids = this.done;
    this.done = [];
    this.deleting = this.pool.query(DELETE, [ids]).then(
      () => {
        this.inFlight -= ids.length;
        this.deleting = undefined;
        for (const resolve of this.roomWaiters.splice(0)) resolve();
        this.flush();
      },
      async (error: unknown) => {
        report('delete', error);
        await sleep(RETRY_MS);
        this.done.push(...ids);
        this.deleting = undefined;
        this.flush();
      },
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const resolve of this.roomWaiters.splice(0)) resolve();
    await this.running;
    while (this.deleting !== undefined) await this.deleting;
  }
}

export const adapter: Adapter = {
  id: 'floor',

  label() {
    return (
      `floor: hand-written SQL (node-postgres ${PG_VERSION}), one table, claims of up to` +
      ` ${FLOOR_BATCH_SIZE} with FOR UPDATE SKIP LOCKED, at most ${FLOOR_IN_FLIGHT} in flight` +
      ` per queue, batched DELETE of finished jobs, pg_notify in the insert; no retries,` +
      ' leases, rescue or reconnect'
    );
  },

  async unavailable() {
    return null;
  },

  async setup(target) {
    const client = new pg.Client({ connectionString: target.connectionString });
    await client.connect();
    try {
      await client.query(SCHEMA);
    } finally {
      await client.end();
    }
  },

  async teardown() {
    // The orchestrator drops the database.
  },

  async producer(target) {
    const pool = new pg.Pool({ connectionString: target.connectionString, max: SEND_POOL_MAX });
    pool.on('error', (error) => report('idle connection', error));
    return {
      async sendOne(queue, payload) {
        await pool.query(INSERT_ONE, [queue, JSON.stringify(payload)]);
      },
      async sendBatch(queue, payloads) {
        await pool.query(INSERT_MANY, [queue, payloads.map((p) => JSON.stringify(p))]);
      },
      close: () => pool.end(),
    };
  },

  async consume(target, { queues, onJob }) {
    const pool = new pg.Pool({ connectionString: target.connectionString, max: POOL_MAX });
    pool.on('error', (error) => report('idle connection', error));
    const listener = new pg.Client({ connectionString: target.connectionString });
    listener.on('error', (error) => report('listener', error));
    const loops = new Map(queues.map((q) => [q, new QueueLoop(pool, q, onJob)]));
    try {
      await listener.connect();
      listener.on('notification', (message) => loops.get(message.payload ?? '')?.wake());
      await listener.query(`LISTEN ${CHANNEL}`);
    } catch (error) {
      await listener.end().catch(() => undefined);
      await pool.end().catch(() => undefined);
      throw error;
    }
    // Catch up on whatever was inserted before we listened.
    for (const loop of loops.values()) loop.wake();
    return {
      async stop() {
        await Promise.all([...loops.values()].map((loop) => loop.stop()));
        await listener.end().catch(() => undefined);
        await pool.end();
      },
    };
  },
};
