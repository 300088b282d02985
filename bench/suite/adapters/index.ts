/**
 * The systems of the suite, by id. Each module is imported lazily (and by computed URL, so the
 * type checker does not insist that every peer module exists): a module that is missing, fails
 * to load or does not export `adapter` makes its system unavailable with the reason, instead of
 * stopping the suite.
 */
import type { Adapter } from '../adapter.js';

/** Where a system keeps its jobs: decides how scenarios 4, 5 and 8 count its commands. */
export type Store = 'postgres' | 'redis';

export interface SystemInfo {
  id: string;
  /** Module next to this file that exports `adapter`. */
  file: string;
  store: Store;
}

export const SYSTEMS: readonly SystemInfo[] = [
  { id: 'hark', file: 'hark.ts', store: 'postgres' },
  { id: 'floor', file: 'floor.ts', store: 'postgres' },
  { id: 'pg-boss', file: 'pg-boss.ts', store: 'postgres' },
  { id: 'graphile-worker', file: 'graphile-worker.ts', store: 'postgres' },
  { id: 'bullmq-redis', file: 'bullmq-redis.ts', store: 'redis' },
  { id: 'bullmq-pg', file: 'bullmq-pg.ts', store: 'postgres' },
];

export const SYSTEM_IDS: readonly string[] = SYSTEMS.map((s) => s.id);

export function systemInfo(id: string): SystemInfo {
  const info = SYSTEMS.find((s) => s.id === id);
  if (info === undefined) {
    throw new Error(`unknown system ${JSON.stringify(id)} (known: ${SYSTEM_IDS.join(', ')})`);
  }
  return info;
}

export type Loaded = { adapter: Adapter; unavailable?: undefined } | { unavailable: string };

const ADAPTER_METHODS = [
  'label',
  'unavailable',
  'setup',
  'teardown',
  'producer',
  'consume',
] as const;

function firstLine(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.split('\n')[0]!.slice(0, 300);
}

const cache = new Map<string, Promise<Loaded>>();

/** The adapter of system `id`, or why it cannot be loaded. Memoised per process. */
export function loadAdapter(id: string): Promise<Loaded> {
  let loaded = cache.get(id);
  if (loaded === undefined) {
    loaded = load(systemInfo(id));
    cache.set(id, loaded);
  }
  return loaded;
}

async function load(info: SystemInfo): Promise<Loaded> {
  const url = new URL(`./${info.file}`, import.meta.url).href;
  let module: Record<string, unknown>;
  try {
    module = (await import(url)) as Record<string, unknown>;
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (code === 'ERR_MODULE_NOT_FOUND' && String(error).includes(info.file)) {
      return { unavailable: `bench/suite/adapters/${info.file} does not exist yet` };
    }
    return { unavailable: `bench/suite/adapters/${info.file} failed to load: ${firstLine(error)}` };
  }
  const adapter = module['adapter'] as Partial<Adapter> | undefined;
  if (adapter === undefined || adapter === null || typeof adapter !== 'object') {
    return { unavailable: `bench/suite/adapters/${info.file} exports no \`adapter\`` };
  }
  const missing = ADAPTER_METHODS.filter((m) => typeof adapter[m] !== 'function');
  if (missing.length > 0) {
    return { unavailable: `its adapter lacks ${missing.join(', ')}` };
  }
  if (adapter.id !== info.id) {
    return { unavailable: `its adapter's id is ${JSON.stringify(adapter.id)}, not "${info.id}"` };
  }
  return { adapter: adapter as Adapter };
}
