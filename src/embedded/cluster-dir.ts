import { existsSync } from 'node:fs';
import {
  chmod,
  chown,
  lchown,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  stat,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { EmbeddedPostgresError } from './errors.js';
import type { ServerUser } from './os-user.js';
import { readProcStat } from './proc.js';

/**
 * Where temporary clusters live: one sub-directory per cluster, `<CLUSTERS_DIR>/c-XXXXXX/`,
 * holding an `owner` file (pid + start time of the Node process that made it) and `data/`.
 * Per user, so users sharing a machine do not get in each other's way.
 */
export const CLUSTERS_DIR = path.join(
  tmpdir(),
  process.getuid?.() === 0 ? 'hark-pg-clusters' : `hark-pg-clusters-${process.getuid?.() ?? 'x'}`,
);

const OWNER_FILE = 'owner';
/** Longest unix socket path the kernel accepts (sun_path is 108 bytes including the NUL). */
const MAX_SOCKET_PATH = 107;

export interface TemporaryCluster {
  /** The cluster's own directory, removed as a whole. */
  root: string;
  /** `<root>/data`, the PostgreSQL data directory. */
  dataDir: string;
}

/** Who created a temporary cluster. */
export interface ClusterOwner {
  pid: number;
  startTime: string | undefined;
}

/** Creates a fresh temporary cluster directory, owned by the server user, recording its owner. */
export async function createTemporaryCluster(user: ServerUser): Promise<TemporaryCluster> {
  await ensureClustersDir();
  const root = await mkdtemp(path.join(CLUSTERS_DIR, 'c-'));
  await chmod(root, 0o755); // the server user must traverse it
  const startTime = readProcStat(process.pid)?.startTime ?? '';
  await writeFile(path.join(root, OWNER_FILE), `${process.pid} ${startTime}`, { mode: 0o644 });
  const dataDir = path.join(root, 'data');
  await mkdir(dataDir, { mode: 0o700 });
  if (user.switchUser) await chown(dataDir, user.uid, user.gid);
  return { root, dataDir };
}

/** Reads the owner of a temporary cluster; undefined when the file is missing or garbled. */
export async function readClusterOwner(root: string): Promise<ClusterOwner | undefined> {
  const content = await readFile(path.join(root, OWNER_FILE), 'utf8').catch(() => undefined);
  const [pid, startTime] = content?.trim().split(/\s+/) ?? [];
  const owner = Number(pid);
  if (!Number.isInteger(owner) || owner <= 0) return undefined;
  return { pid: owner, startTime: startTime || undefined };
}

/** True when `dir` is inside CLUSTERS_DIR. */
export function isInClustersDir(dir: string): boolean {
  return path.resolve(dir).startsWith(CLUSTERS_DIR + path.sep);
}

/**
 * The clusters dir is in a world-writable place: make sure it is a real directory that we own,
 * since the orphan sweep deletes things inside it.
 */
export async function ensureClustersDir(): Promise<void> {
  await mkdir(CLUSTERS_DIR, { recursive: true, mode: 0o755 });
  const info = await lstat(CLUSTERS_DIR);
  if (!info.isDirectory() || info.uid !== process.getuid?.() || (info.mode & 0o022) !== 0) {
    throw new EmbeddedPostgresError(
      'TEMP_DIR_UNSAFE',
      `${CLUSTERS_DIR} is not a directory owned by this user and closed to writes by others.` +
        ' Remove it, or set TMPDIR to another directory.',
    );
  }
  if ((info.mode & 0o777) !== 0o755) await chmod(CLUSTERS_DIR, 0o755);
}

/**
 * Prepares a persistent data directory: creates it, checks the server user can reach it, and
 * gives it to that user with mode 0700 (PostgreSQL insists on both).
 */
export async function preparePersistentDataDir(dataDir: string, user: ServerUser): Promise<void> {
  // Missing parents are created searchable; the data directory itself private.
  await mkdir(path.dirname(dataDir), { recursive: true, mode: 0o755 });
  await assertSearchableParents(dataDir, user);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const info = await stat(dataDir);
  if (user.switchUser && (info.uid !== user.uid || info.gid !== user.gid)) {
    await chownTree(dataDir, user.uid, user.gid);
  }
  if ((info.mode & 0o077) !== 0) await chmod(dataDir, 0o700);
}

/**
 * Every existing parent of `dataDir` must be searchable (x) by the server user, or it cannot
 * open its own data directory. Typical failure: a checkout under /root (mode 0700).
 */
export async function assertSearchableParents(dataDir: string, user: ServerUser): Promise<void> {
  if (!user.switchUser) return; // the server runs as us: whatever we can reach, it can
  const absolute = path.resolve(dataDir);
  let dir = path.dirname(absolute);
  for (;;) {
    const info = await stat(dir).catch(() => undefined);
    if (info !== undefined) {
      let bit = 0o001;
      if (info.uid === user.uid) bit = 0o100;
      else if (info.gid === user.gid) bit = 0o010;
      if ((info.mode & bit) === 0) {
        throw new EmbeddedPostgresError(
          'DATA_DIR_NOT_SEARCHABLE',
          `PostgreSQL runs as the OS user "postgres" (uid ${user.uid}) because we run as root,` +
            ` and it cannot enter ${dir} (mode ${(info.mode & 0o777).toString(8)}), a parent of` +
            ` the data directory ${absolute}. Use a data directory under ${tmpdir()}, or make` +
            ` every parent searchable (chmod o+x ${dir}).`,
        );
      }
    }
    const parent = path.dirname(dir);
    if (parent === dir) return;
    dir = parent;
  }
}

/**
 * Where the server puts its unix socket: inside the data directory, or nowhere (TCP only) when
 * that path would be too long for a unix socket.
 */
export function socketDirFor(dataDir: string): string {
  const longest = path.join(dataDir, '.s.PGSQL.65535.lock');
  return longest.length <= MAX_SOCKET_PATH ? dataDir : '';
}

/** True when the directory holds an initialised cluster. */
export function hasCluster(dataDir: string): boolean {
  return existsSync(path.join(dataDir, 'PG_VERSION'));
}

async function chownTree(dir: string, uid: number, gid: number): Promise<void> {
  await lchown(dir, uid, gid);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) await chownTree(full, uid, gid);
    else await lchown(full, uid, gid);
  }
}
