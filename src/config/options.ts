/**
 * Public option types, their defaults (exported `DEFAULT_*` constants) and their validation
 * specs. Units are in the names (`...Ms`).
 */
import type { StandardSchemaV1 } from '@standard-schema/spec';
import type { Executor } from '../db/executor.js';
import { ConfigError } from '../errors.js';
import { checkValue, type Spec, validateOptions } from './validate.js';

/** @default 3 retries, so 4 attempts in all */
export const DEFAULT_RETRY_LIMIT = 3;
/** @default 1000 ms before the first retry */
export const DEFAULT_RETRY_DELAY_MS = 1_000;
/** @default true: the delay doubles each attempt, with jitter */
export const DEFAULT_RETRY_BACKOFF = true;
/** @default 1 hour: the cap on a backed-off delay */
export const DEFAULT_RETRY_DELAY_MAX_MS = 3_600_000;
/** @default 30 s: how long a worker owns a job between heartbeats */
export const DEFAULT_LEASE_MS = 30_000;
/** @default 7 days: how long completed and cancelled jobs are kept */
export const DEFAULT_RETENTION_MS = 7 * 24 * 3_600_000;
/** @default 30 days: how long failed jobs are kept (longer, for inspection and retry) */
export const DEFAULT_FAILED_RETENTION_MS = 30 * 24 * 3_600_000;
/** @default 0; higher runs first */
export const DEFAULT_PRIORITY = 0;
/** @default 10 concurrent jobs per queue per worker */
export const DEFAULT_CONCURRENCY = 10;
/** @default 2000 ms: the poll interval while the listener is down (only then) */
export const DEFAULT_FALLBACK_POLL_MS = 2_000;
/** @default 'hark' */
export const DEFAULT_SCHEMA = 'hark';
/** @default 10 pooled connections */
export const DEFAULT_POOL_MAX = 10;
/** @default 10_000 ms for stop() to let active jobs finish before aborting them */
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 10_000;
/** @default 1 MiB: the largest accepted payload, as JSON */
export const DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576;

export const QUEUE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const QUEUE_NAME_DESCRIPTION =
  'a queue name of 1 to 128 characters: letters, digits, `_ . : -`, starting with a letter or digit';

/** Per-job policy; a queue holds defaults for these, a send may override them. */
export interface JobPolicy {
  /** Retries after the first attempt. @default DEFAULT_RETRY_LIMIT (3) */
  retryLimit?: number;
  /** Delay before the first retry. @default DEFAULT_RETRY_DELAY_MS (1000) */
  retryDelayMs?: number;
  /** Exponential backoff (delay × 2^(attempt-1), full jitter over the upper half). @default true */
  retryBackoff?: boolean;
  /** Cap on the backed-off delay. @default DEFAULT_RETRY_DELAY_MAX_MS (1 hour) */
  retryDelayMaxMs?: number;
  /** Abort the attempt after this long and count it as failed; null for none. @default null */
  timeoutMs?: number | null;
  /** Lease length; a dead worker's job runs again after about this long. @default 30000 */
  leaseMs?: number;
  /** Queue that receives a copy of the job when it fails for good. @default null */
  deadLetter?: string | null;
  /** How long a completed or cancelled job is kept before retention deletes it. @default 7 days */
  retentionMs?: number;
  /** How long a failed job is kept (dead-lettered jobs included). @default 30 days */
  failedRetentionMs?: number;
  /** Higher runs first. @default 0 */
  priority?: number;
}

export interface QueueOptions<P = unknown> extends JobPolicy {
  /** A Standard Schema validator (zod, valibot, arktype...) checked at send time. */
  payloadSchema?: StandardSchemaV1<unknown, P>;
}

export interface SendOptions extends JobPolicy {
  /** Run no earlier than this time. @default now */
  runAt?: Date;
  /** Run no earlier than this many ms from now (exclusive with runAt). @default 0 */
  delayMs?: number;
  /**
   * At most one scheduled, available, retrying or active job per queue and key. A send whose key
   * is taken inserts nothing and returns the id of the job that holds the key.
   */
  singletonKey?: string;
  /** The caller's own connection or transaction (a pg Client or PoolClient, or any Executor). */
  executor?: Executor;
}

