import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import pg from 'pg';
import { EmbeddedPostgresError } from './errors.js';
import { trackPostmaster, untrackPostmaster } from './exit-hook.js';
import { type ServerUser, serverCommand } from './os-user.js';
import { childPids, isProcessAlive, signalProcess, waitForExit } from './proc.js';

export interface PostmasterSpawnOptions {
  postgresBin: string;
  user: ServerUser;
  dataDir: string;
  port: number;
  /** `postgres` arguments after -D/-p (e.g. -h, -k, -c settings). */
  args: string[];
  log?: ((line: string) => void) | undefined;
}

const LOG_TAIL_LINES = 40;
const READY_TIMEOUT_MS = 30_000;
const READY_POLL_MS = 20;

/** Environment for initdb/postgres: ours without PG* variables, with C messages. */
export function serverEnvironment(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('PG')) env[key] = value;
  }
  env['LC_ALL'] = 'C';
  env['LANG'] = 'C';
  return env;
}

/** One run of the `postgres` server binary (the postmaster), started directly, not via pg_ctl. */
export class PostmasterProcess {
  readonly pid: number;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly child: ChildProcess;
  private readonly tail: string[] = [];
  private hasExited = false;
  /** Wakes the readiness poll early when the server logs that it is ready. */
  private wake: (() => void) | undefined;

  private constructor(child: ChildProcess, pid: number, options: PostmasterSpawnOptions) {
    this.child = child;
    this.pid = pid;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.hasExited = true;
        untrackPostmaster(pid);
        resolve({ code, signal });
      });
    });
    for (const stream of [child.stdout, child.stderr]) {
      if (stream !== null) this.readLines(stream, options.log);
    }
    trackPostmaster(pid);
    // A forgotten server must not keep Node alive: the exit hook and pdeathsig stop it.
    child.unref();
  }

  /** Spawns the postmaster; throws START_FAILED when the binary cannot even be started. */
  static async spawn(options: PostmasterSpawnOptions): Promise<PostmasterProcess> {
    const args = ['-D', options.dataDir, '-p', String(options.port), ...options.args];
    const command = serverCommand(options.user, options.postgresBin, args, 'INT');
    const child = spawn(command.command, command.args, {
      cwd: '/',
      env: serverEnvironment(),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // own process group: a terminal's Ctrl-C goes to the tests, not the server
    });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('spawn', () => resolve(child.pid ?? -1));
    }).catch((error: unknown) => {
      throw new EmbeddedPostgresError(
        'START_FAILED',
        `Could not run ${command.command}: ${(error as Error).message}`,
        { cause: error },
      );
    });
    child.on('error', () => undefined); // later errors (e.g. kill failures) surface via exit
    return new PostmasterProcess(child, pid, options);
  }

  get running(): boolean {
    return !this.hasExited;
  }

  /** The last lines the server logged. */
  logTail(): string[] {
    return [...this.tail];
  }

  /**
   * Polls with real connections until the server answers as *this* data directory (another
   * server could already listen on the port); returns its version. Throws with the server's
   * last log lines if it exits first or stays unready for 30 s.
   */
  async waitUntilReady(dataDir: string, port: number): Promise<string> {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (this.hasExited) break;
      const answer = await queryIdentity(port).catch(() => undefined);
      if (answer !== undefined && path.resolve(answer.dataDir) === path.resolve(dataDir)) {
        return answer.version;
      }
      const woken = new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      await Promise.race([sleep(READY_POLL_MS), this.exited, woken]);
      this.wake = undefined;
    }
    if (!this.hasExited) await this.kill();
    throw this.startFailure(dataDir, port);
  }

  /** Fast shutdown: SIGINT, then SIGKILL after `graceMs`. Resolves when the process is gone. */
  async stop(graceMs = 10_000): Promise<void> {
    if (this.hasExited) return;
    const children = childPids(this.pid);
    this.child.ref(); // keep Node alive until the exit is seen
    this.child.kill('SIGINT');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
    await killLeftovers(children);
  }

  /** SIGKILL the postmaster and its children at once, like a crash; the data stays. */
  async kill(): Promise<void> {
    if (this.hasExited) return;
    const children = childPids(this.pid);
    this.child.ref();
    this.child.kill('SIGKILL');
    for (const pid of children) signalProcess(pid, 'SIGKILL');
    await this.exited;
    await killLeftovers(children);
  }

  private startFailure(dataDir: string, port: number): EmbeddedPostgresError {
    const log = this.tail.join('\n');
    const detail = `Last server log lines:\n${log || '(none)'}`;
    if (/Address already in use/.test(log)) {
      return new EmbeddedPostgresError('PORT_IN_USE', `Port ${port} is already in use.\n${detail}`);
    }
    if (/lock file "postmaster\.pid" already exists/.test(log)) {
      return new EmbeddedPostgresError(
        'DATA_DIR_IN_USE',
        `Another postmaster already runs on ${dataDir}.\n${detail}`,
      );
    }
    const reason = this.hasExited ? 'exited during start-up' : 'was not ready within 30 s';
    return new EmbeddedPostgresError(
      'START_FAILED',
      `PostgreSQL on ${dataDir} (port ${port}) ${reason}.\n${detail}`,
    );
  }

  private readLines(stream: Readable, log: ((line: string) => void) | undefined): void {
    const lines = createInterface({ input: stream, crlfDelay: Number.POSITIVE_INFINITY });
    lines.on('line', (line) => {
      if (line.includes('ready to accept connections')) this.wake?.();
      this.tail.push(line);
      if (this.tail.length > LOG_TAIL_LINES) this.tail.shift();
      log?.(line);
    });
    // Do not let the log pipes keep Node alive either.
    (stream as Readable & { unref?: () => void }).unref?.();
  }
}

async function queryIdentity(port: number): Promise<{ dataDir: string; version: string }> {
  const client = new pg.Client({
    host: '127.0.0.1',
    port,
    user: 'postgres',
    database: 'postgres',
    connectionTimeoutMillis: 2_000,
  });
  client.on('error', () => undefined);
  try {
    await client.connect();
    const result = await client.query<{ dir: string; version: string }>(
      "select current_setting('data_directory') as dir," +
        " current_setting('server_version') as version",
    );
    const row = result.rows[0];
    if (row === undefined) throw new Error('no row');
    return { dataDir: row.dir, version: row.version };
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function killLeftovers(pids: number[]): Promise<void> {
  // Backends notice their postmaster is gone and exit; give them a moment, then insist.
  const alive = await waitForExit(pids, 2_000);
  for (const pid of alive) if (isProcessAlive(pid)) signalProcess(pid, 'SIGKILL');
  await waitForExit(alive, 2_000);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
