import { existsSync } from 'node:fs';
import { lstat, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CLUSTERS_DIR, isInClustersDir, readClusterOwner } from './cluster-dir.js';
import {
  childPids,
  isProcessAlive,
  listPids,
  readCmdline,
  readProcStat,
  signalProcess,
  waitForExit,
} from './proc.js';

export interface SweepOptions {
  /** Persistent data directories that are ours too (an orphan on one of them is stopped). */
  dataDirs?: string[];
  log?: (line: string) => void;
}

export interface SweepReport {
  /** Postmaster pids that were stopped. */
  stopped: number[];
  /** Directories that were removed. */
  removed: string[];
}

/** A running postmaster and its data directory. */
export interface Postmaster {
  pid: number;
  ppid: number;
  dataDir: string;
}

const GRACE_MS = 5_000;
/** A cluster dir without an owner file is being created right now, unless it is older than this. */
const UNOWNED_GRACE_MS = 60_000;

/**
 * Cleans up after killed runs: stops postmasters running on one of our data directories whose
 * parent died (they were re-parented to PID 1, or the Node process that made their temporary
 * cluster is gone), then deletes temporary cluster directories no live process owns. Reads /proc;
 * a postmaster whose data directory is not ours is never touched.
 */
export async function sweepOrphans(options: SweepOptions = {}): Promise<SweepReport> {
  const log = options.log ?? (() => undefined);
  const explicit = new Set((options.dataDirs ?? []).map((dir) => path.resolve(dir)));
  const report: SweepReport = { stopped: [], removed: [] };

  const orphans: Postmaster[] = [];
  for (const postmaster of findPostmasters()) {
    const temporary = isInClustersDir(postmaster.dataDir);
    if (!temporary && !explicit.has(postmaster.dataDir)) continue; // not ours
    // A temporary cluster is orphaned when the process that made it is gone (its owner file
    // says who); otherwise, when the postmaster was re-parented to PID 1 (unless that is us).
    const ownerAlive = temporary ? await clusterOwnerAlive(postmaster.dataDir) : undefined;
    const reparented = postmaster.ppid === 1 && process.pid !== 1;
    if (ownerAlive === false || (ownerAlive === undefined && reparented)) orphans.push(postmaster);
  }
  for (const orphan of orphans) {
    log(`stopping orphaned postmaster ${orphan.pid} (data directory ${orphan.dataDir})`);
  }
  report.stopped = await stopPostmasters(orphans.map((orphan) => orphan.pid));
  report.removed = await removeStaleClusters(log);
  report.removed.push(...(await removeStaleBinaryCopies()));
  return report;
}

/** Every running postmaster (a `postgres` process started with `-D`), from /proc. */
export function findPostmasters(): Postmaster[] {
  const found: Postmaster[] = [];
  for (const pid of listPids()) {
    const argv = readCmdline(pid);
    if (argv === undefined || path.basename(argv[0] ?? '') !== 'postgres') continue;
    const flag = argv.indexOf('-D');
    const dataDir = flag >= 0 ? argv[flag + 1] : undefined;
    const stat = readProcStat(pid);
    if (dataDir === undefined || stat === undefined || stat.state === 'Z') continue;
    found.push({ pid, ppid: stat.ppid, dataDir: path.resolve(dataDir) });
  }
  return found;
}

/** SIGINT (fast shutdown), then SIGKILL for the postmaster and its children after a deadline. */
export async function stopPostmasters(pids: number[]): Promise<number[]> {
  if (pids.length === 0) return [];
  const children = pids.flatMap((pid) => childPids(pid));
  for (const pid of pids) trySignal(pid, 'SIGINT');
  const stubborn = await waitForExit(pids, GRACE_MS);
  for (const pid of stubborn) trySignal(pid, 'SIGKILL');
  await waitForExit(stubborn, 2_000);
  // Children notice their postmaster's death by themselves; do not wait for them to do so.
  const leftover = children.filter((pid) => isProcessAlive(pid));
  for (const pid of leftover) trySignal(pid, 'SIGKILL');
  await waitForExit(leftover, 2_000);
  return pids;
}

function trySignal(pid: number, signal: NodeJS.Signals): void {
  try {
    signalProcess(pid, signal);
  } catch {
    // EPERM: not ours to stop after all.
  }
}

/** Whether the process that created a temporary cluster still runs; undefined if unknown. */
async function clusterOwnerAlive(dataDir: string): Promise<boolean | undefined> {
  const root = clusterRootOf(dataDir);
  const owner = root === undefined ? undefined : await readClusterOwner(root);
  return owner === undefined ? undefined : isProcessAlive(owner.pid, owner.startTime);
}

/** `<CLUSTERS_DIR>/c-XXXXXX` for anything inside it. */
function clusterRootOf(dir: string): string | undefined {
  const relative = path.relative(CLUSTERS_DIR, path.resolve(dir));
  const first = relative.split(path.sep)[0];
  if (first === undefined || first === '' || first === '..') return undefined;
  return path.join(CLUSTERS_DIR, first);
}

async function removeStaleClusters(log: (line: string) => void): Promise<string[]> {
  const info = await lstat(CLUSTERS_DIR).catch(() => undefined);
  if (info === undefined || !info.isDirectory() || info.uid !== process.getuid?.()) return [];
  const busy = new Set(
    findPostmasters()
      .map((postmaster) => clusterRootOf(postmaster.dataDir))
      .filter((root) => root !== undefined),
  );
  const removed: string[] = [];
  for (const name of await readdir(CLUSTERS_DIR)) {
    const root = path.join(CLUSTERS_DIR, name);
    if (busy.has(root)) continue;
    const owner = await readClusterOwner(root);
    if (owner !== undefined && isProcessAlive(owner.pid, owner.startTime)) continue;
    if (owner === undefined) {
      const entry = await lstat(root).catch(() => undefined);
      if (entry === undefined || Date.now() - entry.mtimeMs < UNOWNED_GRACE_MS) continue;
    }
    log(`removing stale temporary cluster ${root}`);
    await rm(root, { recursive: true, force: true });
    removed.push(root);
  }
  return removed;
}

/** Half-copied binary caches (`hark-pg-<version>.tmp-<pid>-<hex>`) of processes that died. */
async function removeStaleBinaryCopies(): Promise<string[]> {
  if (!existsSync(tmpdir())) return [];
  const removed: string[] = [];
  for (const name of await readdir(tmpdir())) {
    const match = /^hark-pg-.+\.tmp-(\d+)-[0-9a-f]+$/.exec(name);
    if (match === null || isProcessAlive(Number(match[1]))) continue;
    const full = path.join(tmpdir(), name);
    const entry = await lstat(full).catch(() => undefined);
    if (entry === undefined || entry.uid !== process.getuid?.()) continue;
    await rm(full, { recursive: true, force: true });
    removed.push(full);
  }
  return removed;
}
