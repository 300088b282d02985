/** Facts about the machine and the server that a benchmark's numbers depend on. */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import type pg from 'pg';

/** Settings that decide what an insert costs; fsync and synchronous_commit above all. */
const SETTINGS = [
  'fsync',
  'synchronous_commit',
  'full_page_writes',
  'wal_level',
  'shared_buffers',
  'max_wal_size',
  'shared_preload_libraries',
] as const;

function cpuModel(): string {
  try {
    const text = readFileSync('/proc/cpuinfo', 'utf8');
    const line = text.split('\n').find((l) => l.startsWith('model name'));
    if (line !== undefined) return line.slice(line.indexOf(':') + 1).trim();
  } catch {
    // not Linux
  }
  return os.cpus()[0]?.model ?? 'unknown';
}

export interface MachineFacts {
  cpu: string;
  cores: number;
  memoryGiB: number;
  node: string;
  postgres: string;
  settings: Record<string, string>;
}

export async function machineFacts(db: pg.Pool | pg.ClientBase): Promise<MachineFacts> {
  const r = await db.query<{ name: string; setting: string }>(
    `SELECT name, current_setting(name) AS setting FROM unnest($1::text[]) AS name`,
    [['server_version', ...SETTINGS]],
  );
  const settings: Record<string, string> = {};
  for (const row of r.rows) settings[row.name] = row.setting;
  const postgres = settings['server_version'] ?? '?';
  delete settings['server_version'];
  return {
    cpu: cpuModel(),
    cores: os.availableParallelism(),
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    postgres,
    settings,
  };
}

/** "0.12 0.30 0.25": other work on the machine skews the numbers; print it with them. */
export function loadAverage(): string {
  return os
    .loadavg()
    .map((n) => n.toFixed(2))
    .join(' ');
}

export function describeMachine(f: MachineFacts): string[] {
  return [
    `cpu: ${f.cpu}, ${f.cores} cores, ${f.memoryGiB} GiB RAM; node ${f.node};` +
      ` load average ${loadAverage()}`,
    `postgres ${f.postgres}: ${Object.entries(f.settings)
      .map(([k, v]) => `${k}=${v === '' ? "''" : v}`)
      .join(', ')}`,
  ];
}
