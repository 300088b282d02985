/**
 * The five disruptions. Each runs while the producer keeps sending and four worker processes
 * keep working; each records what it did (`ctx.disruptions`) so the suite can measure recovery.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { connectControl, leaderOf, pick, type ScenarioSpec } from './harness.js';

// ---- 1. SIGKILL -------------------------------------------------------------------------------

/** SIGKILLs a random worker every 1.2-1.8 s (the leader on the second round) and restarts it. */
export const killWorkers: ScenarioSpec = {
  key: 's1',
  title: '1 SIGKILL workers',
  jobs: 4_000,
  ratePerSec: 400,
  disruptAfterMs: 1_500,
  async disrupt(ctx) {
    const restarts: Promise<void>[] = [];
    for (let round = 0; round < 6; round++) {
      if (round > 0) await sleep(1_200 + Math.random() * 600);
      let candidates = ctx.workers.readyNow();
      if (candidates.length === 0) {
        await Promise.all(restarts);
        candidates = ctx.workers.readyNow();
      }
      let victim = pick(candidates);
      let leader = false;
      if (round === 1) {
        const holder = await leaderOf(ctx.admin, ctx.schema);
        const slot = holder === null ? undefined : ctx.workers.slotOf(holder.slice('hark:'.length));
        const w = slot === undefined ? undefined : ctx.workers.current(slot);
        if (w?.isReady && w.alive()) {
          victim = w;
          leader = true;
        }
      }
      const affected = await ctx.activeJobs([victim.name]);
      const at = Date.now();
      ctx.workers.kill(victim.slot);
      ctx.disruptions.push({
        label: `SIGKILL ${victim.name}${leader ? ' (the leader)' : ''}`,
        start: at,
        end: at,
        affected,
      });
      const slot = victim.slot;
      restarts.push(
        (async () => {
          await victim.exited;
          await sleep(300);
          await ctx.workers.spawn(slot).ready;
        })(),
      );
    }
    await Promise.all(restarts);
  },
};

// ---- 2. server stop / crash -------------------------------------------------------------------

/** Stops the server (fast shutdown) for 3 s, later crashes it (SIGKILL) for 2 s; restarts both. */
export const restartServer: ScenarioSpec = {
  key: 's2',
  title: '2 PostgreSQL stop/start',
  jobs: 4_000,
  ratePerSec: 400,
  disruptAfterMs: 2_000,
  async disrupt(ctx) {
    const server = ctx.db.embedded;
    if (!server) throw new Error('scenario 2 needs the embedded server');
    const cycles = [
      { how: 'fast shutdown', downMs: 3_000, stop: () => server.stop({ keepData: true }) },
      { how: 'crash (SIGKILL postmaster)', downMs: 2_000, stop: () => server.kill() },
    ];
    for (const [i, cycle] of cycles.entries()) {
      if (i > 0) await sleep(3_000);
      const affected = await ctx.activeJobs();
      const start = Date.now();
      await cycle.stop();
      const stoppedMs = Date.now() - start;
      await sleep(cycle.downMs);
      await server.start();
      const end = Date.now();
      ctx.disruptions.push({
        label: `server ${cycle.how}, down ${end - start} ms (stop took ${stoppedMs} ms)`,
        start,
        end,
        affected,
      });
    }
  },
};

// ---- 3. pg_terminate_backend ------------------------------------------------------------------

/**
 * Every 0.5-0.9 s terminates hark sessions of the workers, in turn: every session of one
 * worker, the leader's listener session only, every session of every worker.
 */
export const terminateBackends: ScenarioSpec = {
  key: 's3',
  title: '3 pg_terminate_backend',
  jobs: 4_000,
  ratePerSec: 400,
  disruptAfterMs: 1_500,
  async disrupt(ctx) {
    for (let round = 0; round < 12; round++) {
      if (round > 0) await sleep(500 + Math.random() * 400);
      const all = ctx.workers.readyNow().map((w) => w.name);
      let names: string[];
      let what: string;
      let pidFilter = '';
      const mode = round % 3;
      if (mode === 0) {
        names = [pick(all)];
        what = `all sessions of ${names[0]}`;
      } else if (mode === 1) {
        const holder = await leaderOf(ctx.admin, ctx.schema);
        if (holder === null) {
          names = all;
          what = 'all sessions of all workers (no leader held the lock)';
        } else {
          names = [holder.slice('hark:'.length)];
          what = `the leader's session (${names[0]})`;
          pidFilter =
            "AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)";
        }
      } else {
        names = all;
        what = 'all sessions of all workers';
      }
      const affected = await ctx.activeJobs(names);
      const at = Date.now();
      const r = await ctx.admin.query<{ n: number }>(
        `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int AS n
           FROM pg_stat_activity WHERE application_name = ANY($1::text[]) ${pidFilter}`,
        [names.map((n) => `hark:${n}`)],
      );
      ctx.disruptions.push({
        label: `terminated ${r[0]?.n ?? 0} backends: ${what}`,
        start: at,
        end: at,
        affected: mode === 1 && pidFilter !== '' ? [] : affected,
      });
    }
  },
};