export interface WorkOptions {
  /** Jobs (or batches) run at once by this process for this queue. @default 10 */
  concurrency?: number;
  /** Jobs handed to one call of a batch handler; set only with `workBatch`. @default 1 */
  batchSize?: number;
  /** Poll interval, used only while the listener is disconnected. @default 2000 */
  fallbackPollMs?: number;
  /**
   * While handlers of this queue are running, fetch again only once at least this many slots
   * are free, so that short jobs are claimed in batches (fewer statements per job). A worker
   * with nothing running fetches as soon as work arrives, whatever this says.
   * @default a tenth of `concurrency` (at least 1)
   */
  minFetch?: number;
}

const MAX_INT32 = 2_147_483_647;
const DAY_MS = 24 * 3_600_000;

export const jobPolicySpec: Spec = {
  retryLimit: { kind: 'integer', min: 0, max: 10_000 },
  retryDelayMs: { kind: 'integer', min: 0, max: MAX_INT32 },
  retryBackoff: { kind: 'boolean' },
  retryDelayMaxMs: { kind: 'integer', min: 0, max: MAX_INT32 },
  timeoutMs: { kind: 'integer', min: 1, max: MAX_INT32, nullable: true },
  leaseMs: { kind: 'integer', min: 1_000, max: MAX_INT32 },
  deadLetter: {
    kind: 'string',
    pattern: QUEUE_NAME_PATTERN,
    describe: QUEUE_NAME_DESCRIPTION,
    nullable: true,
  },
  retentionMs: { kind: 'integer', min: 0, max: 3650 * DAY_MS },
  failedRetentionMs: { kind: 'integer', min: 0, max: 3650 * DAY_MS },
  priority: { kind: 'integer', min: -1_000_000, max: 1_000_000 },
};

const queueOptionsSpec: Spec = { ...jobPolicySpec, payloadSchema: { kind: 'any' } };

const sendOptionsSpec: Spec = {
  ...jobPolicySpec,
  runAt: { kind: 'date' },
  delayMs: { kind: 'integer', min: 0, max: 3650 * DAY_MS },
  singletonKey: { kind: 'string', maxLength: 512, describe: 'a string of at most 512 characters' },
  executor: { kind: 'any' },
};

const workOptionsSpec: Spec = {
  concurrency: { kind: 'integer', min: 1, max: 10_000 },
  minFetch: { kind: 'integer', min: 1, max: 10_000 },
  batchSize: { kind: 'integer', min: 1, max: 10_000 },
  fallbackPollMs: { kind: 'integer', min: 100, max: 3_600_000 },
};

export function checkQueueName(where: string, name: unknown, label = 'queue'): string {
  checkValue(
    where,
    label,
    { kind: 'string', pattern: QUEUE_NAME_PATTERN, describe: QUEUE_NAME_DESCRIPTION },
    name,
  );
  return name as string;
}

function crossCheckPolicy(where: string, p: JobPolicy): void {
  if (
    p.retryDelayMs !== undefined &&
    p.retryDelayMaxMs !== undefined &&
    p.retryDelayMaxMs < p.retryDelayMs
  ) {
    throw new ConfigError(
      `${where}: expected \`retryDelayMaxMs\` (${p.retryDelayMaxMs}) to be at least \`retryDelayMs\` (${p.retryDelayMs})`,
    );
  }
}

export function validateQueueOptions<P>(
  where: string,
  o: QueueOptions<P> | undefined,
): QueueOptions<P> {
  const v = validateOptions(where, queueOptionsSpec, o);
  crossCheckPolicy(where, v);
  if (v.payloadSchema !== undefined) {
    const std = (v.payloadSchema as { '~standard'?: { validate?: unknown } })['~standard'];
    if (!std || typeof std.validate !== 'function') {
      throw new ConfigError(
        `${where}: expected \`payloadSchema\` to be a Standard Schema validator (zod, valibot, arktype...), got an object without \`~standard.validate\``,
      );
    }
  }
  return v;
}

