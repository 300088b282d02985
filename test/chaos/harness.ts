/**
 * The chaos suite's machinery: the database (an embedded server we own, or DATABASE_URL),
 * worker processes, a producer that keeps sending while things break, and the checks that
 * turn the database's final state into verdicts. Scenarios live in scenarios.ts.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { type EmbeddedPostgres, startEmbeddedPostgres } from '../../src/embedded/index.js';
import { Hark } from '../../src/index.js';
import { advisoryKey } from '../../src/sql/identifiers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const WORKER = fileURLToPath(new URL('./worker.ts', import.meta.url));
const DATABASE = 'hark_chaos';

// ---- small utilities --------------------------------------------------------------------------

export function say(line: string): void {
  process.stdout.write(`[chaos] ${line}\n`);
}

/** True for errors that mean "the server is not reachable right now", not "bad SQL". */
export function transient(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (code === undefined || code === null) return true; // socket-level: no SQLSTATE
  if (typeof code !== 'string') return true;
  // Connection exceptions, operator intervention (shutdown, starting up), too many
  // connections, and Node's socket errors (ECONNREFUSED, ECONNRESET, EPIPE...).
  return (
    ['08', '57P'].some((p) => code.startsWith(p)) || code === '53300' || /^E[A-Z]+$/.test(code)
  );
}

export function pick<T>(items: readonly T[]): T {
  const item = items[Math.floor(Math.random() * items.length)];
  if (item === undefined) throw new Error('pick() from an empty list');
  return item;
}

// ---- the database -----------------------------------------------------------------------------

export interface ChaosDatabase {
  url: string;
  /** The embedded server when we own it; null on DATABASE_URL (never stopped, never filled). */
  embedded: EmbeddedPostgres | null;
  version: string;
  maxConnections: number;
  describe: string;
  close(): Promise<void>;
}

export async function openDatabase(): Promise<ChaosDatabase> {
  const external = process.env['DATABASE_URL'];
  if (external !== undefined && external !== '') {
    const admin = new pg.Client({ connectionString: external, connectionTimeoutMillis: 5_000 });
    admin.on('error', () => {});
    await admin.connect();
    try {
      const r = await admin.query<{ v: string; mc: string }>(
        "SELECT current_setting('server_version') AS v, current_setting('max_connections') AS mc",
      );
      const row = r.rows[0]!;
      const shown = external.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');
      return {
        url: external,
        embedded: null,
        version: row.v,
        maxConnections: Number(row.mc),
        describe: `PostgreSQL ${row.v} at DATABASE_URL=${shown} (max_connections ${row.mc})`,
        close: async () => {},
      };
    } finally {
      await admin.end().catch(() => {});
    }
  }
  const maxConnections = 100;
  const started = performance.now();
  // HARK_CHAOS_PG_BIN runs our own cluster from another installed PostgreSQL (e.g. Debian's
  // /usr/lib/postgresql/15/bin), so every scenario, restarts included, runs on that version too.
  const binDir = process.env['HARK_CHAOS_PG_BIN'];
  const server = await startEmbeddedPostgres({
    throwaway: true,
    maxConnections,
    ...(binDir ? { binDir } : {}),
  });
  try {
    const admin = new pg.Client({ connectionString: server.url });
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE ${DATABASE}`);
      // The throwaway cluster runs with synchronous_commit=off: a crash could then forget
      // commits that clients saw succeed, which would look like lost jobs. Per-database settings
      // override the command line, so the crash restart in scenario 2 is a fair test.
      await admin.query(`ALTER DATABASE ${DATABASE} SET synchronous_commit = on`);
    } finally {
      await admin.end();
    }
  } catch (error) {
    await server.stop();
    throw error;
  }
  const ms = Math.round(performance.now() - started);
  return {
    url: `postgres://postgres@127.0.0.1:${server.port}/${DATABASE}`,
    embedded: server,
    version: server.version,
    maxConnections,
    describe:
      `embedded PostgreSQL ${server.version} at 127.0.0.1:${server.port} (throwaway cluster, ` +
      `max_connections ${maxConnections}, synchronous_commit on for ${DATABASE}; ` +
      `ready in ${ms} ms)`,
    close: () => server.stop(),
  };
}

export function machineFacts(): string {
  const cpu = cpus();
  const model = cpu[0]?.model.replace(/\s+/g, ' ').trim() ?? '?';
  const gib = (totalmem() / 2 ** 30).toFixed(1);
  const node = `Node ${process.version}, ${process.platform}`;
  return `${cpu.length} CPU (${model}), ${gib} GiB RAM, ${node}`;
}

/** A small pool for the suite's own queries; `query` waits out outages up to `patienceMs`. */
export class Admin {
  readonly pool: pg.Pool;

  constructor(url: string) {
    this.pool = new pg.Pool({
      connectionString: url,
      max: 3,
      application_name: 'chaos-admin',
      connectionTimeoutMillis: 5_000,
    });
    this.pool.on('error', () => {}); // idle clients die with the server
  }

