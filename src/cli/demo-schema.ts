/**
 * The demo keeps its schema between runs. While hark is young, an applied migration may still
 * be edited in place, and a schema made by an older edition then lacks columns the code uses,
 * which no version number reveals. So before each run the demo compares its schema with one
 * freshly migrated from the current sql/migrations, and recreates its own schema on a mismatch.
 */
import pg from 'pg';
import { migrate } from '../index.js';
import { quoteIdent } from '../sql/identifiers.js';
import { describeSchema } from '../sql/schema-snapshot.js';

export type SchemaState =
  /** Nothing there yet: hark.start() creates it. */
  | 'new'
  /** Kept from earlier runs, identical to a fresh migration. */
  | 'kept'
  /** Dropped because it differed from a fresh migration. */
  | 'recreated'
  /** Dropped because --reset was given. */
  | 'reset';

async function dropSchema(client: pg.ClientBase, schema: string): Promise<void> {
  await client.query(`DROP SCHEMA IF EXISTS ${quoteIdent(schema)} CASCADE`);
}

/** Brings `schema` up to date, or drops it (hark.start() then creates it again). */
export async function prepareDemoSchema(
  url: string,
  schema: string,
  reset: boolean,
): Promise<SchemaState> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => undefined);
  await client.connect();
  try {
    const found = await client.query<{ t: string | null }>('SELECT to_regclass($1) AS t', [
      `${quoteIdent(schema)}.migrations`,
    ]);
    if (!found.rows[0]?.t) return 'new';
    if (reset) {
      await dropSchema(client, schema);
      return 'reset';
    }
    await migrate(client, schema); // pending migrations, as hark.start() would apply them
    const reference = `${schema}_ref_${process.pid}`;
    let want: string;
    try {
      await migrate(client, reference);
      want = await describeSchema(client, reference);
    } finally {
      await dropSchema(client, reference);
    }
    if ((await describeSchema(client, schema)) === want) return 'kept';
    await dropSchema(client, schema);
    return 'recreated';
  } finally {
    await client.end().catch(() => undefined);
  }
}
