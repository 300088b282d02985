import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { PostgresBinaries } from './binaries.js';
import { EmbeddedPostgresError } from './errors.js';
import { type ServerUser, serverCommand } from './os-user.js';
import { serverEnvironment } from './server-process.js';

export interface InitdbOptions {
  binaries: PostgresBinaries;
  user: ServerUser;
  dataDir: string;
  /** Skip fsyncing the new cluster (fine for throwaway clusters). */
  noSync: boolean;
  log?: ((line: string) => void) | undefined;
}

/** Creates a cluster: superuser `postgres`, trust auth, UTF8, C locale. */
export async function runInitdb(options: InitdbOptions): Promise<void> {
  const args = [
    '-D',
    options.dataDir,
    '-U',
    'postgres',
    '--auth=trust',
    '--encoding=UTF8',
    '--locale=C',
    '--no-instructions',
    ...(options.noSync ? ['--no-sync'] : []),
  ];
  const command = serverCommand(options.user, options.binaries.initdb, args, 'TERM');
  const child = spawn(command.command, command.args, {
    cwd: '/', // the server user may not be able to enter our working directory
    env: serverEnvironment(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream, crlfDelay: Number.POSITIVE_INFINITY }).on('line', (line) => {
      if (line.trim() === '') return;
      output.push(line);
      options.log?.(line);
    });
  }
  const result = await new Promise<{ code: number | null; signal: string | null }>(
    (resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code, signal) => resolve({ code, signal }));
    },
  ).catch((error: unknown) => {
    throw new EmbeddedPostgresError(
      'INITDB_FAILED',
      `Could not run ${command.command}: ${(error as Error).message}`,
      { cause: error },
    );
  });
  if (result.code !== 0) {
    const how = result.signal === null ? `exit code ${result.code}` : `signal ${result.signal}`;
    throw new EmbeddedPostgresError(
      'INITDB_FAILED',
      `initdb -D ${options.dataDir} failed (${how}):\n${output.slice(-20).join('\n')}`,
    );
  }
}
