import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import pg from 'pg';
import { ConfigError, Hark, latestVersion, SchemaVersionError } from '../src/index.js';
import { describeSchema } from '../src/sql/schema-snapshot.js';
import { testContext } from './helpers/context.js';

const ctx = testContext(import.meta.url);

function runMigrator(schema: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/migrate-once.ts'], {
      env: { ...process.env, HARK_SCHEMA: schema },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, out: out.trim() }));
  });
}

describe('migrations', () => {
  test('10 processes migrating an empty database at once end with one correct schema', async () => {
    const schema = `${ctx.schema}_race`;
    try {
      const results = await Promise.all(Array.from({ length: 10 }, () => runMigrator(schema)));
      assert.deepEqual(
        results.map((r) => r.code),
        Array(10).fill(0),
      );
      // Exactly one process applied the migrations; the others found them applied.
      const applied = results.map((r) => JSON.parse(r.out) as number[]);
      assert.equal(applied.filter((a) => a.length > 0).length, 1);
      const versions = await ctx.pool.query(
        `SELECT version FROM "${schema}".migrations ORDER BY version`,
      );
      assert.deepEqual(
        versions.rows.map((r) => r.version),
        Array.from({ length: latestVersion(schema) }, (_, i) => i + 1),
      );
      const client = await ctx.pool.connect();
      try {
        const snapshot = readFileSync(
          new URL('../sql/schema.snapshot.sql', import.meta.url),
          'utf8',
        );
        assert.equal(await describeSchema(client, schema), snapshot.replace(/^--.*\n/, ''));
      } finally {
        client.release();
      }
    } finally {
      await ctx.pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    }
  });

  test('the migrated schema matches the committed snapshot (run `npm run schema:snapshot` after a migration change)', async () => {
    await ctx.hark();
    const client = await ctx.pool.connect();
    try {
      const snapshot = readFileSync(new URL('../sql/schema.snapshot.sql', import.meta.url), 'utf8');
      assert.equal(await describeSchema(client, ctx.schema), snapshot.replace(/^--.*\n/, ''));
    } finally {
      client.release();
    }
  });

  test("migrate: 'verify' refuses a schema of another version; 'off' checks nothing", async () => {
    const schema = `${ctx.schema}_empty`;
    const verifying = new Hark({ connectionString: ctx.url, schema, migrate: 'verify' });
    await assert.rejects(verifying.start(), (e: Error) => {
      assert.ok(e instanceof SchemaVersionError);
      assert.match(e.message, /is at version 0, this hark needs 2: run `hark migrate`/);
      return true;
    });
    const off = new Hark({
      connectionString: ctx.url,
      schema,
      migrate: 'off',
      fallbackPollMs: 3_600_000,
    });
    await off.start();
    await off.stop();
    const exists = await ctx.pool.query('SELECT to_regnamespace($1) AS s', [schema]);
    assert.equal(exists.rows[0].s, null);
    // After migrating, verify passes.
    await ctx.hark();
    const ok = new Hark({
      connectionString: ctx.url,
      schema: ctx.schema,
      migrate: 'verify',
      fallbackPollMs: 3_600_000,
    });
    await ok.start();
    await ok.stop();
  });

  test('configuration is validated before anything touches the database', () => {
    assert.throws(
      () => new Hark({ connectionString: ctx.url, schema: 'Bad-Name' }),
      (e: Error) => {
        assert.ok(e instanceof ConfigError);
        assert.match(
          e.message,
          /expected `schema` to be a schema name .* got `"Bad-Name"` \(string\)/,
        );
        return true;
      },
    );
    assert.throws(() => new Hark({ connectionString: 'mysql://x' }), /postgres:\/\/ URL/);
    assert.throws(
      () => new Hark({ connectionString: ctx.url, poolSize: 3 } as never),
      /did you mean `poolMax`\?/,
    );
    assert.throws(
      () => new Hark({ connectionString: ctx.url, migrate: 'yes' as never }),
      /one of `auto`, `verify`, `off`/,
    );
    const saved = process.env.DATABASE_URL;
    delete process.env.DATABASE_URL;
    try {
      assert.throws(
        () => new Hark(),
        /expected `connectionString` \(or the DATABASE_URL environment variable\)/,
      );
    } finally {
      process.env.DATABASE_URL = saved;
    }
  });

  test('a second migrate is a no-op', async () => {
    const client = new pg.Client({ connectionString: ctx.url });
    await client.connect();
    try {
      const { migrate } = await import('../src/sql/migrator.js');
      await migrate(client, ctx.schema);
      assert.deepEqual(await migrate(client, ctx.schema), []);
    } finally {
      await client.end();
    }
  });
});

test('a migration changed after it was applied is refused, by migrate and by verify', async () => {
  await ctx.hark();
  await ctx.pool.query(
    `UPDATE "${ctx.schema}".migrations SET checksum = 'edited' WHERE version = 1`,
  );
  try {
    const again = new Hark({
      connectionString: ctx.url,
      schema: ctx.schema,
      fallbackPollMs: 3_600_000,
    });
    await assert.rejects(again.start(), /migration 1 \(init\) was applied from a different file/);
    const verifying = new Hark({
      connectionString: ctx.url,
      schema: ctx.schema,
      migrate: 'verify',
    });
    await assert.rejects(verifying.start(), SchemaVersionError);
  } finally {
    const { loadMigrations } = await import('../src/sql/migrator.js');
    const sum = loadMigrations(ctx.schema)[0]?.checksum;
    await ctx.pool.query(`UPDATE "${ctx.schema}".migrations SET checksum = $1 WHERE version = 1`, [
      sum,
    ]);
  }
});
