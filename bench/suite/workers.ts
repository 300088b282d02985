/**
 * The orchestrator's side of the worker processes: forking them (bench/suite/worker-main.ts),
 * collecting what they report for one case, and stopping them. Every child is tracked by pid
 * and SIGKILLed if the orchestrator exits with it still running.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Target } from './adapter.js';
import type { FromWorker, ToWorker } from './protocol.js';

const WORKER_MAIN = fileURLToPath(new URL('./worker-main.ts', import.meta.url));
const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const LOAD_TIMEOUT_MS = 120_000;
const READY_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 30_000;
const EXIT_TIMEOUT_MS = 5_000;
const FORKS_AT_ONCE = 3;

/** The run was interrupted (SIGINT/SIGTERM). */
export class Interrupted extends Error {
  constructor() {
    super('interrupted');
  }
}

const live = new Set<WorkerProcess>();
let exitHook = false;

function killLive(): void {
  for (const w of live) {
    try {
      process.kill(w.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  live.clear();
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new Interrupted());
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(new Interrupted());
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export class WorkerProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  private readonly handlers = new Set<(m: FromWorker) => void>();
  private exitText: string | undefined;
  readonly exited: Promise<void>;

  constructor(readonly system: string) {
    if (!exitHook) {
      exitHook = true;
      process.on('exit', killLive);
    }
    this.child = fork(WORKER_MAIN, [], {
      cwd: REPO_ROOT,
      execArgv: ['--import', 'tsx'],
      serialization: 'advanced',
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    if (this.child.pid === undefined) throw new Error(`could not fork ${WORKER_MAIN}`);
    this.pid = this.child.pid;
    live.add(this);
    // What an adapter or library prints goes to stderr, tagged, never into the tables.
    for (const stream of [this.child.stdout, this.child.stderr]) {
      if (stream === null) continue;
      createInterface({ input: stream }).on('line', (line) => {
        process.stderr.write(`  [${system} worker ${this.pid}] ${line}\n`);
      });
    }
    this.child.on('message', (m: FromWorker) => {
      for (const h of this.handlers) h(m);
    });
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exitText = signal ? `signal ${signal}` : `code ${code}`;
        live.delete(this);
        resolve();
      });
    });
    this.child.on('error', (error) => {
      process.stderr.write(`  [${system} worker ${this.pid}] ${error.message}\n`);
    });
  }

  get alive(): boolean {
    return this.exitText === undefined;
  }

  send(message: ToWorker): void {
    if (this.alive && this.child.connected) this.child.send(message);
  }

  on(handler: (m: FromWorker) => void): () => void {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }

  /**
   * The first message `pick` accepts; rejects on an error message for `caseId` (or for no
   * case), on exit, after `timeoutMs`, or when `signal` aborts.
   */
  request<T>(
    message: ToWorker | null,
    pick: (m: FromWorker) => T | undefined,
    options: { what: string; timeoutMs: number; caseId?: string; signal?: AbortSignal },
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const cleanup: (() => void)[] = [];
      let settled = false;
      const finish = (error: Error | null, value?: T) => {
        if (settled) return;
        settled = true;
        for (const c of cleanup) c();
        if (error) reject(error);
        else resolve(value as T);
      };
      cleanup.push(
        this.on((m) => {
          if (m.type === 'error' && (m.caseId === null || m.caseId === options.caseId)) {
            finish(new Error(`${options.what}: worker ${this.pid}: ${m.message}`));
            return;
          }
          const value = pick(m);
          if (value !== undefined) finish(null, value);
        }),
      );
      const timer = setTimeout(
        () => finish(new Error(`${options.what}: no answer from worker ${this.pid} in time`)),
        options.timeoutMs,
      );
      cleanup.push(() => clearTimeout(timer));
      if (options.signal !== undefined) {
        const onAbort = () => finish(new Interrupted());
        if (options.signal.aborted) {
          onAbort();
          return;
        }
        options.signal.addEventListener('abort', onAbort, { once: true });
        cleanup.push(() => options.signal?.removeEventListener('abort', onAbort));
      }
      void this.exited.then(() =>
        finish(new Error(`${options.what}: worker ${this.pid} exited (${this.exitText})`)),
      );
      if (message !== null) this.send(message);
    });
  }

  /** Asks the process to leave; SIGKILL (by pid) when it does not within a few seconds. */
  async close(): Promise<void> {
    if (!this.alive) return;
    this.send({ type: 'exit' });
    const left = await Promise.race([
      this.exited.then(() => true),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(false), EXIT_TIMEOUT_MS)),
    ]);
    if (!left) await this.kill();
  }

  async kill(): Promise<void> {
    if (!this.alive) return;
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
    await this.exited;
  }
}

