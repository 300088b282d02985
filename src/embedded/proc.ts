import { readdirSync, readFileSync } from 'node:fs';

/** What /proc/<pid>/stat tells us about a process. */
export interface ProcStat {
  pid: number;
  ppid: number;
  /** One-letter state: R, S, D, Z (zombie), T, ... */
  state: string;
  /** Start time in clock ticks since boot: with the pid, identifies a process across pid reuse. */
  startTime: string;
}

/** Reads /proc/<pid>/stat; undefined when the process does not exist (or /proc is unavailable). */
export function readProcStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // "pid (comm) state ppid ...": comm may contain spaces and parentheses: split after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0];
  const ppid = Number(fields[1]);
  const startTime = fields[19]; // field 22 of stat(5); fields[0] is field 3
  if (state === undefined || startTime === undefined || !Number.isInteger(ppid)) return undefined;
  return { pid, ppid, state, startTime };
}

/** The argv of a process; undefined when it is gone or is a kernel thread / zombie. */
export function readCmdline(pid: number): string[] | undefined {
  try {
    const raw = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (raw.length === 0) return undefined;
    return raw.replace(/\0$/, '').split('\0');
  } catch {
    return undefined;
  }
}

/** All numeric entries of /proc. */
export function listPids(): number[] {
  let names: string[];
  try {
    names = readdirSync('/proc');
  } catch {
    return [];
  }
  const pids: number[] = [];
  for (const name of names) {
    if (/^\d+$/.test(name)) pids.push(Number(name));
  }
  return pids;
}

/**
 * True when the process exists and is not a zombie; with `startTime`, also checks it is the same
 * process and not a later one that reused the pid.
 */
export function isProcessAlive(pid: number, startTime?: string): boolean {
  const stat = readProcStat(pid);
  if (stat === undefined || stat.state === 'Z' || stat.state === 'X') return false;
  return startTime === undefined || stat.startTime === startTime;
}

/** Direct children of a process (scans /proc). */
export function childPids(parent: number): number[] {
  return listPids().filter((pid) => readProcStat(pid)?.ppid === parent);
}

/** Sends a signal, ignoring "no such process". */
export function signalProcess(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

/** Polls until every pid is dead (or a zombie) or the deadline passes; returns the survivors. */
export async function waitForExit(pids: number[], timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  let alive = pids.filter((pid) => isProcessAlive(pid));
  while (alive.length > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    alive = alive.filter((pid) => isProcessAlive(pid));
  }
  return alive;
}
