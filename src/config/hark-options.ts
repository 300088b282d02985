/** Options of a hark instance, their defaults and their validation. */
import { hostname } from 'node:os';
import { ConfigError } from '../errors.js';
import { checkSchemaName } from '../sql/identifiers.js';
import {
  DEFAULT_FALLBACK_POLL_MS,
  DEFAULT_LEASE_MS,
  DEFAULT_MAX_PAYLOAD_BYTES,
  DEFAULT_POOL_MAX,
  DEFAULT_SCHEMA,
  DEFAULT_SHUTDOWN_TIMEOUT_MS,
} from './options.js';
import { type Spec, validateOptions } from './validate.js';

export type MigrateMode = 'auto' | 'verify' | 'off';

export interface HarkOptions {
  /** PostgreSQL URL for queries. @default process.env.DATABASE_URL */
  connectionString?: string;
  /**
   * A direct (session) URL for LISTEN and the leader lock, when `connectionString` goes through
   * a transaction pooler. @default connectionString
   */
  listenConnectionString?: string;
  /** Schema holding hark's tables. @default 'hark' */
  schema?: string;
  /**
   * `auto` applies pending migrations at start; `verify` refuses to start on a schema of another
   * version; `off` checks nothing. @default 'verify' when NODE_ENV is 'production', else 'auto'
   */
  migrate?: MigrateMode;
  /** Pooled connections. @default 10 */
  poolMax?: number;
  /** Names this process in job rows and logs. @default `<host>:<pid>:<random>` */
  workerId?: string;
  /** Lease for jobs whose queue and send set none. @default 30000 */
  leaseMs?: number;
  /** Poll interval while the listener is down (only then). @default 2000 */
  fallbackPollMs?: number;
  /** Largest payload accepted, in bytes of JSON. @default 1048576 */
  maxPayloadBytes?: number;
  /** How long stop() lets active jobs finish. @default 10000 */
  shutdownTimeoutMs?: number;
  /** Whether this process may become the cluster's leader. @default true */
  leaderEligible?: boolean;
  /**
   * How a claim commits. `async`: on two connections of their own with
   * `synchronous_commit=off`, so a claim does not wait for its WAL flush (a claim lost in a
   * server crash leaves its jobs waiting, to be claimed again: at-least-once, as always).
   * `sync`: on the pool like every other statement. Sends, completions and failures are
   * always durable. @default 'async', or 'sync' when `listenConnectionString` is set (a
   * transaction pooler refuses the startup option)
   */
  claimCommit?: 'async' | 'sync';
}

const spec: Spec = {
  connectionString: { kind: 'string', describe: 'a postgres:// URL' },
  listenConnectionString: { kind: 'string', describe: 'a postgres:// URL' },
  schema: { kind: 'any' },
  migrate: { kind: 'enum', values: ['auto', 'verify', 'off'] },
  poolMax: { kind: 'integer', min: 1, max: 1_000 },
  workerId: { kind: 'string', pattern: /^.{1,200}$/, describe: 'a string of 1 to 200 characters' },
  leaseMs: { kind: 'integer', min: 1_000, max: 2_147_483_647 },
  fallbackPollMs: { kind: 'integer', min: 100, max: 3_600_000 },
  maxPayloadBytes: { kind: 'integer', min: 16, max: 256 * 1_048_576 },
  shutdownTimeoutMs: { kind: 'integer', min: 0, max: 86_400_000 },
  leaderEligible: { kind: 'boolean' },
  claimCommit: { kind: 'enum', values: ['async', 'sync'] },
};

export type ResolvedHarkOptions = Required<Omit<HarkOptions, 'listenConnectionString'>> & {
  listenConnectionString: string;
};

export function resolveHarkOptions(options: HarkOptions | undefined): ResolvedHarkOptions {
  const o = validateOptions('new Hark()', spec, options);
  const connectionString = o.connectionString ?? process.env.DATABASE_URL;
  if (!connectionString) {
    throw new ConfigError(
      'new Hark(): expected `connectionString` (or the DATABASE_URL environment variable) to be a postgres:// URL, got nothing. ' +
        'For a local database with no setup, run `npm run demo` or use startEmbeddedPostgres().',
    );
  }
  if (!/^postgres(ql)?:\/\//.test(connectionString)) {
    throw new ConfigError(
      `new Hark(): expected \`connectionString\` to be a postgres:// URL, got \`${connectionString.replace(/:[^:@/]*@/, ':***@')}\``,
    );
  }
  const schema = checkSchemaName('new Hark()', o.schema ?? DEFAULT_SCHEMA);
  return {
    connectionString,
    listenConnectionString: o.listenConnectionString ?? connectionString,
    schema,
    migrate: o.migrate ?? (process.env.NODE_ENV === 'production' ? 'verify' : 'auto'),
    poolMax: o.poolMax ?? DEFAULT_POOL_MAX,
    workerId:
      o.workerId ?? `${hostname()}:${process.pid}:${Math.random().toString(36).slice(2, 8)}`,
    leaseMs: o.leaseMs ?? DEFAULT_LEASE_MS,
    fallbackPollMs: o.fallbackPollMs ?? DEFAULT_FALLBACK_POLL_MS,
    maxPayloadBytes: o.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES,
    shutdownTimeoutMs: o.shutdownTimeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS,
    leaderEligible: o.leaderEligible ?? true,
    claimCommit: o.claimCommit ?? (o.listenConnectionString === undefined ? 'async' : 'sync'),
  };
}
