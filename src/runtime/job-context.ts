import { storableText } from '../db/json-text.js';

/** What a handler receives for each job. */
export interface ActiveJob<P = unknown> {
  id: string;
  queue: string;
  payload: P;
  /** 1 on the first attempt. */
  attempt: number;
  maxAttempts: number;
  priority: number;
  runAt: Date;
  createdAt: Date;
  singletonKey: string | null;
  timeoutMs: number | null;
  leaseMs: number;
}

export type JobHandler<P = unknown, O = unknown> = (
  job: ActiveJob<P>,
  signal: AbortSignal,
) => Promise<O> | O;

export type BatchHandler<P = unknown, O = unknown> = (
  jobs: ActiveJob<P>[],
  signal: AbortSignal,
) => Promise<O[] | O> | O[] | O;

/** A claimed row, with what the runtime needs to finish it. */
export interface ClaimedJob extends ActiveJob {
  token: string;
  retryDelayMs: number;
  retryBackoff: boolean;
  retryDelayMaxMs: number;
  deadLetter: string | null;
}

// biome-ignore lint/suspicious/noExplicitAny: a raw database row
export function claimedFromRow(r: any, token: string): ClaimedJob {
  return {
    id: r.id,
    queue: r.queue,
    payload: r.payload,
    attempt: r.attempt,
    maxAttempts: r.max_attempts,
    priority: r.priority,
    runAt: r.run_at,
    createdAt: r.created_at,
    singletonKey: r.singleton_key,
    timeoutMs: r.timeout_ms,
    leaseMs: r.lease_ms,
    token,
    retryDelayMs: r.retry_delay_ms,
    retryBackoff: r.retry_backoff,
    retryDelayMaxMs: r.retry_delay_max_ms,
    deadLetter: r.dead_letter,
  };
}

/** The public view of a claimed job (no token). */
export function publicJob(j: ClaimedJob): ActiveJob {
  return {
    id: j.id,
    queue: j.queue,
    payload: j.payload,
    attempt: j.attempt,
    maxAttempts: j.maxAttempts,
    priority: j.priority,
    runAt: j.runAt,
    createdAt: j.createdAt,
    singletonKey: j.singletonKey,
    timeoutMs: j.timeoutMs,
    leaseMs: j.leaseMs,
  };
}

/** An error as stored in the job's `errors` list. */
export function errorRecord(err: unknown, attempt: number): Record<string, unknown> {
  const e = err instanceof Error ? err : new Error(describeThrown(err));
  return {
    attempt,
    at: new Date().toISOString(),
    name: storableText(String(e.name)),
    message: storableText(String(e.message)),
    ...(e.stack ? { stack: storableText(e.stack.split('\n').slice(0, 12).join('\n')) } : {}),
  };
}

/** Text for a thrown non-Error value (a string, an object; never throws). */
function describeThrown(value: unknown): string {
  if (typeof value === 'string') return value;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
