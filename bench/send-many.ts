/**
 * How fast jobs go in: hark's sendMany and send against hand-written SQL on the same server.
 *
 *   node --import tsx bench/send-many.ts [--quick] [--runs=N] [--only=a1,d1,...]
 *
 * Cases (each run on a fresh schema, dropped afterwards; runs interleaved across cases):
 *   a1  hark sendMany, one call of 100,000 jobs
 *   a2  hark sendMany, 10 sequential calls of 10,000
 *   b   hark send, 20,000 jobs with 10 in flight
 *   c1  floor: INSERT ... SELECT FROM unnest() of 100,000 rows into a plain copy of the jobs
 *       table (same columns, defaults, checks and indexes; no trigger, no foreign key)
 *   c2  floor: single-row INSERTs into that table, 20,000 with 10 in flight
 *   c3  c2 with hark's NOTIFY trigger added to the plain table (what one NOTIFY per commit costs)
 *   d1  raw SQL: hark's insertJobs statement (14 parallel typed arrays), 100,000 rows
 *   d2  raw SQL: the same insert from one jsonb array parameter (jsonb_to_recordset)
 *   d3  raw SQL: the same insert from one json array parameter (json_to_recordset)
 *   d4  raw SQL: d1's statement and arrays, each array passed as a ready array literal (text)
 *       built in one pass, instead of letting pg serialise it element by element
 * The d cases insert into hark's real jobs table (trigger and foreign key included) and time
 * building the parameters from resolved rows plus the statement, not hark's validation.
 *
 * Database: DATABASE_URL, or a temporary embedded cluster with default (durable) settings.
 * Reports jobs/s as the median of the runs, with min-max. --quick: 1,000 jobs, one run (CI).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import pg from 'pg';
import {
  DEFAULT_FAILED_RETENTION_MS,
  DEFAULT_LEASE_MS,
  DEFAULT_PRIORITY,
  DEFAULT_RETENTION_MS,
  DEFAULT_RETRY_BACKOFF,
  DEFAULT_RETRY_DELAY_MAX_MS,
  DEFAULT_RETRY_DELAY_MS,
  DEFAULT_RETRY_LIMIT,
  Hark,
  migrate,
  type Queue,
} from '../src/index.js';
import { type InsertRow, insertColumns } from '../src/client/producer.js';
import { arrayLiteral } from '../src/db/array-literal.js';
import { quoteIdent } from '../src/sql/identifiers.js';
import { buildQueries } from '../src/sql/queries.js';
import { openBenchDatabase, warmPool, withClient } from './lib/database.js';
import { describeMachine, loadAverage, machineFacts } from './lib/machine.js';
import { formatCount, median, rates, table } from './lib/stats.js';

const IN_FLIGHT = 10;
/** USER_HZ: /proc reports CPU times in these ticks; 100 on every Linux we run on. */
const CLOCK_TICKS = 100;
const QUEUE = 'bench';

interface Sizes {
  many: number;
  chunk: number;
  singles: number;
  runs: number;
  /** Case ids to run; empty: all. */
  only: string[];
}

function parseArgs(argv: string[]): Sizes {
  const quick = argv.includes('--quick');
  const sizes: Sizes = quick
    ? { many: 1_000, chunk: 100, singles: 1_000, runs: 1, only: [] }
    : { many: 100_000, chunk: 10_000, singles: 20_000, runs: 3, only: [] };
  for (const arg of argv) {
    const runs = /^--runs=(\d+)$/.exec(arg);
    const only = /^--only=([a-z0-9,]+)$/.exec(arg);
    if (runs) sizes.runs = Math.max(1, Number(runs[1]));
    else if (only) sizes.only = only[1]!.split(',');
    else if (arg !== '--quick') {
      throw new Error(`unknown argument ${arg} (--quick, --runs=N, --only=a1,d1,...)`);
    }
  }
  return sizes;
}

