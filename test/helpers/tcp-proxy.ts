/**
 * A TCP proxy to the test database, for tests that cut, delay or filter the connection, and a
 * port that nothing listens on.
 */
import assert from 'node:assert/strict';
import { createServer, type Socket, connect as tcpConnect } from 'node:net';

/** A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago). */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  assert.ok(address && typeof address === 'object');
  return address.port;
}

export function urlWithPort(baseUrl: string, port: number): string {
  const url = new URL(baseUrl);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  return url.toString();
}

/**
 * How the proxy treats NotificationResponse ('A') messages from the server: `pass` forwards them;
 * `swallow` drops them all, as a transaction pooler that breaks LISTEN would; `lose-first-echo`
 * closes the first connection when its first notification (the self-test echo) arrives, and
 * passes everything on later connections.
 */
export type ProxyMode = 'pass' | 'swallow' | 'lose-first-echo';

export interface Proxy {
  port: number;
  /** Notifications dropped so far. */
  swallowed(): number;
  /** Client connections accepted so far. */
  connections(): number;
  close(): Promise<void>;
}

/** A TCP proxy on 127.0.0.1:`port` to the test database. */
export async function startProxy(
  targetUrl: string,
  port: number,
  { mode = 'pass' }: { mode?: ProxyMode } = {},
): Promise<Proxy> {
  const target = new URL(targetUrl);
  const sockets = new Set<Socket>();
  let swallowed = 0;
  let connections = 0;
  const server = createServer((client) => {
    connections++;
    const first = connections === 1;
    const upstream = tcpConnect(Number(target.port || 5432), target.hostname);
    sockets.add(client);
    sockets.add(upstream);
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    client.pipe(upstream);
    if (mode === 'pass' || (mode === 'lose-first-echo' && !first)) {
      upstream.pipe(client);
      return;
    }
    // Server messages: a type byte, then an int32 length that counts itself (no SSL here).
    let pending = Buffer.alloc(0);
    let dying = false;
    upstream.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      const keep: Buffer[] = [];
      let at = 0;
      while (pending.length - at >= 5) {
        const type = pending[at];
        const size = 1 + pending.readInt32BE(at + 1);
        if (pending.length - at < size) break;
        if (type === 0x41) {
          swallowed++;
          dying = mode === 'lose-first-echo';
        } else keep.push(pending.subarray(at, at + size));
        at += size;
        if (dying) {
          // The echo is gone, and now the connection dies while the client waits for it.
          client.write(Buffer.concat(keep), () => close());
          return;
        }
      }
      pending = pending.subarray(at);
      if (keep.length > 0) client.write(Buffer.concat(keep));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  return {
    port,
    swallowed: () => swallowed,
    connections: () => connections,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
