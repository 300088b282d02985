/**
 * Leader election and the leader's pass (lease rescue and retention), with zero statements
 * while the cluster is idle.
 *
 * The leader holds a session advisory lock on its listener connection: it loses leadership the
 * moment that session ends, and its pass runs on that same session, so two leaders can never act
 * at once. A waiting follower cannot block on the lock (a backend waiting on a lock pins the xmin
 * horizon, which we measured), so followers keep a watchdog instead: every notification tells
 * them when the leader must pass next (new work: its due time plus a lease; a pass: the time it
 * announced). When the watchdog fires without a pass having been heard, the follower tries the
 * lock once. When nothing is active, due or scheduled, no timer is armed anywhere.
 */
import type pg from 'pg';
import type { Database } from '../db/database.js';
import type { HarkEventEmitter } from '../events.js';
import type { Message } from '../listener/messages.js';
import { advisoryKey } from '../sql/identifiers.js';
import type { Queries } from '../sql/queries.js';

const MAX_TIMER_MS = 2_147_483_647;

export interface LeaderOptions {
  db: Database;
  q: Queries;
  events: HarkEventEmitter;
  schema: string;
  workerId: string;
  /** Lease assumed for jobs not yet seen by a pass. */
  leaseMs: number;
  /** Slack after a lease expiry before the pass. @default 500 */
  graceMs?: number;
  /** Extra slack a follower gives the leader before taking over. @default 2000 */
  followerGraceMs?: number;
  /** Rows rescued or deleted per pass. @default 1000 */
  batchSize?: number;
  /** Whether this process may lead. @default true */
  eligible?: boolean;
}

export interface PassResult {
  rescued: number;
  failed: number;
  deadLettered: number;
  deleted: number;
  nextPassAt: number | null;
}

export class LeaderService {
  private client: pg.Client | undefined;
  private leader = false;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Number.POSITIVE_INFINITY;
  private passing: Promise<void> | undefined;
  private armedDuringPass = Number.POSITIVE_INFINITY;
  /** The last expectation raised by new work, and when: a pass announced just after it may not
   * have seen that work yet, so a follower keeps it. */
  private lastExpectation = { at: Number.POSITIVE_INFINITY, receivedAt: 0 };
  private stopped = false;
  /** Failed lock attempts since the leader was last heard from. */
  private failedTries = 0;
  /** Consecutive passes that found due jobs nobody claimed and nothing else to watch. */
  private duePasses = 0;
  private readonly key: string;
  readonly totals = { passes: 0, rescued: 0, failed: 0, deadLettered: 0, deleted: 0 };

  constructor(private readonly o: LeaderOptions) {
    this.key = advisoryKey(o.schema, 'leader');
  }

  get isLeader(): boolean {
    return this.leader;
  }

  /** When the next pass (leader) or watchdog check (follower) is due, if any. */
  get nextCheckAt(): number | null {
    return Number.isFinite(this.timerAt) ? this.timerAt : null;
  }

  private get grace(): number {
    return this.o.graceMs ?? 500;
  }

  private get followerGrace(): number {
    return this.o.followerGraceMs ?? 2_000;
  }

  /** Called by the listener on every new session, before it is reported connected. */
  async onSession(client: pg.Client): Promise<void> {
    this.client = client;
    this.leader = false;
    if (this.stopped || this.o.eligible === false) return;
    if (await this.tryAcquire()) return;
    // A follower that just joined has heard no announcement yet: the leader may own active
    // jobs whose rescue it planned before we listened. If any job is active, expect the
    // leader's pass by its lease; the watchdog then follows the leader's announcements. With
    // nothing active, nothing can need a rescue, and an idle cluster stays silent.
    this.failedTries = 0;
    try {
      this.o.db.counter.add('leader');
      const r = await client.query<{ at: number | null }>(this.o.q.earliestLease);
      const at = r.rows[0]?.at ?? null;
      if (at !== null && this.client === client) this.arm(at + this.grace + this.followerGrace);
    } catch (err) {
      // Not knowing, watch: a needless lock attempt is cheaper than a missed rescue.
      this.o.events.emit('error', { error: err as Error, context: 'leader watchdog' });
      this.arm(Date.now() + this.o.leaseMs + this.grace + this.followerGrace);
    }
  }

  /** The listener's session ended: the lock went with it. */
  onDisconnect(): void {
    this.client = undefined;
    if (this.leader) {
      this.leader = false;
      this.o.events.emit('leader:lost', {
        workerId: this.o.workerId,
        reason: 'listener session ended',
      });
    }
  }

  /** Every notification on the channel passes through here. */
  onMessage(message: Message): void {
    if (this.stopped) return;
    if (message.kind === 'jobs' || message.kind === 'claimed') {
      // Something changed: due jobs are worth looking at again.
      this.duePasses = 0;
      const due = message.kind === 'jobs' && message.dueAt > 0 ? message.dueAt : Date.now();
      const lease = message.leaseMs || this.o.leaseMs;
      this.expect(due + Math.min(this.o.leaseMs, lease) + this.grace);
    } else if (message.kind === 'pass') {
      if (this.leader) return; // our own broadcast
      this.failedTries = 0;
      const at = message.nextPassAt;
      this.replace(at === null ? null : at + this.followerGrace);
      if (Date.now() - this.lastExpectation.receivedAt < 1_000) this.arm(this.lastExpectation.at);
    } else if (message.kind === 'resign') {
      if (!this.leader) this.replace(Date.now() + Math.round(Math.random() * 200));
    }
  }