  async query<R extends pg.QueryResultRow>(
    text: string,
    values: unknown[] = [],
    patienceMs = 60_000,
  ): Promise<R[]> {
    const deadline = Date.now() + patienceMs;
    for (;;) {
      try {
        return (await this.pool.query<R>(text, values)).rows;
      } catch (error) {
        if (!transient(error) || Date.now() > deadline) throw error;
        await sleep(200);
      }
    }
  }

  end(): Promise<void> {
    return this.pool.end();
  }
}

/** A dedicated connection (a superuser session we keep while the server is full). */
export async function connectControl(url: string, name = 'chaos-control'): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: url,
    application_name: name,
    connectionTimeoutMillis: 5_000,
  });
  client.on('error', () => {});
  await client.connect();
  return client;
}

/** The application_name of the session that holds a schema's leader lock, if any. */
export async function leaderOf(admin: Admin, schema: string): Promise<string | null> {
  const key = BigInt.asUintN(64, BigInt(advisoryKey(schema, 'leader')));
  const rows = await admin.query<{ name: string }>(
    `SELECT a.application_name AS name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid`,
    [(key >> 32n).toString(), (key & 0xffffffffn).toString()],
  );
  return rows[0]?.name ?? null;
}

// ---- worker processes ---------------------------------------------------------------------------

/** Every child ever spawned, so nothing outlives the suite even when a scenario throws. */
const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
});

export interface WorkerProc {
  name: string;
  slot: number;
  child: ChildProcess;
  ready: Promise<void>;
  isReady: boolean;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  alive(): boolean;
}

export interface WorkersOptions {
  url: string;
  schema: string;
  queue: string;
  /** Worker names are `<prefix>-w<slot>.<incarnation>`. */
  prefix: string;
  count: number;
  env?: Record<string, string>;
}

export class Workers {
  /** Worker name -> when we SIGKILLed it (ms since epoch). */
  readonly killed = new Map<string, number>();
  /** Job id -> attempts whose completion hark accepted (`C` lines). */
  readonly completions = new Map<string, { attempt: number; worker: string }[]>();
  /** Breaker and listener events with the time we read them: when did each worker recover? */
  readonly timeline: { t: number; worker: string; event: string }[] = [];
  /** `job:lease-lost` events: which worker said it lost which attempt of which job. */
  readonly leaseLost: { worker: string; id: string; attempt: number }[] = [];
  /** Event name -> how many times any worker reported it (`E` lines). */
  readonly events = new Map<string, number>();
  /** Worker name -> its last stderr lines. */
  private readonly logs = new Map<string, string[]>();
  private readonly slots: WorkerProc[] = [];
  private readonly incarnations: number[] = [];
  readonly all: WorkerProc[] = [];

  constructor(private readonly o: WorkersOptions) {}

  async start(): Promise<void> {
    for (let slot = 0; slot < this.o.count; slot++) this.spawn(slot);
    await Promise.all(this.slots.map((w) => w.ready));
  }

  current(slot: number): WorkerProc {
    const w = this.slots[slot];
    if (!w) throw new Error(`no worker in slot ${slot}`);
    return w;
  }

  get size(): number {
    return this.slots.length;
  }

  /** Current workers that are up and working. */
  readyNow(): WorkerProc[] {
    return this.slots.filter((w) => w.isReady && w.alive());
  }

  slotOf(name: string): number | undefined {
    return this.slots.find((w) => w.name === name)?.slot;
  }