export function validateSendOptions(where: string, o: SendOptions | undefined): SendOptions {
  const v = validateOptions(where, sendOptionsSpec, o);
  crossCheckPolicy(where, v);
  if (v.runAt !== undefined && v.delayMs !== undefined) {
    throw new ConfigError(`${where}: expected at most one of \`runAt\` and \`delayMs\`, got both`);
  }
  if (v.executor !== undefined && typeof (v.executor as { query?: unknown }).query !== 'function') {
    throw new ConfigError(
      `${where}: expected \`executor\` to have a query(text, values) method (a pg Client or PoolClient)`,
    );
  }
  return v;
}

export function validateWorkOptions(where: string, o: WorkOptions | undefined): WorkOptions {
  return validateOptions(where, workOptionsSpec, o);
}

/** A job policy with every field decided: what is written into the job row. */
export interface ResolvedPolicy {
  maxAttempts: number;
  retryDelayMs: number;
  retryBackoff: boolean;
  retryDelayMaxMs: number;
  timeoutMs: number | null;
  leaseMs: number;
  deadLetter: string | null;
  retentionMs: number;
  failedRetentionMs: number;
  priority: number;
}

/** Send options override queue defaults, which override library defaults. */
export function resolvePolicy(
  queue: JobPolicy,
  send: JobPolicy,
  defaults: { leaseMs: number } = { leaseMs: DEFAULT_LEASE_MS },
): ResolvedPolicy {
  const pick = <K extends keyof JobPolicy>(k: K, d: NonNullable<JobPolicy[K]> | null) =>
    send[k] !== undefined ? send[k] : queue[k] !== undefined ? queue[k] : d;
  const retryDelayMs = pick('retryDelayMs', DEFAULT_RETRY_DELAY_MS) as number;
  return {
    maxAttempts: (pick('retryLimit', DEFAULT_RETRY_LIMIT) as number) + 1,
    retryDelayMs,
    retryBackoff: pick('retryBackoff', DEFAULT_RETRY_BACKOFF) as boolean,
    retryDelayMaxMs: Math.max(
      retryDelayMs,
      pick('retryDelayMaxMs', DEFAULT_RETRY_DELAY_MAX_MS) as number,
    ),
    timeoutMs: (pick('timeoutMs', null) as number | null) ?? null,
    leaseMs: pick('leaseMs', defaults.leaseMs) as number,
    deadLetter: (pick('deadLetter', null) as string | null) ?? null,
    retentionMs: pick('retentionMs', DEFAULT_RETENTION_MS) as number,
    failedRetentionMs: pick('failedRetentionMs', DEFAULT_FAILED_RETENTION_MS) as number,
    priority: pick('priority', DEFAULT_PRIORITY) as number,
  };
}

/** The policy fields a queue stores (its `policy` column): JobPolicy without functions. */
export function storablePolicy(o: JobPolicy): JobPolicy {
  const out: JobPolicy = {};
  for (const key of Object.keys(jobPolicySpec) as (keyof JobPolicy)[]) {
    if (o[key] !== undefined) (out as Record<string, unknown>)[key] = o[key];
  }
  return out;
}

/** Retry delay for the attempt that just failed (1-based), with full jitter over the upper half. */
export function retryDelayFor(
  attempt: number,
  p: { retryDelayMs: number; retryBackoff: boolean; retryDelayMaxMs: number },
  random: () => number = Math.random,
): number {
  if (!p.retryBackoff) return p.retryDelayMs;
  const exp = Math.min(p.retryDelayMaxMs, p.retryDelayMs * 2 ** Math.min(attempt - 1, 40));
  return Math.round(exp / 2 + (random() * exp) / 2);
}
