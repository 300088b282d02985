/**
 * The PostgreSQL server of a suite run, one fresh database per system and case, and the
 * statement counts of pg_stat_statements per database.
 */
import { existsSync } from 'node:fs';
import type pg from 'pg';
import { startEmbeddedPostgres } from '../../src/embedded/index.js';
import { maskUrl } from '../lib/database.js';

/** Debian's PostgreSQL 15, preferred: the version most production servers still run. */
export const PG15_BIN_DIR = '/usr/lib/postgresql/15/bin';
/** Room for ten worker processes of every system at once (scenario 4 runs them together). */
export const MAX_CONNECTIONS = 500;

export interface BenchServer {
  /** A URL of the server's maintenance database (`postgres`, or the one given). */
  url: string;
  /** Where the numbers come from, in one line. */
  label: string;
  /** True when this run started the server (and will stop it). */
  ours: boolean;
  stop(): Promise<void>;
}

export async function openServer(options: {
  databaseUrl: string | undefined;
  /** fsync and synchronous_commit off: for smoke runs whose numbers mean nothing. */
  throwaway: boolean;
  log: (line: string) => void;
}): Promise<BenchServer> {
  if (options.databaseUrl !== undefined) {
    return {
      url: options.databaseUrl,
      label: `existing server ${maskUrl(options.databaseUrl)} (not started or stopped here)`,
      ours: false,
      stop: async () => {},
    };
  }
  const pg15 = existsSync(`${PG15_BIN_DIR}/postgres`);
  const began = performance.now();
  const server = await startEmbeddedPostgres({
    throwaway: options.throwaway,
    maxConnections: MAX_CONNECTIONS,
    ...(pg15 ? { binDir: PG15_BIN_DIR } : {}),
  });
  const ms = Math.round(performance.now() - began);
  const from = pg15 ? PG15_BIN_DIR : 'the embedded PostgreSQL package';
  options.log(`started PostgreSQL ${server.version} from ${from} in ${ms} ms`);
  return {
    url: server.url,
    label:
      `PostgreSQL ${server.version} (${from}), a temporary cluster started for this run` +
      (options.throwaway
        ? ' with fsync, synchronous_commit and full_page_writes OFF (smoke run)'
        : ' with durable defaults (fsync on)') +
      ' and deleted at the end',
    ours: true,
    stop: () => server.stop(),
  };
}

/** `url` with its database replaced. */
export function databaseUrl(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

function ident(name: string): string {
  if (!/^[a-z0-9_]{1,63}$/.test(name)) throw new Error(`bad database name ${name}`);
  return `"${name}"`;
}

export interface BenchDatabase {
  name: string;
  oid: number;
  url: string;
}

/** Creates `name` afresh (dropping a leftover of an interrupted run first). */
export async function createDatabase(
  admin: pg.Pool,
  serverUrl: string,
  name: string,
): Promise<BenchDatabase> {
  await admin.query(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${ident(name)}`);
  const r = await admin.query<{ oid: number }>(
    'SELECT oid::int AS oid FROM pg_database WHERE datname = $1',
    [name],
  );
  return { name, oid: r.rows[0]!.oid, url: databaseUrl(serverUrl, name) };
}

/**
 * Drops `name` once its sessions have gone (a pool's end() may resolve before its sockets
 * close); after a few seconds it terminates those left.
 */
export async function dropDatabase(admin: pg.Pool, name: string): Promise<void> {
  const deadline = performance.now() + 5_000;
  for (;;) {
    const r = await admin.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1',
      [name],
    );
    if (r.rows[0]!.n === 0 || performance.now() > deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await admin.query(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`);
}

/**
 * Settings not at their built-in default (config file and command line), for the report; the
 * port and socket directory, which differ every run, left out.
 */
export async function nonDefaultSettings(admin: pg.Pool): Promise<Record<string, string>> {
  const r = await admin.query<{ name: string; setting: string; unit: string | null }>(
    `SELECT name, setting, unit FROM pg_settings
      WHERE source NOT IN ('default', 'override', 'client', 'session')
        AND name NOT IN ('port', 'unix_socket_directories')
      ORDER BY name`,
  );
  const out: Record<string, string> = {};
  for (const row of r.rows) out[row.name] = row.unit ? `${row.setting} (${row.unit})` : row.setting;
  return out;
}

export interface StatementCounts {
  /** Every top-level statement executed in the database since the last reset. */
  calls: number;
  /**
   * The claim: the most-called statement with FOR UPDATE SKIP LOCKED, else the most-called
   * statement that is neither an insert nor a utility command.
   */
  top: { query: string; calls: number; meanMs: number } | null;
}

/**
 * The statement text without leading line comments (some libraries label their SQL), for
 * telling inserts and utility commands from the rest.
 */
const HEAD = `regexp_replace(query, '^(\\s*--[^\\n]*\\n)*\\s*', '')`;

/** Statements of a data-changing or reading kind (the ones a claim or completion issues). */
const NOT_INSERT_OR_UTILITY = `
  ${HEAD} !~* '^(insert|begin|start|commit|end|rollback|savepoint|release|prepare|set|reset|show|listen|unlisten|notify|discard|deallocate|lock|vacuum|analyze|create|alter|drop|grant|select\\s+1\\s*$)'
  AND ${HEAD} !~* '^with\\s.*\\minsert\\s+into\\M'`;

/**
 * pg_stat_statements, read from the maintenance database and filtered by dbid, so the
 * orchestrator's own measuring queries never count.
 */
export class StatementMeter {
  private constructor(
    private readonly admin: pg.Pool,
    readonly unavailable: string | null,
  ) {}

  static async open(admin: pg.Pool): Promise<StatementMeter> {
    try {
      await admin.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
      await admin.query('SELECT 1 FROM pg_stat_statements LIMIT 1');
      return new StatementMeter(admin, null);
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      return new StatementMeter(admin, `pg_stat_statements is not usable here (${why})`);
    }
  }

  async reset(dbid: number): Promise<void> {
    if (this.unavailable !== null) return;
    await this.admin.query('SELECT pg_stat_statements_reset(0, $1::oid, 0)', [dbid]);
  }

  async read(dbid: number): Promise<StatementCounts | null> {
    if (this.unavailable !== null) return null;
    const total = await this.admin.query<{ calls: string | null }>(
      'SELECT sum(calls)::text AS calls FROM pg_stat_statements WHERE dbid = $1::oid',
      [dbid],
    );
    const top = await this.admin.query<{ query: string; calls: string; mean: number }>(
      `SELECT query, calls::text AS calls, mean_exec_time AS mean FROM pg_stat_statements
        WHERE dbid = $1::oid AND ${NOT_INSERT_OR_UTILITY}
        ORDER BY query ~* '\\mskip\\s+locked\\M' DESC, calls DESC LIMIT 1`,
      [dbid],
    );
    const row = top.rows[0];
    return {
      calls: Number(total.rows[0]?.calls ?? 0),
      top:
        row === undefined
          ? null
          : {
              query: row.query.replace(/\s+/g, ' ').trim(),
              calls: Number(row.calls),
              meanMs: row.mean,
            },
    };
  }
}
