/**
 * Batched, token-guarded completions and failures. Outcomes that arrive in the same tick share
 * one statement; a database error keeps them queued and retries with backoff, so an outcome is
 * never dropped (if the lease runs out meanwhile, the token guard refuses it and the job runs
 * again: at-least-once).
 */
import { isConnectionError } from '../db/circuit-breaker.js';
import type { Database } from '../db/database.js';
import type { HarkEventEmitter } from '../events.js';
import type { Queries } from '../sql/queries.js';

const MAX_BATCH = 1_000;

interface Completion {
  id: string;
  token: string;
  output: string | null;
  resolve: (accepted: boolean) => void;
  /** Refused once already (see flush). */
  again?: boolean;
}

interface Failure {
  id: string;
  token: string;
  error: string;
  retryMs: number | null;
  resolve: (result: { accepted: boolean; state: string | null; deadLettered: boolean }) => void;
}

export class Completer {
  private completions: Completion[] = [];
  private failures: Failure[] = [];
  private scheduled = false;
  private flushing: Promise<void> | undefined;
  private errorStreak = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly db: Database,
    private readonly q: Queries,
    private readonly events: HarkEventEmitter,
  ) {}

  /** `output` is the handler's value already serialised as JSON (null for none). */
  complete(id: string, token: string, output: string | null): Promise<boolean> {
    return new Promise((resolve) => this.completeThen(id, token, output, resolve));
  }

  /** complete() for the hot path: `done` is called with whether the completion was accepted. */
  completeThen(
    id: string,
    token: string,
    output: string | null,
    done: (accepted: boolean) => void,
  ): void {
    this.completions.push({ id, token, output, resolve: done });
    this.schedule(0);
  }

  fail(
    id: string,
    token: string,
    error: object,
    retryMs: number | null,
  ): Promise<{ accepted: boolean; state: string | null; deadLettered: boolean }> {
    return new Promise((resolve) => {
      this.failures.push({ id, token, error: JSON.stringify(error), retryMs, resolve });
      this.schedule(0);
    });
  }

  get pending(): number {
    return this.completions.length + this.failures.length;
  }

  /** Resolves when nothing is queued or being written. */
  async drain(): Promise<void> {
    if (this.pending === 0 && !this.flushing) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  private schedule(delayMs: number): void {
    if (this.scheduled) return;
    this.scheduled = true;
    const run = () => {
      this.scheduled = false;
      this.flushing = this.flush().finally(() => {
        this.flushing = undefined;
        if (this.pending > 0) this.schedule(this.errorStreak === 0 ? 0 : this.backoffMs());
        else for (const w of this.idleWaiters.splice(0)) w();
      });
    };
    if (delayMs === 0) setImmediate(run);
    else setTimeout(run, delayMs);
  }

  private backoffMs(): number {
    // Short: once the database is back, completions must not wait out a long backoff while
    // finished jobs hold every slot.
    return Math.min(1_000, 50 * 2 ** Math.min(this.errorStreak, 10));
  }

  private async flush(): Promise<void> {
    if (this.flushing) await this.flushing;
    const done = this.completions.splice(0, MAX_BATCH);
    const failed = this.failures.splice(0, MAX_BATCH);
    // Outcomes are matched by (id, token): two attempts of one job can meet in one flush (the
    // first stuck here during an outage, rescued, claimed again by this same process).
    const key = (id: string, token: string) => `${id}|${token}`;
    const waited: string[] = [];
    try {
      if (done.length > 0) {
        const r = await this.db.query<{ id: string; token: string; notify_finish: boolean }>(
          'complete',
          this.q.complete,
          [done.map((c) => c.id), done.map((c) => c.token), done.map((c) => c.output)],
        );
        const ok = new Set<string>();
        for (const row of r.rows) {
          ok.add(key(row.id, row.token));
          if (row.notify_finish) waited.push(row.id);
        }
        for (const c of done) {
          if (ok.has(key(c.id, c.token))) c.resolve(true);
          else if (!c.again) {
            // Refused: a lost lease (refused again, harmlessly), or a waiter marked the job
            // between the statement's snapshot and its delete (taken the second time).
            c.again = true;
            this.completions.push(c);
          } else c.resolve(false);
        }
        done.length = 0;
      }
      if (failed.length > 0) {
        const r = await this.db.query<{
          id: string;
          token: string;
          state: string;
          notify_finish: boolean;
          dead_lettered: number;
        }>('fail', this.q.fail, [
          failed.map((f) => f.id),
          failed.map((f) => f.token),
          failed.map((f) => f.error),
          failed.map((f) => f.retryMs),
        ]);
        const byKey = new Map(r.rows.map((row) => [key(row.id, row.token), row]));
        for (const f of failed) {
          const row = byKey.get(key(f.id, f.token));
          if (row?.notify_finish && row.state === 'failed') waited.push(row.id);
          f.resolve({
            accepted: row !== undefined,
            state: row?.state ?? null,
            deadLettered: row?.state === 'failed' && (row.dead_lettered ?? 0) > 0,
          });
        }
        failed.length = 0;
      }
      if (waited.length > 0) await this.db.query('notify', this.q.notifyFinished, [waited]);
      this.errorStreak = 0;
    } catch (err) {
      this.events.emit('error', { error: err as Error, context: 'completer' });
      if (isConnectionError(err)) {
        // The database is unreachable: keep everything, in order, and retry with backoff.
        this.completions.unshift(...done);
        this.failures.unshift(...failed);
        this.errorStreak++;
        return;
      }
      // Any other error would fail again on every retry and block this worker for good. Give
      // up on this batch: its jobs stay active, their leases lapse, and the leader hands them
      // to a new attempt (at-least-once), which counts against their attempts.
      for (const c of done) c.resolve(false);
      for (const f of failed) f.resolve({ accepted: false, state: null, deadLettered: false });
    }
  }
}
