/**
 * The hark instance: one pool, one listener, the producer API, workers and the leader's
 * services, wired together. Everything it issues goes through `db.query` and is counted.
 */
import { Admin, type FailedJob, type QueueStats } from './client/admin.js';
import type { Job } from './client/job.js';
import { type JobInput, Producer } from './client/producer.js';
import { type QueueInfo, QueueRegistry } from './client/queue-registry.js';
import { ResultWaiter } from './client/result-waiter.js';
import {
  type HarkOptions,
  type ResolvedHarkOptions,
  resolveHarkOptions,
} from './config/hark-options.js';
import {
  checkQueueName,
  type QueueOptions,
  type SendOptions,
  validateWorkOptions,
  type WorkOptions,
} from './config/options.js';
import { checkValue } from './config/validate.js';
import { Database } from './db/database.js';
import type { Executor } from './db/executor.js';
import { ConfigError, NotRunningError } from './errors.js';
import { HarkEventEmitter } from './events.js';
import { Listener, type ListenerState } from './listener/listener.js';
import { parseMessage } from './listener/messages.js';
import { Completer } from './runtime/completer.js';
import { Heartbeat } from './runtime/heartbeat.js';
import type { BatchHandler, JobHandler } from './runtime/job-context.js';
import { QueueWorker } from './runtime/queue-worker.js';
import { LeaderService } from './services/leader.js';
import { migrate, verify } from './sql/migrator.js';
import { buildQueries, type Queries } from './sql/queries.js';

export interface HarkHealth {
  running: boolean;
  listener: {
    state: ListenerState;
    selfTest: 'ok' | 'failed';
    polling: boolean;
    lastError: string | null;
    /** The listener's server process id, while connected. */
    backendPid: number | null;
  };
  leader: boolean;
  /** The database circuit breaker: `open` while the database is unreachable. */
  breaker: 'closed' | 'open' | 'half-open';
  activeJobs: number;
  queues: string[];
}

/** A typed handle on one queue. */
export interface Queue<P> {
  readonly name: string;
  send(payload: P, options?: SendOptions): Promise<string>;
  sendMany(
    payloads: readonly P[],
    options?: Omit<SendOptions, 'executor'> & { executor?: Executor },
  ): Promise<string[]>;
  work<O = unknown>(options: WorkOptions, handler: JobHandler<P, O>): Promise<void>;
}

type State = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

export class Hark {
  readonly options: ResolvedHarkOptions;
  readonly events = new HarkEventEmitter();
  private readonly db: Database;
  private readonly q: Queries;
  private readonly listener: Listener;
  private readonly registry: QueueRegistry;
  private readonly producer: Producer;
  private readonly admin: Admin;
  private readonly waiter: ResultWaiter;
  private readonly completer: Completer;
  private readonly heartbeat: Heartbeat;
  private readonly leaderService: LeaderService;
  private readonly workers = new Map<string, QueueWorker>();
  private state: State = 'new';
  private polling = false;

  constructor(options?: HarkOptions) {
    this.options = resolveHarkOptions(options);
    const o = this.options;
    this.db = new Database({
      connectionString: o.connectionString,
      poolMax: o.poolMax,
      relaxedPoolMax: o.claimCommit === 'async' ? 2 : 0,
      applicationName: `hark:${o.workerId}`.slice(0, 63),
      onIdleError: (error) =>
        this.events.emit('error', { error, context: 'idle pooled connection' }),
      onBreakerChange: (state, error) => {
        if (state === 'open') this.events.emit('breaker:open', { error });
        else this.events.emit(state === 'closed' ? 'breaker:closed' : 'breaker:half-open', {});
      },
    });
    this.q = buildQueries(o.schema);
    this.leaderService = new LeaderService({
      db: this.db,
      q: this.q,
      events: this.events,
      schema: o.schema,
      workerId: o.workerId,
      leaseMs: o.leaseMs,
      eligible: o.leaderEligible,
    });
    this.listener = new Listener({
      db: this.db,
      connectionString: o.listenConnectionString,
      channel: this.q.channel,
      events: this.events,
      // Leader election needs a real session: through a transaction pooler (self-test failed)
      // the advisory lock would land on a shared server connection.
      onSession: async (client) => {
        if (!this.listener.selfTestFailed) await this.leaderService.onSession(client);
      },
    });
    this.registry = new QueueRegistry(this.db, this.q);
    this.producer = new Producer(this.db, this.q, this.registry, o.maxPayloadBytes, o.leaseMs);
    this.admin = new Admin(this.db, this.q);
    this.waiter = new ResultWaiter(this.db, this.q, this.admin, this.listener);
    this.completer = new Completer(this.db, this.q, this.events);
    this.heartbeat = new Heartbeat(this.db, this.q, this.events);
    this.listener.onMessage((payload) => this.route(payload));
    this.listener.onState((state) => this.onListenerState(state));
  }