  spawn(slot: number): WorkerProc {
    const incarnation = (this.incarnations[slot] ?? 0) + 1;
    this.incarnations[slot] = incarnation;
    const name = `${this.o.prefix}-w${slot + 1}.${incarnation}`;
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      DATABASE_URL: this.o.url,
      HARK_SCHEMA: this.o.schema,
      QUEUE: this.o.queue,
      WORKER_NAME: name,
      CONCURRENCY: '20',
      LEASE_MS: '2000',
      JOB_MS_MIN: '20',
      JOB_MS_MAX: '60',
      ...this.o.env,
    };
    delete env['NODE_TEST_CONTEXT'];
    const child = spawn(process.execPath, ['--import', 'tsx', WORKER], {
      cwd: ROOT,
      env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    children.add(child);
    const log: string[] = [];
    this.logs.set(name, log);
    const trace = process.env['CHAOS_TRACE'] === '1' ? `/tmp/chaos-trace-${name}.log` : undefined;
    const keep = (line: string) => {
      if (trace !== undefined) appendFileSync(trace, `${line}\n`);
      log.push(line);
      if (log.length > 30) log.shift();
    };
    child.stdin?.on('error', () => {}); // EPIPE once it is gone
    createInterface({ input: child.stderr! }).on('line', keep);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(
      (resolve) => {
        child.once('exit', (code, signal) => {
          children.delete(child);
          resolve({ code, signal });
        });
      },
    );
    const w: WorkerProc = {
      name,
      slot,
      child,
      isReady: false,
      exited,
      ready: Promise.resolve(),
      alive: () => child.exitCode === null && child.signalCode === null,
    };
    w.ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${name} was not ready within 30 s:\n${log.join('\n')}`)),
        30_000,
      );
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (line === 'ready') {
          w.isReady = true;
          clearTimeout(timer);
          resolve();
        } else if (line.startsWith('C ')) {
          const [, id, attempt] = line.split(' ');
          if (id !== undefined) {
            const list = this.completions.get(id) ?? [];
            list.push({ attempt: Number(attempt), worker: name });
            this.completions.set(id, list);
          }
        } else if (line.startsWith('E ')) {
          const [, event = '?', id, attempt] = line.split(' ');
          this.events.set(event, (this.events.get(event) ?? 0) + 1);
          if (event.startsWith('breaker:') || event.startsWith('listener:')) {
            this.timeline.push({ t: Date.now(), worker: name, event });
          }
          if (event === 'job:lease-lost' && id !== undefined) {
            this.leaseLost.push({ worker: name, id, attempt: Number(attempt) });
          }
        }
      });
      void exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(
          new Error(`${name} exited (${signal ?? code}) before it was ready:\n${log.join('\n')}`),
        );
      });
    });
    w.ready.catch(() => {});
    this.slots[slot] = w;
    this.all.push(w);
    return w;
  }

  /** SIGKILLs the slot's current process; returns its name. */
  kill(slot: number): string {
    const w = this.current(slot);
    this.killed.set(w.name, Date.now());
    w.child.kill('SIGKILL');
    return w.name;
  }

  /** SIGTERM everyone (graceful), SIGKILL whoever is still there after `graceMs`. */
  async stop(graceMs = 8_000): Promise<string[]> {
    const problems: string[] = [];
    await Promise.all(
      this.all.map(async (w) => {
        if (!w.alive()) return;
        w.child.kill('SIGTERM');
        let timer: NodeJS.Timeout | undefined;
        const exit = await Promise.race([
          w.exited,
          new Promise<null>((resolve) => {
            timer = setTimeout(() => resolve(null), graceMs);
          }),
        ]);
        clearTimeout(timer);
        if (exit === null) {
          problems.push(`${w.name} did not exit within ${graceMs} ms of SIGTERM`);
          w.child.kill('SIGKILL');
          await w.exited;
        } else if (exit.code !== 0) {
          problems.push(`${w.name} exited with ${exit.signal ?? exit.code} on SIGTERM`);
        }
      }),
    );
    return problems;
  }

  /** The last stderr lines of every process, for failure messages. */
  output(): string {
    return this.all
      .map((w) => `--- ${w.name}\n${(this.logs.get(w.name) ?? []).join('\n')}`)
      .join('\n');
  }

  eventSummary(): string {
    const keys = [...this.events.keys()].sort();
    return keys.map((k) => `${k}=${this.events.get(k)}`).join(' ') || 'none';
  }
}

// ---- the producer -----------------------------------------------------------------------------

/**
 * Sends `total` jobs `{ seq }` at a steady rate, in batches, through a Hark instance of its own
 * (so the producer has to survive the chaos too). A batch that fails is looked up before it is
 * sent again: a statement can commit and still report an error (its connection died after the
 * commit), and sending it again would create jobs nobody asked for.
 */
export class Feeder {
  /** seq -> job id, once the batch is known to be in the database. */
  readonly ids: (string | undefined)[];
  readonly problems: string[] = [];
  retriedBatches = 0;
  committedDespiteError = 0;
  startedAt = 0;
  endedAt = 0;

  constructor(
    private readonly hark: Hark,
    private readonly admin: Admin,
    private readonly schema: string,
    private readonly queue: string,
    readonly total: number,
  ) {
    this.ids = new Array<string | undefined>(total);
  }

  get sent(): number {
    return this.ids.filter((id) => id !== undefined).length;
  }

  async run(ratePerSec: number, batchSize = 20): Promise<void> {
    this.startedAt = Date.now();
    const intervalMs = (batchSize / ratePerSec) * 1_000;
    for (let k = 0; k * batchSize < this.total; k++) {
      const due = this.startedAt + k * intervalMs;
      const wait = due - Date.now();
      if (wait > 0) await sleep(wait);
      const seqs: number[] = [];
      for (let seq = k * batchSize; seq < Math.min(this.total, (k + 1) * batchSize); seq++) {
        seqs.push(seq);
      }
      await this.sendBatch(seqs);
    }
    this.endedAt = Date.now();
  }

  private async sendBatch(seqs: number[]): Promise<void> {
    const deadline = Date.now() + 90_000;
    for (let tries = 0; ; tries++) {
      try {
        const ids = await this.hark.sendMany(
          seqs.map((seq) => ({ queue: this.queue, payload: { seq } })),
        );
        seqs.forEach((seq, i) => {
          this.ids[seq] = ids[i];
        });
        return;
      } catch (error) {
        if (tries === 0) this.retriedBatches++;
        const found = await this.admin.query<{ id: string; seq: number }>(
          `SELECT id::text AS id, (payload->>'seq')::int AS seq FROM "${this.schema}".jobs
            WHERE queue = $1 AND (payload->>'seq')::int = ANY($2::int[])`,
          [this.queue, seqs],
          90_000,
        );
        for (const row of found) this.ids[row.seq] = row.id;
        if (found.length === seqs.length) {
          this.committedDespiteError++;
          return;
        }
        if (found.length > 0) {
          this.problems.push(
            `a batch of ${seqs.length} jobs was half inserted (${found.length} rows) after ` +
              `${(error as Error).message}`,
          );
          return;
        }
        if (Date.now() > deadline) {
          this.problems.push(
            `could not send seqs ${seqs[0]}..${seqs.at(-1)} within 90 s: ` +
              (error as Error).message,
          );
          return;
        }
        await sleep(Math.min(1_000, 100 * 2 ** tries));
      }
    }
  }
}

// ---- a scenario's frame -----------------------------------------------------------------------

export interface Disruption {
  label: string;
  /** ms since epoch. */
  start: number;
  /** When the disruption was over (server back, connections released...). */
  end: number;
  /** Jobs active in the processes hit at the moment of the disruption. */
  affected: string[];
}

export interface ScenarioContext {
  db: ChaosDatabase;
  admin: Admin;
  schema: string;
  queue: string;
  workers: Workers;
  feeder: Feeder;
  disruptions: Disruption[];
  /** Lines printed under the table for this scenario. */
  notes: string[];
  /** Guarantee violations found by the scenario itself (e.g. throughput collapse). */
  failures: string[];
  /** Active job ids, of the named workers or of all. */
  activeJobs(workerNames?: string[], executor?: pg.Client): Promise<string[]>;
}

export interface ScenarioSpec {
  key: string;
  title: string;
  jobs: number;
  ratePerSec: number;
  /** The disruption starts this long after the first send. */
  disruptAfterMs: number;
  disrupt(ctx: ScenarioContext): Promise<void>;
}

export interface ScenarioRow {
  key: string;
  title: string;
  sent: number;
  completed: number;
  rerun: number;
  rerunDetail: string;
  lost: number;
  disruptions: number;
  firstMs: number | null;
  affectedMs: number | null;
  wallS: number;
  verdict: 'ok' | 'FAIL' | 'skipped';
  skipReason?: string;
}

export interface ScenarioResult {
  row: ScenarioRow;
  failures: string[];
  notes: string[];
}

const TAG = randomBytes(2).toString('hex');

export async function runScenario(db: ChaosDatabase, spec: ScenarioSpec): Promise<ScenarioResult> {
  const began = Date.now();
  const schema = `chaos_${spec.key}_${TAG}`;
  const queue = 'chaos';
  const admin = new Admin(db.url);
  const failures: string[] = [];
  const notes: string[] = [];
  const disruptions: Disruption[] = [];
  const producer = new Hark({
    connectionString: db.url,
    schema,
    migrate: 'auto',
    workerId: `chaos-producer-${spec.key}`,
    leaderEligible: false,
    leaseMs: 2_000,
  });
  const workers = new Workers({
    url: db.url,
    schema,
    queue,
    prefix: `c${TAG}-${spec.key}`,
    count: 4,
  });
  let producerStarted = false;
  try {
    await producer.start();
    producerStarted = true;
    await admin.query(`CREATE TABLE "${schema}".runs (
      run_id uuid PRIMARY KEY, job_id bigint NOT NULL, attempt int NOT NULL,
      worker text NOT NULL, started_at timestamptz NOT NULL)`);
    // Generous retries: a job may lose several attempts to chaos (each lost lease spends one)
    // and must still complete; the report shows how many attempts were needed.
    await producer.createQueue(queue, {
      leaseMs: 2_000,
      retryLimit: 10,
      retryDelayMs: 100,
      retryDelayMaxMs: 2_000,
    });
    await workers.start();
    const feeder = new Feeder(producer, admin, schema, queue, spec.jobs);
    const ctx: ScenarioContext = {
      db,
      admin,
      schema,
      queue,
      workers,
      feeder,
      disruptions,
      notes,
      failures,
      activeJobs: async (names, executor) => {
        const text = `SELECT id::text AS id FROM "${schema}".jobs
          WHERE queue = $1 AND state = 'active' AND ($2::text[] IS NULL OR worker_id = ANY($2))`;
        const values = [queue, names ?? null];
        if (executor)
          return (await executor.query<{ id: string }>(text, values)).rows.map((r) => r.id);
        return (await admin.query<{ id: string }>(text, values)).map((r) => r.id);
      },
    };
    const feeding = feeder.run(spec.ratePerSec);
    const disrupting = sleep(spec.disruptAfterMs).then(() => spec.disrupt(ctx));
    const [fed, disrupted] = await Promise.allSettled([feeding, disrupting]);
    if (fed.status === 'rejected') failures.push(`producer: ${String(fed.reason)}`);
    if (disrupted.status === 'rejected') {
      failures.push(`disruption driver: ${(disrupted.reason as Error)?.stack ?? disrupted.reason}`);
    }
    failures.push(...feeder.problems);

    // Everything sent must end `completed`, by itself, within a sane time.
    const calmSince = Math.max(Date.now(), ...disruptions.map((d) => d.end));
    const deadline = calmSince + 45_000;
    let open = Number.POSITIVE_INFINITY;
    while (Date.now() < deadline) {
      const r = await admin.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM "${schema}".jobs WHERE queue = $1 AND state <> 'completed'`,
        [queue],
      );
      open = r[0]?.n ?? 0;
      if (open === 0) break;
      await sleep(200);
    }
    const drainedMs = Date.now() - calmSince;
    if (open > 0) {
      const states = await admin.query<{ state: string; n: number }>(
        `SELECT state, count(*)::int AS n FROM "${schema}".jobs WHERE queue = $1 GROUP BY 1`,
        [queue],
      );
      failures.push(
        `${open} jobs not completed 45 s after the last disruption ended: ` +
          states.map((s) => `${s.state}=${s.n}`).join(' '),
      );
    }

