/**
 * The producer API: send and sendMany. Options resolve send → queue → library defaults into
 * every row, so a worker needs no policy lookup. One round trip inserts any number of jobs.
 */
import {
  checkQueueName,
  DEFAULT_LEASE_MS,
  DEFAULT_MAX_PAYLOAD_BYTES,
  resolvePolicy,
  type SendOptions,
  validateSendOptions,
} from '../config/options.js';
import { isConnectionError } from '../db/circuit-breaker.js';
import type { Database } from '../db/database.js';
import { arrayLiteral } from '../db/array-literal.js';
import type { Executor } from '../db/executor.js';
import { unstorableInJsonb } from '../db/json-text.js';
import { PayloadError, UnknownQueueError } from '../errors.js';
import type { Queries } from '../sql/queries.js';
import type { QueueRegistry } from './queue-registry.js';

export interface JobInput {
  queue: string;
  payload?: unknown;
  options?: Omit<SendOptions, 'executor'>;
}

/** One job row as insertJobs takes it: every policy field resolved. */
export interface InsertRow {
  queue: string;
  priority: number;
  runAt: string | null;
  payload: string;
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
  /** Someone will wait for the result (sendAndWait): announce the end, keep it to be read. */
  notifyFinish: boolean;
}

/** Sends waiting to share one insert statement. */
interface Waiting {
  rows: InsertRow[];
  resolve: (ids: string[]) => void;
  reject: (error: unknown) => void;
}

/** Inserts of coalesced sends that may run at once; the rest wait and go together. */
const COALESCE_IN_FLIGHT = 2;
/** The most rows one coalesced insert carries. */
const COALESCE_MAX_ROWS = 1_000;

export class Producer {
  private waiting: Waiting[] = [];
  private inFlight = 0;
  private flushQueued = false;

  constructor(
    private readonly db: Database,
    private readonly q: Queries,
    private readonly queues: QueueRegistry,
    private readonly maxPayloadBytes = DEFAULT_MAX_PAYLOAD_BYTES,
    private readonly defaultLeaseMs = DEFAULT_LEASE_MS,
  ) {}

  /** Sends one job; returns its id (for a taken singleton key, the id of the holder). */
  async send(
    queue: string,
    payload: unknown,
    options?: SendOptions,
    /** sendAndWait: the job is marked as waited for from its first moment. */
    waited = false,
  ): Promise<string> {
    const { executor, ...rest } = validateSendOptions(`send(${JSON.stringify(queue)})`, options);
    const ids = await this.sendRows(
      [{ queue, payload, options: rest }],
      executor,
      'send',
      true,
      waited,
    );
    return ids[0]!;
  }

  /** Sends many jobs in one statement; returns their ids in input order. */
  async sendMany(jobs: readonly JobInput[], options?: { executor?: Executor }): Promise<string[]> {
    if (!Array.isArray(jobs)) {
      throw new PayloadError(
        '',
        `sendMany: expected an array of { queue, payload, options }, got ${typeof jobs}`,
      );
    }
    if (jobs.length === 0) return [];
    return this.sendRows(jobs, options?.executor, 'sendMany');
  }