  /** Migrates (per `migrate`), connects the listener and joins leader election. */
  async start(): Promise<this> {
    if (this.state !== 'new')
      throw new ConfigError(`start(): expected a new instance, this one is ${this.state}`);
    this.state = 'starting';
    try {
      if (this.options.migrate !== 'off') {
        const client = this.db.createClient();
        await client.connect();
        try {
          this.db.counter.add('migrate');
          if (this.options.migrate === 'auto') await migrate(client, this.options.schema);
          else await verify(client, this.options.schema);
        } finally {
          await client.end();
        }
      }
      await this.listener.start();
      this.state = 'running';
      this.onListenerState(this.listener.state);
      return this;
    } catch (err) {
      this.state = 'stopped';
      await this.listener.stop().catch(() => {});
      await this.db.end().catch(() => {});
      throw err;
    }
  }

  private assertRunning(what: string): void {
    if (this.state !== 'running') throw new NotRunningError(what);
  }

  // ---- queues and producing ---------------------------------------------------------------

  /** Creates a queue, or updates its policy; returns a typed handle. */
  async createQueue<P = unknown>(name: string, options: QueueOptions<P> = {}): Promise<Queue<P>> {
    this.assertRunning('createQueue');
    await this.registry.define(name, options);
    return this.queue<P>(name);
  }

  /** A typed handle on an existing queue. */
  queue<P = unknown>(name: string): Queue<P> {
    checkQueueName('queue()', name);
    return {
      name,
      send: (payload, options) => this.send(name, payload, options),
      sendMany: (payloads, options) => {
        const { executor, ...rest } = options ?? {};
        return this.sendMany(
          payloads.map((payload) => ({ queue: name, payload, options: rest })),
          executor ? { executor } : undefined,
        );
      },
      work: (options, handler) => this.work(name, options, handler as JobHandler),
    };
  }

  /** Queue names and policies in the database. */
  async queues(): Promise<QueueInfo[]> {
    this.assertRunning('queues');
    const r = await this.db.query('queue', this.q.listQueues);
    return r.rows.map((row: { name: string; policy: object; paused: boolean }) => ({
      name: row.name,
      policy: row.policy,
      paused: row.paused,
    }));
  }

  /** Sends a job; returns its id. Pass `executor` to enqueue inside your own transaction. */
  send(queue: string, payload?: unknown, options?: SendOptions): Promise<string> {
    this.assertRunning('send');
    return this.producer.send(queue, payload, options);
  }

  /** Sends many jobs in one statement; ids come back in input order. */
  sendMany(jobs: readonly JobInput[], options?: { executor?: Executor }): Promise<string[]> {
    this.assertRunning('sendMany');
    return this.producer.sendMany(jobs, options);
  }

  /** Waits for a job to end: its output, or a JobFailedError. Woken by NOTIFY, never polls. */
  waitForJob<O = unknown>(id: string, options: { timeoutMs?: number } = {}): Promise<O> {
    this.assertRunning('waitForJob');
    if (options.timeoutMs !== undefined) {
      checkValue(
        'waitForJob',
        'timeoutMs',
        { kind: 'integer', min: 1, max: 2_147_483_647 },
        options.timeoutMs,
      );
    }
    return this.waiter.wait<O>(id, options.timeoutMs);
  }

  /** Sends a job and waits for its result. */
  async sendAndWait<O = unknown>(
    queue: string,
    payload: unknown,
    options: Omit<SendOptions, 'executor'> & { waitTimeoutMs?: number } = {},
  ): Promise<O> {
    const { waitTimeoutMs, ...send } = options;
    this.assertRunning('sendAndWait');
    // Marked as waited for at insert: a fast worker cannot finish (and, with retention 0,
    // delete) it before the wait begins.
    const id = await this.producer.send(queue, payload, send, true);
    return this.waitForJob<O>(id, waitTimeoutMs === undefined ? {} : { timeoutMs: waitTimeoutMs });
  }

  getJob(id: string, options: { executor?: Executor } = {}): Promise<Job | null> {
    this.assertRunning('getJob');
    return this.admin.getJob(id, options.executor);
  }

