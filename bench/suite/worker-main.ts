/**
 * A worker process of the benchmark suite: `node --import tsx bench/suite/worker-main.ts`,
 * forked by the orchestrator with an IPC channel. It is told which adapter to load and which
 * database to consume over IPC (bench/suite/protocol.ts), runs `adapter.consume`, and reports
 * every handler start back in batches (at most one message per FLUSH_MS, or per MAX_BATCH jobs;
 * never one per job, and no timer at all while no job runs) together with its CPU time. One case at a time; the orchestrator may reuse the
 * process for the next case of the same system.
 */
import type { BenchPayload, Consumer } from './adapter.js';
import { loadAdapter } from './adapters/index.js';
import { cpuMicros, type FromWorker, type ToWorker } from './protocol.js';

const FLUSH_MS = 20;
const MAX_BATCH = 10_000;

interface Case {
  caseId: string;
  consumer: Consumer | undefined;
  n: number[];
  start: number[];
  latency: number[];
  firstCpuUs: number;
  jobs: number;
  /** Armed by the first job after a flush: no timer runs while no job does. */
  timer: NodeJS.Timeout | undefined;
}

let current: Case | undefined;

function send(message: FromWorker): Promise<void> {
  return new Promise((resolve) => {
    if (!process.connected) {
      resolve();
      return;
    }
    process.send!(message, undefined, {}, () => resolve());
  });
}

function flush(c: Case): void {
  clearTimeout(c.timer);
  c.timer = undefined;
  if (c.n.length === 0) return;
  void send({
    type: 'jobs',
    caseId: c.caseId,
    n: c.n,
    start: c.start,
    latency: c.latency,
    cpuUs: cpuMicros(),
    firstCpuUs: c.firstCpuUs,
  });
  c.n = [];
  c.start = [];
  c.latency = [];
}

async function consume(message: Extract<ToWorker, { type: 'consume' }>): Promise<void> {
  if (current !== undefined) throw new Error(`still consuming for case ${current.caseId}`);
  const loaded = await loadAdapter(message.system);
  if (loaded.unavailable !== undefined) throw new Error(loaded.unavailable);
  const c: Case = {
    caseId: message.caseId,
    consumer: undefined,
    n: [],
    start: [],
    latency: [],
    firstCpuUs: -1,
    jobs: 0,
    timer: undefined,
  };
  current = c;
  const onJob = (payload: BenchPayload): void => {
    const now = performance.timeOrigin + performance.now();
    if (c.firstCpuUs < 0) c.firstCpuUs = cpuMicros();
    c.n.push(payload.n);
    c.start.push(now);
    c.latency.push(now - payload.t);
    c.jobs++;
    if (c.n.length >= MAX_BATCH) flush(c);
    else c.timer ??= setTimeout(() => flush(c), FLUSH_MS);
  };
  let consumer: Consumer;
  try {
    consumer = await loaded.adapter.consume(message.target, { queues: message.queues, onJob });
  } catch (error) {
    clearTimeout(c.timer);
    if (current === c) current = undefined;
    throw error;
  }
  if (current !== c) {
    // Stopped (given up on) while starting: nobody wants this consumer any more.
    await consumer.stop();
    return;
  }
  c.consumer = consumer;
  await send({ type: 'ready', caseId: c.caseId, cpuUs: cpuMicros() });
}

async function stop(caseId: string): Promise<void> {
  const c = current;
  if (c === undefined || c.caseId !== caseId) {
    await send({ type: 'stopped', caseId, jobs: 0, cpuUs: cpuMicros() });
    return;
  }
  flush(c);
  try {
    await c.consumer?.stop();
  } finally {
    flush(c);
    current = undefined;
  }
  await send({ type: 'stopped', caseId, jobs: c.jobs, cpuUs: cpuMicros() });
}

function describe(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}

async function handle(message: ToWorker): Promise<void> {
  switch (message.type) {
    case 'load': {
      const loaded = await loadAdapter(message.system);
      await send({
        type: 'loaded',
        system: message.system,
        unavailable: loaded.unavailable ?? null,
      });
      return;
    }
    case 'consume':
      try {
        await consume(message);
      } catch (error) {
        await send({ type: 'error', caseId: message.caseId, message: describe(error) });
      }
      return;
    case 'stop':
      try {
        await stop(message.caseId);
      } catch (error) {
        await send({ type: 'error', caseId: message.caseId, message: describe(error) });
      }
      return;
    case 'exit':
      await leave(0);
      return;
  }
}

let leaving = false;

/** Stops what runs (briefly) and exits; the orchestrator SIGKILLs a worker that hangs here. */
async function leave(code: number): Promise<void> {
  if (leaving) return;
  leaving = true;
  const c = current;
  if (c?.consumer !== undefined) {
    await Promise.race([
      c.consumer.stop().catch(() => undefined),
      new Promise((resolve) => setTimeout(resolve, 5_000).unref()),
    ]);
  }
  process.exit(code);
}

if (process.send === undefined) {
  process.stderr.write('bench/suite/worker-main.ts is started by bench/suite/run.ts (fork)\n');
  process.exit(2);
}

process.on('message', (message: ToWorker) => {
  handle(message).catch((error: unknown) =>
    send({ type: 'error', caseId: null, message: describe(error) }),
  );
});
// The orchestrator went away: nobody will read our numbers or stop us.
process.on('disconnect', () => void leave(0));
for (const event of ['uncaughtException', 'unhandledRejection'] as const) {
  process.on(event, (error: unknown) => {
    void send({ type: 'error', caseId: current?.caseId ?? null, message: describe(error) }).then(
      () => leave(1),
    );
  });
}
// The orchestrator stops us over IPC; a terminal's Ctrl-C reaches it, and it stops us.
process.on('SIGINT', () => undefined);