  private async sendRows(
    jobs: readonly JobInput[],
    executor: Executor | undefined,
    where: string,
    /** send() has checked its options already (its message names the call). */
    optionsChecked = false,
    waited = false,
  ): Promise<string[]> {
    const names = new Set<string>();
    jobs.forEach((job, i) => {
      const w = jobs.length === 1 ? where : `${where}: job ${i}`;
      checkQueueName(w, job?.queue);
      if (job.options !== undefined && !optionsChecked) {
        validateSendOptions(`${w} (${job.queue})`, job.options);
      }
      names.add(job.queue);
      if (job.options?.deadLetter) names.add(job.options.deadLetter);
    });
    const queues = await this.queues.require(names);
    const rows: InsertRow[] = [];
    for (const [i, job] of jobs.entries()) {
      const info = queues.get(job.queue)!;
      const o = job.options ?? {};
      const policy = resolvePolicy(info.policy, o, { leaseMs: this.defaultLeaseMs });
      if (policy.deadLetter && !queues.has(policy.deadLetter)) {
        await this.queues.require([policy.deadLetter]);
      }
      if (policy.deadLetter === job.queue) {
        throw new UnknownQueueError(`${job.queue} (a queue cannot be its own dead-letter queue)`);
      }
      const payload = await this.checkPayload(
        job.queue,
        job.payload,
        jobs.length > 1 ? i : undefined,
      );
      const runAt =
        o.runAt !== undefined
          ? o.runAt.toISOString()
          : o.delayMs
            ? new Date(Date.now() + o.delayMs).toISOString()
            : null;
      rows.push({
        queue: job.queue,
        priority: policy.priority,
        runAt,
        payload,
        maxAttempts: policy.maxAttempts,
        retryDelayMs: policy.retryDelayMs,
        retryBackoff: policy.retryBackoff,
        retryDelayMaxMs: policy.retryDelayMaxMs,
        timeoutMs: policy.timeoutMs,
        leaseMs: policy.leaseMs,
        singletonKey: o.singletonKey ?? null,
        deadLetter: policy.deadLetter,
        retentionMs: policy.retentionMs,
        failedRetentionMs: policy.failedRetentionMs,
        notifyFinish: waited,
      });
    }
    return this.insert(rows, executor);
  }

  private async checkPayload(queue: string, payload: unknown, index?: number): Promise<string> {
    const at = index === undefined ? '' : ` (job ${index})`;
    let value: unknown = payload === undefined ? null : payload;
    const validator = this.queues.validatorFor(queue);
    if (validator) {
      const result = await validator['~standard'].validate(value);
      if (result.issues) {
        const issues = result.issues.map((issue) => {
          const path = issue.path
            ?.map((p) => (typeof p === 'object' && p !== null ? p.key : p))
            .map(String)
            .join('.');
          return path ? { message: issue.message, path } : { message: issue.message };
        });
        const detail = issues
          .map((i) => (i.path ? `\`${i.path}\`: ${i.message}` : i.message))
          .join('; ');
        throw new PayloadError(
          queue,
          `Invalid payload for queue \`${queue}\`${at}: ${detail}`,
          issues,
        );
      }
      value = result.value;
    }
    let json: string | undefined;
    try {
      json = JSON.stringify(value);
    } catch (err) {
      throw new PayloadError(
        queue,
        `Payload for queue \`${queue}\`${at} is not JSON-serialisable: ${(err as Error).message}`,
      );
    }
    if (json === undefined) {
      throw new PayloadError(
        queue,
        `Payload for queue \`${queue}\`${at} is not JSON-serialisable (got ${typeof value})`,
      );
    }
    const unstorable = unstorableInJsonb(json);
    if (unstorable) {
      throw new PayloadError(
        queue,
        `Payload for queue \`${queue}\`${at} holds ${unstorable}, which PostgreSQL jsonb cannot store`,
      );
    }
    const bytes = Buffer.byteLength(json, 'utf8');
    if (bytes > this.maxPayloadBytes) {
      throw new PayloadError(
        queue,
        `Payload for queue \`${queue}\`${at} is ${bytes} bytes; expected at most ${this.maxPayloadBytes} (maxPayloadBytes)`,
      );
    }
    return json;
  }

  private async insert(rows: InsertRow[], executor: Executor | undefined): Promise<string[]> {
    // Outside a caller's transaction, concurrent sends share statements (micro-batching):
    // while inserts are in flight, new sends wait and then go together in one statement,
    // with one NOTIFY per queue. A send that finds nothing in flight goes at once (after the
    // current microtask), so a lone send waits for nobody.
    if (executor === undefined && !rows.some((r) => r.singletonKey !== null)) {
      return new Promise((resolve, reject) => {
        this.waiting.push({ rows, resolve, reject });
        if (this.inFlight < COALESCE_IN_FLIGHT && !this.flushQueued) {
          this.flushQueued = true;
          queueMicrotask(() => {
            this.flushQueued = false;
            this.flushWaiting();
          });
        }
      });
    }
    return this.insertNow(rows, executor);
  }

