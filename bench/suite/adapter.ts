/**
 * The contract every system in the benchmark suite implements: hark, each peer, and the
 * hand-written SQL floor. The orchestrator (bench/suite/run.ts) owns the servers and the
 * scenarios; an adapter only knows how to set up its store, enqueue, and consume.
 *
 * Process model: producers run in the orchestrator; consumers run in worker child processes
 * (bench/suite/worker-main.ts), which import the adapter module by name and call `consume`.
 */

/** Where a system keeps its jobs for one run. Every run gets a fresh PostgreSQL database. */
export interface Target {
  /** A database created for this system and run only (pg_stat_statements is filtered by it). */
  connectionString: string;
  /** Redis, when one answers (BullMQ on Redis only). */
  redisUrl?: string;
  /** Unique per run: a prefix for Redis keys or anything else that must not collide. */
  namespace: string;
}

/** What every benchmark job carries; peers store it as their payload. */
export interface BenchPayload {
  /** Sequence number within the scenario. */
  n: number;
  /** performance.timeOrigin + performance.now() just before the enqueue call (ms, fractional). */
  t: number;
}

export interface Producer {
  /** One job per call (the scenario keeps several calls in flight). */
  sendOne(queue: string, payload: BenchPayload): Promise<void>;
  /** Many jobs in as few calls as the system allows (its documented batch API). */
  sendBatch(queue: string, payloads: BenchPayload[]): Promise<void>;
  close(): Promise<void>;
}

export interface ConsumeOptions {
  queues: string[];
  /** Called at handler start, once per job; the handler itself does nothing else (no-op job). */
  onJob(payload: BenchPayload): void;
}

export interface Consumer {
  /** Stops consuming and closes every connection; resolves when the process can exit. */
  stop(): Promise<void>;
}

export interface Adapter {
  /** Short stable id used on the command line and in reports: 'hark', 'pg-boss', ... */
  readonly id: string;
  /** Human label with version and the settings used, for the report. */
  label(): string;
  /** null when usable here; otherwise why not (e.g. "no Redis at 127.0.0.1:6379"). */
  unavailable(target: Target): Promise<string | null>;
  /** Creates schema/tables/queues in the fresh database (or Redis namespace). Orchestrator side. */
  setup(target: Target, queues: string[]): Promise<void>;
  /** Drops what setup made where the database is not simply dropped (Redis keys). */
  teardown(target: Target): Promise<void>;
  producer(target: Target): Promise<Producer>;
  /** Worker side (in a child process): consume `queues` until stop(). */
  consume(target: Target, options: ConsumeOptions): Promise<Consumer>;
}