/** A realistic small payload (about 130 bytes of JSON, with characters that need escaping). */
function payloadFor(i: number) {
  return {
    userId: i,
    email: `user${i}@example.com`,
    plan: i % 3 === 0 ? 'pro' : 'free',
    tags: ['signup', 'web'],
    note: 'said "hi"',
    at: '2026-11-23T00:00:00.000Z',
  };
}
type Payload = ReturnType<typeof payloadFor>;

/** A job as the producer holds it after resolving its policy. */
type Row = InsertRow;

function rowFor(i: number): Row {
  return {
    queue: QUEUE,
    priority: DEFAULT_PRIORITY,
    runAt: null,
    payload: JSON.stringify(payloadFor(i)),
    maxAttempts: DEFAULT_RETRY_LIMIT + 1,
    retryDelayMs: DEFAULT_RETRY_DELAY_MS,
    retryBackoff: DEFAULT_RETRY_BACKOFF,
    retryDelayMaxMs: DEFAULT_RETRY_DELAY_MAX_MS,
    timeoutMs: null,
    leaseMs: DEFAULT_LEASE_MS,
    singletonKey: null,
    deadLetter: null,
    retentionMs: DEFAULT_RETENTION_MS,
    failedRetentionMs: DEFAULT_FAILED_RETENTION_MS,
    notifyFinish: false,
  };
}

/** The parallel arrays of insertJobs, built as Producer.insert builds them. */
function parallelArrays(rows: readonly Row[]): unknown[][] {
  return insertColumns(rows);
}

/** insertJobs, checked against the arrays built here (the statement evolves with hark). */
function insertJobsStatement(schema: string): string {
  const sql = buildQueries(schema).insertJobs;
  const params = new Set(sql.match(/\$\d+/g) ?? []).size;
  const built = parallelArrays([rowFor(0)]).length;
  if (params !== built) {
    throw new Error(
      `insertJobs takes ${params} parameters but bench/send-many.ts builds ${built} arrays:` +
        ' update Row, rowFor, parallelArrays and recordsetInsert to match src/sql/queries.ts',
    );
  }
  return sql;
}

/** One JSON array of row objects; each payload (already JSON) is spliced in, not re-encoded. */
function jsonDocument(rows: readonly Row[]): string {
  const parts = rows.map((r) => {
    const head = JSON.stringify({
      queue: r.queue,
      priority: r.priority,
      run_at: r.runAt,
      max_attempts: r.maxAttempts,
      retry_delay_ms: r.retryDelayMs,
      retry_backoff: r.retryBackoff,
      retry_delay_max_ms: r.retryDelayMaxMs,
      timeout_ms: r.timeoutMs,
      lease_ms: r.leaseMs,
      singleton_key: r.singletonKey,
      dead_letter: r.deadLetter,
      retention_ms: r.retentionMs,
      failed_retention_ms: r.failedRetentionMs,
    });
    return `${head.slice(0, -1)},"payload":${r.payload}}`;
  });
  return `[${parts.join(',')}]`;
}

/** insertJobs with its rows from one json or jsonb array instead of 13 arrays. */
function recordsetInsert(schema: string, type: 'json' | 'jsonb'): string {
  const s = quoteIdent(schema);
  return `
    INSERT INTO ${s}.jobs (queue, state, priority, run_at, payload, max_attempts, retry_delay_ms,
        retry_backoff, retry_delay_max_ms, timeout_ms, lease_ms, singleton_key, dead_letter,
        retention_ms, failed_retention_ms)
    SELECT t.queue,
           CASE WHEN t.run_at > now() THEN 'scheduled' ELSE 'available' END,
           t.priority, coalesce(t.run_at, now()), coalesce(t.payload, 'null'::jsonb),
           t.max_attempts, t.retry_delay_ms, t.retry_backoff, t.retry_delay_max_ms, t.timeout_ms,
           t.lease_ms, t.singleton_key, t.dead_letter, t.retention_ms, t.failed_retention_ms
      FROM ROWS FROM (${type}_to_recordset($1::${type}) AS (queue text, priority int,
             run_at timestamptz, payload jsonb, max_attempts int, retry_delay_ms int,
             retry_backoff bool, retry_delay_max_ms int, timeout_ms int, lease_ms int,
             singleton_key text, dead_letter text, retention_ms bigint,
             failed_retention_ms bigint))
           WITH ORDINALITY AS t(queue, priority, run_at, payload, max_attempts, retry_delay_ms,
             retry_backoff, retry_delay_max_ms, timeout_ms, lease_ms, singleton_key, dead_letter,
             retention_ms, failed_retention_ms, ord)
     ORDER BY t.ord
    RETURNING id::text AS id`;
}

