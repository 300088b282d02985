/**
 * Runs a command with a PostgreSQL database in DATABASE_URL.
 *
 *   node --import tsx scripts/with-db.ts -- <command...>
 *
 * DATABASE_URL set: runs the command against it, starting nothing.
 * Otherwise: starts a throwaway embedded PostgreSQL cluster on a free port, creates the database
 * `hark_test`, runs the command with DATABASE_URL (plus HARK_EMBEDDED_DATA_DIR and
 * HARK_EMBEDDED_PORT), then stops and deletes the cluster. Exits with the command's exit code
 * (1 if it died by a signal). Diagnostics go to stderr.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import pg from 'pg';
import {
  BINARIES_PACKAGE,
  type EmbeddedPostgres,
  EmbeddedPostgresError,
  locateBinaries,
  startEmbeddedPostgres,
  sweepOrphans,
  withParentDeathSignal,
} from '../src/embedded/index.js';

const DATABASE = 'hark_test';
const FORWARDED_SIGNALS = ['SIGINT', 'SIGTERM'] as const;

function say(line: string): void {
  process.stderr.write(`[with-db] ${line}\n`);
}

function parseCommand(argv: string[]): string[] {
  const separator = argv.indexOf('--');
  return separator >= 0 ? argv.slice(separator + 1) : argv;
}

let child: ChildProcess | undefined;
let interrupted: NodeJS.Signals | undefined;

for (const signal of FORWARDED_SIGNALS) {
  process.on(signal, () => {
    if (child === undefined) interrupted = signal;
    else child.kill(signal);
  });
}

/** Runs the command (told to stop by SIGTERM if we die) and resolves with its exit code. */
function runCommand(command: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const [bin, ...args] = command as [string, ...string[]];
  const wrapped = withParentDeathSignal(bin, args, 'TERM');
  return new Promise((resolve) => {
    child = spawn(wrapped.command, wrapped.args, { stdio: 'inherit', env });
    child.once('error', (error) => {
      say(`could not run ${bin}: ${error.message}`);
      resolve(127);
    });
    child.once('exit', (code, signal) => {
      if (signal !== null) say(`${bin} was killed by ${signal}`);
      resolve(code ?? 1);
    });
  });
}

async function describeExternal(url: string): Promise<string> {
  const shown = url.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    const { rows } = await client.query<{ v: string }>(
      "select current_setting('server_version') v",
    );
    return `PostgreSQL ${rows[0]?.v ?? '?'} at DATABASE_URL=${shown}`;
  } catch (error) {
    return `DATABASE_URL=${shown} (not reachable yet: ${(error as Error).message})`;
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function createDatabase(url: string, name: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`create database ${name}`);
  } finally {
    await client.end();
  }
}

async function main(): Promise<number> {
  const command = parseCommand(process.argv.slice(2));
  if (command.length === 0) {
    say('usage: node --import tsx scripts/with-db.ts -- <command...>');
    return 2;
  }

  const external = process.env['DATABASE_URL'];
  if (external !== undefined && external !== '') {
    say(`using ${await describeExternal(external)}`);
    if (interrupted !== undefined) return 1;
    return runCommand(command, process.env);
  }

  const started = performance.now();
  let server: EmbeddedPostgres;
  try {
    await sweepOrphans({ log: say }); // leftovers of killed runs
    server = await startEmbeddedPostgres({ throwaway: true });
  } catch (error) {
    if (error instanceof EmbeddedPostgresError) {
      say(`${error.message}`);
      return 1;
    }
    throw error;
  }
  try {
    await createDatabase(server.url, DATABASE);
    const url = `postgres://postgres@127.0.0.1:${server.port}/${DATABASE}`;
    const { packageVersion } = await locateBinaries();
    const ms = Math.round(performance.now() - started);
    say(
      `using embedded PostgreSQL ${server.version} (${BINARIES_PACKAGE} ${packageVersion})` +
        ` at 127.0.0.1:${server.port}, throwaway cluster ${server.dataDir}, ready in ${ms} ms`,
    );
    if (interrupted !== undefined) return 1;
    return await runCommand(command, {
      ...process.env,
      DATABASE_URL: url,
      HARK_EMBEDDED_DATA_DIR: server.dataDir,
      HARK_EMBEDDED_PORT: String(server.port),
    });
  } finally {
    await server.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    say(`failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    process.exit(1);
  },
);