    const v = await verify(admin, schema, queue, feeder, workers);
    failures.push(...v.failures);
    notes.push(...v.notes);
    notes.push(
      `all jobs done ${drainedMs} ms after the last disruption; producer: ` +
        `${feeder.retriedBatches} batches retried (${feeder.committedDespiteError} had committed ` +
        `despite the error); worker events: ${workers.eventSummary()}`,
    );

    const rec = recovery(
      disruptions,
      v.finished,
      v.jobs,
      [feeder.startedAt, feeder.endedAt],
      workers.timeline,
      (id, origin) => {
        const j = v.jobs.get(id);
        const rel = (t: number) => `${Math.round(t - origin)}`;
        const errs = (j?.errors ?? []).map(
          (e) => `${e.name}#${e.attempt} at ${e.at ? rel(Date.parse(e.at)) : '?'}`,
        );
        const runs = (v.runsOf.get(id) ?? []).map(
          (r) => `${r.worker}#${r.attempt} started ${rel(r.started)}`,
        );
        const said = (workers.completions.get(id) ?? []).map((c) => `${c.worker}#${c.attempt}`);
        const lost = workers.leaseLost
          .filter((e) => e.id === id)
          .map((e) => `${e.worker}#${e.attempt}`);
        return (
          `job ${id} (ms relative to the end): errors [${errs.join(', ')}], runs ` +
          `[${runs.join(', ')}], job:complete [${said.join(', ')}], job:lease-lost ` +
          `[${lost.join(', ')}], finished ${j?.finished ? rel(j.finished) : '-'}`
        );
      },
    );
    for (const d of rec.lines) notes.push(d);
    const stopProblems = await workers.stop();
    for (const p of stopProblems) notes.push(`warning: ${p}`);
    if (failures.length > 0) notes.push(`worker stderr tails:\n${workers.output()}`);
    return {
      failures,
      notes,
      row: {
        key: spec.key,
        title: spec.title,
        sent: feeder.sent,
        completed: v.completed,
        rerun: v.rerunJobs,
        rerunDetail: v.rerunDetail,
        lost: feeder.total - v.completed,
        disruptions: disruptions.length,
        firstMs: rec.firstMs,
        affectedMs: rec.affectedMs,
        wallS: Math.round((Date.now() - began) / 100) / 10,
        verdict: failures.length === 0 ? 'ok' : 'FAIL',
      },
    };
  } catch (error) {
    failures.push(`scenario crashed: ${(error as Error).stack ?? String(error)}`);
    notes.push(`worker stderr tails:\n${workers.output()}`);
    return {
      failures,
      notes,
      row: {
        key: spec.key,
        title: spec.title,
        sent: 0,
        completed: 0,
        rerun: 0,
        rerunDetail: '',
        lost: spec.jobs,
        disruptions: disruptions.length,
        firstMs: null,
        affectedMs: null,
        wallS: Math.round((Date.now() - began) / 100) / 10,
        verdict: 'FAIL',
      },
    };
  } finally {
    for (const w of workers.all) if (w.alive()) w.child.kill('SIGKILL');
    await Promise.all(workers.all.map((w) => w.exited));
    if (producerStarted) await producer.stop({ timeoutMs: 1_000 }).catch(() => {});
    if (failures.length === 0 && process.env['CHAOS_KEEP'] !== '1') {
      await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
    } else {
      notes.push(`kept schema ${schema} for inspection (database ${db.url})`);
    }
    await admin.end().catch(() => {});
  }
}

