/**
 * Forward-only migrations from numbered plain-SQL files in `sql/migrations/`. Applied inside one
 * transaction under a transaction-scoped advisory lock, so any number of processes starting at
 * once on an empty database end with one correct schema.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { SchemaVersionError } from '../errors.js';
import { advisoryKey, channelFor, quoteIdent, quoteLiteral } from './identifiers.js';

export interface Migration {
  version: number;
  name: string;
  sql: string;
  /** sha256 of the file as shipped (before the schema is substituted). */
  checksum: string;
}

function findMigrationsDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, 'sql', 'migrations');
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new Error('hark: cannot find the sql/migrations folder next to the package');
}

let cached: { version: number; name: string; text: string; checksum: string }[] | undefined;

/** The migrations shipped with this version of hark, with the schema substituted. */
export function loadMigrations(schema: string): Migration[] {
  if (!cached) {
    const dir = findMigrationsDir();
    cached = readdirSync(dir)
      .filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f))
      .sort()
      .map((f) => ({
        version: Number(f.slice(0, 4)),
        name: f.slice(5, -4),
        text: readFileSync(join(dir, f), 'utf8'),
      }))
      .map((m) => ({ ...m, checksum: createHash('sha256').update(m.text).digest('hex') }));
  }
  return cached.map((m) => ({
    version: m.version,
    name: m.name,
    checksum: m.checksum,
    sql: m.text
      .replaceAll('{{schema}}', quoteIdent(schema))
      .replaceAll('{{channel}}', quoteLiteral(channelFor(schema))),
  }));
}

export function latestVersion(schema: string): number {
  const all = loadMigrations(schema);
  return all.length === 0 ? 0 : all[all.length - 1]!.version;
}

/** The schema version in the database: 0 when hark was never installed there. */
export async function currentVersion(client: pg.ClientBase, schema: string): Promise<number> {
  const exists = await client.query<{ t: string | null }>('SELECT to_regclass($1) AS t', [
    `${quoteIdent(schema)}.migrations`,
  ]);
  if (!exists.rows[0]?.t) return 0;
  const r = await client.query<{ v: number | null }>(
    `SELECT max(version) AS v FROM ${quoteIdent(schema)}.migrations`,
  );
  return r.rows[0]?.v ?? 0;
}

/** Applies pending migrations; returns the versions applied. Safe to run concurrently. */
export async function migrate(client: pg.ClientBase, schema: string): Promise<number[]> {
  const s = quoteIdent(schema);
  const applied: number[] = [];
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [
      advisoryKey(schema, 'migrate'),
    ]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${s}`);
    await client.query(
      `CREATE TABLE IF NOT EXISTS ${s}.migrations (
         version integer PRIMARY KEY, name text NOT NULL, checksum text,
         applied_at timestamptz NOT NULL DEFAULT now())`,
    );
    // Schemas made before checksums were recorded get the column (their rows stay unchecked).
    await client.query(`ALTER TABLE ${s}.migrations ADD COLUMN IF NOT EXISTS checksum text`);
    await checkApplied(client, schema);
    const current = await currentVersion(client, schema);
    for (const m of loadMigrations(schema)) {
      if (m.version <= current) continue;
      await client.query(m.sql);
      await client.query(
        `INSERT INTO ${s}.migrations (version, name, checksum) VALUES ($1, $2, $3)`,
        [m.version, m.name, m.checksum],
      );
      applied.push(m.version);
    }
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
  return applied;
}

/** Throws unless the database schema is exactly the version this library ships. */
export async function verify(client: pg.ClientBase, schema: string): Promise<void> {
  const have = await currentVersion(client, schema);
  if (have > 0) await checkApplied(client, schema);
  const want = latestVersion(schema);
  if (have !== want) {
    throw new SchemaVersionError(
      have < want
        ? `Schema \`${schema}\` is at version ${have}, this hark needs ${want}: run \`hark migrate\` (or start with migrate: 'auto')`
        : `Schema \`${schema}\` is at version ${have}, newer than this hark (${want}): upgrade hark`,
    );
  }
}

/**
 * Refuses a schema whose applied migrations differ from the files this hark ships: a migration
 * must never change once applied anywhere (add a new one instead).
 */
async function checkApplied(client: pg.ClientBase, schema: string): Promise<void> {
  const r = await client.query<{ version: number; checksum: string | null }>(
    `SELECT version, checksum FROM ${quoteIdent(schema)}.migrations ORDER BY version`,
  );
  const shipped = new Map(loadMigrations(schema).map((m) => [m.version, m]));
  for (const row of r.rows) {
    const m = shipped.get(row.version);
    if (m && row.checksum !== null && row.checksum !== m.checksum) {
      throw new SchemaVersionError(
        `Schema \`${schema}\`: migration ${row.version} (${m.name}) was applied from a different ` +
          'file than the one this hark ships; a migration must not change once applied. ' +
          'Recreate the schema (development) or restore the original migration.',
      );
    }
  }
}
