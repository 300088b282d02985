/**
 * The demo's workload: four queues with realistic handlers, sent through the public API, and a
 * tracker that follows this run's jobs through hark's events. Jobs left by earlier runs (the
 * demo keeps its database) are worked too, but only this run's ids are counted.
 */
import { createHash, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Hark, NonRetryableError } from '../index.js';

/** The queues of the demo, in display order (the dead-letter queue is not worked). */
export const DEMO_QUEUES = ['emails', 'thumbnails', 'reports', 'webhooks'] as const;
export type DemoQueue = (typeof DEMO_QUEUES)[number];
export const DEAD_LETTER_QUEUE = 'webhooks-dlq';
/** The queue fed by one large sendMany. */
export const BATCH_QUEUE: DemoQueue = 'thumbnails';

interface Email {
  to: string;
  template: 'welcome' | 'receipt' | 'password-reset';
  /** The mail server answers "try again later" to the first attempt. */
  flaky?: boolean;
}

interface Thumbnail {
  image: string;
  sizes: number[];
}

interface Report {
  name: string;
  rows: number;
}

interface Webhook {
  endpoint: string;
  event: string;
  /** The first attempt times out. */
  flaky?: boolean;
}

/** Endpoints whose behaviour the demo relies on. */
const LEGACY_ENDPOINT = 'https://legacy.example.net/hooks'; // always 503: ends in the DLQ
const GONE_ENDPOINT = 'https://gone.example.org/hook'; // 410 Gone: NonRetryableError

export interface QueueTally {
  queue: DemoQueue;
  sent: number;
  completed: number;
  /** Failed attempts that were retried. */
  retries: number;
  /** Jobs that failed for good. */
  failed: number;
  deadLettered: number;
  /** Milliseconds from send (or from due time, for delayed jobs) to the first job:start. */
  pickupMs: number[];
}

interface Sent {
  queue: DemoQueue;
  /** performance.now() when the job became due: the send, plus its delay. */
  dueAt: number;
}

/** Follows this run's jobs through hark's events (which may arrive before send() returns). */
export class Tracker {
  private readonly sent = new Map<string, Sent>();
  private readonly firstStart = new Map<string, number>();
  private readonly outcome = new Map<string, 'completed' | 'failed'>();
  private readonly retries = new Map<string, number>();
  private readonly deadLettered = new Set<string>();
  private readonly unsubscribe: (() => void)[] = [];
  private waiters: (() => void)[] = [];
  private sending = true;

  constructor(events: Hark['events']) {
    this.unsubscribe.push(
      events.on('job:start', (e) => {
        if (e.attempt === 1 && !this.firstStart.has(e.id)) {
          this.firstStart.set(e.id, performance.now());
        }
      }),
      events.on('job:retry', (e) => {
        this.retries.set(e.id, (this.retries.get(e.id) ?? 0) + 1);
      }),
      events.on('job:complete', (e) => this.finish(e.id, 'completed')),
      events.on('job:fail', (e) => {
        if (e.deadLetter !== null) this.deadLettered.add(e.id);
        this.finish(e.id, 'failed');
      }),
    );
  }

  track(queue: DemoQueue, ids: readonly string[], sentAt: number, delayMs = 0): void {
    for (const id of ids) this.sent.set(id, { queue, dueAt: sentAt + delayMs });
  }

  /** No more sends: the run is over once every tracked job has ended. */
  doneSending(): void {
    this.sending = false;
    this.check();
  }

  /** Tracked jobs that have not ended yet. */
  get pending(): number {
    let n = 0;
    for (const id of this.sent.keys()) if (!this.outcome.has(id)) n++;
    return n;
  }

  get total(): number {
    return this.sent.size;
  }

  /** Up to `limit` tracked jobs that have not ended, with their queue. */
  pendingJobs(limit: number): { id: string; queue: DemoQueue }[] {
    const pending: { id: string; queue: DemoQueue }[] = [];
    for (const [id, job] of this.sent) {
      if (pending.length >= limit) break;
      if (!this.outcome.has(id)) pending.push({ id, queue: job.queue });
    }
    return pending;
  }

  /** Jobs that ended in this run but were sent by an earlier one. */
  get leftovers(): number {
    let n = 0;
    for (const id of this.outcome.keys()) if (!this.sent.has(id)) n++;
    return n;
  }

