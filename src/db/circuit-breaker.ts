/**
 * Circuit breaker for the database. After `threshold` consecutive connection-class failures it
 * opens: workers stop fetching (no statement storm against a database that is down), and one
 * probe (`SELECT 1`) runs with capped, jittered backoff. When a probe answers the breaker goes
 * half-open; the next real statement that succeeds closes it, and waiting workers are woken.
 */
export type BreakerState = 'closed' | 'open' | 'half-open';

export interface CircuitBreakerOptions {
  /** Consecutive failures that open the breaker. @default 5 */
  threshold?: number;
  /** First probe delay. @default 500 */
  probeMinMs?: number;
  /** Longest probe delay. @default 30_000 */
  probeMaxMs?: number;
  /** Runs the probe; resolves when the database answers. */
  probe: () => Promise<void>;
  onChange: (state: BreakerState, error: Error | null) => void;
}

/** SQLSTATE classes and codes that mean "the database is not reachable", not "bad statement". */
const CONNECTION_CODES = new Set([
  '57P01', // admin_shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now
  '53300', // too_many_connections
  '08000',
  '08003',
  '08006',
  '08001',
  '08004',
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EHOSTUNREACH',
]);

export function isConnectionError(err: unknown): boolean {
  if (!err || typeof err !== 'object') return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && (CONNECTION_CODES.has(code) || code.startsWith('08')))
    return true;
  const message = String((err as { message?: unknown }).message ?? '');
  return /Connection terminated|connection error|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(
    message,
  );
}

export class CircuitBreaker {
  private stateValue: BreakerState = 'closed';
  private failures = 0;
  private probes = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly waiters = new Set<() => void>();
  private stopped = false;

  constructor(private readonly o: CircuitBreakerOptions) {}

  get state(): BreakerState {
    return this.stateValue;
  }

  /** True while fetching should pause. */
  get isOpen(): boolean {
    return this.stateValue === 'open';
  }

  success(): void {
    this.failures = 0;
    if (this.stateValue !== 'closed') this.set('closed', null);
  }

  failure(err: unknown): void {
    if (!isConnectionError(err)) return;
    this.failures++;
    if (
      this.stateValue === 'half-open' ||
      (this.stateValue === 'closed' && this.failures >= (this.o.threshold ?? 5))
    ) {
      this.set('open', err as Error);
      this.scheduleProbe();
    }
  }

  /** Calls `fn` once the breaker is not open (at once when it is not). */
  whenClosed(fn: () => void): () => void {
    if (!this.isOpen) {
      fn();
      return () => {};
    }
    this.waiters.add(fn);
    return () => this.waiters.delete(fn);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.waiters.clear();
  }

  private set(state: BreakerState, error: Error | null): void {
    this.stateValue = state;
    if (state !== 'open') this.probes = 0;
    this.o.onChange(state, error);
    if (state !== 'open')
      for (const w of [...this.waiters]) {
        this.waiters.delete(w);
        w();
      }
  }

  private scheduleProbe(): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    const min = this.o.probeMinMs ?? 500;
    const cap = Math.min(this.o.probeMaxMs ?? 30_000, min * 2 ** Math.min(this.probes, 20));
    const delay = Math.round(cap / 2 + (Math.random() * cap) / 2);
    this.probes++;
    this.timer = setTimeout(() => {
      this.o.probe().then(
        () => {
          if (this.stateValue === 'open' && !this.stopped) this.set('half-open', null);
        },
        () => this.scheduleProbe(),
      );
    }, delay);
  }
}
