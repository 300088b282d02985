/**
 * A throwaway PgBouncer in front of the test database, for tests of hark behind a pooler.
 *
 * `startPgBouncer()` writes an ini into a fresh temp dir, starts the Debian `pgbouncer` binary on
 * a free 127.0.0.1 port (as the OS user `postgres` when we are root: pgbouncer refuses to run as
 * root), waits until a query goes through it, and returns its URL. `stop()` kills it and removes
 * the temp dir. `findPgBouncer()` says whether the binary is installed at all, so test files can
 * skip instead of failing on a machine without it.
 */
import { resolveServerUser, serverCommand } from '../../src/embedded/os-user.js';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { chmod, chown, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { closedPort } from './tcp-proxy.js';

export type PoolMode = 'session' | 'transaction' | 'statement';

export interface PgBouncerOptions {
  /** The database PgBouncer forwards to (host, port, database name and user are taken from it). */
  targetUrl: string;
  poolMode: PoolMode;
  /** @default 200 */
  maxClientConn?: number;
  /** Server connections per (database, user) pair. @default 20 */
  defaultPoolSize?: number;
  /** How long to wait for it to accept a query. @default 10_000 */
  readyTimeoutMs?: number;
}

export interface PgBouncer {
  /** The target URL with host and port replaced by PgBouncer's (same database and user). */
  url: string;
  port: number;
  /** The admin console (`SHOW POOLS`, `SHOW SERVERS`...): database `pgbouncer`. */
  adminUrl: string;
  /** `PgBouncer 1.18.0`, from `pgbouncer --version`. */
  version: string;
  /** The log so far (for diagnostics). */
  log(): Promise<string>;
  /** Kills it (if still running) and removes its temp dir. Safe to call twice. */
  stop(): Promise<void>;
}

const DIR_PREFIX = 'hark-pgbouncer-';

let binaryCache: string | null | undefined;

/** The path of the pgbouncer binary, or undefined when it is not installed. */
export function findPgBouncer(): string | undefined {
  if (binaryCache === undefined) {
    // Debian installs it in /usr/sbin, which a non-root PATH often lacks.
    const dirs = [...(process.env['PATH'] ?? '').split(':'), '/usr/sbin', '/usr/bin', '/sbin'];
    binaryCache = dirs.map((d) => path.join(d || '.', 'pgbouncer')).find(isExecutable) ?? null;
  }
  return binaryCache ?? undefined;
}

/** `PgBouncer 1.18.0` (the first line of `pgbouncer --version`). */
export function pgBouncerVersion(bin: string): string {
  const out = execFileSync(bin, ['--version'], { encoding: 'utf8', timeout: 5_000 });
  return out.split('\n')[0]?.trim() ?? '';
}

/** [major, minor] of a `PgBouncer x.y.z` version line; [0, 0] when unreadable. */
export function parseVersion(version: string): [number, number] {
  const m = /(\d+)\.(\d+)/.exec(version);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** A value for pgbouncer's `key=value` connection strings, quoted when needed. */
function connValue(value: string): string {
  return /^[A-Za-z0-9_.\-/]+$/.test(value) ? value : `'${value.replace(/'/g, "''")}'`;
}

/**
 * Removes temp dirs left by runs that were killed before stop() (their pgbouncer died with them,
 * by its parent-death signal): older than a minute, and no live process in their pidfile.
 */
async function sweepStaleDirs(): Promise<void> {
  const names = await readdir(tmpdir()).catch(() => [] as string[]);
  for (const name of names.filter((n) => n.startsWith(DIR_PREFIX))) {
    const dir = path.join(tmpdir(), name);
    try {
      if (Date.now() - (await stat(dir)).mtimeMs < 60_000) continue;
      const pid = Number(
        (await readFile(path.join(dir, 'pgbouncer.pid'), 'utf8').catch(() => '')).trim(),
      );
      if (pid > 0 && isAlive(pid)) continue;
      await rm(dir, { recursive: true, force: true });
    } catch {
      // Someone else's, or gone already.
    }
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Starts PgBouncer in front of `targetUrl`; see the file comment. */
export async function startPgBouncer(options: PgBouncerOptions): Promise<PgBouncer> {
  const bin = findPgBouncer();
  if (bin === undefined) {
    throw new Error(
      'pgbouncer is not installed (apt-get install -y pgbouncer), or not in PATH or /usr/sbin',
    );
  }
  const version = pgBouncerVersion(bin);
  // A free port may be taken between our check and pgbouncer's bind: try a few.
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(bin, version, options, await closedPort());
    } catch (error) {
      lastError = error as Error;
      if (!/already in use|Address in use/i.test(lastError.message)) break;
    }
  }
  throw lastError ?? new Error('pgbouncer did not start');
}

async function startOnce(
  bin: string,
  version: string,
  options: PgBouncerOptions,
  port: number,
): Promise<PgBouncer> {
  const target = new URL(options.targetUrl);
  const dbname = decodeURIComponent(target.pathname.slice(1)) || 'postgres';
  const user = decodeURIComponent(target.username) || 'postgres';
  const password = decodeURIComponent(target.password);
  const host = target.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1';
  const targetPort = target.port || '5432';

  await sweepStaleDirs();
  const dir = await mkdtemp(path.join(tmpdir(), DIR_PREFIX));
  // pgbouncer refuses to run as root: like PostgreSQL, it runs as the postgres OS user.
  const serverUser = await resolveServerUser();
  const osUser = serverUser.switchUser ? serverUser : undefined;

  const conn = [
    `host=${connValue(host)}`,
    `port=${targetPort}`,
    `dbname=${connValue(dbname)}`,
    `user=${connValue(user)}`,
    ...(password ? [`password=${connValue(password)}`] : []),
  ].join(' ');
  const logfile = path.join(dir, 'pgbouncer.log');
  const ini = [
    '[databases]',
    `${connValue(dbname)} = ${conn}`,
    '',
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    // The target trusts us; clients are trusted too (their user must be in auth_file).
    'auth_type = trust',
    `auth_file = ${path.join(dir, 'userlist.txt')}`,
    `admin_users = ${user}`,
    `stats_users = ${user}`,
    `pool_mode = ${options.poolMode}`,
    `max_client_conn = ${options.maxClientConn ?? 200}`,
    `default_pool_size = ${options.defaultPoolSize ?? 20}`,
    'min_pool_size = 0',
    'reserve_pool_size = 0',
    `logfile = ${logfile}`,
    `pidfile = ${path.join(dir, 'pgbouncer.pid')}`,
    'log_connections = 1',
    'log_disconnections = 1',
    'ignore_startup_parameters = extra_float_digits',
    '',
  ].join('\n');
  const iniFile = path.join(dir, 'pgbouncer.ini');
  await writeFile(iniFile, ini);
  await writeFile(path.join(dir, 'userlist.txt'), `"${user.replace(/"/g, '""')}" ""\n`);
  if (osUser) {
    for (const f of [dir, iniFile, path.join(dir, 'userlist.txt')]) {
      await chown(f, osUser.uid, osUser.gid);
    }
    await chmod(dir, 0o700);
  }

  // setpriv execs pgbouncer in place (same pid); a parent-death KILL stops it if we die first.
  const { command, args } = serverCommand(serverUser, bin, [iniFile], 'KILL');
  const child: ChildProcess = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (b: Buffer) => {
    output += b.toString();
  });
  child.stderr?.on('data', (b: Buffer) => {
    output += b.toString();
  });
  let exited: string | undefined;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = `exited with ${signal ?? `code ${code}`}`;
      resolve();
    });
    child.once('error', (error) => {
      exited = `could not start: ${error.message}`;
      resolve();
    });
  });
  const readLog = () => readFile(logfile, 'utf8').catch(() => '');

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (exited === undefined) {
      child.kill('SIGKILL');
      await exit;
    }
    await rm(dir, { recursive: true, force: true });
  };

  const url = new URL(options.targetUrl);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  const adminUrl = new URL(url);
  adminUrl.pathname = '/pgbouncer';

  // Ready when a query goes through it to the target.
  const deadline = Date.now() + (options.readyTimeoutMs ?? 10_000);
  for (;;) {
    if (exited !== undefined) {
      const log = `${output}${await readLog()}`.trim();
      await stop();
      throw new Error(`pgbouncer ${exited}: ${log.split('\n').slice(-5).join(' | ')}`);
    }
    const client = new pg.Client({
      connectionString: url.toString(),
      connectionTimeoutMillis: 1_000,
    });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('SELECT 1');
      await client.end();
      break;
    } catch (error) {
      await client.end().catch(() => {});
      if (Date.now() > deadline) {
        const log = await readLog();
        await stop();
        throw new Error(
          `pgbouncer did not accept a query within ${options.readyTimeoutMs ?? 10_000} ms: ` +
            `${(error as Error).message}; log: ${log.split('\n').slice(-5).join(' | ')}`,
        );
      }
      await sleep(50);
    }
  }

  return {
    url: url.toString(),
    port,
    adminUrl: adminUrl.toString(),
    version,
    log: readLog,
    stop,
  };
}

/** Runs an admin console command (`SHOW SERVERS`...) and returns its rows. */
export async function pgBouncerAdmin<R extends pg.QueryResultRow = Record<string, unknown>>(
  bouncer: PgBouncer,
  command: string,
): Promise<R[]> {
  // The console speaks only the simple query protocol: no parameters.
  const client = new pg.Client({ connectionString: bouncer.adminUrl });
  client.on('error', () => {});
  await client.connect();
  try {
    const r = await client.query<R>(command);
    return r.rows;
  } finally {
    await client.end().catch(() => {});
  }
}
