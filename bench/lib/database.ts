/**
 * The database a benchmark runs against: DATABASE_URL when set (nothing is started), otherwise
 * a fresh temporary embedded cluster with the server's default durability settings (fsync on:
 * `throwaway: false`), deleted by stop().
 */
import type pg from 'pg';
import { startEmbeddedPostgres } from '../../src/embedded/index.js';

export interface BenchDatabase {
  url: string;
  /** Where the numbers come from, in one line. */
  label: string;
  stop(): Promise<void>;
}

export function maskUrl(url: string): string {
  return url.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');
}

export async function openBenchDatabase(): Promise<BenchDatabase> {
  const external = process.env['DATABASE_URL'];
  if (external) {
    return { url: external, label: `DATABASE_URL=${maskUrl(external)}`, stop: async () => {} };
  }
  const began = performance.now();
  const server = await startEmbeddedPostgres({ throwaway: false });
  const ms = Math.round(performance.now() - began);
  return {
    url: server.url,
    label:
      `embedded PostgreSQL ${server.version}, temporary cluster ${server.dataDir}` +
      ` (ready in ${ms} ms, deleted at the end)`,
    stop: () => server.stop(),
  };
}

/** Runs `fn` on one client of `pool`, released afterwards. */
export async function withClient<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  try {
    return await fn(client);
  } finally {
    client.release();
  }
}

/** Opens `count` connections of `pool` at once, so a measurement does not pay for connecting. */
export async function warmPool(pool: pg.Pool, count: number): Promise<void> {
  const clients = await Promise.all(Array.from({ length: count }, () => pool.connect()));
  await Promise.all(clients.map((c) => c.query('SELECT 1')));
  for (const c of clients) c.release();
}
