/**
 * Just enough of the Redis protocol (RESP2) to ask whether a Redis answers, its version, and
 * its per-command counters (INFO commandstats), without a client library.
 */
import net from 'node:net';

export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';

type Reply = string | number | null | Reply[];

/** Parses one reply from `buf` at `at`; null when more bytes are needed. */
function parse(buf: Buffer, at: number): { value: Reply; end: number } | null {
  const eol = buf.indexOf('\r\n', at);
  if (eol < 0) return null;
  const kind = String.fromCharCode(buf[at]!);
  const line = buf.toString('utf8', at + 1, eol);
  switch (kind) {
    case '+':
      return { value: line, end: eol + 2 };
    case '-':
      throw new Error(`redis: ${line}`);
    case ':':
      return { value: Number(line), end: eol + 2 };
    case '$': {
      const length = Number(line);
      if (length < 0) return { value: null, end: eol + 2 };
      if (buf.length < eol + 2 + length + 2) return null;
      return { value: buf.toString('utf8', eol + 2, eol + 2 + length), end: eol + 4 + length };
    }
    case '*': {
      const count = Number(line);
      if (count < 0) return { value: null, end: eol + 2 };
      const items: Reply[] = [];
      let end = eol + 2;
      for (let i = 0; i < count; i++) {
        const item = parse(buf, end);
        if (item === null) return null;
        items.push(item.value);
        end = item.end;
      }
      return { value: items, end };
    }
    default:
      throw new Error(`redis: unexpected reply ${JSON.stringify(buf.toString('utf8', at, eol))}`);
  }
}

/** Runs one command on a new connection (the suite asks rarely). */
export function redisCommand(url: string, args: string[], timeoutMs = 2_000): Promise<Reply> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: u.hostname || '127.0.0.1', port: Number(u.port || 6379) });
    let buf = Buffer.alloc(0);
    const done = (error: Error | null, value?: Reply) => {
      socket.destroy();
      if (error) reject(error);
      else resolve(value ?? null);
    };
    socket.setTimeout(timeoutMs, () => done(new Error(`redis: no answer in ${timeoutMs} ms`)));
    socket.on('error', (error) => done(error));
    socket.on('connect', () => {
      let command = `*${args.length}\r\n`;
      for (const a of args) command += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
      socket.write(command);
    });
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      try {
        const reply = parse(buf, 0);
        if (reply !== null) done(null, reply.value);
      } catch (error) {
        done(error as Error);
      }
    });
  });
}

/** The server's version when a Redis answers PING at `url`; null otherwise. */
export async function redisVersion(url: string): Promise<string | null> {
  try {
    if ((await redisCommand(url, ['PING'], 500)) !== 'PONG') return null;
    const info = String(await redisCommand(url, ['INFO', 'server']));
    return /redis_version:(\S+)/.exec(info)?.[1] ?? 'unknown';
  } catch {
    return null;
  }
}

export interface CommandStat {
  calls: number;
  usec: number;
}

/** INFO commandstats: calls and total microseconds per command, cumulative since start. */
export async function commandStats(url: string): Promise<Map<string, CommandStat>> {
  const text = String(await redisCommand(url, ['INFO', 'commandstats']));
  const stats = new Map<string, CommandStat>();
  for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/gm)) {
    stats.set(m[1]!, { calls: Number(m[2]), usec: Number(m[3]) });
  }
  return stats;
}

/** Commands counted between two snapshots, without the INFO calls that took them. */
export function commandDelta(
  before: Map<string, CommandStat>,
  after: Map<string, CommandStat>,
): { calls: number; top: { command: string; calls: number; meanMs: number } | null } {
  let calls = 0;
  let top: { command: string; calls: number; meanMs: number } | null = null;
  for (const [command, a] of after) {
    if (command === 'info') continue;
    const b = before.get(command) ?? { calls: 0, usec: 0 };
    const n = a.calls - b.calls;
    if (n <= 0) continue;
    calls += n;
    if (top === null || n > top.calls) {
      top = { command, calls: n, meanMs: (a.usec - b.usec) / n / 1000 };
    }
  }
  return { calls, top };
}

/** Clients connected to the Redis besides the one asking (others skew commandstats). */
export async function otherRedisClients(url: string): Promise<number> {
  const list = String(await redisCommand(url, ['CLIENT', 'LIST']));
  return Math.max(0, list.split('\n').filter((l) => l.trim() !== '').length - 1);
}
