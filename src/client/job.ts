/** The public shape of a job, as read back from the database. */
export type JobState =
  | 'scheduled'
  | 'available'
  | 'active'
  | 'completed'
  | 'retry'
  | 'failed'
  | 'cancelled';

export const FINISHED_STATES: readonly JobState[] = ['completed', 'failed', 'cancelled'];

export interface JobError {
  attempt: number;
  at: string;
  name: string;
  message: string;
  stack?: string;
}

export interface Job<P = unknown, O = unknown> {
  id: string;
  queue: string;
  state: JobState;
  priority: number;
  runAt: Date;
  payload: P;
  attempt: number;
  maxAttempts: number;
  retryDelayMs: number;
  retryBackoff: boolean;
  retryDelayMaxMs: number;
  timeoutMs: number | null;
  leaseMs: number;
  singletonKey: string | null;
  deadLetter: string | null;
  retentionMs: number;
  failedRetentionMs: number;
  leaseExpiresAt: Date | null;
  workerId: string | null;
  output: O | null;
  errors: JobError[];
  createdAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
  keepUntil: Date | null;
  /** For a dead-letter copy: the id of the job it was copied from. */
  sourceJobId: string | null;
}

// biome-ignore lint/suspicious/noExplicitAny: a raw database row
export function jobFromRow(r: any): Job {
  return {
    id: r.id,
    queue: r.queue,
    state: r.state,
    priority: r.priority,
    runAt: r.run_at,
    payload: r.payload,
    attempt: r.attempt,
    maxAttempts: r.max_attempts,
    retryDelayMs: r.retry_delay_ms,
    retryBackoff: r.retry_backoff,
    retryDelayMaxMs: r.retry_delay_max_ms,
    timeoutMs: r.timeout_ms,
    leaseMs: r.lease_ms,
    singletonKey: r.singleton_key,
    deadLetter: r.dead_letter,
    retentionMs: Number(r.retention_ms),
    failedRetentionMs: Number(r.failed_retention_ms),
    leaseExpiresAt: r.lease_expires_at,
    workerId: r.worker_id,
    output: r.output,
    errors: r.errors,
    createdAt: r.created_at,
    startedAt: r.started_at,
    finishedAt: r.finished_at,
    keepUntil: r.keep_until,
    sourceJobId: r.source_job_id,
  };
}