/**
 * Worker processes per system. With `reuse` (the quick run) a process serves case after case
 * of its system; otherwise every case gets fresh processes, so no case inherits another's warm
 * JIT, caches or leftovers.
 */
export class WorkerPools {
  private readonly idle = new Map<string, WorkerProcess[]>();
  private forking = 0;
  private readonly forkWaiters: (() => void)[] = [];

  constructor(private readonly reuse: boolean) {}

  /**
   * A few forks at a time across all cases: dozens of processes compiling and importing at
   * once on a small machine would only make each slower (and trip the load timeout).
   */
  private async forkLoaded(system: string, signal: AbortSignal): Promise<WorkerProcess> {
    while (this.forking >= FORKS_AT_ONCE) {
      await new Promise<void>((resolve) => this.forkWaiters.push(resolve));
    }
    this.forking++;
    try {
      const w = new WorkerProcess(system);
      try {
        const unavailable = await w.request(
          { type: 'load', system },
          (m) => (m.type === 'loaded' ? m.unavailable : undefined),
          { what: `loading ${system}`, timeoutMs: LOAD_TIMEOUT_MS, signal },
        );
        if (unavailable !== null) throw new Error(unavailable);
      } catch (error) {
        await w.close();
        throw error;
      }
      return w;
    } finally {
      this.forking--;
      this.forkWaiters.shift()?.();
    }
  }

  async acquire(system: string, count: number, signal: AbortSignal): Promise<WorkerProcess[]> {
    const idle = (this.idle.get(system) ?? []).filter((w) => w.alive);
    const taken = idle.splice(0, count);
    this.idle.set(system, idle);
    const forks = await Promise.allSettled(
      Array.from({ length: count - taken.length }, () => this.forkLoaded(system, signal)),
    );
    const fresh = forks.flatMap((f) => (f.status === 'fulfilled' ? [f.value] : []));
    const failed = forks.find((f): f is PromiseRejectedResult => f.status === 'rejected');
    if (failed !== undefined) {
      await Promise.all([...taken, ...fresh].map((w) => w.close()));
      throw failed.reason;
    }
    return [...taken, ...fresh];
  }

  async release(workers: WorkerProcess[]): Promise<void> {
    if (!this.reuse) {
      await Promise.all(workers.map((w) => w.close()));
      return;
    }
    for (const w of workers) {
      if (!w.alive) continue;
      const list = this.idle.get(w.system) ?? [];
      list.push(w);
      this.idle.set(w.system, list);
    }
  }

  /** Keeps at most `keep` idle processes of each of `systems`. */
  async trim(keep: number, systems: string[]): Promise<void> {
    const closing: Promise<void>[] = [];
    for (const system of systems) {
      const list = this.idle.get(system) ?? [];
      closing.push(...list.splice(keep).map((w) => w.close()));
    }
    await Promise.all(closing);
  }

  async closeAll(): Promise<void> {
    const all = [...this.idle.values()].flat();
    this.idle.clear();
    await Promise.all(all.map((w) => w.close()));
  }
}

export interface WaitOptions {
  what: string;
  /** Gives up after this long in all. */
  timeoutMs: number;
  /** Gives up when no job has started for this long. */
  stallMs: number;
  signal: AbortSignal;
}

/** The workers of one case (one system, one database) and everything they reported. */
export class CaseWorkers {
  /** Per handler start, across workers, in arrival order. */
  readonly n: number[] = [];
  readonly starts: number[] = [];
  readonly latency: number[] = [];
  readonly distinct = new Set<number>();
  private readonly cpu = new Map<number, { first: number; last: number }>();
  private failure: Error | undefined;
  private lastJobAt = performance.now();
  private readonly listeners = new Set<() => void>();
  private readonly unsubscribe: (() => void)[] = [];
  private stopped = false;