// ---- verdicts ---------------------------------------------------------------------------------

interface JobRow {
  id: string;
  seq: number;
  state: string;
  attempt: number;
  errors: { attempt?: number; name?: string; message?: string; at?: string }[];
  output: { worker?: string; attempt?: number; runId?: string } | null;
  finished: number | null;
}

interface RunRow {
  run_id: string;
  job_id: string;
  attempt: number;
  worker: string;
  started: number;
}

/** Collects violations by kind, keeping a few examples of each. */
class Violations {
  private readonly byKind = new Map<string, { n: number; examples: string[] }>();

  add(kind: string, example: string): void {
    const v = this.byKind.get(kind) ?? { n: 0, examples: [] };
    v.n++;
    if (v.examples.length < 3) v.examples.push(example);
    this.byKind.set(kind, v);
  }

  list(): string[] {
    return [...this.byKind].map(([kind, v]) => `${kind}: ${v.n} (e.g. ${v.examples.join('; ')})`);
  }
}

/**
 * The guarantees, read from the database's final state and the workers' reports:
 * - every job sent exists once and is `completed` (nothing lost, duplicated, stuck or failed);
 * - its completion came from a recorded run of its last attempt (output names that run);
 * - hark accepted at most one completion per job, for its last attempt;
 * - no attempt ran twice; every earlier attempt ended with a recorded cause (errors has exactly
 *   one entry per earlier attempt), and every earlier run is accounted for by its attempt's
 *   cause: a LeaseExpired naming the run's own worker (killed by us, or lease lost), or an error
 *   the handler raised. A re-run with no such cause is a violation.
 */