// ---- 4. connection exhaustion -----------------------------------------------------------------

async function openFiller(url: string): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: url,
    application_name: 'chaos-filler',
    connectionTimeoutMillis: 5_000,
  });
  client.on('error', () => {});
  await client.connect();
  return client;
}

/** Opens connections in waves until the server refuses one with 53300. */
async function fill(url: string, into: pg.Client[]): Promise<string> {
  for (let wave = 0; wave < 50; wave++) {
    const opened = await Promise.allSettled(Array.from({ length: 10 }, () => openFiller(url)));
    let refusal: unknown;
    for (const o of opened) {
      if (o.status === 'fulfilled') into.push(o.value);
      else refusal ??= o.reason;
    }
    if (refusal !== undefined) {
      const code = (refusal as { code?: string }).code;
      if (code === '53300') return (refusal as Error).message;
      throw new Error(
        `filling the server failed with ${code ?? '?'}: ${(refusal as Error).message}`,
      );
    }
  }
  throw new Error('the server accepted 500 connections without refusing one');
}

/**
 * Twice: open connections until the server refuses (53300), hold them 3 s, release them. The
 * first time the workers keep the connections they had; the second time their sessions are
 * terminated 0.5 s into the hold, so they must reconnect into a full server. A top-up loop takes
 * every slot that frees up while holding. One superuser session opened beforehand stays ours.
 */
export const exhaustConnections: ScenarioSpec = {
  key: 's4',
  title: '4 connections exhausted',
  jobs: 5_000,
  ratePerSec: 400,
  disruptAfterMs: 1_500,
  async disrupt(ctx) {
    const control = await connectControl(ctx.db.url);
    const fillers: pg.Client[] = [];
    try {
      for (const withTerminate of [false, true]) {
        if (withTerminate) await sleep(1_500);
        const start = Date.now();
        let affected = await ctx.activeJobs(undefined, control);
        const refusal = await fill(ctx.db.url, fillers);
        const fullAt = Date.now();
        let holding = true;
        const topUp = (async () => {
          while (holding) {
            await openFiller(ctx.db.url).then(
              (c) => fillers.push(c),
              () => sleep(50),
            );
          }
        })();
        let terminated = 0;
        let rounds = 0;
        let holdFrom = fullAt;
        if (withTerminate) {
          // Cut the workers off: terminate their sessions (waiting for the backends to exit)
          // and take the freed slots, until a round finds none left to terminate.
          await sleep(500);
          const names = ctx.workers.readyNow().map((w) => `hark:${w.name}`);
          affected = await ctx.activeJobs(undefined, control);
          for (; rounds < 30; rounds++) {
            const r = await control.query<{ n: number }>(
              `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 2000))::int AS n
                 FROM pg_stat_activity WHERE application_name = ANY($1::text[])`,
              [names],
            );
            const n = r.rows[0]?.n ?? 0;
            if (n === 0) break;
            terminated += n;
            await fill(ctx.db.url, fillers).catch(() => '');
          }
          holdFrom = Date.now();
        }
        await sleep(Math.max(0, holdFrom + 3_000 - Date.now()));
        holding = false;
        await topUp;
        const held = fillers.length;
        const stillUsed = await control.query<{ n: number; workers: number }>(
          `SELECT count(*)::int AS n,
                  count(*) FILTER (WHERE application_name = ANY($2::text[]))::int AS workers
             FROM pg_stat_activity WHERE backend_type = $1`,
          ['client backend', ctx.workers.readyNow().map((w) => `hark:${w.name}`)],
        );
        await Promise.all(fillers.splice(0).map((c) => c.end().catch(() => {})));
        const end = Date.now();
        ctx.disruptions.push({
          label:
            `server full for ${end - fullAt} ms (${held} connections of ours, ` +
            `${stillUsed.rows[0]?.n ?? '?'} client sessions in all, ` +
            `${stillUsed.rows[0]?.workers ?? '?'} of them hark sessions of workers; "${refusal}")` +
            (withTerminate
              ? `; ${terminated} worker sessions terminated in ${rounds} rounds until none ` +
                `was left, ${end - holdFrom} ms before the release`
              : ''),
          start,
          end,
          affected,
        });
      }
    } finally {
      await Promise.all(fillers.splice(0).map((c) => c.end().catch(() => {})));
      await control.end().catch(() => {});
    }
  },
};

