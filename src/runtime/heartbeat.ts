/**
 * One statement renews every lease this process holds, about every third of the shortest lease,
 * and only while it holds any. A job missing from the answer lost its lease (rescued after an
 * expiry, or cancelled): its handler's signal is aborted.
 */
import type { Database } from '../db/database.js';
import type { HarkEventEmitter } from '../events.js';
import type { Queries } from '../sql/queries.js';

interface Lease {
  id: string;
  token: string;
  leaseMs: number;
  onLost: () => void;
}

export class Heartbeat {
  private readonly leases = new Map<string, Lease>();
  private timer: NodeJS.Timeout | undefined;
  private beating = false;
  /** When the armed beat should fire, to measure how late the event loop let it run. */
  private dueAt = 0;
  private intervalMs = 0;

  constructor(
    private readonly db: Database,
    private readonly q: Queries,
    private readonly events: HarkEventEmitter,
  ) {}

  /** Leases are keyed by (id, token): one process may hold two attempts of a job at once. */
  track(id: string, token: string, leaseMs: number, onLost: () => void): void {
    this.leases.set(`${id}|${token}`, { id, token, leaseMs, onLost });
    if (!this.timer) this.arm();
  }

  untrack(id: string, token: string): void {
    this.leases.delete(`${id}|${token}`);
    if (this.leases.size === 0) this.disarm();
  }

  /** The job was cancelled elsewhere: abort its attempts now, without waiting for a beat. */
  lose(id: string): void {
    for (const [key, lease] of this.leases) {
      if (lease.id !== id) continue;
      this.leases.delete(key);
      lease.onLost();
    }
  }

  get size(): number {
    return this.leases.size;
  }

  stop(): void {
    this.disarm();
    this.leases.clear();
  }

  private arm(): void {
    let shortest = Number.POSITIVE_INFINITY;
    for (const l of this.leases.values()) shortest = Math.min(shortest, l.leaseMs);
    if (!Number.isFinite(shortest)) return;
    this.intervalMs = Math.max(250, Math.floor(shortest / 3));
    this.dueAt = Date.now() + this.intervalMs;
    this.timer = setTimeout(() => {
      // A beat that fires far too late means a handler blocked the event loop: leases are at
      // risk (a lease outlives about two missed beats). Say so loudly.
      this.timer = undefined;
      this.reportLate();
      void this.beat();
    }, this.intervalMs);
  }

  /** Emits worker:event-loop-blocked when the armed beat is more than an interval late. */
  private reportLate(): void {
    const lateMs = Date.now() - this.dueAt;
    if (lateMs > this.intervalMs) {
      this.events.emit('worker:event-loop-blocked', { lateMs, leaseMs: this.intervalMs * 3 });
    }
  }

  private disarm(): void {
    // A beat cancelled after it was already overdue still tells of a blocked event loop.
    if (this.timer) this.reportLate();
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Renews all leases now. Exposed for tests. */
  async beat(): Promise<void> {
    this.timer = undefined;
    if (this.beating || this.leases.size === 0) return;
    this.beating = true;
    const sent = [...this.leases.entries()];
    try {
      const r = await this.db.query<{ id: string; token: string }>('heartbeat', this.q.heartbeat, [
        sent.map(([, l]) => l.id),
        sent.map(([, l]) => l.token),
      ]);
      const kept = new Set(r.rows.map((row) => `${row.id}|${row.token}`));
      for (const [key, lease] of sent) {
        // Only leases still held: an attempt may have settled while the beat was in flight.
        if (!kept.has(key) && this.leases.get(key) === lease) {
          this.leases.delete(key);
          lease.onLost();
        }
      }
    } catch (err) {
      this.events.emit('error', { error: err as Error, context: 'heartbeat' });
    } finally {
      this.beating = false;
      if (this.leases.size > 0 && !this.timer) this.arm();
    }
  }
}