async function verify(
  admin: Admin,
  schema: string,
  queue: string,
  feeder: Feeder,
  workers: Workers,
): Promise<{
  failures: string[];
  notes: string[];
  completed: number;
  rerunJobs: number;
  rerunDetail: string;
  finished: Map<string, number>;
  jobs: Map<string, JobRow>;
  runsOf: Map<string, RunRow[]>;
}> {
  const bad = new Violations();
  const jobs = await admin.query<JobRow>(
    `SELECT id::text AS id, (payload->>'seq')::int AS seq, state, attempt, errors, output,
            (extract(epoch FROM finished_at) * 1000)::float8 AS finished
       FROM "${schema}".jobs WHERE queue = $1`,
    [queue],
  );
  const runs = await admin.query<RunRow>(
    `SELECT run_id::text AS run_id, job_id::text AS job_id, attempt, worker,
            (extract(epoch FROM started_at) * 1000)::float8 AS started
       FROM "${schema}".runs`,
  );
  const byId = new Map(jobs.map((j) => [j.id, j]));
  const runsOf = new Map<string, RunRow[]>();
  for (const r of runs) {
    const list = runsOf.get(r.job_id) ?? [];
    list.push(r);
    runsOf.set(r.job_id, list);
  }

  // Sent = in the table, once; nothing else in the table.
  const sentIds = new Set<string>();
  feeder.ids.forEach((id, seq) => {
    if (id === undefined) bad.add('job never sent (producer gave up)', `seq ${seq}`);
    else if (!byId.has(id)) bad.add('sent job missing from the table', `id ${id} (seq ${seq})`);
    else sentIds.add(id);
  });
  const seqs = new Set<number>();
  for (const j of jobs) {
    if (!sentIds.has(j.id)) bad.add('job in the table that was never sent', `id ${j.id}`);
    if (seqs.has(j.seq)) bad.add('seq inserted twice', `seq ${j.seq}`);
    seqs.add(j.seq);
  }
  for (const r of runs) {
    if (!byId.has(r.job_id)) bad.add('run of an unknown job', `job ${r.job_id}`);
  }

  let completed = 0;
  let rerunJobs = 0;
  const causes = new Map<string, number>();
  let maxAttempt = 0;
  let attemptsWithoutRun = 0;
  const finished = new Map<string, number>();
  for (const j of jobs) {
    if (!sentIds.has(j.id)) continue;
    maxAttempt = Math.max(maxAttempt, j.attempt);
    if (j.finished !== null) finished.set(j.id, j.finished);
    if (j.state !== 'completed') {
      bad.add(`job ends ${j.state}`, `id ${j.id} attempt ${j.attempt}`);
      continue;
    }
    completed++;
    const jr = runsOf.get(j.id) ?? [];
    // The completion came from a recorded run of the last attempt.
    const final = jr.find((r) => r.run_id === j.output?.runId);
    if (!final) {
      bad.add('completed without a recorded run', `id ${j.id} output ${JSON.stringify(j.output)}`);
    } else if (
      final.attempt !== j.attempt ||
      j.output?.attempt !== j.attempt ||
      final.worker !== j.output?.worker
    ) {
      bad.add(
        'completion does not match its run',
        `id ${j.id} attempt ${j.attempt}, run ${final.worker}#${final.attempt}`,
      );
    }
    // hark accepted one completion, for the last attempt (a killed worker may not have said).
    const accepted = workers.completions.get(j.id) ?? [];
    const said = accepted.map((a) => `#${a.attempt} by ${a.worker}`).join(', ');
    if (accepted.length > 1) {
      bad.add(
        'hark reported a completion it did not make: job:complete for two attempts of a job',
        `id ${j.id} (completed at attempt ${j.attempt}): ${said}`,
      );
    } else if (accepted.length === 1 && accepted[0]?.attempt !== j.attempt) {
      bad.add(
        'hark accepted the completion of an old attempt',
        `id ${j.id} (completed at attempt ${j.attempt}): ${said}`,
      );
    }
    // Every earlier attempt ended with exactly one recorded cause.
    const errorAttempts = j.errors.map((e) => e.attempt ?? -1);
    const expected = Array.from({ length: j.attempt - 1 }, (_, i) => i + 1);
    if (JSON.stringify(errorAttempts) !== JSON.stringify(expected)) {
      bad.add(
        'earlier attempts without exactly one recorded cause',
        `id ${j.id} attempt ${j.attempt}, errors for ${JSON.stringify(errorAttempts)}`,
      );
    }
    const seenAttempts = new Set<number>();
    for (const r of jr) {
      if (seenAttempts.has(r.attempt)) {
        const who = jr.filter((x) => x.attempt === r.attempt).map((x) => x.worker);
        bad.add('one attempt ran twice', `id ${j.id} attempt ${r.attempt} on ${who.join(', ')}`);
      }
      seenAttempts.add(r.attempt);
      if (r.attempt > j.attempt) {
        bad.add('run of an attempt the job never had', `id ${j.id} run ${r.attempt}/${j.attempt}`);
      }
    }
    attemptsWithoutRun += Math.max(0, j.attempt - seenAttempts.size);
    if (jr.length > 1) rerunJobs++;
    for (const r of jr) {
      if (r === final) continue;
      const cause = j.errors.find((e) => e.attempt === r.attempt);
      let kind: string;
      if (!cause) {
        bad.add(
          're-run with no recorded cause',
          `id ${j.id}: run ${r.worker}#${r.attempt}, errors ${JSON.stringify(j.errors)}`,
        );
        continue;
      }
      if (cause.name === 'LeaseExpired') {
        if (!(cause.message ?? '').includes(`worker ${r.worker} `)) {
          bad.add(
            'LeaseExpired names another worker than the run',
            `id ${j.id}: run ${r.worker}#${r.attempt}, "${cause.message}"`,
          );
        }
        const killedAt = workers.killed.get(r.worker);
        kind = killedAt !== undefined && killedAt >= r.started ? 'killed' : 'lease lost';
      } else {
        kind = `failed (${cause.name ?? '?'})`;
      }
      causes.set(kind, (causes.get(kind) ?? 0) + 1);
    }
  }
  const rerunDetail = [...causes].map(([k, n]) => `${k} ${n}`).join(', ');
  // What the workers' `job:lease-lost` events turned out to be.
  const lostKinds = new Map<string, number>();
  const lostExamples: string[] = [];
  for (const e of workers.leaseLost) {
    const j = byId.get(e.id);
    let kind = 'other';
    if (j?.errors.some((x) => x.attempt === e.attempt && x.name === 'LeaseExpired')) {
      kind = 'really lost (rescued after expiry)';
    } else if (
      j?.attempt === e.attempt &&
      j.output?.worker === e.worker &&
      (workers.completions.get(e.id) ?? []).some(
        (a) => a.attempt === e.attempt && a.worker === e.worker,
      )
    ) {
      kind = 'completed by that very attempt (hark also accepted its completion)';
      if (lostExamples.length < 3) lostExamples.push(`${e.worker} job ${e.id}#${e.attempt}`);
    } else if (j?.errors.some((x) => x.attempt === e.attempt)) {
      kind = 'attempt failed';
    }
    lostKinds.set(kind, (lostKinds.get(kind) ?? 0) + 1);
  }
  const lostNote =
    workers.leaseLost.length === 0
      ? []
      : [
          `job:lease-lost events ${workers.leaseLost.length}: ` +
            [...lostKinds].map(([k, n]) => `${k} ${n}`).join(', ') +
            (lostExamples.length > 0 ? ` (e.g. ${lostExamples.join(', ')})` : ''),
        ];
  return {
    failures: bad.list(),
    notes: [
      ...lostNote,
      `runs ${runs.length} for ${completed} completed jobs; re-runs by cause: ` +
        `${rerunDetail || 'none'}; highest attempt ${maxAttempt}; attempts that never recorded ` +
        `a run (killed or cut off before the handler's insert): ${attemptsWithoutRun}`,
    ],
    completed,
    rerunJobs,
    rerunDetail,
    finished,
    jobs: byId,
    runsOf,
  };
}