/**
 * CPU time (user + system, ms) of a server backend on this machine, from /proc; NaN when the
 * server runs elsewhere (or in another pid namespace: the process must be a postgres).
 */
function backendCpuMs(pid: number): number {
  try {
    if (!readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('postgres')) return Number.NaN;
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may contain spaces): utime and stime are 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]);
    return (ticks * 1000) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}

/** Runs `count` calls of `fn` with at most `inFlight` at once. */
async function inFlight(
  count: number,
  limit: number,
  fn: (i: number) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < count) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, lane));
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** Where a d case's time went (ms): less sensitive to other load than wall time. */
interface Parts {
  /** Building the parameters from resolved rows (wall time, on the event loop). */
  build: number;
  /** CPU of this process during the step: building plus pg's serialisation. */
  clientCpu: number;
  /** CPU of the server backend that ran the statement; NaN when it cannot be read. */
  serverCpu: number;
}

interface Prepared {
  /** The timed step; the d cases report where its time went. */
  // biome-ignore lint/suspicious/noConfusingVoidType: most cases return nothing
  run(): Promise<void | Parts>;
  /** Checks the result (not timed). */
  verify(): Promise<void>;
  close(): Promise<void>;
}

interface Case {
  id: string;
  label: string;
  jobs: number;
  prepare(schema: string): Promise<Prepared>;
}

function assert(condition: boolean, message: string): void {
  if (!condition) throw new Error(`check failed: ${message}`);
}

