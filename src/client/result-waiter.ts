/**
 * Await a job's result. The waiter registers with the process's listener first, then marks the
 * job as waited-for; whoever ends the job announces it ('d|<id>'), so nothing polls.
 */
import type { Database } from '../db/database.js';
import { JobFailedError, JobNotFoundError, WaitTimeoutError } from '../errors.js';
import type { Listener } from '../listener/listener.js';
import type { Queries } from '../sql/queries.js';
import type { Admin } from './admin.js';
import { FINISHED_STATES, type Job } from './job.js';

export class ResultWaiter {
  private readonly waiting = new Map<string, Set<() => void>>();

  constructor(
    private readonly db: Database,
    private readonly q: Queries,
    private readonly admin: Admin,
    listener: Listener,
  ) {
    // After a reconnect, messages may have been missed: re-check every waiter once.
    listener.onState((state) => {
      if (state === 'listening') for (const id of [...this.waiting.keys()]) this.wake(id);
    });
  }

  /** A job ended ('d|<id>', routed here by the instance's one message parser). */
  wake(id: string): void {
    const set = this.waiting.get(id);
    if (set) for (const fn of set) fn();
  }

  /** Resolves with the job's output when it completes; rejects with JobFailedError otherwise. */
  async wait<O = unknown>(id: string, timeoutMs = 60_000): Promise<O> {
    let set = this.waiting.get(id);
    if (!set) {
      set = new Set();
      this.waiting.set(id, set);
    }
    let signal!: () => void;
    let woken = new Promise<void>((resolve) => {
      signal = resolve;
    });
    const callback = () => signal();
    set.add(callback);
    const deadline = Date.now() + timeoutMs;
    try {
      const marked = await this.db.query('wait', this.q.markWaited, [id]);
      // Marked: the job had not ended, and its end will be announced. Not marked: it has ended,
      // does not exist, or another waiter marked it first; look.
      let look = marked.rowCount === 0;
      for (;;) {
        if (look) {
          const job = await this.admin.getJob(id);
          if (!job) throw new JobNotFoundError(id);
          if (FINISHED_STATES.includes(job.state)) return this.settle<O>(job);
        }
        const left = deadline - Date.now();
        if (left <= 0) throw new WaitTimeoutError(`job ${id}`, timeoutMs);
        let timer: NodeJS.Timeout | undefined;
        const timedOut = await Promise.race([
          woken.then(() => false),
          new Promise<boolean>((resolve) => {
            timer = setTimeout(() => resolve(true), left);
          }),
        ]);
        clearTimeout(timer);
        if (timedOut) throw new WaitTimeoutError(`job ${id}`, timeoutMs);
        woken = new Promise<void>((resolve) => {
          signal = resolve;
        });
        look = true;
      }
    } finally {
      set.delete(callback);
      if (set.size === 0) this.waiting.delete(id);
    }
  }

  private settle<O>(job: Job): O {
    if (job.state === 'completed') return job.output as O;
    throw new JobFailedError(job.id, job.state, job.errors[job.errors.length - 1] ?? null);
  }
}
