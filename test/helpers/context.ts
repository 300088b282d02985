/**
 * Test harness: every test file gets its own schema in the database named by DATABASE_URL
 * (set by scripts/with-db.ts: an embedded throwaway cluster, or the server CI points at). The
 * schema is dropped when the file passes and kept when it fails, for inspection.
 */
import { randomBytes } from 'node:crypto';
import { basename } from 'node:path';
import { after, afterEach } from 'node:test';
import pg from 'pg';
import { Hark, type HarkOptions } from '../../src/index.js';

export function databaseUrl(): string {
  const url = process.env.DATABASE_URL;
  if (!url) {
    throw new Error('DATABASE_URL is not set: run tests through `npm test` (scripts/with-db.ts)');
  }
  return url;
}

/** A schema name unique to this test file and run, e.g. `t_worker_3f9a1c`. */
export function uniqueSchema(fileUrl: string): string {
  const stem = basename(new URL(fileUrl).pathname)
    .replace(/\.test\.ts$/, '')
    .replace(/[^a-z0-9]+/gi, '_')
    .toLowerCase()
    .slice(0, 30);
  return `t_${stem}_${randomBytes(3).toString('hex')}`;
}

export interface TestContext {
  schema: string;
  url: string;
  /** A plain pg pool on the test database, for assertions and set-up SQL. */
  pool: pg.Pool;
  /** A started Hark on this file's schema; stopped after the file. */
  hark(options?: HarkOptions): Promise<Hark>;
  /** Fully-qualified table name in this file's schema, e.g. sql`${t('jobs')}`. */
  t(table: string): string;
}

/**
 * Call once at the top of a test file: `const ctx = testContext(import.meta.url)`.
 * Instances made with ctx.hark() are stopped after each test; the pool and schema after the file.
 */
export function testContext(fileUrl: string, schema = uniqueSchema(fileUrl)): TestContext {
  const url = databaseUrl();
  const pool = new pg.Pool({ connectionString: url, max: 5 });
  pool.on('error', () => {});
  const instances: Hark[] = [];
  let failed = false;

  afterEach(async (t) => {
    // node:test gives no direct "failed" flag in afterEach; we look at the outcome later.
    void t;
    await Promise.all(instances.splice(0).map((h) => h.stop({ timeoutMs: 2_000 }).catch(() => {})));
  });

  process.on('uncaughtException', () => {
    failed = true;
  });

  after(async () => {
    await Promise.all(instances.splice(0).map((h) => h.stop({ timeoutMs: 2_000 }).catch(() => {})));
    if (!failed && process.exitCode !== 1) {
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
    } else {
      console.error(`kept schema ${schema} for inspection`);
    }
    await pool.end();
  });

  return {
    schema,
    url,
    pool,
    t: (table) => `"${schema}".${table}`,
    async hark(options = {}) {
      const h = new Hark({ connectionString: url, schema, fallbackPollMs: 3_600_000, ...options });
      instances.push(h);
      await h.start();
      return h;
    },
  };
}

/** Resolves when `predicate` is true, checking on each event of `events` or every `everyMs`. */
export async function waitFor(
  what: string,
  predicate: () => boolean | Promise<boolean>,
  { timeoutMs = 10_000, everyMs = 10 } = {},
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A promise with its resolve function, for handlers that tests release by hand. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Waits for the next event of a kind that matches, with a deadline. */
export function nextEvent<K extends keyof import('../../src/events.js').HarkEvents>(
  hark: Hark,
  event: K,
  match: (p: import('../../src/events.js').HarkEvents[K]) => boolean = () => true,
  timeoutMs = 10_000,
): Promise<import('../../src/events.js').HarkEvents[K]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for event ${event}`));
    }, timeoutMs);
    const off = hark.events.on(event, (p) => {
      if (!match(p)) return;
      clearTimeout(timer);
      off();
      resolve(p);
    });
  });
}