  /** New work's due time: the leader must pass by then (followers allow it some slack). */
  private expect(at: number): void {
    const when = this.leader ? at : at + this.followerGrace;
    this.lastExpectation = { at: when, receivedAt: Date.now() };
    if (this.passing) this.armedDuringPass = Math.min(this.armedDuringPass, when);
    this.arm(when);
  }

  private arm(at: number): void {
    if (at >= this.timerAt || this.stopped) return;
    this.set(at);
  }

  private replace(at: number | null): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = Number.POSITIVE_INFINITY;
    if (at !== null && !this.stopped) this.set(at);
  }

  private set(at: number): void {
    clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.timerAt = Number.POSITIVE_INFINITY;
        if (at > Date.now()) this.set(at);
        else void this.onTimer();
      },
      Math.min(MAX_TIMER_MS, Math.max(0, at - Date.now())),
    );
  }

  private async onTimer(): Promise<void> {
    if (this.stopped) return;
    if (!this.leader) {
      const acquired = await this.tryAcquire();
      // Someone else holds the lock, so a leader is alive. Look again a little later in case it
      // dies before passing, but only a few times: a live leader with nothing to do stays
      // silent, and so must we (new work re-arms the watchdog).
      if (!acquired && this.client && ++this.failedTries < 3) this.arm(Date.now() + this.o.leaseMs);
      return;
    }
    await this.pass();
  }

  private async tryAcquire(): Promise<boolean> {
    const client = this.client;
    if (!client || this.o.eligible === false) return false;
    try {
      this.o.db.counter.add('leader');
      const r = await client.query<{ acquired: boolean }>(this.o.q.tryLeaderLock, [this.key]);
      if (r.rows[0]?.acquired && this.client === client) {
        this.leader = true;
        this.failedTries = 0;
        this.o.events.emit('leader:elected', { workerId: this.o.workerId });
        // Catch up at once: a previous leader may have died with work outstanding.
        this.replace(Date.now());
        return true;
      }
    } catch (err) {
      this.o.events.emit('error', { error: err as Error, context: 'leader election' });
    }
    return false;
  }

  /** Runs one pass now (leader only). Exposed for tests and operators. */
  async pass(): Promise<PassResult | null> {
    if (!this.leader || !this.client) return null;
    if (this.passing) {
      await this.passing;
      return this.pass();
    }
    const client = this.client;
    let result: PassResult | null = null;
    this.armedDuringPass = Number.POSITIVE_INFINITY;
    this.passing = (async () => {
      try {
        this.o.db.counter.add('rescue');
        const r = await client.query(this.o.q.leaderPass, [
          this.o.batchSize ?? 1_000,
          this.o.leaseMs,
          this.grace,
          this.duePasses < 3,
        ]);
        const row = r.rows[0] as {
          rescued: number;
          failed: number;
          dead_lettered: number;
          deleted: number;
          next_pass_ms: number | null;
          due: boolean;
          active: boolean;
        };
        // Due jobs that stay unclaimed pass after pass, with nothing active: nobody works
        // their queue. Stop looking after three passes; new work or a claim restarts it.
        this.duePasses = row.due && !row.active && row.rescued === 0 ? this.duePasses + 1 : 0;
        result = {
          rescued: row.rescued,
          failed: row.failed,
          deadLettered: row.dead_lettered,
          deleted: row.deleted,
          nextPassAt: row.next_pass_ms,
        };
        this.totals.passes++;
        this.totals.rescued += row.rescued;
        this.totals.failed += row.failed;
        this.totals.deadLettered += row.dead_lettered;
        this.totals.deleted += row.deleted;
        if (row.rescued + row.failed > 0) {
          this.o.events.emit('jobs:rescued', { rescued: row.rescued, failed: row.failed });
        }
        if (row.deleted > 0) this.o.events.emit('jobs:deleted', { count: row.deleted });
        this.replace(row.next_pass_ms === null ? null : Math.max(row.next_pass_ms, Date.now()));
        // Work announced during the pass, or just before it, may be newer than its snapshot.
        // Followers keep such expectations too (see onMessage), so both sides stay in step.
        if (Number.isFinite(this.armedDuringPass)) this.arm(this.armedDuringPass);
        if (Date.now() - this.lastExpectation.receivedAt < 1_000) this.arm(this.lastExpectation.at);
      } catch (err) {
        this.o.events.emit('error', { error: err as Error, context: 'leader pass' });
        if (this.leader) this.arm(Date.now() + 1_000);
      }
    })();
    try {
      await this.passing;
    } finally {
      this.passing = undefined;
    }
    return result;
  }

  /** Stops; a leader frees the lock and tells followers to elect at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.replace(null);
    if (this.passing) await this.passing.catch(() => {});
    const client = this.client;
    if (this.leader && client) {
      this.leader = false;
      try {
        this.o.db.counter.add('leader');
        await client.query(this.o.q.leaderResign, [this.key, 'l|resign']);
      } catch {
        // The session is closing anyway; the lock goes with it.
      }
    }
  }
}