  private flushWaiting(): void {
    while (this.inFlight < COALESCE_IN_FLIGHT && this.waiting.length > 0) {
      let count = 0;
      let take = 0;
      while (take < this.waiting.length) {
        const n = this.waiting[take]!.rows.length;
        if (take > 0 && count + n > COALESCE_MAX_ROWS) break;
        count += n;
        take++;
      }
      const batch = this.waiting.splice(0, take);
      this.inFlight++;
      void this.insertShared(batch).finally(() => {
        this.inFlight--;
        this.flushWaiting();
      });
    }
  }

  /** One statement for every waiting send; if it fails for a reason other than the
   * connection, each send is tried alone, so one bad row fails only its own send. */
  private async insertShared(batch: Waiting[]): Promise<void> {
    if (batch.length === 1) {
      const w = batch[0]!;
      await this.insertNow(w.rows, undefined).then(w.resolve, w.reject);
      return;
    }
    let ids: string[];
    try {
      ids = await this.insertNow(
        batch.flatMap((w) => w.rows),
        undefined,
      );
    } catch (error) {
      if (isConnectionError(error)) {
        for (const w of batch) w.reject(error);
        return;
      }
      await Promise.all(
        batch.map((w) => this.insertNow(w.rows, undefined).then(w.resolve, w.reject)),
      );
      return;
    }
    let at = 0;
    for (const w of batch) {
      w.resolve(ids.slice(at, at + w.rows.length));
      at += w.rows.length;
    }
  }

  private async insertNow(rows: InsertRow[], executor: Executor | undefined): Promise<string[]> {
    const values = insertColumns(rows).map(arrayLiteral);
    const withKeys = rows.some((r) => r.singletonKey !== null);
    if (!withKeys) {
      const r = await this.db.query<{ id: string }>('send', this.q.insertJobs, values, executor);
      return r.rows.map((row) => row.id);
    }
    const r = await this.db.query<{ id: string; queue: string; singleton_key: string | null }>(
      'send',
      this.q.insertJobsSingleton,
      values,
      executor,
    );
    // Rows without a key come back in input order; keyed rows are matched by (queue, key).
    const byKey = new Map<string, string>();
    const plain: string[] = [];
    for (const row of r.rows) {
      if (row.singleton_key === null) plain.push(row.id);
      else byKey.set(`${row.queue}\u0000${row.singleton_key}`, row.id);
    }
    const missing = rows.filter(
      (row) => row.singletonKey !== null && !byKey.has(`${row.queue}\u0000${row.singletonKey}`),
    );
    if (missing.length > 0) {
      const h = await this.db.query<{ id: string; queue: string; singleton_key: string }>(
        'send',
        this.q.singletonHolders,
        [missing.map((m) => m.queue), missing.map((m) => m.singletonKey)],
        executor,
      );
      for (const row of h.rows) byKey.set(`${row.queue}\u0000${row.singleton_key}`, row.id);
    }
    let next = 0;
    return rows.map((row) => {
      if (row.singletonKey === null) return plain[next++]!;
      const id = byKey.get(`${row.queue}\u0000${row.singletonKey}`);
      // The holder finished between the insert and the look-up: the key is free again.
      if (id === undefined)
        throw new Error(`singleton key ${row.singletonKey} changed hands during send; retry`);
      return id;
    });
  }
}

/** The parallel arrays of insertJobs ($1..$15), in parameter order. */
export function insertColumns(rows: readonly InsertRow[]): (string | number | boolean | null)[][] {
  return [
    rows.map((r) => r.queue),
    rows.map((r) => r.priority),
    rows.map((r) => r.runAt),
    rows.map((r) => r.payload),
    rows.map((r) => r.maxAttempts),
    rows.map((r) => r.retryDelayMs),
    rows.map((r) => r.retryBackoff),
    rows.map((r) => r.retryDelayMaxMs),
    rows.map((r) => r.timeoutMs),
    rows.map((r) => r.leaseMs),
    rows.map((r) => r.singletonKey),
    rows.map((r) => r.deadLetter),
    rows.map((r) => r.retentionMs),
    rows.map((r) => r.failedRetentionMs),
    rows.map((r) => r.notifyFinish),
  ];
}
