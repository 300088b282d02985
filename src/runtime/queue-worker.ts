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
import type { ClaimStart } from '../listener/messages.js';
import type { Queries } from '../sql/queries.js';
import type { Completer } from './completer.js';
import type { Heartbeat } from './heartbeat.js';
import {
  type BatchHandler,
  type ClaimedJob,
  claimedFromRaw,
  errorRecord,
  type JobHandler,
  publicJob,
  type SignalSource,
} from './job-context.js';

const MAX_TIMER_MS = 2_147_483_647;
/** Claims of one queue worker in flight at once. */
const MAX_CLAIMS = 2;
/** A claim from the front of the queue at least this often, whatever the cursor says. */
const FULL_CLAIM_EVERY_MS = 30_000;

/** A claim key: jobs are claimed in ascending (-priority, run_at, id). */
interface ClaimKey {
  negPriority: number;
  runAtUs: number;
  id: number;
}

function keyBefore(a: ClaimKey, b: ClaimKey): boolean {
  if (a.negPriority !== b.negPriority) return a.negPriority < b.negPriority;
  if (a.runAtUs !== b.runAtUs) return a.runAtUs < b.runAtUs;
  return a.id < b.id;
}

export interface QueueWorkerOptions {
  queue: string;
  concurrency: number;
  batchSize: number;
  /** While handlers run, refill only once this many slots are free (an idle worker fetches at once). */
  minFetch: number;
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

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

/** One handler call (one job, or one batch) from claim to its outcome being handed on. */
class Running implements SignalSource {
  /** Made on first use: most handlers never look at their signal. */
  private controller: AbortController | undefined;
  aborted = false;
  reason: unknown;
  /** Settles the attempt early (abort); set while the handler runs. */
  finish: ((o: Outcome) => void) | undefined;
  /** The handler has settled or was abandoned: the slot is free again. */
  settled = false;
  released = false;

  constructor(readonly jobs: ClaimedJob[]) {}

  signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.aborted) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.controller?.abort(reason);
    this.finish?.({ ok: false, error: reason });
  }
}