  tallies(): QueueTally[] {
    const byQueue = new Map<DemoQueue, QueueTally>();
    for (const queue of DEMO_QUEUES) {
      byQueue.set(queue, {
        queue,
        sent: 0,
        completed: 0,
        retries: 0,
        failed: 0,
        deadLettered: 0,
        pickupMs: [],
      });
    }
    for (const [id, job] of this.sent) {
      const t = byQueue.get(job.queue)!;
      t.sent++;
      const outcome = this.outcome.get(id);
      if (outcome === 'completed') t.completed++;
      else if (outcome === 'failed') t.failed++;
      t.retries += this.retries.get(id) ?? 0;
      if (this.deadLettered.has(id)) t.deadLettered++;
      const started = this.firstStart.get(id);
      if (started !== undefined) t.pickupMs.push(Math.max(0, started - job.dueAt));
    }
    return [...byQueue.values()];
  }

  /** Resolves once sending is over and every tracked job has ended. */
  settled(signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
      this.check();
    });
  }

  dispose(): void {
    for (const off of this.unsubscribe.splice(0)) off();
  }

  private finish(id: string, outcome: 'completed' | 'failed'): void {
    this.outcome.set(id, outcome);
    this.check();
  }

  private check(): void {
    if (this.sending || this.pending > 0) return;
    for (const wake of this.waiters.splice(0)) wake();
  }
}

export interface WorkloadResult {
  /** What the report jobs returned (read with waitForJob). */
  reports: { name: string; output: unknown }[];
  /** How waitForJob reported the job that threw NonRetryableError. */
  nonRetryable: string;
}

function between(min: number, max: number): number {
  return min + Math.floor(Math.random() * (max - min + 1));
}

/** Keeps the CPU busy for about `ms` (hashing, as image resizing would). */
function burnCpu(ms: number, seed: string): string {
  const chunk = randomBytes(16_384);
  const hash = createHash('sha256').update(seed);
  const end = performance.now() + ms;
  while (performance.now() < end) hash.update(chunk);
  return hash.digest('hex').slice(0, 12);
}

/** Creates the queues and starts a worker for each (the dead-letter queue is left unworked). */
export async function setUpQueues(hark: Hark): Promise<void> {
  const emails = await hark.createQueue<Email>('emails', { retryDelayMs: 200 });
  const thumbnails = await hark.createQueue<Thumbnail>('thumbnails', { retryDelayMs: 200 });
  const reports = await hark.createQueue<Report>('reports');
  await hark.createQueue(DEAD_LETTER_QUEUE);
  const webhooks = await hark.createQueue<Webhook>('webhooks', {
    retryLimit: 2,
    retryDelayMs: 150,
    deadLetter: DEAD_LETTER_QUEUE,
  });

  await emails.work({ concurrency: 10 }, async (job, signal) => {
    await sleep(between(5, 25), undefined, { signal });
    if (job.payload.flaky && job.attempt === 1) {
      throw new Error('SMTP 421 4.7.0 mail.example.com: try again later');
    }
    return { messageId: `<${job.id}.${job.attempt}@mail.example.com>` };
  });

  await thumbnails.work({ concurrency: 4 }, async (job, signal) => {
    const digest = burnCpu(3, job.payload.image); // decode and resize
    await sleep(between(8, 15), undefined, { signal }); // write to object storage
    return job.payload.sizes.map((size) => `thumbs/${digest}-${size}.webp`);
  });

  await reports.work({ concurrency: 2 }, async (job, signal) => {
    await sleep(between(80, 200), undefined, { signal });
    return { name: job.payload.name, rows: job.payload.rows, url: `/reports/${job.id}.csv` };
  });

  await webhooks.work({ concurrency: 5 }, async (job, signal) => {
    await sleep(between(10, 40), undefined, { signal });
    const { endpoint } = job.payload;
    if (endpoint === GONE_ENDPOINT) throw new NonRetryableError(`410 Gone from ${endpoint}`);
    if (endpoint === LEGACY_ENDPOINT) throw new Error(`503 Service Unavailable from ${endpoint}`);
    if (job.payload.flaky && job.attempt === 1) {
      throw new Error(`ETIMEDOUT: ${endpoint} did not answer within 5 s`);
    }
    return { status: 204 };
  });
}

