/**
 * Typed errors. Every error hark throws is a `HarkError` with a stable `code`, so callers can
 * branch on `err.code` instead of parsing messages.
 */
export class HarkError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A configuration or option value is invalid. */
export class ConfigError extends HarkError {
  constructor(message: string) {
    super('HARK_CONFIG', message);
  }
}

/** A payload failed the queue's Standard Schema validation, or is not JSON-serialisable. */
export class PayloadError extends HarkError {
  readonly queue: string;
  readonly issues: readonly { message: string; path?: string }[];
  constructor(queue: string, message: string, issues: { message: string; path?: string }[] = []) {
    super('HARK_PAYLOAD', message);
    this.queue = queue;
    this.issues = issues;
  }
}

/** A queue was used that has not been created. */
export class UnknownQueueError extends HarkError {
  readonly queue: string;
  constructor(queue: string) {
    super(
      'HARK_UNKNOWN_QUEUE',
      `Unknown queue \`${queue}\`: create it first with \`hark.createQueue(${JSON.stringify(queue)})\``,
    );
    this.queue = queue;
  }
}

export class JobNotFoundError extends HarkError {
  readonly jobId: string;
  constructor(jobId: string) {
    super('HARK_JOB_NOT_FOUND', `No job with id \`${jobId}\``);
    this.jobId = jobId;
  }
}

/** A transition was asked for that the job's current state does not allow. */
export class InvalidStateError extends HarkError {
  readonly jobId: string;
  readonly state: string;
  constructor(jobId: string, state: string, expected: string) {
    super('HARK_INVALID_STATE', `Job \`${jobId}\` is \`${state}\`; expected it to be ${expected}`);
    this.jobId = jobId;
    this.state = state;
  }
}

/** The worker no longer owns the job: its lease expired and it was rescued, or it was cancelled. */
export class LeaseLostError extends HarkError {
  readonly jobId: string;
  constructor(jobId: string) {
    super('HARK_LEASE_LOST', `Lost the lease on job \`${jobId}\`; another attempt may own it`);
    this.jobId = jobId;
  }
}

/** An attempt ran longer than the job's `timeoutMs`. */
export class JobTimeoutError extends HarkError {
  constructor(jobId: string, timeoutMs: number) {
    super('HARK_TIMEOUT', `Job \`${jobId}\` timed out after ${timeoutMs} ms`);
  }
}

/** The worker is shutting down; the attempt is released without spending it. */
export class ShutdownError extends HarkError {
  constructor() {
    super('HARK_SHUTDOWN', 'The worker is shutting down');
  }
}

/** The schema in the database is not the version this library expects (migrate: 'verify'). */
export class SchemaVersionError extends HarkError {
  constructor(message: string) {
    super('HARK_SCHEMA_VERSION', message);
  }
}

/** A waited-for job ended in `failed` or `cancelled`. */
export class JobFailedError extends HarkError {
  readonly jobId: string;
  readonly state: string;
  readonly lastError: unknown;
  constructor(jobId: string, state: string, lastError: unknown) {
    const detail =
      lastError && typeof lastError === 'object' && 'message' in lastError
        ? `: ${String((lastError as { message: unknown }).message)}`
        : '';
    super('HARK_JOB_FAILED', `Job \`${jobId}\` ended \`${state}\`${detail}`);
    this.jobId = jobId;
    this.state = state;
    this.lastError = lastError;
  }
}

/** Waiting for something (a job's result, a shutdown) took longer than allowed. */
export class WaitTimeoutError extends HarkError {
  constructor(what: string, timeoutMs: number) {
    super('HARK_WAIT_TIMEOUT', `Timed out after ${timeoutMs} ms waiting for ${what}`);
  }
}

/** The instance was used before `start()` or after `stop()`. */
export class NotRunningError extends HarkError {
  constructor(what: string) {
    super('HARK_NOT_RUNNING', `${what}: the hark instance is not running (call start() first)`);
  }
}

/**
 * Throw from a handler to fail the job at once, without further attempts (it still goes to the
 * queue's dead-letter queue when it has one).
 */
export class NonRetryableError extends Error {
  readonly code = 'HARK_NON_RETRYABLE';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NonRetryableError';
  }
}
