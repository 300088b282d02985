/**
 * The per-queue fetch loop. It fetches when told: by a notification, by a timer armed for the
 * earliest known future run_at, or because a slot freed after a fetch that filled every slot.
 * A fetch that comes back short means the queue is drained, and the worker sleeps: no statement
 * runs while nothing is due. Only while the listener is unhealthy does it poll, at a modest
 * interval.
 */
import { randomUUID } from 'node:crypto';
import { retryDelayFor } from '../config/options.js';
import type { Database } from '../db/database.js';
import { unstorableInJsonb } from '../db/json-text.js';
import { JobTimeoutError, LeaseLostError, NonRetryableError, ShutdownError } from '../errors.js';
import type { HarkEventEmitter } from '../events.js';
import type { Queries } from '../sql/queries.js';
import type { Completer } from './completer.js';
import type { Heartbeat } from './heartbeat.js';
import {
  type BatchHandler,
  type ClaimedJob,
  claimedFromRow,
  errorRecord,
  type JobHandler,
  publicJob,
} from './job-context.js';

const MAX_TIMER_MS = 2_147_483_647;

export interface QueueWorkerOptions {
  queue: string;
  concurrency: number;
  batchSize: number;
  fallbackPollMs: number;
  handler: { kind: 'single'; fn: JobHandler } | { kind: 'batch'; fn: BatchHandler };
}

export interface QueueWorkerDeps {
  db: Database;
  q: Queries;
  events: HarkEventEmitter;
  completer: Completer;
  heartbeat: Heartbeat;
  workerId: string;
  /** Tells the leader about a claim it could not have heard of (start-up, polling). */
  announceClaim: (leaseMs: number) => void;
}

interface Running {
  jobs: ClaimedJob[];
  controller: AbortController;
  done: Promise<void>;
  released: boolean;
}

export class QueueWorker {
  readonly queue: string;
  private slotsInUse = 0;
  private fetching = false;
  private wakeAgain = false;
  private fetchWhenFree = false;
  private stopping = false;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Number.POSITIVE_INFINITY;
  private pollTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private errorStreak = 0;
  private cancelBreakerWait: (() => void) | undefined;
  /** The next claim was not caused by a notification the leader also heard. */
  private unannounced = true;
  private readonly running = new Set<Running>();
  private readonly byJobId = new Map<string, Running>();

  constructor(
    private readonly o: QueueWorkerOptions,
    private readonly d: QueueWorkerDeps,
  ) {
    this.queue = o.queue;
  }

  /** Jobs in flight in this worker. */
  get activeCount(): number {
    return this.byJobId.size;
  }

  /** Something may be due now: fetch (coalesced with a fetch in progress). */
  wake(): void {
    if (this.stopping) return;
    if (this.fetching) {
      this.wakeAgain = true;
      return;
    }
    void this.fetchLoop();
  }

  /** Fetch after missing notifications (a reconnect): the claim must be announced. */
  catchUp(): void {
    this.unannounced = true;
    this.wake();
  }

  /** A job becomes due at `atMs` (epoch ms); 0 or past means now. */
  dueAt(atMs: number): void {
    if (atMs <= Date.now()) this.wake();
    else this.armTimer(atMs);
  }

  /** While the listener cannot be trusted, poll; stop as soon as it can. */
  setPolling(on: boolean): void {
    if (on && !this.pollTimer && !this.stopping) {
      this.unannounced = true;
      this.pollTimer = setInterval(() => {
        this.wake();
        void this.refreshTimer();
      }, this.o.fallbackPollMs);
    } else if (!on && this.pollTimer) {
      clearInterval(this.pollTimer);
      this.pollTimer = undefined;
    }
  }

  /** Aborts a job of this worker that was cancelled elsewhere. */
  abortJob(id: string): boolean {
    const run = this.byJobId.get(id);
    if (!run) return false;
    this.d.heartbeat.lose(id);
    return true;
  }