/** Sends `count` jobs, one every `everyMs`, each through `send`. */
async function trickle(
  count: number,
  everyMs: number,
  signal: AbortSignal,
  send: (i: number) => Promise<void>,
): Promise<void> {
  const start = performance.now();
  for (let i = 0; i < count; i++) {
    const wait = start + i * everyMs - performance.now();
    if (wait > 0) await sleep(wait, undefined, { signal });
    signal.throwIfAborted();
    await send(i);
  }
}

const TEMPLATES = ['welcome', 'receipt', 'password-reset'] as const;
const EVENTS = ['order.created', 'order.paid', 'order.shipped', 'refund.issued'] as const;
const REPORTS: { name: string; delayMs: number; rows: number }[] = [
  { name: 'daily-sales', delayMs: 1_000, rows: 1_284 },
  { name: 'inventory', delayMs: 1_300, rows: 342 },
  { name: 'churn', delayMs: 1_600, rows: 57 },
  { name: 'payouts', delayMs: 2_000, rows: 96 },
];

/**
 * Sends this run's jobs (about 2.5 s of traffic) and resolves when every one of them has ended.
 * Rejects with the signal's reason when aborted.
 */
export async function runWorkload(
  hark: Hark,
  tracker: Tracker,
  signal: AbortSignal,
): Promise<WorkloadResult> {
  const emails = hark.queue<Email>('emails');
  const thumbnails = hark.queue<Thumbnail>('thumbnails');
  const reports = hark.queue<Report>('reports');
  const webhooks = hark.queue<Webhook>('webhooks');
  const run = randomBytes(2).toString('hex');

  // Results we wait for: started right after each send, awaited at the end.
  const reportWaits: Promise<{ name: string; output: unknown }>[] = [];
  let nonRetryableWait: Promise<string> = Promise.resolve('(not sent)');

  const sendReports = async () => {
    for (const report of REPORTS) {
      const at = performance.now();
      const id = await reports.send(
        { name: report.name, rows: report.rows },
        { delayMs: report.delayMs },
      );
      tracker.track('reports', [id], at, report.delayMs);
      const wait = hark.waitForJob(id, { timeoutMs: 30_000 }).then(
        (output) => ({ name: report.name, output }),
        (error: Error) => ({ name: report.name, output: `${error.name}: ${error.message}` }),
      );
      reportWaits.push(wait);
    }
  };

  const sendEmails = trickle(40, 60, signal, async (i) => {
    const at = performance.now();
    const id = await emails.send({
      to: `user${i + 1}.${run}@example.com`,
      template: TEMPLATES[i % TEMPLATES.length]!,
      flaky: i % 10 === 4,
    });
    tracker.track('emails', [id], at);
  });

  const sendThumbnails = (async () => {
    await sleep(500, undefined, { signal });
    const payloads = Array.from({ length: 120 }, (_, i) => ({
      image: `uploads/${run}/IMG_${String(i + 1).padStart(4, '0')}.jpg`,
      sizes: [64, 256, 1024],
    }));
    const at = performance.now();
    const ids = await thumbnails.sendMany(payloads);
    tracker.track('thumbnails', ids, at);
  })();

  const sendWebhooks = trickle(20, 120, signal, async (i) => {
    let endpoint = `https://shop${(i % 4) + 1}.example.com/webhooks/hark`;
    if (i === 7) endpoint = GONE_ENDPOINT;
    if (i === 12) endpoint = LEGACY_ENDPOINT;
    const at = performance.now();
    const id = await webhooks.send({
      endpoint,
      event: EVENTS[i % EVENTS.length]!,
      flaky: i === 3 || i === 15,
    });
    tracker.track('webhooks', [id], at);
    if (endpoint === GONE_ENDPOINT) {
      nonRetryableWait = hark.waitForJob(id, { timeoutMs: 30_000 }).then(
        () => 'completed (unexpected)',
        (error: Error) => `${error.name}: ${error.message}`,
      );
    }
  });

  try {
    await Promise.all([sendReports(), sendEmails, sendThumbnails, sendWebhooks]);
  } finally {
    // Sends already made are still tracked; a failed send must not leave the tracker waiting.
    tracker.doneSending();
  }
  await tracker.settled(signal);
  return { reports: await Promise.all(reportWaits), nonRetryable: await nonRetryableWait };
}