  constructor(
    readonly workers: WorkerProcess[],
    readonly caseId: string,
  ) {
    for (const w of workers) {
      this.unsubscribe.push(w.on((m) => this.onMessage(w, m)));
      void w.exited.then(() => {
        if (!this.stopped) this.fail(new Error(`worker ${w.pid} exited during ${caseId}`));
      });
    }
  }

  private fail(error: Error): void {
    this.failure ??= error;
    this.changed();
  }

  private changed(): void {
    for (const l of this.listeners) l();
  }

  private onMessage(w: WorkerProcess, m: FromWorker): void {
    if (m.type === 'error' && (m.caseId === this.caseId || m.caseId === null)) {
      this.fail(new Error(`worker ${w.pid}: ${m.message}`));
      return;
    }
    if (m.type !== 'jobs' || m.caseId !== this.caseId) return;
    for (let i = 0; i < m.n.length; i++) {
      this.n.push(m.n[i]!);
      this.starts.push(m.start[i]!);
      this.latency.push(m.latency[i]!);
      this.distinct.add(m.n[i]!);
    }
    this.cpu.set(w.pid, { first: m.firstCpuUs, last: m.cpuUs });
    this.lastJobAt = performance.now();
    this.changed();
  }

  /** Starts consuming in every worker at once; resolves when all are ready. */
  async start(
    system: string,
    target: Target,
    queues: string[],
    signal: AbortSignal,
  ): Promise<void> {
    await Promise.all(
      this.workers.map((w) =>
        w.request(
          { type: 'consume', caseId: this.caseId, system, target, queues },
          (m) => (m.type === 'ready' && m.caseId === this.caseId ? true : undefined),
          {
            what: `${this.caseId}: starting`,
            timeoutMs: READY_TIMEOUT_MS,
            caseId: this.caseId,
            signal,
          },
        ),
      ),
    );
  }

  /** Resolves once `done()` holds (checked after every report). */
  until(done: () => boolean, o: WaitOptions): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const began = performance.now();
      this.lastJobAt = began;
      let timer: NodeJS.Timeout | undefined;
      let settled = false;
      const finish = (error: Error | null) => {
        if (settled) return;
        settled = true;
        this.listeners.delete(check);
        clearInterval(timer);
        o.signal.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else resolve();
      };
      const check = () => {
        if (this.failure) finish(this.failure);
        else if (done()) finish(null);
      };
      const onAbort = () => finish(new Interrupted());
      timer = setInterval(() => {
        const now = performance.now();
        if (now - began > o.timeoutMs) {
          finish(new Error(`${o.what}: not done after ${Math.round(o.timeoutMs / 1000)} s`));
        } else if (now - this.lastJobAt > o.stallMs) {
          finish(new Error(`${o.what}: no job started for ${Math.round(o.stallMs / 1000)} s`));
        }
      }, 250);
      this.listeners.add(check);
      o.signal.addEventListener('abort', onAbort, { once: true });
      if (o.signal.aborted) onAbort();
      else check();
    });
  }

  /** CPU (ms) of all workers from their first handler start of this case to their last report. */
  cpuWindowMs(): number {
    let us = 0;
    for (const { first, last } of this.cpu.values()) if (first >= 0) us += last - first;
    return us / 1000;
  }

  /**
   * Stops consuming in every worker (which closes its connections). A worker that does not
   * confirm in time is killed. Never throws: returns what went wrong, if anything.
   */
  async stop(): Promise<string | null> {
    this.stopped = true;
    const problems: string[] = [];
    await Promise.all(
      this.workers.map(async (w) => {
        if (!w.alive) return;
        try {
          await w.request(
            { type: 'stop', caseId: this.caseId },
            (m) => (m.type === 'stopped' && m.caseId === this.caseId ? true : undefined),
            { what: `${this.caseId}: stopping`, timeoutMs: STOP_TIMEOUT_MS, caseId: this.caseId },
          );
        } catch (error) {
          problems.push((error as Error).message.split('\n')[0]!);
          await w.kill();
        }
      }),
    );
    for (const u of this.unsubscribe) u();
    return problems.length === 0 ? null : problems.join('; ');
  }
}
