/**
 * Counts every statement hark issues, by purpose. This is how the idle budget (zero statements
 * per idle worker) and the per-job budget are proven in tests and benchmarks.
 */
export type StatementPurpose =
  | 'migrate'
  | 'queue'
  | 'send'
  | 'claim'
  | 'complete'
  | 'fail'
  | 'release'
  | 'heartbeat'
  | 'next-run-at'
  | 'rescue'
  | 'leader'
  | 'listen'
  | 'notify'
  | 'wait'
  | 'admin'
  | 'stats'
  | 'probe';

export class StatementCounter {
  private readonly counts = new Map<StatementPurpose, number>();
  private total = 0;

  add(purpose: StatementPurpose): void {
    this.counts.set(purpose, (this.counts.get(purpose) ?? 0) + 1);
    this.total++;
  }

  /** Total statements issued so far. */
  get count(): number {
    return this.total;
  }

  /** A copy of the counts per purpose. */
  snapshot(): Record<string, number> {
    return Object.fromEntries(this.counts);
  }
}