  cancel(id: string, options: { executor?: Executor } = {}): Promise<void> {
    this.assertRunning('cancel');
    return this.admin.cancel(id, options.executor);
  }

  retry(id: string, options: { executor?: Executor } = {}): Promise<void> {
    this.assertRunning('retry');
    return this.admin.retry(id, options.executor);
  }

  stats(): Promise<QueueStats[]> {
    this.assertRunning('stats');
    return this.admin.stats();
  }

  failedJobs(options: { queue?: string; limit?: number } = {}): Promise<FailedJob[]> {
    this.assertRunning('failedJobs');
    return this.admin.failedJobs(options);
  }

  // ---- working ------------------------------------------------------------------------------

  /** Runs `handler` for each job of `queue`, up to `concurrency` at once in this process. */
  async work<P = unknown, O = unknown>(
    queue: string,
    options: WorkOptions,
    handler: JobHandler<P, O>,
  ): Promise<void> {
    const o = validateWorkOptions(`work(${JSON.stringify(queue)})`, options);
    if (o.batchSize !== undefined && o.batchSize !== 1) {
      throw new ConfigError(
        `work(${JSON.stringify(queue)}): \`batchSize\` needs workBatch(), which hands the handler an array`,
      );
    }
    await this.startWorker(queue, o, { kind: 'single', fn: handler as JobHandler });
  }

  /** Runs `handler` on batches of up to `batchSize` jobs; all of a batch succeed or fail together. */
  async workBatch<P = unknown, O = unknown>(
    queue: string,
    options: WorkOptions,
    handler: BatchHandler<P, O>,
  ): Promise<void> {
    const o = validateWorkOptions(`workBatch(${JSON.stringify(queue)})`, options);
    await this.startWorker(queue, o, { kind: 'batch', fn: handler as BatchHandler });
  }

  private async startWorker(
    queue: string,
    o: WorkOptions,
    handler: { kind: 'single'; fn: JobHandler } | { kind: 'batch'; fn: BatchHandler },
  ): Promise<void> {
    this.assertRunning('work');
    checkQueueName('work()', queue);
    if (typeof handler.fn !== 'function') {
      throw new ConfigError(
        `work(${JSON.stringify(queue)}): expected \`handler\` to be a function, got ${typeof handler.fn}`,
      );
    }
    if (this.workers.has(queue)) {
      throw new ConfigError(
        `work(${JSON.stringify(queue)}): this process already works queue \`${queue}\``,
      );
    }
    await this.registry.require([queue]);
    const concurrency = o.concurrency ?? 10;
    const worker = new QueueWorker(
      {
        queue,
        concurrency,
        batchSize: o.batchSize ?? 1,
        minFetch: Math.min(concurrency, o.minFetch ?? Math.max(1, Math.floor(concurrency / 10))),
        fallbackPollMs: o.fallbackPollMs ?? this.options.fallbackPollMs,
        handler,
      },
      {
        db: this.db,
        q: this.q,
        events: this.events,
        completer: this.completer,
        heartbeat: this.heartbeat,
        workerId: this.options.workerId,
        announceClaim: (leaseMs) => {
          this.db
            .query('notify', this.q.notify, [`c|${leaseMs}`])
            .catch((error) =>
              this.events.emit('error', { error: error as Error, context: 'announce claim' }),
            );
        },
      },
    );
    this.workers.set(queue, worker);
    worker.setPolling(this.polling);
    // Catch up: what is due now, and a timer for the earliest future job.
    worker.wake();
    await this.armTimers([queue]);
  }

  private async armTimers(queues: string[]): Promise<void> {
    if (queues.length === 0) return;
    const r = await this.db.query<{ queue: string; at: number | null; due: boolean }>(
      'next-run-at',
      this.q.nextRunAt,
      [queues],
    );
    for (const row of r.rows) this.workers.get(row.queue)?.onNextRunAt(row);
  }

  /**
   * Notification router, the one place messages are parsed: job messages wake workers,
   * cancellations abort, ends wake waiters; the leader sees all.
   */
  private route(payload: string): void {
    const message = parseMessage(payload);
    if (message.kind === 'jobs') {
      const worker = this.workers.get(message.queue);
      worker?.dueAt(message.dueAt, message.from);
      if (message.nextAt !== null) worker?.dueLater(message.nextAt);
    } else if (message.kind === 'cancelled') {
      for (const w of this.workers.values()) if (w.abortJob(message.id)) break;
    } else if (message.kind === 'finished') {
      this.waiter.wake(message.id);
    }
    this.leaderService.onMessage(message);
  }

