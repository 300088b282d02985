/**
 * Horizontal grouped bar charts as plain SVG, for docs/bench/: one group of bars per system,
 * one bar per series (the median), a whisker from the smallest to the largest run.
 */
import { formatNumber, type Summary } from './results.js';

export interface ChartSeries {
  name: string;
  /** One per category; null when there is no value. */
  values: (Summary | null)[];
}

export interface ChartSpec {
  title: string;
  unit: string;
  digits: number;
  categories: string[];
  series: ChartSeries[];
  /** Printed under the chart. */
  note?: string;
}

const COLORS = ['#3b6ea5', '#e07b39', '#4f9a5a', '#9a5aa0'];
const WIDTH = 760;
const LEFT = 150;
const RIGHT = 150;
const BAR = 16;
const BAR_GAP = 3;
const GROUP_GAP = 14;
const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"';

function xml(text: string): string {
  return text
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;');
}

/** A round step giving about five gridlines up to `max`. */
function tickStep(max: number): number {
  if (max <= 0) return 1;
  const rough = max / 5;
  const base = 10 ** Math.floor(Math.log10(rough));
  for (const m of [1, 2, 2.5, 5, 10]) if (base * m >= rough) return base * m;
  return base * 10;
}

export function barChart(spec: ChartSpec): string {
  const groupHeight = spec.series.length * (BAR + BAR_GAP) - BAR_GAP;
  const top = 58;
  const plotHeight = spec.categories.length * (groupHeight + GROUP_GAP);
  const height = top + plotHeight + 40 + (spec.note ? 18 : 0);
  const plotWidth = WIDTH - LEFT - RIGHT;
  let max = 0;
  for (const s of spec.series)
    for (const v of s.values) if (v) max = Math.max(max, v.max, v.median);
  const step = tickStep(max);
  const scaleMax = max > 0 ? Math.ceil(max / step) * step : 1;
  const x = (v: number) => LEFT + (Math.max(0, v) / scaleMax) * plotWidth;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" ${FONT} font-size="12" role="img">`,
    `<title>${xml(spec.title)}</title>`,
    `<rect width="${WIDTH}" height="${height}" fill="#ffffff"/>`,
    `<text x="12" y="22" font-size="15" font-weight="600" fill="#222">${xml(spec.title)}</text>`,
  );
  // Legend.
  let lx = 12;
  spec.series.forEach((s, i) => {
    out.push(
      `<rect x="${lx}" y="34" width="12" height="12" fill="${COLORS[i % COLORS.length]}"/>`,
      `<text x="${lx + 16}" y="44" fill="#333">${xml(s.name)}</text>`,
    );
    lx += 28 + s.name.length * 6.5;
  });
  out.push(
    `<text x="${WIDTH - 12}" y="44" text-anchor="end" fill="#666">${xml(spec.unit)}; whiskers: min-max of runs</text>`,
  );
  // Gridlines and axis labels.
  for (let v = 0; v <= scaleMax + step / 2; v += step) {
    const gx = x(v).toFixed(1);
    out.push(
      `<line x1="${gx}" y1="${top - 4}" x2="${gx}" y2="${top + plotHeight}" stroke="#e4e4e4"/>`,
      `<text x="${gx}" y="${top + plotHeight + 16}" text-anchor="middle" fill="#666">${formatNumber(v, step < 1 ? 2 : 0)}</text>`,
    );
  }
  spec.categories.forEach((category, c) => {
    const gy = top + c * (groupHeight + GROUP_GAP);
    const weight = category === 'hark' ? ' font-weight="600"' : '';
    out.push(
      `<text x="${LEFT - 8}" y="${(gy + groupHeight / 2 + 4).toFixed(1)}" text-anchor="end" fill="#222"${weight}>${xml(category)}</text>`,
    );
    spec.series.forEach((s, i) => {
      const y = gy + i * (BAR + BAR_GAP);
      const v = s.values[c] ?? null;
      if (v === null) {
        out.push(`<text x="${LEFT + 4}" y="${y + 12}" fill="#999">n/a</text>`);
        return;
      }
      const w = Math.max(1, x(v.median) - LEFT);
      out.push(
        `<rect x="${LEFT}" y="${y}" width="${w.toFixed(1)}" height="${BAR}" fill="${COLORS[i % COLORS.length]}"/>`,
      );
      let labelX = x(v.median);
      if (v.n > 1 && v.max > v.min) {
        const cy = y + BAR / 2;
        const x1 = x(v.min).toFixed(1);
        const x2 = x(v.max).toFixed(1);
        out.push(
          `<line x1="${x1}" y1="${cy}" x2="${x2}" y2="${cy}" stroke="#222" stroke-width="1.2"/>`,
          `<line x1="${x1}" y1="${cy - 4}" x2="${x1}" y2="${cy + 4}" stroke="#222" stroke-width="1.2"/>`,
          `<line x1="${x2}" y1="${cy - 4}" x2="${x2}" y2="${cy + 4}" stroke="#222" stroke-width="1.2"/>`,
        );
        labelX = Math.max(labelX, x(v.max));
      }
      out.push(
        `<text x="${(labelX + 6).toFixed(1)}" y="${y + 12}" fill="#222">${formatNumber(v.median, spec.digits)}</text>`,
      );
    });
  });
  if (spec.note) {
    out.push(`<text x="12" y="${height - 10}" fill="#666">${xml(spec.note)}</text>`);
  }
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
