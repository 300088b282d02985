/**
 * The typed event catalogue. Logs, metrics, traces and alerts subscribe to these events; no call
 * site logs or counts by hand. Listed with payloads in docs/events.md.
 */
import { EventEmitter } from 'node:events';

export interface JobRef {
  id: string;
  queue: string;
  attempt: number;
}

export interface HarkEvents {
  'job:start': JobRef & { workerId: string; waitMs: number };
  'job:complete': JobRef & { durationMs: number };
  'job:retry': JobRef & { error: Error; retryInMs: number };
  'job:fail': JobRef & { error: Error; deadLetter: string | null };
  'job:lease-lost': JobRef;
  'job:release': JobRef;
  'jobs:rescued': { rescued: number; failed: number };
  'jobs:deleted': { count: number };
  'listener:connect': { selfTest: 'ok' | 'failed' };
  'listener:disconnect': { error: Error | null };
  'listener:reconnect': { attempt: number; delayMs: number };
  'listener:fallback': { reason: string };
  'leader:elected': { workerId: string };
  'leader:lost': { workerId: string; reason: string };
  'worker:error': { queue: string; error: Error };
  'breaker:open': { error: Error | null };
  'breaker:half-open': Record<string, never>;
  'breaker:closed': Record<string, never>;
  'worker:signal': { signal: string };
  /** The heartbeat ran `lateMs` late: something blocked the event loop; leases are at risk. */
  'worker:event-loop-blocked': { lateMs: number; leaseMs: number };
  error: { error: Error; context: string };
}

type Listener<T> = (payload: T) => void;

/** A typed wrapper over EventEmitter: `on('job:complete', (e) => ...)`. */
export class HarkEventEmitter {
  private readonly emitter = new EventEmitter();

  constructor() {
    this.emitter.setMaxListeners(100);
  }

  /** Whether anyone listens: hot paths skip building events nobody reads. */
  has(event: keyof HarkEvents): boolean {
    return this.emitter.listenerCount(event) > 0;
  }

  on<K extends keyof HarkEvents>(event: K, listener: Listener<HarkEvents[K]>): () => void {
    this.emitter.on(event, listener);
    return () => this.emitter.off(event, listener);
  }

  once<K extends keyof HarkEvents>(event: K, listener: Listener<HarkEvents[K]>): void {
    this.emitter.once(event, listener);
  }

  off<K extends keyof HarkEvents>(event: K, listener: Listener<HarkEvents[K]>): void {
    this.emitter.off(event, listener);
  }

  emit<K extends keyof HarkEvents>(event: K, payload: HarkEvents[K]): void {
    // 'error' with no listener must not throw into hark's internals.
    if (event === 'error' && this.emitter.listenerCount('error') === 0) return;
    try {
      this.emitter.emit(event, payload);
    } catch (err) {
      // A throwing subscriber must never break the engine.
      if (event !== 'error')
        this.emit('error', { error: err as Error, context: `listener of ${event}` });
    }
  }
}