async function main(): Promise<number> {
  const sizes = parseArgs(process.argv.slice(2));
  let stopping = false;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (stopping) process.exit(130);
      stopping = true;
      process.stderr.write(`\n${signal}: finishing the current run, then cleaning up...\n`);
    });
  }

  const began = performance.now();
  const db = await openBenchDatabase();
  const pool = new pg.Pool({ connectionString: db.url, max: IN_FLIGHT + 2 });
  pool.on('error', () => undefined);
  try {
    const facts = await machineFacts(pool);
    console.log(`bench/send-many: ${db.label}`);
    for (const line of describeMachine(facts)) console.log(`  ${line}`);
    console.log(
      `  sizes: sendMany ${formatCount(sizes.many)} (chunks of ${formatCount(sizes.chunk)}),` +
        ` single sends ${formatCount(sizes.singles)} with ${IN_FLIGHT} in flight;` +
        ` ${sizes.runs} run(s) per case, interleaved`,
    );
    await warmPool(pool, IN_FLIGHT);
    const canCheckpoint = await pool.query('CHECKPOINT').then(
      () => true,
      () => false,
    );
    console.log(
      canCheckpoint
        ? '  a CHECKPOINT precedes every timed run; each run has a fresh schema, dropped after'
        : '  (CHECKPOINT not permitted: runs may overlap checkpoints)',
    );
    console.log();

    const count = async (schema: string, table: string) => {
      const r = await pool.query<{ n: string }>(
        `SELECT count(*) AS n FROM ${quoteIdent(schema)}.${table}`,
      );
      return Number(r.rows[0]?.n);
    };

    /** hark on a fresh schema, its pool's connections open and its code paths warm. */
    const startHark = async (schema: string) => {
      const hark = new Hark({ connectionString: db.url, schema, migrate: 'auto' });
      await hark.start();
      const queue = await hark.createQueue<Payload>(QUEUE);
      await inFlight(IN_FLIGHT, IN_FLIGHT, (i) => queue.send(payloadFor(-1 - i)));
      await queue.sendMany(range(100).map((i) => payloadFor(-100 - i)));
      const warm = IN_FLIGHT + 100;
      return { hark, queue, warm };
    };

    const harkCase = (
      id: string,
      label: string,
      jobs: number,
      run: (queue: Queue<Payload>, payloads: Payload[]) => Promise<void>,
    ): Case => ({
      id,
      label,
      jobs,
      async prepare(schema) {
        const { hark, queue, warm } = await startHark(schema);
        const payloads = range(jobs).map(payloadFor);
        return {
          run: () => run(queue, payloads),
          verify: async () => assert((await count(schema, 'jobs')) === jobs + warm, 'row count'),
          close: () => hark.stop(),
        };
      },
    });

    /** hark's tables without a hark instance, plus the plain copy of the jobs table. */
    const rawSchema = async (schema: string) => {
      await withClient(pool, (client) => migrate(client, schema));
      const s = quoteIdent(schema);
      await pool.query(`INSERT INTO ${s}.queues (name) VALUES ($1)`, [QUEUE]);
      await pool.query(`CREATE TABLE ${s}.floor_jobs (LIKE ${s}.jobs INCLUDING ALL)`);
      return s;
    };

    const floorBatch: Case = {
      id: 'c1',
      label: `floor: INSERT ... SELECT FROM unnest(), 1 statement`,
      jobs: sizes.many,
      async prepare(schema) {
        const s = await rawSchema(schema);
        const sql = `INSERT INTO ${s}.floor_jobs (queue, payload)
                     SELECT $1, p FROM unnest($2::jsonb[]) AS p`;
        return {
          run: async () => {
            const payloads = range(sizes.many).map((i) => JSON.stringify(payloadFor(i)));
            await pool.query(sql, [QUEUE, payloads]);
          },
          verify: async () => assert((await count(schema, 'floor_jobs')) === sizes.many, 'rows'),
          close: async () => {},
        };
      },
    };

    const floorSingles: Case = {
      id: 'c2',
      label: `floor: single-row INSERT, ${IN_FLIGHT} in flight`,
      jobs: sizes.singles,
      async prepare(schema) {
        const s = await rawSchema(schema);
        const sql = `INSERT INTO ${s}.floor_jobs (queue, payload) VALUES ($1, $2)`;
        return {
          run: () =>
            inFlight(sizes.singles, IN_FLIGHT, (i) =>
              pool.query(sql, [QUEUE, JSON.stringify(payloadFor(i))]),
            ),
          verify: async () => assert((await count(schema, 'floor_jobs')) === sizes.singles, 'rows'),
          close: async () => {},
        };
      },
    };

    const notifyingSingles: Case = {
      id: 'c3',
      label: `floor + hark's NOTIFY trigger: single-row INSERT, ${IN_FLIGHT} in flight`,
      jobs: sizes.singles,
      async prepare(schema) {
        const s = await rawSchema(schema);
        await pool.query(
          `CREATE TRIGGER floor_notify AFTER INSERT ON ${s}.floor_jobs
             REFERENCING NEW TABLE AS new_jobs
             FOR EACH STATEMENT EXECUTE FUNCTION ${s}.notify_jobs_inserted()`,
        );
        const sql = `INSERT INTO ${s}.floor_jobs (queue, payload) VALUES ($1, $2)`;
        return {
          run: () =>
            inFlight(sizes.singles, IN_FLIGHT, (i) =>
              pool.query(sql, [QUEUE, JSON.stringify(payloadFor(i))]),
            ),
          verify: async () => assert((await count(schema, 'floor_jobs')) === sizes.singles, 'rows'),
          close: async () => {},
        };
      },
    };

    const rawInsert = (
      id: string,
      label: string,
      statement: (schema: string) => string,
      params: (rows: Row[]) => unknown[],
    ): Case => ({
      id,
      label,
      jobs: sizes.many,
      async prepare(schema) {
        await rawSchema(schema);
        const sql = statement(schema);
        const rows = range(sizes.many).map(rowFor);
        let ids: string[] = [];
        const client = await pool.connect();
        const backend = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
        const pid = backend.rows[0]!.pid;
        return {
          run: async () => {
            const server0 = backendCpuMs(pid);
            const cpu0 = process.cpuUsage();
            const t0 = performance.now();
            const values = params(rows);
            const build = performance.now() - t0;
            const r = await client.query<{ id: string }>(sql, values);
            const cpu = process.cpuUsage(cpu0);
            const serverCpu = backendCpuMs(pid) - server0;
            ids = r.rows.map((row) => row.id);
            return { build, clientCpu: (cpu.user + cpu.system) / 1000, serverCpu };
          },
          verify: async () => {
            assert(ids.length === sizes.many, 'one id per row');
            assert(
              ids.every((v, i) => i === 0 || BigInt(v) > BigInt(ids[i - 1]!)),
              'ids in input order',
            );
            // Every variant must store exactly what the producer resolved.
            const r = await pool.query(
              `SELECT queue, state, priority, payload, max_attempts, retry_delay_ms,
                      retry_backoff, retry_delay_max_ms, timeout_ms, lease_ms, singleton_key,
                      dead_letter, retention_ms::float8, failed_retention_ms::float8
                 FROM ${quoteIdent(schema)}.jobs WHERE id = ANY($1::bigint[]) ORDER BY id`,
              [[ids[0], ids[ids.length - 1]]],
            );
            const expected = (i: number) => {
              const row = rowFor(i);
              return {
                queue: row.queue,
                state: 'available',
                priority: row.priority,
                payload: payloadFor(i),
                max_attempts: row.maxAttempts,
                retry_delay_ms: row.retryDelayMs,
                retry_backoff: row.retryBackoff,
                retry_delay_max_ms: row.retryDelayMaxMs,
                timeout_ms: row.timeoutMs,
                lease_ms: row.leaseMs,
                singleton_key: row.singletonKey,
                dead_letter: row.deadLetter,
                retention_ms: row.retentionMs,
                failed_retention_ms: row.failedRetentionMs,
              };
            };
            assert(isDeepStrictEqual(r.rows[0], expected(0)), 'first row');
            assert(isDeepStrictEqual(r.rows[1], expected(sizes.many - 1)), 'last row');
          },
          close: async () => client.release(),
        };
      },
    });

    const many = formatCount(sizes.many);
    const chunks = Math.ceil(sizes.many / sizes.chunk);
    let cases: Case[] = [
      harkCase('a1', `hark sendMany, 1 call of ${many}`, sizes.many, async (queue, payloads) => {
        const ids = await queue.sendMany(payloads);
        assert(ids.length === payloads.length, 'ids');
      }),
      harkCase(
        'a2',
        `hark sendMany, ${chunks} calls of ${formatCount(sizes.chunk)}`,
        sizes.many,
        async (queue, payloads) => {
          for (let i = 0; i < payloads.length; i += sizes.chunk) {
            await queue.sendMany(payloads.slice(i, i + sizes.chunk));
          }
        },
      ),
      harkCase('b', `hark send, ${IN_FLIGHT} in flight`, sizes.singles, async (queue, payloads) => {
        await inFlight(payloads.length, IN_FLIGHT, (i) => queue.send(payloads[i]!));
      }),
      floorBatch,
      floorSingles,
      notifyingSingles,
      rawInsert(
        'd1',
        'raw insertJobs: arrays serialised by node-postgres',
        insertJobsStatement,
        parallelArrays,
      ),
      rawInsert(
        'd4',
        'raw insertJobs: array literals (what sendMany does)',
        insertJobsStatement,
        (rows) =>
          parallelArrays(rows).map((column) =>
            arrayLiteral(column as Parameters<typeof arrayLiteral>[0]),
          ),
      ),
      rawInsert(
        'd2',
        `raw jsonb_to_recordset: 1 jsonb param`,
        (schema) => recordsetInsert(schema, 'jsonb'),
        (rows) => [jsonDocument(rows)],
      ),
      rawInsert(
        'd3',
        `raw json_to_recordset: 1 json param`,
        (schema) => recordsetInsert(schema, 'json'),
        (rows) => [jsonDocument(rows)],
      ),
    ];

    const unknown = sizes.only.filter((id) => !cases.some((c) => c.id === id));
    if (unknown.length > 0) throw new Error(`--only: no case ${unknown.join(', ')}`);
    if (sizes.only.length > 0) cases = cases.filter((c) => sizes.only.includes(c.id));
    const samples = new Map<string, number[]>(cases.map((c) => [c.id, []]));
    const partSamples = new Map<string, Parts[]>(cases.map((c) => [c.id, []]));
    const tag = randomBytes(3).toString('hex');
    let serial = 0;
    for (let run = 1; run <= sizes.runs && !stopping; run++) {
      for (const c of cases) {
        if (stopping) break;
        const schema = `bench_send_many_${tag}_${serial++}`;
        let prepared: Prepared | undefined;
        try {
          prepared = await c.prepare(schema);
          if (canCheckpoint) await pool.query('CHECKPOINT');
          const t0 = performance.now();
          const parts = await prepared.run();
          const ms = performance.now() - t0;
          await prepared.verify();
          samples.get(c.id)!.push(ms);
          if (parts) partSamples.get(c.id)!.push(parts);
          const rate = formatCount((c.jobs * 1000) / ms);
          console.log(
            `run ${run}/${sizes.runs} ${c.id.padEnd(2)} ${c.label}: ${formatCount(c.jobs)} jobs` +
              ` in ${(ms / 1000).toFixed(2)} s = ${rate} jobs/s`,
          );
        } finally {
          await prepared?.close();
          await pool.query(`DROP SCHEMA IF EXISTS ${quoteIdent(schema)} CASCADE`);
        }
      }
    }

    const rows = [
      [
        'case',
        '',
        'jobs',
        'jobs/s (median)',
        'min-max',
        'time',
        'params',
        'client CPU',
        'server CPU',
      ],
    ];
    const seconds = (ms: number) => (Number.isNaN(ms) ? '-' : `${(ms / 1000).toFixed(2)} s`);
    for (const c of cases) {
      const ms = samples.get(c.id)!;
      if (ms.length === 0) continue;
      const r = rates(c.jobs, ms);
      rows.push([
        c.id,
        c.label,
        formatCount(c.jobs),
        formatCount(r.median),
        `${formatCount(r.min)}-${formatCount(r.max)}`,
        seconds(r.medianMs),
      ]);
      const parts = partSamples.get(c.id)!;
      if (parts.length > 0) {
        rows[rows.length - 1]!.push(
          seconds(median(parts.map((p) => p.build))),
          seconds(median(parts.map((p) => p.clientCpu))),
          seconds(median(parts.map((p) => p.serverCpu))),
        );
      }
    }
    console.log();
    const right = [false, false, true, true, true, true, true, true, true];
    for (const line of table(rows, right)) {
      console.log(line);
    }
    console.log();
    for (const line of [
      "notes: hark's jobs table has 6 indexes besides its primary key, a foreign key to queues",
      '  and an AFTER INSERT statement trigger that sends one NOTIFY per statement per queue',
      `  (a1: 1 NOTIFY, a2: ${chunks}, b: one per job). c1/c2 insert into a plain copy (LIKE ...`,
      '  INCLUDING ALL: same defaults, checks and indexes; no trigger, no foreign key) and pass',
      '  only queue and payload. d1-d4 time building the parameters from resolved rows (the',
      '  "params" column; pg serialises them inside the statement time) plus the statement;',
      '  "client CPU" is this process (building + serialising), "server CPU" the backend that',
      '  ran the statement (from /proc, when the server runs on this machine); medians.',
    ]) {
      console.log(line);
    }
    const total = ((performance.now() - began) / 1000).toFixed(1);
    console.log(`total ${total} s; load average at the end ${loadAverage()}`);
    return stopping ? 130 : 0;
  } finally {
    await pool.end().catch(() => undefined);
    await db.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
    process.exit(1);
  },
);