  private onListenerState(state: ListenerState): void {
    if (state === 'disconnected') this.leaderService.onDisconnect();
    if (this.state !== 'running') return;
    const polling = !this.listener.healthy;
    if (polling !== this.polling) {
      this.polling = polling;
      for (const w of this.workers.values()) w.setPolling(polling);
    }
    if (state === 'listening') {
      // Catch up on whatever was sent while we could not hear it.
      for (const w of this.workers.values()) w.catchUp();
      this.armTimers([...this.workers.keys()]).catch((error) =>
        this.events.emit('error', { error: error as Error, context: 'catch-up after reconnect' }),
      );
    }
  }

  // ---- introspection ------------------------------------------------------------------------

  /** Statements issued by this instance: the total and the count per purpose. */
  get statements(): { total: number; byPurpose: Record<string, number> } {
    return { total: this.db.counter.count, byPurpose: this.db.counter.snapshot() };
  }

  get isLeader(): boolean {
    return this.leaderService.isLeader;
  }

  /** The leader service (for operators and tests: run a pass now, wait for one). */
  get leader(): LeaderService {
    return this.leaderService;
  }

  /** The heartbeat (tests can renew all leases now with `heartbeatNow`). */
  heartbeatNow(): Promise<void> {
    return this.heartbeat.beat();
  }

  /** Drops the listener's connection as a network failure would (tests, chaos). */
  dropListenerConnection(): void {
    this.listener.dropConnection();
  }

  health(): HarkHealth {
    let activeJobs = 0;
    for (const w of this.workers.values()) activeJobs += w.activeCount;
    return {
      running: this.state === 'running',
      listener: {
        state: this.listener.state,
        selfTest: this.listener.selfTestFailed ? 'failed' : 'ok',
        polling: this.polling,
        lastError: this.listener.lastError?.message ?? null,
        backendPid: this.listener.backendPid,
      },
      leader: this.leaderService.isLeader,
      breaker: this.db.breaker.state,
      activeJobs,
      queues: [...this.workers.keys()],
    };
  }

  // ---- stopping -----------------------------------------------------------------------------

  /**
   * For worker processes: on SIGTERM or SIGINT, stop gracefully (stop fetching, let active jobs
   * finish until `timeoutMs`, release the rest without spending an attempt), then exit with
   * code 0, or 1 when stopping failed. A second signal exits at once with code 130.
   * Returns a function that removes the handlers.
   */
  stopOnSignals(options: { timeoutMs?: number; exit?: boolean } = {}): () => void {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        process.exit(130);
      }
      stopping = true;
      this.events.emit('worker:signal', { signal });
      this.stop(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }).then(
        () => {
          if (options.exit !== false) process.exit(0);
        },
        (error) => {
          this.events.emit('error', { error: error as Error, context: `stop on ${signal}` });
          if (options.exit !== false) process.exit(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    return () => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
    };
  }

  /**
   * Graceful stop: stop fetching, let active jobs finish until `timeoutMs`, then abort the rest
   * and hand them back without spending an attempt; then close every connection.
   */
  async stop(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.state === 'stopped' || this.state === 'stopping') return;
    if (options.timeoutMs !== undefined) {
      checkValue(
        'stop',
        'timeoutMs',
        { kind: 'integer', min: 0, max: 86_400_000 },
        options.timeoutMs,
      );
    }
    this.state = 'stopping';
    const deadline = Date.now() + (options.timeoutMs ?? this.options.shutdownTimeoutMs);
    const released = (
      await Promise.all([...this.workers.values()].map((w) => w.stop(deadline)))
    ).flat();
    await this.completer.drain();
    if (released.length > 0) {
      try {
        const r = await this.db.query('release', this.q.release, [
          released.map((j) => j.id),
          released.map((j) => j.token),
        ]);
        const back = new Set(r.rows.map((row: { id: string }) => row.id));
        for (const j of released) {
          if (back.has(j.id))
            this.events.emit('job:release', { id: j.id, queue: j.queue, attempt: j.attempt });
        }
      } catch (error) {
        // Their leases will expire and the leader will rescue them.
        this.events.emit('error', { error: error as Error, context: 'release on shutdown' });
      }
    }
    this.heartbeat.stop();
    await this.leaderService.stop();
    await this.listener.stop();
    await this.db.end();
    this.workers.clear();
    this.state = 'stopped';
  }
}