/**
 * Per disruption: how long after it ended the first job completed (is anything flowing?), and
 * when the last of the jobs it caught in flight completed (were they all recovered?).
 */
function recovery(
  disruptions: Disruption[],
  finished: Map<string, number>,
  jobs: Map<string, JobRow>,
  feedWindow: [number, number],
  timeline: { t: number; worker: string; event: string }[],
  describe: (id: string, origin: number) => string,
): { firstMs: number | null; affectedMs: number | null; lines: string[] } {
  const times = [...finished.values()].sort((a, b) => a - b);
  let firstMs: number | null = null;
  let affectedMs: number | null = null;
  const lines: string[] = [];
  for (const d of disruptions) {
    const next = times.find((t) => t >= d.end);
    const first = next === undefined ? null : Math.round(next - d.end);
    let last: number | null = null;
    let rescued: number | null = null;
    let lateId: string | undefined;
    let lastId: string | undefined;
    for (const id of d.affected) {
      const t = finished.get(id);
      if (t !== undefined && Math.round(t - d.end) > (last ?? Number.NEGATIVE_INFINITY)) {
        last = Math.round(t - d.end);
        lastId = id;
      }
      for (const e of jobs.get(id)?.errors ?? []) {
        const at = e.name === 'LeaseExpired' && e.at ? Date.parse(e.at) : Number.NaN;
        if (at >= d.start && Math.round(at - d.end) > (rescued ?? Number.NEGATIVE_INFINITY)) {
          rescued = Math.round(at - d.end);
          lateId = id;
        }
      }
    }
    if (first !== null) firstMs = Math.max(firstMs ?? 0, first);
    if (last !== null) affectedMs = Math.max(affectedMs ?? 0, Math.max(0, last));
    lines.push(
      `  ${d.label}: ${Math.round(d.end - d.start)} ms; ${d.affected.length} jobs in flight; ` +
        `first completion ${first ?? '-'} ms after, all of those in flight done ` +
        `${last === null ? '-' : Math.max(0, last)} ms after` +
        (rescued === null ? '' : ` (the last of them rescued ${rescued} ms after)`) +
        workerRecovery(d, timeline),
    );
    // A rescue long after the end means a live worker stopped renewing a lease: show the job.
    if (rescued !== null && rescued > 3_000 && lateId !== undefined) {
      lines.push(`    late rescue: ${describe(lateId, d.end)}`);
    }
    if (last !== null && last > 4_000 && lastId !== undefined && lastId !== lateId) {
      lines.push(`    late completion: ${describe(lastId, d.end)}`);
    }
  }
  // The longest stretch with no completion at all while jobs were being sent (every 50 ms).
  let gap = 0;
  let gapAt = 0;
  for (let i = 1; i < times.length; i++) {
    if (times[i - 1]! < feedWindow[0] || times[i]! > feedWindow[1]) continue;
    const d = times[i]! - times[i - 1]!;
    if (d > gap) {
      gap = d;
      gapAt = times[i - 1]!;
    }
  }
  if (gap > 0) {
    const d = disruptions.filter((x) => x.start <= gapAt + gap).at(-1);
    const where = d
      ? `from ${Math.round(gapAt - d.end)} to ${Math.round(gapAt + gap - d.end)} ms relative ` +
        `to the end of "${d.label.slice(0, 50)}..."`
      : 'before any disruption';
    lines.push(
      `  longest stretch without a completion while sending: ${Math.round(gap)} ms, ${where}`,
    );
  }
  return { firstMs, affectedMs, lines };
}