export class QueueWorker {
  readonly queue: string;
  private slotsInUse = 0;
  /** Claims in flight, and the slots they may fill. */
  private readonly claims = new Set<Promise<void>>();
  private reserved = 0;
  /** Woken (new work may be due) since the last claim began. */
  private dirty = false;
  /** The last claim to return came back full: more is probably waiting. */
  private more = false;
  /**
   * The next claim starts after this key (null: at the front): the largest key claimed so far,
   * moved back whenever jobs may have appeared before it (see resetCursor). Under a pinned xmin
   * horizon this keeps claims from walking the dead index entries of every job claimed before.
   */
  private cursor: ClaimKey | null = null;
  /**
   * Resets made while claims were in flight (null key: to the front). A claim that returns
   * moves the cursor no further than the smallest key reset since it began: a job announced
   * meanwhile may have committed after its snapshot.
   */
  private resets: { seq: number; key: ClaimKey | null }[] = [];
  private resetSeq = 0;
  private lastFullClaim = 0;
  /** Jobs whose claim returned after stop() had stopped waiting for it. */
  private late: ClaimedJob[] = [];
  private stopping = false;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Number.POSITIVE_INFINITY;
  private pollTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private errorStreak = 0;
  private cancelBreakerWait: (() => void) | undefined;
  /** The next claim was not caused by a notification the leader also heard. */
  private unannounced = true;
  /** Handler calls that have not settled yet. */
  private readonly running = new Set<Running>();
  private readonly idleWaiters: (() => void)[] = [];
  private refillQueued = false;
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
    this.dirty = true;
    this.pump();
  }

  /** Fetch after missing notifications (a reconnect): the claim must be announced. */
  catchUp(): void {
    this.unannounced = true;
    this.resetCursor(null);
    this.wake();
  }

  /**
   * Jobs become due at `atMs` (epoch ms; 0 or past means now). `from` is their smallest claim
   * key, when the announcement carries it; otherwise they may sit anywhere in the queue.
   */
  dueAt(atMs: number, from: ClaimStart | null = null): void {
    this.resetCursor(from);
    if (atMs <= Date.now()) this.wake();
    else this.armTimer(atMs);
  }

  /** A job of this queue becomes due at `atMs` (epoch ms): arm the timer, nothing else. */
  dueLater(atMs: number): void {
    if (atMs > Date.now()) this.armTimer(atMs);
    else this.dueAt(atMs);
  }

  /** Jobs may wait before the cursor: start the next claim at `from` (null: the front). */
  private resetCursor(from: ClaimStart | null): void {
    const key =
      from === null ? null : { negPriority: from.negPriority, runAtUs: from.runAtUs, id: 0 };
    // Claims in flight may not have seen the announced jobs; they read this log on return.
    if (this.claims.size > 0) this.resets.push({ seq: ++this.resetSeq, key });
    if (this.cursor === null) return;
    if (key === null) this.cursor = null;
    else if (keyBefore(key, this.cursor)) this.cursor = key;
  }

  /** While the listener cannot be trusted, poll; stop as soon as it can. */
  setPolling(on: boolean): void {
    if (on && !this.pollTimer && !this.stopping) {
      this.unannounced = true;
      this.pollTimer = setInterval(() => {
        this.resetCursor(null);
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
        // Scheduled jobs and retries coming due may sit before the cursor.
        this.resetCursor(null);
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
    if (row.due) {
      // Due scheduled jobs or retries may sit before the cursor (a higher priority).
      this.resetCursor(null);
      this.wake();
    }
    if (row.at !== null) this.armTimer(row.at);
  }

  /**
   * Starts claims while there is reason to (a wake, or a full last claim) and room for them.
   * Up to two claims run at once, each for at most half the slots: the database claims the
   * next batch while this process runs the last one.
   */
  private pump(): void {
    while (!this.stopping && this.claims.size < MAX_CLAIMS && (this.dirty || this.more)) {
      const busy = this.slotsInUse + this.reserved;
      const free = this.o.concurrency - busy;
      // Busy: claim once enough slots are free (work that arrives now waits for them; a slot
      // that frees pumps again).
      if (free <= 0 || (busy > 0 && free < this.o.minFetch)) return;
      if (this.d.db.breaker.isOpen) {
        // The database is down: no statements until the breaker's probe gets an answer.
        this.cancelBreakerWait?.();
        this.cancelBreakerWait = this.d.db.breaker.whenClosed(() => this.wake());
        return;
      }
      const slots = Math.min(free, this.fetchMax);
      // A wake is answered by this claim; `more` stays until a claim comes back short, so a
      // second claim can start while this one runs, as soon as slots free.
      this.dirty = false;
      this.reserved += slots;
      const claim = this.claim(slots).finally(() => {
        this.claims.delete(claim);
        this.pump();
      });
      this.claims.add(claim);
    }
  }

  private get fetchMax(): number {
    return this.o.concurrency < 2 ? this.o.concurrency : Math.ceil(this.o.concurrency / 2);
  }

  private async claim(slots: number): Promise<void> {
    const limit = slots * this.o.batchSize;
    const token = randomUUID();
    const now = Date.now();
    if (now - this.lastFullClaim >= FULL_CLAIM_EVERY_MS) {
      this.cursor = null;
      this.lastFullClaim = now;
    }
    const start = this.cursor;
    const seq = this.resetSeq;
    let rows: ClaimedJob[];
    try {
      const raw = await this.d.db.queryRaw(
        'claim',
        this.d.q.claim,
        [
          this.queue,
          limit,
          token,
          this.d.workerId,
          start?.negPriority ?? -2_147_483_648,
          start?.runAtUs ?? 0,
          start?.id ?? 0,
        ],
        true,
      );
      rows = new Array(raw.length);
      for (let i = 0; i < raw.length; i++) rows[i] = claimedFromRaw(raw[i]!, token);
      this.errorStreak = 0;
    } catch (err) {
      this.reserved -= slots;
      this.errorStreak++;
      // Only the retry timer wakes this worker again (no claim storm while the database
      // refuses), and the next claim starts at the front: a sibling claim may have moved the
      // cursor past rows this one had locked, which its rollback has just freed.
      this.more = false;
      this.resetCursor(null);
      this.d.events.emit('worker:error', { queue: this.queue, error: err as Error });
      if (this.stopping) return;
      const delay = Math.min(30_000, 100 * 2 ** Math.min(this.errorStreak, 10));
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.wake(), delay);
      return;
    }
    this.reserved -= slots;
    if (rows.length > 0) this.advanceCursor(rows, seq);
    this.pruneResets();
    if (this.stopping) {
      // stop() stopped waiting for this claim: hand its jobs back instead of starting them.
      this.late.push(...rows);
      return;
    }
    if (this.unannounced && rows.length > 0) {
      // The leader learns of claims from the notifications that cause them; this one had
      // none (start-up catch-up or polling), so tell it, or nobody would plan a rescue.
      this.unannounced = this.pollTimer !== undefined;
      let lease = Number.POSITIVE_INFINITY;
      for (const r of rows) lease = Math.min(lease, r.leaseMs);
      this.d.announceClaim(lease);
    }
    // Full: more may be waiting, claim again as slots free. Short: drained, sleep until woken.
    this.more = rows.length === limit;
    this.dispatch(rows);
  }

  /**
   * Moves the cursor to the largest key claimed (rows come back in no particular order), but
   * no further than any reset made since the claim began (`seq`).
   */
  private advanceCursor(rows: ClaimedJob[], seq: number): void {
    let max: ClaimKey | null = this.cursor;
    for (const r of rows) {
      const id = Number(r.id);
      if (!Number.isSafeInteger(id)) {
        this.cursor = null; // ids beyond 2^53: claim from the front
        return;
      }
      const key = { negPriority: -r.priority, runAtUs: r.runAtUs, id };
      if (max === null || keyBefore(max, key)) max = key;
    }
    for (const reset of this.resets) {
      if (reset.seq <= seq) continue;
      if (reset.key === null) return; // reset to the front since: leave the cursor there
      if (max !== null && keyBefore(reset.key, max)) max = reset.key;
    }
    if (this.cursor === null || (max !== null && keyBefore(this.cursor, max))) {
      // The cursor may have been moved back since the claim began; never past a reset key.
      this.cursor = max;
    }
  }

  /** Drops the resets no claim in flight can need. */
  private pruneResets(): void {
    if (this.claims.size <= 1) this.resets = [];
  }

  /**
   * A slot freed. Pump once per turn of the event loop, so the slots that free together (a
   * batch of short jobs) share one claim.
   */
  private onSlotFree(): void {
    if (!(this.dirty || this.more) || this.stopping || this.refillQueued) return;
    this.refillQueued = true;
    setImmediate(() => {
      this.refillQueued = false;
      this.pump();
    });
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
    const run = new Running(jobs);
    this.running.add(run);
    const events = this.d.events;
    const announce = events.has('job:start');
    const now = Date.now();
    for (const job of jobs) {
      this.byJobId.set(job.id, run);
      this.d.heartbeat.track(job.id, job.token, job.leaseMs, () => {
        events.emit('job:lease-lost', { id: job.id, queue: job.queue, attempt: job.attempt });
        run.abort(new LeaseLostError(job.id));
      });
      if (announce) {
        events.emit('job:start', {
          id: job.id,
          queue: job.queue,
          attempt: job.attempt,
          workerId: this.d.workerId,
          waitMs: now - job.runAtMs,
        });
      }
    }
    let timeoutMs: number | null = null;
    for (const j of jobs) {
      if (j.timeoutMs !== null && (timeoutMs === null || j.timeoutMs < timeoutMs))
        timeoutMs = j.timeoutMs;
    }
    let timer: NodeJS.Timeout | undefined;
    if (timeoutMs !== null) {
      const ms = timeoutMs;
      timer = setTimeout(() => run.abort(new JobTimeoutError(jobs[0]!.id, ms)), ms);
    }
    // The attempt ends when the handler settles or the attempt is aborted, whichever is first:
    // a handler that ignores its signal cannot hold a slot past its timeout or lease.
    this.invoke(run, (outcome) => {
      clearTimeout(timer);
      try {
        this.onOutcome(run, outcome, now);
      } catch (error) {
        this.settle(run);
        this.forget(run);
        events.emit('worker:error', { queue: this.queue, error: error as Error });
      }
    });
  }

  /** Calls the handler; `then` gets its outcome, or the abort's, whichever comes first. */
  private invoke(run: Running, then: (o: Outcome) => void): void {
    let open = true;
    const finish = (o: Outcome) => {
      if (!open) return;
      open = false;
      run.finish = undefined;
      then(o);
    };
    run.finish = finish;
    if (run.aborted) {
      finish({ ok: false, error: run.reason });
      return;
    }
    const h = this.o.handler;
    // Making a signal costs more than a no-op job: a handler declared with exactly one
    // parameter cannot read the second argument, so it gets none made (job.signal still
    // makes one on first use). Any other arity gets it as the second argument.
    const signal = h.fn.length === 1 ? (undefined as unknown as AbortSignal) : run.signal();
    let value: unknown;
    try {
      value =
        h.kind === 'single'
          ? h.fn(publicJob(run.jobs[0]!, run), signal)
          : h.fn(
              run.jobs.map((j) => publicJob(j, run)),
              signal,
            );
    } catch (error) {
      finish({ ok: false, error });
      return;
    }
    try {
      if (value !== null && typeof (value as PromiseLike<unknown>)?.then === 'function') {
        (value as PromiseLike<unknown>).then(
          (v) => finish({ ok: true, value: v }),
          (error) => finish({ ok: false, error }),
        );
      } else finish({ ok: true, value });
    } catch (error) {
      finish({ ok: false, error }); // a thenable whose then throws
    }
  }

  /** The handler settled or the attempt was aborted: free the slot, hand the outcome on. */
  private onOutcome(run: Running, outcome: Outcome, startedAt: number): void {
    const { jobs } = run;
    this.settle(run);
    if (run.released || (run.aborted && run.reason instanceof LeaseLostError)) {
      // Shutdown handed the jobs back, or they are not ours any more.
      this.forget(run);
      return;
    }
    const events = this.d.events;
    if (outcome.ok && !run.aborted) {
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
        this.failAll(run, error);
        return;
      }
      const durationMs = Date.now() - startedAt;
      let left = jobs.length;
      for (let i = 0; i < jobs.length; i++) {
        const job = jobs[i]!;
        this.d.completer.completeThen(job.id, job.token, outputs[i] ?? null, (accepted) => {
          if (!accepted)
            events.emit('job:lease-lost', { id: job.id, queue: job.queue, attempt: job.attempt });
          else if (events.has('job:complete'))
            events.emit('job:complete', {
              id: job.id,
              queue: job.queue,
              attempt: job.attempt,
              durationMs,
            });
          if (--left === 0) this.forget(run);
        });
      }
      return;
    }
    this.failAll(run, outcome.ok ? run.reason : outcome.error);
  }

  private failAll(run: Running, error: unknown): void {
    Promise.all(run.jobs.map((job) => this.failJob(job, error)))
      .catch((err) => this.d.events.emit('worker:error', { queue: this.queue, error: err }))
      .finally(() => this.forget(run));
  }

  /** The run's outcome is written (or abandoned): drop its jobs from the lookup. */
  private forget(run: Running): void {
    for (const job of run.jobs) {
      // Another attempt of the same job may have been claimed meanwhile: leave its entry.
      if (this.byJobId.get(job.id) === run) this.byJobId.delete(job.id);
    }
  }

  /** The handler settled (or was abandoned): stop its leases, free its slot; the outcome is
   * written after. */
  private settle(run: Running): void {
    if (run.settled) return;
    run.settled = true;
    // Stop renewing. A completion racing a heartbeat would otherwise look like a lost lease;
    // if the outcome cannot be written before the lease lapses, the job is rescued and runs
    // again, which is the at-least-once contract.
    for (const job of run.jobs) this.d.heartbeat.untrack(job.id, job.token);
    this.running.delete(run);
    this.slotsInUse--;
    if (this.running.size === 0) for (const w of this.idleWaiters.splice(0)) w();
    this.onSlotFree();
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
   * Stops fetching, lets running handlers finish until the deadline, then aborts the rest and
   * returns their jobs (to be released without spending an attempt). Outcomes already handed
   * to the completer are written by it (Hark.stop drains it).
   */
  async stop(deadline: number): Promise<ClaimedJob[]> {
    this.stopping = true;
    this.cancelBreakerWait?.();
    clearTimeout(this.timer);
    clearTimeout(this.retryTimer);
    this.setPolling(false);
    // Claims in flight hand their jobs to handlers first; those count as running below. A
    // claim still out at the deadline keeps its jobs (they are released when it returns, if
    // the process is still up, or rescued when their lease ends).
    if (this.claims.size > 0) {
      let t: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all([...this.claims]),
        new Promise((r) => {
          t = setTimeout(r, Math.max(0, deadline - Date.now()));
        }),
      ]);
      clearTimeout(t);
    }
    const left = deadline - Date.now();
    if (this.running.size > 0 && left > 0) {
      let t: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((r) => this.idleWaiters.push(r)),
        new Promise((r) => {
          t = setTimeout(r, left);
        }),
      ]);
      clearTimeout(t);
    }
    const released: ClaimedJob[] = this.late.splice(0);
    const abandoned = [...this.running];
    for (const run of abandoned) {
      run.released = true;
      released.push(...run.jobs);
      run.abort(new ShutdownError()); // settles the run at once (see invoke), leases untracked
    }
    return released;
  }
}

/** A handler's return value as stored in the job's output (undefined: null). Throws if unstorable. */
function toJson(value: unknown): string | null {
  const json = value === undefined ? null : (JSON.stringify(value) ?? null);
  if (json !== null && unstorableInJsonb(json)) throw new Error('output cannot be stored');
  return json;
}