// ---- 5. xmin horizon --------------------------------------------------------------------------

const HOLD_MS = 15_000;
const BEFORE_MS = 4_000;
const PIN_RATE = 240;

/**
 * Holds a REPEATABLE READ transaction with an xid and a snapshot for 15 s while jobs flow at a
 * steady rate, then compares completions per second (and pickup latency) during the hold with
 * the 4 s before it. Fails if throughput drops below half, or if jobs stop completing.
 */
export const pinXmin: ScenarioSpec = {
  key: 's5',
  title: '5 xmin horizon pinned',
  jobs: 4_800,
  ratePerSec: PIN_RATE,
  disruptAfterMs: BEFORE_MS + 500,
  async disrupt(ctx) {
    const control = await connectControl(ctx.db.url, 'chaos-xmin-pin');
    const jobs = `"${ctx.schema}".jobs`;
    const deadTuples = async () => {
      const r = await ctx.admin.query<{ n: string }>(
        `SELECT n_dead_tup::text AS n FROM pg_stat_user_tables
          WHERE schemaname = $1 AND relname = 'jobs'`,
        [ctx.schema],
      );
      return r[0]?.n ?? '?';
    };
    try {
      const deadBefore = await deadTuples();
      const start = Date.now();
      await control.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      const xid = await control.query<{ x: string }>('SELECT txid_current()::text AS x');
      await control.query(`SELECT count(*) FROM ${jobs}`);
      const pinned = await ctx.admin.query<{ xmin: string | null }>(
        'SELECT backend_xmin::text AS xmin FROM pg_stat_activity WHERE pid = $1',
        [(control as pg.Client & { processID?: number }).processID ?? -1],
      );
      const xmin = pinned[0]?.xmin ?? null;
      if (xmin === null) ctx.failures.push('the pinning session shows no backend_xmin');
      await sleep(HOLD_MS);
      const deadDuring = await deadTuples();
      await control.query('COMMIT');
      const end = Date.now();
      ctx.disruptions.push({
        label: `transaction xid ${xid.rows[0]?.x} holding xmin ${xmin} for ${end - start} ms`,
        start,
        end,
        affected: [],
      });
      const rows = await ctx.admin.query<{ w: string; n: number; p50: number; p99: number }>(
        `SELECT CASE WHEN finished_at < to_timestamp($2 / 1000.0) THEN 'before' ELSE 'during' END
                  AS w,
                count(*)::int AS n,
                (percentile_cont(0.5) WITHIN GROUP (ORDER BY
                   extract(epoch FROM started_at - created_at)) * 1000)::float8 AS p50,
                (percentile_cont(0.99) WITHIN GROUP (ORDER BY
                   extract(epoch FROM started_at - created_at)) * 1000)::float8 AS p99
           FROM ${jobs}
          WHERE state = 'completed' AND attempt = 1
            AND finished_at >= to_timestamp($1 / 1000.0) AND finished_at < to_timestamp($3 / 1000.0)
          GROUP BY 1`,
        [start - BEFORE_MS, start, end],
      );
      const before = rows.find((r) => r.w === 'before');
      const during = rows.find((r) => r.w === 'during');
      const rate = (n: number | undefined, ms: number) => ((n ?? 0) * 1_000) / ms;
      const beforeRate = rate(before?.n, BEFORE_MS);
      const duringRate = rate(during?.n, end - start);
      const fmt = (v: number | undefined) => (v === undefined ? '-' : `${Math.round(v)} ms`);
      ctx.notes.push(
        `  throughput ${beforeRate.toFixed(0)} jobs/s before the pin, ${duringRate.toFixed(0)} ` +
          `jobs/s during it (offered ${PIN_RATE}/s); pickup p50/p99 ${fmt(before?.p50)}/` +
          `${fmt(before?.p99)} before, ${fmt(during?.p50)}/${fmt(during?.p99)} during; ` +
          `jobs n_dead_tup ${deadBefore} at the pin, ${deadDuring} at its end`,
      );
      if (!(duringRate >= 0.5 * beforeRate) || duringRate === 0) {
        ctx.failures.push(
          `throughput collapsed while the xmin horizon was pinned: ${duringRate.toFixed(0)} ` +
            `jobs/s during vs ${beforeRate.toFixed(0)} before`,
        );
      }
    } finally {
      await control.query('ROLLBACK').catch(() => {});
      await control.end().catch(() => {});
    }
  },
};

export const scenarios = [
  killWorkers,
  restartServer,
  terminateBackends,
  exhaustConnections,
  pinXmin,
];
