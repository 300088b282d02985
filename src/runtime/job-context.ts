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
  /**
   * Aborted when this attempt must end early: its timeout, a lost lease, a cancel, or a
   * shutdown past its deadline. The same signal as the handler's second argument (created on
   * first use, so handlers that never look at it do not pay for it).
   */
  readonly signal: AbortSignal;
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
export interface ClaimedJob {
  id: string;
  queue: string;
  payload: unknown;
  attempt: number;
  maxAttempts: number;
  priority: number;
  /** Epoch milliseconds. */
  runAtMs: number;
  /** Epoch microseconds, exact: the claim key's middle part. */
  runAtUs: number;
  createdAtMs: number;
  singletonKey: string | null;
  timeoutMs: number | null;
  leaseMs: number;
  token: string;
  retryDelayMs: number;
  retryBackoff: boolean;
  retryDelayMaxMs: number;
  deadLetter: string | null;
}

/** A claimed row of the claim statement (see `claim` in sql/queries.ts), every value as text. */
export function claimedFromRaw(r: (string | null)[], token: string): ClaimedJob {
  const timeout = r[9];
  return {
    id: r[0] as string,
    queue: r[1] as string,
    payload: JSON.parse(r[2] as string),
    attempt: +(r[3] as string),
    maxAttempts: +(r[4] as string),
    priority: +(r[5] as string),
    runAtMs: Math.floor(+(r[6] as string) / 1000),
    runAtUs: +(r[6] as string),
    createdAtMs: Math.round(+(r[7] as string)),
    singletonKey: r[8] ?? null,
    timeoutMs: timeout === null || timeout === undefined ? null : +timeout,
    leaseMs: +(r[10] as string),
    retryDelayMs: +(r[11] as string),
    retryBackoff: r[12] === 't',
    retryDelayMaxMs: +(r[13] as string),
    deadLetter: r[14] ?? null,
    token,
  };
}

/** Where a job view finds its attempt's signal. */
export interface SignalSource {
  signal(): AbortSignal;
}

/** The public view of a claimed job (no token); its signal is made on first use. */
class JobView implements ActiveJob {
  readonly id: string;
  readonly queue: string;
  readonly payload: unknown;
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly priority: number;
  readonly runAt: Date;
  readonly createdAt: Date;
  readonly singletonKey: string | null;
  readonly timeoutMs: number | null;
  readonly leaseMs: number;
  readonly #source: SignalSource;

  constructor(j: ClaimedJob, source: SignalSource) {
    this.id = j.id;
    this.queue = j.queue;
    this.payload = j.payload;
    this.attempt = j.attempt;
    this.maxAttempts = j.maxAttempts;
    this.priority = j.priority;
    this.runAt = new Date(j.runAtMs);
    this.createdAt = new Date(j.createdAtMs);
    this.singletonKey = j.singletonKey;
    this.timeoutMs = j.timeoutMs;
    this.leaseMs = j.leaseMs;
    this.#source = source;
  }

  /** Not an own property (spread and structuredClone leave it out): it is made on first use. */
  get signal(): AbortSignal {
    return this.#source.signal();
  }
}

export function publicJob(j: ClaimedJob, source: SignalSource): ActiveJob {
  return new JobView(j, source);
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
