/**
 * Messages between the orchestrator (bench/suite/run.ts) and its worker processes
 * (bench/suite/worker-main.ts), over the IPC channel of child_process.fork with
 * `serialization: 'advanced'`. CPU times are user + system microseconds since the worker
 * process started (process.cpuUsage()); times are ms on performance.timeOrigin +
 * performance.now(), the clock every payload's `t` is taken on.
 */
import type { Target } from './adapter.js';

export type ToWorker =
  /** Import the adapter module now, before anything is timed. Answered by `loaded`. */
  | { type: 'load'; system: string }
  /** Start consuming `queues` of a fresh database. Answered by `ready`, then `jobs`... */
  | { type: 'consume'; caseId: string; system: string; target: Target; queues: string[] }
  /** Stop consuming and close every connection. Answered by a last `jobs`, then `stopped`. */
  | { type: 'stop'; caseId: string }
  /** Leave the process. */
  | { type: 'exit' };

export type FromWorker =
  | { type: 'loaded'; system: string; unavailable: string | null }
  | { type: 'ready'; caseId: string; cpuUs: number }
  | {
      type: 'jobs';
      caseId: string;
      /** Per job, in the order the handlers started: payload.n, handler start, start − t. */
      n: number[];
      start: number[];
      latency: number[];
      /** CPU at this flush, and at the first handler start of this case. */
      cpuUs: number;
      firstCpuUs: number;
    }
  | { type: 'stopped'; caseId: string; jobs: number; cpuUs: number }
  | { type: 'error'; caseId: string | null; message: string };

export function cpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}