/**
 * Per worker, when its listener reconnected (L) and its breaker closed (B), in ms relative to the
 * end of the disruption; only for workers whose listener dropped or whose breaker opened.
 */
function workerRecovery(
  d: Disruption,
  timeline: { t: number; worker: string; event: string }[],
): string {
  const within = timeline.filter((e) => e.t >= d.start);
  const workers = [...new Set(within.map((e) => e.worker))].sort();
  const parts: string[] = [];
  for (const w of workers) {
    const mine = within.filter((e) => e.worker === w);
    const hit = (event: string) => mine.some((e) => e.event === event && e.t <= d.end + 50);
    const next = (event: string) => {
      const e = mine.find((x) => x.event === event);
      return e === undefined ? '?' : `${Math.round(e.t - d.end)}`;
    };
    const bits: string[] = [];
    if (hit('listener:disconnect')) bits.push(`L${next('listener:connect')}`);
    if (hit('breaker:open')) bits.push(`B${next('breaker:closed')}`);
    if (bits.length > 0) parts.push(`${w.replace(/^.*-(w\d+\.\d+)$/, '$1')} ${bits.join(' ')}`);
  }
  return parts.length === 0 ? '' : `; back after (L listener, B breaker): ${parts.join(', ')}`;
}

// ---- the table --------------------------------------------------------------------------------

export function table(rows: ScenarioRow[]): string {
  const head = [
    'scenario',
    'sent',
    'completed',
    're-run',
    'lost',
    'disruptions',
    'first done after (max)',
    'in-flight done after (max)',
    'wall',
    'verdict',
  ];
  const ms = (v: number | null) => (v === null ? '-' : `${v} ms`);
  const body = rows.map((r) =>
    r.verdict === 'skipped'
      ? [r.title, '-', '-', '-', '-', '-', '-', '-', '-', `skipped: ${r.skipReason ?? ''}`]
      : [
          r.title,
          String(r.sent),
          String(r.completed),
          r.rerun === 0 ? '0' : `${r.rerun} (${r.rerunDetail})`,
          String(r.lost),
          String(r.disruptions),
          ms(r.firstMs),
          ms(r.affectedMs),
          `${r.wallS} s`,
          r.verdict,
        ],
  );
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? '').length)));
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  return [
    line(head),
    `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`,
    ...body.map(line),
  ].join('\n');
}
