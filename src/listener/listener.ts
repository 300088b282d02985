/**
 * One dedicated LISTEN connection per process. It reconnects by itself with capped, jittered
 * backoff, tests itself on every connect (it NOTIFYs its own channel and expects the echo, so a
 * transaction pooler that swallows LISTEN is reported rather than trusted), and exposes its
 * state. The leader lock lives on this session too (see services/leader.ts).
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { Database } from '../db/database.js';
import type { HarkEventEmitter } from '../events.js';
import { quoteIdent } from '../sql/identifiers.js';

export type ListenerState = 'idle' | 'connecting' | 'listening' | 'disconnected' | 'stopped';

export interface ListenerOptions {
  db: Database;
  connectionString: string;
  channel: string;
  events: HarkEventEmitter;
  /** @default 100 */
  reconnectMinMs?: number;
  /** @default 10_000 */
  reconnectMaxMs?: number;
  /** @default 1_000 */
  selfTestTimeoutMs?: number;
  /** Runs on every new session before it counts as connected (e.g. leader election). */
  onSession?: (client: pg.Client) => Promise<void>;
}

export class Listener {
  private client: pg.Client | undefined;
  private stateValue: ListenerState = 'idle';
  private reconnectTimer: NodeJS.Timeout | undefined;
  private attempts = 0;
  private readonly handlers = new Set<(payload: string) => void>();
  private readonly stateHandlers = new Set<(state: ListenerState) => void>();
  /** The self-test of the current attempt, if one is waiting for its echo. */
  private pendingEcho:
    | { client: pg.Client; token: string; resolve: (ok: boolean) => void }
    | undefined;
  /** True when the last self-test failed: LISTEN is not trustworthy on this connection. */
  selfTestFailed = false;
  lastError: Error | undefined;

  constructor(private readonly options: ListenerOptions) {}

  get state(): ListenerState {
    return this.stateValue;
  }

  /**
   * The server process id of the listener's session (for operators and chaos tests). Through a
   * pooler this is the pooler's own id, not a server pid.
   */
  get backendPid(): number | null {
    const client = this.client as (pg.Client & { processID?: number }) | undefined;
    return this.stateValue === 'listening' ? (client?.processID ?? null) : null;
  }

  /** True only when notifications can be trusted (connected and self-test passed). */
  get healthy(): boolean {
    return this.stateValue === 'listening' && !this.selfTestFailed;
  }

  onMessage(handler: (payload: string) => void): () => void {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }

  onState(handler: (state: ListenerState) => void): () => void {
    this.stateHandlers.add(handler);
    return () => this.stateHandlers.delete(handler);
  }

  /** Connects once; on failure keeps retrying in the background. Never throws. */
  async start(): Promise<void> {
    if (this.stateValue !== 'idle') return;
    await this.connect();
  }

  async stop(): Promise<void> {
    this.setState('stopped');
    clearTimeout(this.reconnectTimer);
    const client = this.client;
    this.client = undefined;
    if (client) await client.end().catch(() => {});
  }

  /** Forces a reconnect, as if the connection had dropped (tests and chaos). */
  dropConnection(): void {
    this.client?.emit('error', new Error('connection dropped on request'));
  }

  private setState(state: ListenerState): void {
    if (this.stateValue === state || this.stateValue === 'stopped') return;
    this.stateValue = state;
    for (const h of this.stateHandlers) h(state);
  }

  private async connect(): Promise<void> {
    if (this.stateValue === 'stopped') return;
    this.setState('connecting');
    const { db, connectionString, channel } = this.options;
    const client = db.createClient(connectionString);
    this.client = client;
    let failed = false;
    const onLost = (err: Error | null) => {
      if (failed || this.client !== client) return;
      failed = true;
      this.client = undefined;
      if (this.pendingEcho?.client === client) this.pendingEcho.resolve(false);
      this.lastError = err ?? undefined;
      client.end().catch(() => {});
      if (this.stateValue === 'stopped') return;
      this.setState('disconnected');
      this.options.events.emit('listener:disconnect', { error: err });
      this.scheduleReconnect();
    };
    client.on('error', (err) => onLost(err));
    client.on('end', () => onLost(new Error('listener connection ended')));
    client.on('notification', (msg) => {
      if (msg.channel !== channel || msg.payload === undefined) return;
      const payload = msg.payload;
      if (payload.startsWith('s|')) {
        if (this.pendingEcho?.client === client && payload === `s|${this.pendingEcho.token}`)
          this.pendingEcho.resolve(true);
        return;
      }
      for (const h of this.handlers) h(payload);
    });
    try {
      await client.connect();
      db.counter.add('listen');
      await client.query(`LISTEN ${quoteIdent(channel)}`);
      const ok = await this.selfTest(client);
      // This attempt may have been lost (and replaced) while it waited for its echo: then it
      // must not touch the state of the session that replaced it.
      if (this.client !== client || (this.stateValue as ListenerState) === 'stopped') return;
      this.recordSelfTest(ok);
      if (this.options.onSession) await this.options.onSession(client);
      if (this.client !== client || (this.stateValue as ListenerState) === 'stopped') return;
      this.attempts = 0;
      this.lastError = undefined;
      this.setState('listening');
      this.options.events.emit('listener:connect', {
        selfTest: this.selfTestFailed ? 'failed' : 'ok',
      });
    } catch (err) {
      onLost(err as Error);
    }
  }

  /** NOTIFYs its own channel and waits for the echo; false when it never comes. */
  private async selfTest(client: pg.Client): Promise<boolean> {
    const token = randomUUID();
    const timeoutMs = this.options.selfTestTimeoutMs ?? 1_000;
    const echoed = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.pendingEcho = {
        client,
        token,
        resolve: (ok) => {
          clearTimeout(timer);
          resolve(ok);
        },
      };
    });
    // The NOTIFY comes from another session (the pool), so the echo has to cross sessions, as
    // every real wake-up does. Sent on the listener's own session, it would come back even
    // through a transaction pooler that reuses one server connection, and prove nothing.
    await this.options.db.query('listen', 'SELECT pg_notify($1, $2)', [
      this.options.channel,
      `s|${token}`,
    ]);
    const ok = await echoed;
    if (this.pendingEcho?.client === client) this.pendingEcho = undefined;
    return ok;
  }

  private recordSelfTest(ok: boolean): void {
    const wasFailed = this.selfTestFailed;
    this.selfTestFailed = !ok;
    if (!ok && !wasFailed) {
      const timeoutMs = this.options.selfTestTimeoutMs ?? 1_000;
      this.options.events.emit('listener:fallback', {
        reason:
          `LISTEN self-test failed: a NOTIFY on "${this.options.channel}" did not come back within ${timeoutMs} ms. ` +
          'A transaction pooler (PgBouncer, Supavisor) swallows LISTEN: set `listenConnectionString` ' +
          'to a direct (session) connection. Falling back to polling; this process will not take ' +
          'part in leader election (lease rescue and retention need a leader with a direct session).',
      });
    }
  }

  private scheduleReconnect(): void {
    clearTimeout(this.reconnectTimer);
    const min = this.options.reconnectMinMs ?? 100;
    const max = this.options.reconnectMaxMs ?? 10_000;
    const cap = Math.min(max, min * 2 ** Math.min(this.attempts, 20));
    const delayMs = Math.round(cap / 2 + (Math.random() * cap) / 2);
    this.attempts++;
    this.options.events.emit('listener:reconnect', { attempt: this.attempts, delayMs });
    this.reconnectTimer = setTimeout(() => void this.connect(), delayMs);
  }
}
