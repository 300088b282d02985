/** Reading and steering jobs: get, cancel, retry, statistics, failures. */
import { checkValue } from '../config/validate.js';
import type { Database } from '../db/database.js';
import type { Executor } from '../db/executor.js';
import { InvalidStateError, JobNotFoundError } from '../errors.js';
import type { Queries } from '../sql/queries.js';
import { type Job, type JobError, jobFromRow, type JobState } from './job.js';

export interface QueueStats {
  queue: string;
  paused: boolean;
  counts: Record<JobState, number>;
}

export interface FailedJob {
  id: string;
  queue: string;
  payload: unknown;
  attempt: number;
  maxAttempts: number;
  finishedAt: Date;
  deadLetter: string | null;
  lastError: JobError | null;
  errors: JobError[];
}

const ID_PATTERN = /^[1-9][0-9]{0,18}$/;

export function checkJobId(where: string, id: unknown): string {
  checkValue(
    where,
    'id',
    { kind: 'string', pattern: ID_PATTERN, describe: 'a job id (a positive integer, as a string)' },
    id,
  );
  return id as string;
}

function emptyCounts(): Record<JobState, number> {
  return { scheduled: 0, available: 0, active: 0, retry: 0, completed: 0, failed: 0, cancelled: 0 };
}

export class Admin {
  constructor(
    private readonly db: Database,
    private readonly q: Queries,
  ) {}

  async getJob(id: string, executor?: Executor): Promise<Job | null> {
    if (typeof id !== 'string' || !ID_PATTERN.test(id)) return null;
    const r = await this.db.query('admin', this.q.getJob, [id], executor);
    return r.rows[0] ? jobFromRow(r.rows[0]) : null;
  }

  /** Cancels a scheduled, available, retrying or active job. */
  async cancel(id: string, executor?: Executor): Promise<void> {
    checkJobId('cancel', id);
    const r = await this.db.query('admin', this.q.cancel, [id], executor);
    const row = r.rows[0] as { prior_state: JobState; cancelled: number } | undefined;
    if (!row) throw new JobNotFoundError(id);
    if (row.cancelled === 0) {
      throw new InvalidStateError(
        id,
        row.prior_state,
        '`scheduled`, `available`, `retry` or `active`',
      );
    }
  }

  /** Puts a failed or cancelled job back to available, with one more attempt. */
  async retry(id: string, executor?: Executor): Promise<void> {
    checkJobId('retry', id);
    const r = await this.db.query('admin', this.q.retry, [id], executor);
    const row = r.rows[0] as { prior_state: JobState; retried: number } | undefined;
    if (!row) throw new JobNotFoundError(id);
    if (row.retried === 0)
      throw new InvalidStateError(id, row.prior_state, '`failed` or `cancelled`');
  }

  /** Counts per state for every queue. */
  async stats(): Promise<QueueStats[]> {
    const r = await this.db.query('stats', this.q.queueStats);
    const byQueue = new Map<string, QueueStats>();
    for (const row of r.rows as {
      queue: string;
      paused: boolean;
      state: JobState | null;
      count: number;
    }[]) {
      let s = byQueue.get(row.queue);
      if (!s) {
        s = { queue: row.queue, paused: row.paused, counts: emptyCounts() };
        byQueue.set(row.queue, s);
      }
      if (row.state) s.counts[row.state] = row.count;
    }
    return [...byQueue.values()];
  }

  /** The most recent failed jobs, newest first, with their errors. */
  async failedJobs(options: { queue?: string; limit?: number } = {}): Promise<FailedJob[]> {
    const limit = options.limit ?? 50;
    const r = await this.db.query('stats', this.q.failedJobs, [options.queue ?? null, limit]);
    // biome-ignore lint/suspicious/noExplicitAny: raw rows
    return r.rows.map((row: any) => ({
      id: row.id,
      queue: row.queue,
      payload: row.payload,
      attempt: row.attempt,
      maxAttempts: row.max_attempts,
      finishedAt: row.finished_at,
      deadLetter: row.dead_letter,
      errors: row.errors,
      lastError: row.errors.length > 0 ? row.errors[row.errors.length - 1] : null,
    }));
  }
}
