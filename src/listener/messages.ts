/**
 * The messages hark sends on its channel, and their one parser. Queue names cannot contain `|`
 * (see QUEUE_NAME_PATTERN), so `|` separates fields.
 *
 * - `q|<queue>|<due ms>|<lease ms>`: jobs are waiting; due 0 means now, otherwise the earliest
 *   run_at (epoch ms, rounded up); the shortest lease among them.
 * - `d|<id>`: a waited-for job ended.
 * - `x|<id>`: an active job was cancelled; its worker aborts it.
 * - `p|<ms>`: the leader passed; its next pass is due at <ms> (empty: none planned).
 * - `l|resign`: the leader stepped down.
 * - `c|<lease ms>`: a worker claimed jobs the leader was not told about (its start-up catch-up,
 *   or a poll while its listener was down): rescue may be needed within that lease.
 * - `s|<token>`: the listener's self-test echo (handled inside the listener).
 */
export type Message =
  | {
      kind: 'jobs';
      queue: string;
      dueAt: number;
      leaseMs: number | null;
      /** The smallest claim key of the announced jobs (inserts only); null: unknown. */
      from: ClaimStart | null;
      /** The earliest future run_at among them (epoch ms), even when others are due now. */
      nextAt: number | null;
    }
  | { kind: 'finished'; id: string }
  | { kind: 'cancelled'; id: string }
  | { kind: 'pass'; nextPassAt: number | null }
  | { kind: 'resign' }
  | { kind: 'claimed'; leaseMs: number }
  | { kind: 'unknown'; payload: string };

/** Where a claim may start: jobs with a claim key (-priority, run_at µs, id) above it. */
export interface ClaimStart {
  negPriority: number;
  runAtUs: number;
}

export function parseMessage(payload: string): Message {
  const [tag, a = '', b = '', c = '', d = '', e = ''] = payload.split('|');
  switch (tag) {
    case 'q': {
      const due = Number(b);
      const lease = c === '' ? null : Number(c);
      const [p = '', r = ''] = d.split(':');
      const negPriority = Number(p);
      const runAtUs = Number(r);
      return {
        kind: 'jobs',
        queue: a,
        dueAt: Number.isFinite(due) ? due : 0,
        leaseMs: lease !== null && Number.isFinite(lease) ? lease : null,
        from:
          d !== '' && Number.isSafeInteger(negPriority) && Number.isSafeInteger(runAtUs)
            ? { negPriority, runAtUs }
            : null,
        nextAt: e !== '' && Number.isFinite(Number(e)) ? Number(e) : null,
      };
    }
    case 'd':
      return { kind: 'finished', id: a };
    case 'x':
      return { kind: 'cancelled', id: a };
    case 'p':
      return { kind: 'pass', nextPassAt: a === '' ? null : Number(a) };
    case 'c':
      return { kind: 'claimed', leaseMs: Number(a) || 0 };
    case 'l':
      return a === 'resign' ? { kind: 'resign' } : { kind: 'unknown', payload };
    default:
      return { kind: 'unknown', payload };
  }
}
