/** Small statistics and formatting helpers for benchmark output. */

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** 12345.6 -> "12,346". */
export function formatCount(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** Rates from (jobs, ms) samples: median, min and max jobs per second. */
export function rates(jobs: number, samplesMs: readonly number[]) {
  const perSecond = samplesMs.map((ms) => (jobs * 1000) / ms);
  return {
    median: median(perSecond),
    min: Math.min(...perSecond),
    max: Math.max(...perSecond),
    medianMs: median(samplesMs),
  };
}

/** Columns padded to their widest cell (shared with the demo's report). */
export { table } from '../../src/cli/demo-report.js';
