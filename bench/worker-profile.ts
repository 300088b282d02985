/**
 * One hark worker process draining a backlog of no-op jobs: throughput, CPU per 1,000 jobs and
 * statements per job, for profiling the worker on its own (the suite compares systems).
 *
 *   node --import tsx bench/worker-profile.ts [--jobs=50000] [--concurrency=N] [--runs=3]
 *   add --cpu-prof to node's flags to profile.
 * Database: DATABASE_URL, or a temporary embedded cluster (default, durable settings).
 */
import { Hark } from '../src/index.js';
import { openBenchDatabase } from './lib/database.js';
import pg from 'pg';
import { describeMachine, machineFacts } from './lib/machine.js';
import { median } from './lib/stats.js';

const arg = (name: string, def: number) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.split('=')[1]) : def;
};
const JOBS = arg('jobs', 50_000);
const CONCURRENCY = arg('concurrency', 0);
const RUNS = arg('runs', 3);
/** --pin: another session holds a snapshot (pins the xmin horizon) while the worker drains. */
const PIN = process.argv.includes('--pin');

const db = await openBenchDatabase();
{
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  console.log(describeMachine(await machineFacts(c)).join('\n'));
  await c.end();
}
console.log(`database: ${db.label}`);
const results: { rate: number; cpu: number; spj: number }[] = [];
try {
  for (let run = 0; run < RUNS; run++) {
    const schema = `hark_profile_${process.pid}_${run}`;
    const producer = new Hark({ connectionString: db.url, schema });
    await producer.start();
    await producer.createQueue('p', { retentionMs: 0 });
    for (let i = 0; i < JOBS; i += 50_000) {
      const n = Math.min(50_000, JOBS - i);
      await producer.sendMany(
        Array.from({ length: n }, (_, k) => ({ queue: 'p', payload: { n: i + k } })),
      );
    }
    await producer.stop();
    let pin: pg.Client | undefined;
    if (PIN) {
      pin = new pg.Client({ connectionString: db.url });
      await pin.connect();
      await pin.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await pin.query('SELECT txid_current()');
    }
    const claimCommit = process.argv.includes('--claim-commit=sync') ? 'sync' : 'async';
    const hark = new Hark({ connectionString: db.url, schema, claimCommit });
    await hark.start();
    const marks: string[] = [];
    const markEvery = Math.max(1, Math.floor(JOBS / 5));
    let lastMark = 0;
    let done = 0;
    let first = 0;
    let cpu0 = process.cpuUsage();
    const s0 = hark.statements.total;
    const finished = new Promise<number>((resolve) => {
      hark.events.on('job:complete', () => {
        ++done;
        if (done % markEvery === 0) {
          const now = performance.now();
          if (lastMark > 0) marks.push(`${Math.round((markEvery / (now - lastMark)) * 1000)}`);
          lastMark = now;
        }
        if (done === JOBS) resolve(performance.now());
      });
    });
    await hark.work('p', CONCURRENCY > 0 ? { concurrency: CONCURRENCY } : {}, async (_job) => {
      if (first === 0) {
        first = performance.now();
        cpu0 = process.cpuUsage();
      }
    });
    const end = await finished;
    const cpu = process.cpuUsage(cpu0);
    const statements = hark.statements.total - s0;
    const byPurpose = hark.statements.byPurpose;
    await hark.stop();
    if (pin) await pin.end();
    if (marks.length > 0) console.log(`jobs/s per fifth of the run: ${marks.join(', ')}`);
    const cleanup = new Hark({ connectionString: db.url, schema, migrate: 'off' });
    await cleanup.start();
    await cleanup.stop();
    const rate = (JOBS / (end - first)) * 1000;
    const cpuMs = (cpu.user + cpu.system) / 1000 / (JOBS / 1000);
    results.push({ rate, cpu: cpuMs, spj: statements / JOBS });
    console.log(
      `run ${run + 1}: ${Math.round(rate)} jobs/s, CPU ${cpuMs.toFixed(1)} ms/1000 jobs, ${(statements / JOBS).toFixed(4)} statements/job`,
      JSON.stringify(byPurpose),
    );
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    await c.query(`DROP SCHEMA "${schema}" CASCADE`);
    await c.end();
  }
  console.log(
    `median: ${Math.round(median(results.map((r) => r.rate)))} jobs/s, CPU ${median(results.map((r) => r.cpu)).toFixed(1)} ms/1000 jobs, ${median(results.map((r) => r.spj)).toFixed(4)} statements/job`,
  );
} finally {
  await db.stop();
}
