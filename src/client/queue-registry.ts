/**
 * Queue definitions: policies stored in the database (shared by every process), payload
 * validators kept in this process. Producers read policies through a small cache so a send
 * costs no extra statement; an entry is re-read at most every `ttlMs` while sends use it.
 */
import type { StandardSchemaV1 } from '@standard-schema/spec';
import {
  checkQueueName,
  type JobPolicy,
  type QueueOptions,
  storablePolicy,
  validateQueueOptions,
} from '../config/options.js';
import type { Database } from '../db/database.js';
import { UnknownQueueError } from '../errors.js';
import type { Queries } from '../sql/queries.js';

export interface QueueInfo {
  name: string;
  policy: JobPolicy;
  paused: boolean;
}

interface Entry {
  info: QueueInfo;
  loadedAt: number;
}

export class QueueRegistry {
  private readonly cache = new Map<string, Entry>();
  private readonly validators = new Map<string, StandardSchemaV1>();

  constructor(
    private readonly db: Database,
    private readonly q: Queries,
    private readonly ttlMs = 30_000,
  ) {}

  /** Creates the queue or replaces its policy. Idempotent. */
  async define<P>(name: string, options: QueueOptions<P> = {}): Promise<QueueInfo> {
    const where = `createQueue(${JSON.stringify(name)})`;
    checkQueueName(where, name);
    const o = validateQueueOptions(where, options);
    if (o.deadLetter) {
      if (o.deadLetter === name) {
        throw new UnknownQueueError(`${name} (a queue cannot be its own dead-letter queue)`);
      }
      await this.require([o.deadLetter]);
    }
    const r = await this.db.query('queue', this.q.upsertQueue, [
      name,
      JSON.stringify(storablePolicy(o)),
    ]);
    const row = r.rows[0] as { name: string; policy: JobPolicy; paused: boolean };
    const info = { name: row.name, policy: row.policy, paused: row.paused };
    this.cache.set(name, { info, loadedAt: Date.now() });
    if (o.payloadSchema) this.validators.set(name, o.payloadSchema as StandardSchemaV1);
    else this.validators.delete(name);
    return info;
  }

  validatorFor(name: string): StandardSchemaV1 | undefined {
    return this.validators.get(name);
  }

  /** Policies of the named queues; throws UnknownQueueError for one that does not exist. */
  async require(names: Iterable<string>): Promise<Map<string, QueueInfo>> {
    const now = Date.now();
    const out = new Map<string, QueueInfo>();
    const missing: string[] = [];
    for (const name of new Set(names)) {
      const e = this.cache.get(name);
      if (e && now - e.loadedAt < this.ttlMs) out.set(name, e.info);
      else missing.push(name);
    }
    if (missing.length > 0) {
      const r = await this.db.query('queue', this.q.getQueues, [missing]);
      for (const row of r.rows as { name: string; policy: JobPolicy; paused: boolean }[]) {
        const info = { name: row.name, policy: row.policy, paused: row.paused };
        this.cache.set(row.name, { info, loadedAt: now });
        out.set(row.name, info);
      }
      for (const name of missing) {
        if (!out.has(name)) {
          this.cache.delete(name);
          throw new UnknownQueueError(name);
        }
      }
    }
    return out;
  }
}
