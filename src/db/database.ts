/**
 * The pool, and the one path by which hark issues statements: `query(purpose, text, values,
 * executor?)`. Every statement is counted by purpose; with an executor it runs on the caller's
 * connection (their transaction), otherwise on the pool.
 */
import pg from 'pg';
import { type BreakerState, CircuitBreaker } from './circuit-breaker.js';
import type { Executor, QueryResultLike } from './executor.js';
import { type StatementPurpose, StatementCounter } from './statement-counter.js';

export interface DatabaseOptions {
  connectionString: string;
  poolMax: number;
  /** Label shown in pg_stat_activity. */
  applicationName: string;
  /** Called with errors from idle pooled connections (they must never crash the process). */
  onIdleError: (err: Error) => void;
  /** Called when the circuit breaker changes state. */
  onBreakerChange?: (state: BreakerState, error: Error | null) => void;
  /**
   * Connections for claims that commit without waiting for the WAL flush
   * (`synchronous_commit=off`, set as a startup parameter, so no extra statement); 0 runs
   * claims on the main pool. A claim lost in a server crash puts its jobs back to waiting,
   * which at-least-once allows. Needs a direct session: poolers refuse startup options.
   */
  relaxedPoolMax?: number;
}

export class Database {
  readonly pool: pg.Pool;
  /** See DatabaseOptions.relaxedPoolMax; the main pool when there is none. */
  private relaxed: pg.Pool;
  readonly counter = new StatementCounter();
  /** Opens after repeated connection failures of pooled statements; see circuit-breaker.ts. */
  readonly breaker: CircuitBreaker;

  constructor(private readonly options: DatabaseOptions) {
    const open = (max: number, startup?: string) => {
      const pool = new pg.Pool({
        connectionString: options.connectionString,
        max,
        application_name: options.applicationName,
        keepAlive: true,
        idleTimeoutMillis: 30_000,
        ...(startup ? { options: startup } : {}),
      });
      pool.on('error', (err) => options.onIdleError(err));
      return pool;
    };
    this.pool = open(options.poolMax);
    this.relaxed = options.relaxedPoolMax
      ? open(options.relaxedPoolMax, '-c synchronous_commit=off')
      : this.pool;
    this.breaker = new CircuitBreaker({
      probe: async () => {
        this.counter.add('probe');
        await this.pool.query('SELECT 1');
      },
      onChange: (state, error) => options.onBreakerChange?.(state, error),
    });
  }

  // biome-ignore lint/suspicious/noExplicitAny: rows are typed by the caller
  async query<R = any>(
    purpose: StatementPurpose,
    text: string,
    values?: unknown[],
    executor?: Executor,
  ): Promise<QueryResultLike<R>> {
    this.counter.add(purpose);
    if (executor) return executor.query(text, values as unknown[]);
    try {
      const result = await this.pool.query(text, values as unknown[]);
      this.breaker.success();
      return result;
    } catch (err) {
      this.breaker.failure(err);
      throw err;
    }
  }

  /**
   * Like query, on the pool, but each row comes back as an array of the values' text (null for
   * NULL): for hot statements whose caller parses the few columns it needs itself.
   */
  async queryRaw(
    purpose: StatementPurpose,
    text: string,
    values: unknown[],
    relaxed = false,
  ): Promise<(string | null)[][]> {
    this.counter.add(purpose);
    const pool = relaxed ? this.relaxed : this.pool;
    try {
      const result = await pool.query<(string | null)[]>({
        text,
        values,
        rowMode: 'array',
        types: RAW_TEXT,
      });
      this.breaker.success();
      return result.rows;
    } catch (err) {
      if (pool !== this.pool && refusesStartupOptions(err)) {
        // A pooler in front (PgBouncer refuses startup options): claim on the main pool.
        this.relaxed = this.pool;
        void pool.end().catch(() => {});
        return this.queryRaw(purpose, text, values, relaxed);
      }
      this.breaker.failure(err);
      throw err;
    }
  }

  /** A dedicated client outside the pool (the listener, migrations). */
  createClient(connectionString = this.options.connectionString): pg.Client {
    return new pg.Client({
      connectionString,
      application_name: this.options.applicationName,
      keepAlive: true,
    });
  }

  async end(): Promise<void> {
    this.breaker.stop();
    if (this.relaxed !== this.pool) await this.relaxed.end().catch(() => {});
    await this.pool.end();
  }
}

/** Leaves every value as the server sent it (text). */
const RAW_TEXT = { getTypeParser: () => (value: string) => value };

/**
 * A server or pooler refusing the connection's startup option: PgBouncer says "unsupported
 * startup parameter"; others refuse the connection with a protocol violation (08P01) or a
 * rejected connection (08004), or name the parameter or the options.
 */
function refusesStartupOptions(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  if (e?.code === '08P01' || e?.code === '08004') return true;
  return /startup parameter|configuration parameter|options/i.test(String(e?.message ?? ''));
}
