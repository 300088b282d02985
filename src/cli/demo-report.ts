/** How the demo shows itself: a progress line while it runs, tables when it is done. */
import type { QueueTally, Tracker } from './demo-workload.js';

/** The p-th percentile (0-100) of `values`, nearest rank; undefined when empty. */
export function percentile(values: readonly number[], p: number): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1];
}

export function formatMs(ms: number | undefined): string {
  if (ms === undefined) return '-';
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  return `${Math.round(ms)} ms`;
}

/** Columns padded to their widest cell; `right` marks right-aligned columns. */
export function table(rows: readonly (readonly string[])[], right: readonly boolean[]): string[] {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length);
    });
  }
  return rows.map((row) =>
    row
      .map((cell, i) => (right[i] ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd(),
  );
}

/** "emails 31/40 (2 retries)": jobs ended / jobs sent so far, per queue. */
export function progressText(tallies: readonly QueueTally[], elapsedMs: number): string {
  const parts = tallies.map((t) => {
    const notes: string[] = [];
    if (t.retries > 0) notes.push(`${t.retries} ${t.retries === 1 ? 'retry' : 'retries'}`);
    if (t.failed > 0) notes.push(`${t.failed} failed`);
    const ended = t.completed + t.failed;
    return `${t.queue} ${ended}/${t.sent}${notes.length > 0 ? ` (${notes.join(', ')})` : ''}`;
  });
  return `[${(elapsedMs / 1000).toFixed(1)} s] ${parts.join(' | ')}`;
}

export interface Progress {
  /** Prints the final state and stops updating. */
  stop(): void;
}

/**
 * On a terminal, one line rewritten in place; otherwise (CI, pipes) a plain line every second.
 */
export function startProgress(tracker: Tracker, out: NodeJS.WriteStream): Progress {
  const live = out.isTTY === true && !process.env['CI'];
  const started = performance.now();
  const render = () => progressText(tracker.tallies(), performance.now() - started);
  let last = '';
  const draw = () => {
    const text = render();
    if (live) {
      const width = Math.max(20, (out.columns || 100) - 1); // 0 on a pty of unknown size
      const shown = text.length > width ? `${text.slice(0, width - 3)}...` : text;
      out.write(`\r\x1b[K${shown}`);
    } else if (text.slice(text.indexOf(']')) !== last) {
      out.write(`${text}\n`);
    }
    last = text.slice(text.indexOf(']'));
  };
  const timer = setInterval(draw, live ? 100 : 1_000);
  let stopped = false;
  return {
    stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      const text = render();
      if (live) out.write(`\r\x1b[K${text}\n`);
      else out.write(`${text}\n`);
    },
  };
}
