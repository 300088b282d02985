import { execFile, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { open, readFile, stat, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { EmbeddedPostgresError } from './errors.js';
import { isProcessAlive, readProcStat } from './proc.js';

const run = promisify(execFile);

/** The OS identity the server runs as. */
export interface ServerUser {
  uid: number;
  gid: number;
  /** True when we are root and must switch to `uid`/`gid` (PostgreSQL refuses to run as root). */
  switchUser: boolean;
}

/** The name of the OS user the server runs as when we are root. */
export const SERVER_OS_USER = 'postgres';

const LOCK_FILE = path.join(tmpdir(), 'hark-pg-useradd.lock');

/**
 * When root, makes sure the OS user `postgres` exists (creating a system user under an exclusive
 * lock file, so parallel calls do not race) and returns its ids. Otherwise returns our own ids.
 */
export async function resolveServerUser(): Promise<ServerUser> {
  const uid = process.getuid?.() ?? -1;
  const gid = process.getgid?.() ?? -1;
  if (uid !== 0) return { uid, gid, switchUser: false };
  let found = await lookupUser(SERVER_OS_USER);
  if (found === undefined) {
    found = await withLockFile(LOCK_FILE, async () => {
      const again = await lookupUser(SERVER_OS_USER);
      if (again !== undefined) return again;
      await createSystemUser(SERVER_OS_USER);
      return lookupUser(SERVER_OS_USER);
    });
  }
  if (found === undefined) {
    throw new EmbeddedPostgresError(
      'OS_USER_FAILED',
      `Running as root, but the OS user "${SERVER_OS_USER}" could not be created.` +
        ' PostgreSQL refuses to run as root: create it (useradd --system postgres) or set' +
        ' DATABASE_URL.',
    );
  }
  return { ...found, switchUser: true };
}

/**
 * The command line that runs `bin` as the server user. Uses `setpriv` to switch user and to set
 * a parent-death signal, so the process is told to stop when its Node parent dies (even by
 * SIGKILL). Without setpriv (not root) the binary runs directly.
 */
export function serverCommand(
  user: ServerUser,
  bin: string,
  args: string[],
  parentDeathSignal: 'INT' | 'TERM' | 'KILL' = 'INT',
): { command: string; args: string[] } {
  const setpriv = findSetpriv();
  if (user.switchUser) {
    if (setpriv === undefined) {
      throw new EmbeddedPostgresError(
        'OS_USER_FAILED',
        'Running as root needs setpriv (util-linux) to start PostgreSQL as the postgres user.',
      );
    }
    const ids = [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups'];
    const death = setpriv.pdeathsig ? [`--pdeathsig=${parentDeathSignal}`] : [];
    return { command: setpriv.path, args: [...ids, ...death, '--', bin, ...args] };
  }
  return withParentDeathSignal(bin, args, parentDeathSignal);
}

/** Runs `bin` with a parent-death signal when setpriv supports it, else directly. */
export function withParentDeathSignal(
  bin: string,
  args: string[],
  signal: 'INT' | 'TERM' | 'KILL',
): { command: string; args: string[] } {
  const setpriv = findSetpriv();
  if (setpriv?.pdeathsig) {
    return { command: setpriv.path, args: [`--pdeathsig=${signal}`, '--', bin, ...args] };
  }
  return { command: bin, args };
}

interface Setpriv {
  path: string;
  pdeathsig: boolean;
}

let setprivCache: Setpriv | null | undefined;

function findSetpriv(): Setpriv | undefined {
  if (setprivCache === undefined) {
    const dirs = [...(process.env['PATH'] ?? '').split(':'), '/usr/bin', '/bin', '/usr/sbin'];
    const found = dirs.map((dir) => path.join(dir || '.', 'setpriv')).find(isExecutable);
    if (found === undefined) {
      setprivCache = null;
    } else {
      // --pdeathsig needs util-linux >= 2.33.
      const help = spawnSync(found, ['--help'], { encoding: 'utf8', timeout: 5000 });
      setprivCache = { path: found, pdeathsig: `${help.stdout}`.includes('--pdeathsig') };
    }
  }
  return setprivCache ?? undefined;
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

async function lookupUser(name: string): Promise<{ uid: number; gid: number } | undefined> {
  let line: string | undefined;
  try {
    const { stdout } = await run('getent', ['passwd', name]);
    line = stdout.trim();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') return undefined; // not found
    const passwd = await readFile('/etc/passwd', 'utf8').catch(() => '');
    line = passwd.split('\n').find((entry) => entry.startsWith(`${name}:`));
  }
  const fields = line?.split(':') ?? [];
  const uid = Number(fields[2]);
  const gid = Number(fields[3]);
  if (fields[0] !== name || !Number.isInteger(uid) || !Number.isInteger(gid)) return undefined;
  return { uid, gid };
}

async function createSystemUser(name: string): Promise<void> {
  const groupExists = await run('getent', ['group', name]).then(
    () => true,
    () => false,
  );
  const shell = existsSync('/usr/sbin/nologin') ? '/usr/sbin/nologin' : '/bin/false';
  const args = [
    '--system',
    ...(groupExists ? ['--gid', name] : ['--user-group']),
    '--no-create-home',
    '--home-dir',
    '/nonexistent',
    '--shell',
    shell,
    '--comment',
    'PostgreSQL server (hark embedded)',
    name,
  ];
  try {
    await run('useradd', args);
  } catch (error) {
    throw new EmbeddedPostgresError(
      'OS_USER_FAILED',
      `useradd ${args.join(' ')} failed: ${(error as Error).message}`,
      { cause: error },
    );
  }
}

/**
 * Runs `fn` while holding an exclusive lock file (O_EXCL create). The file records the holder's
 * pid and start time, so a lock left behind by a killed process is recognised and taken over.
 */
async function withLockFile<T>(file: string, fn: () => Promise<T>): Promise<T> {
  const me = `${process.pid} ${readProcStat(process.pid)?.startTime ?? ''}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const handle = await open(file, 'wx', 0o644);
      await handle.writeFile(me);
      await handle.close();
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    if (await isStaleLock(file)) {
      await unlink(file).catch(() => undefined);
      continue;
    }
    if (Date.now() > deadline) {
      throw new EmbeddedPostgresError('OS_USER_FAILED', `Timed out waiting for lock ${file}.`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  try {
    return await fn();
  } finally {
    const content = await readFile(file, 'utf8').catch(() => '');
    if (content === me) await unlink(file).catch(() => undefined);
  }
}

async function isStaleLock(file: string): Promise<boolean> {
  const content = await readFile(file, 'utf8').catch(() => undefined);
  if (content === undefined) return false; // gone already: just retry
  const [pid, startTime] = content.trim().split(/\s+/);
  if (pid === undefined || pid === '') {
    // Created but not yet written, or written by a crashed holder: stale once old.
    const info = await stat(file).catch(() => undefined);
    return info !== undefined && Date.now() - info.mtimeMs > 5_000;
  }
  return !isProcessAlive(Number(pid), startTime || undefined);
}