  private armTimer(atMs: number): void {
    if (atMs >= this.timerAt || this.stopping) return;
    clearTimeout(this.timer);
    this.timerAt = atMs;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.timerAt = Number.POSITIVE_INFINITY;
        if (atMs > Date.now()) {
          this.armTimer(atMs); // a far-future time wraps the 24.8-day setTimeout limit
          return;
        }
        this.wake();
        void this.refreshTimer();
      },
      Math.min(MAX_TIMER_MS, Math.max(0, atMs - Date.now())),
    );
  }

  /** After a timer fires, look up the next future run_at of this queue (one statement). */
  private async refreshTimer(): Promise<void> {
    try {
      const r = await this.d.db.query<{ at: number | null; due: boolean }>(
        'next-run-at',
        this.d.q.nextRunAt,
        [[this.queue]],
      );
      this.onNextRunAt(r.rows[0]);
    } catch (err) {
      this.d.events.emit('worker:error', { queue: this.queue, error: err as Error });
    }
  }

  /** Applies a nextRunAt row: fetch if something is due, arm the timer for the next one. */
  onNextRunAt(row: { at: number | null; due: boolean } | undefined): void {
    if (!row) return;
    if (row.due) this.wake();
    if (row.at !== null) this.armTimer(row.at);
  }

  private async fetchLoop(): Promise<void> {
    this.fetching = true;
    try {
      for (;;) {
        this.wakeAgain = false;
        const free = this.o.concurrency - this.slotsInUse;
        if (free <= 0 || this.stopping) {
          this.fetchWhenFree = !this.stopping;
          return;
        }
        if (this.d.db.breaker.isOpen) {
          // The database is down: no statements until the breaker's probe gets an answer.
          this.cancelBreakerWait?.();
          this.cancelBreakerWait = this.d.db.breaker.whenClosed(() => this.wake());
          return;
        }
        const limit = free * this.o.batchSize;
        const token = randomUUID();
        let rows: ClaimedJob[];
        try {
          const r = await this.d.db.query('claim', this.d.q.claim, [
            this.queue,
            limit,
            token,
            this.d.workerId,
          ]);
          rows = r.rows.map((row) => claimedFromRow(row, token));
          this.errorStreak = 0;
        } catch (err) {
          this.errorStreak++;
          this.d.events.emit('worker:error', { queue: this.queue, error: err as Error });
          const delay = Math.min(30_000, 100 * 2 ** Math.min(this.errorStreak, 10));
          clearTimeout(this.retryTimer);
          this.retryTimer = setTimeout(() => this.wake(), delay);
          return;
        }
        if (this.unannounced && rows.length > 0) {
          // The leader learns of claims from the notifications that cause them; this one had
          // none (start-up catch-up or polling), so tell it, or nobody would plan a rescue.
          this.unannounced = this.pollTimer !== undefined;
          this.d.announceClaim(Math.min(...rows.map((r) => r.leaseMs)));
        }
        this.dispatch(rows);
        const full = rows.length === limit;
        // Full: more may be waiting, fetch again as slots free. Short: drained, sleep.
        this.fetchWhenFree = full;
        if (!this.wakeAgain && !full) return;
        if (this.o.concurrency - this.slotsInUse <= 0) {
          this.fetchWhenFree = true;
          return;
        }
      }
    } finally {
      this.fetching = false;
    }
  }

  private dispatch(rows: ClaimedJob[]): void {
    if (rows.length === 0) return;
    if (this.o.handler.kind === 'single') {
      for (const job of rows) this.start([job]);
    } else {
      for (let i = 0; i < rows.length; i += this.o.batchSize) {
        this.start(rows.slice(i, i + this.o.batchSize));
      }
    }
  }

  private start(jobs: ClaimedJob[]): void {
    this.slotsInUse++;
    const controller = new AbortController();
    const run: Running = { jobs, controller, done: Promise.resolve(), released: false };
    this.running.add(run);
    for (const job of jobs) {
      this.byJobId.set(job.id, run);
      this.d.heartbeat.track(job.id, job.token, job.leaseMs, () => {
        this.d.events.emit('job:lease-lost', {
          id: job.id,
          queue: job.queue,
          attempt: job.attempt,
        });
        controller.abort(new LeaseLostError(job.id));
      });
      this.d.events.emit('job:start', {
        id: job.id,
        queue: job.queue,
        attempt: job.attempt,
        workerId: this.d.workerId,
        waitMs: Date.now() - job.runAt.getTime(),
      });
    }
    run.done = this.execute(run)
      .catch((error) =>
        this.d.events.emit('worker:error', { queue: this.queue, error: error as Error }),
      )
      .finally(() => {
        // Leases were untracked when the handler settled (execute) or by stop().
        for (const job of jobs) {
          // Another attempt of the same job may have been claimed meanwhile: leave its entry.
          if (this.byJobId.get(job.id) === run) this.byJobId.delete(job.id);
        }
        this.running.delete(run);
        this.slotsInUse--;
        if (this.fetchWhenFree && !this.stopping) this.wake();
      });
  }

  private async execute(run: Running): Promise<void> {
    const { jobs, controller } = run;
    const startedAt = Date.now();
    const timeouts = jobs.map((j) => j.timeoutMs).filter((t): t is number => t !== null);
    const timeoutMs = timeouts.length > 0 ? Math.min(...timeouts) : null;
    let timer: NodeJS.Timeout | undefined;
    if (timeoutMs !== null) {
      timer = setTimeout(
        () => controller.abort(new JobTimeoutError(jobs[0]!.id, timeoutMs)),
        timeoutMs,
      );
    }
    // The attempt ends when the handler settles or the signal aborts, whichever is first: a
    // handler that ignores its signal cannot hold a slot past its timeout or lease.
    const aborted = new Promise<never>((_, reject) => {
      if (controller.signal.aborted) reject(controller.signal.reason);
      controller.signal.addEventListener('abort', () => reject(controller.signal.reason), {
        once: true,
      });
    });
    aborted.catch(() => {});
    let outcome: { ok: true; value: unknown } | { ok: false; error: unknown };
    try {
      const h = this.o.handler;
      const value = await Promise.race([
        h.kind === 'single'
          ? Promise.resolve().then(() => h.fn(publicJob(jobs[0]!), controller.signal))
          : Promise.resolve().then(() => h.fn(jobs.map(publicJob), controller.signal)),
        aborted,
      ]);
      outcome = { ok: true, value };
    } catch (error) {
      outcome = { ok: false, error };
    } finally {
      clearTimeout(timer);
    }
    // The handler has settled: stop renewing. A completion racing a heartbeat would otherwise
    // look like a lost lease; if the outcome cannot be written before the lease lapses, the job
    // is rescued and runs again, which is the at-least-once contract.
    for (const job of jobs) this.d.heartbeat.untrack(job.id, job.token);
    if (run.released) return; // shutdown handed the jobs back
    const reason = controller.signal.reason;
    if (controller.signal.aborted && reason instanceof LeaseLostError) return; // not ours any more
    const durationMs = Date.now() - startedAt;
    if (outcome.ok && !controller.signal.aborted) {
      const value = outcome.value;
      const perJob =
        this.o.handler.kind === 'batch' && Array.isArray(value) && value.length === jobs.length;
      // Serialised once, here: a value that cannot be stored fails the attempt for good.
      let outputs: (string | null)[];
      try {
        outputs = jobs.map((_, i) => toJson(perJob ? (value as unknown[])[i] : value));
      } catch {
        const error = new NonRetryableError(
          "the handler's return value is not JSON-serialisable (or holds a NUL character or an unpaired surrogate), so it cannot be stored as the job's output",
        );
        await Promise.all(jobs.map((job) => this.failJob(job, error)));
        return;
      }
      await Promise.all(
        jobs.map(async (job, i) => {
          const accepted = await this.d.completer.complete(job.id, job.token, outputs[i] ?? null);
          if (accepted)
            this.d.events.emit('job:complete', {
              id: job.id,
              queue: job.queue,
              attempt: job.attempt,
              durationMs,
            });
          else
            this.d.events.emit('job:lease-lost', {
              id: job.id,
              queue: job.queue,
              attempt: job.attempt,
            });
        }),
      );
      return;
    }
    const error = outcome.ok ? (reason as Error) : outcome.error;
    await Promise.all(jobs.map((job) => this.failJob(job, error)));
  }

  private async failJob(job: ClaimedJob, error: unknown): Promise<void> {
    const final = error instanceof NonRetryableError || job.attempt >= job.maxAttempts;
    const retryMs = final ? null : retryDelayFor(job.attempt, job);
    const result = await this.d.completer.fail(
      job.id,
      job.token,
      errorRecord(error, job.attempt),
      retryMs,
    );
    const err = error instanceof Error ? error : new Error(String(error));
    const ref = { id: job.id, queue: job.queue, attempt: job.attempt };
    if (!result.accepted) this.d.events.emit('job:lease-lost', ref);
    else if (retryMs !== null) {
      this.d.events.emit('job:retry', { ...ref, error: err, retryInMs: retryMs });
      this.armTimer(Date.now() + retryMs);
    } else
      this.d.events.emit('job:fail', {
        ...ref,
        error: err,
        deadLetter: result.deadLettered ? job.deadLetter : null,
      });
  }

  /**
   * Stops fetching, lets running jobs finish until the deadline, then aborts the rest and
   * returns their jobs (to be released without spending an attempt).
   */
  async stop(deadline: number): Promise<ClaimedJob[]> {
    this.stopping = true;
    this.cancelBreakerWait?.();
    clearTimeout(this.timer);
    clearTimeout(this.retryTimer);
    this.setPolling(false);
    const all = () => Promise.all([...this.running].map((r) => r.done));
    const left = deadline - Date.now();
    if (this.running.size > 0 && left > 0) {
      let t: NodeJS.Timeout | undefined;
      await Promise.race([
        all(),
        new Promise((r) => {
          t = setTimeout(r, left);
        }),
      ]);
      clearTimeout(t);
    }
    const released: ClaimedJob[] = [];
    for (const run of this.running) {
      run.released = true;
      released.push(...run.jobs);
      for (const job of run.jobs) this.d.heartbeat.untrack(job.id, job.token);
      run.controller.abort(new ShutdownError());
    }
    await all();
    return released;
  }
}

/** A handler's return value as stored in the job's output (undefined: null). Throws if unstorable. */
function toJson(value: unknown): string | null {
  const json = value === undefined ? null : (JSON.stringify(value) ?? null);
  if (json !== null && unstorableInJsonb(json)) throw new Error('output cannot be stored');
  return json;
}
