/**
 * Writers of benchmark results: markdown tables, JSON files and a latency-percentile chart in
 * plain SVG (log-scaled horizontal bars; no dependencies).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

/** A markdown table: header cells and rows of cells (already formatted). */
export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]) {
  const line = (cells: readonly string[]) => `| ${cells.map(escapeCell).join(' | ')} |`;
  const rule = `|${header.map(() => '---').join('|')}|`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

function escapeCell(cell: string): string {
  return cell.replaceAll('|', '\\|').replaceAll('\n', ' ');
}

/** Formats a number for tables: thousands with "k", fixed digits below. */
export function fmtCount(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  if (v >= 100_000) return `${(v / 1000).toFixed(0)}k`;
  if (v >= 10_000) return `${(v / 1000).toFixed(1)}k`;
  return v.toFixed(0);
}

/** Formats microseconds: one decimal below 100, none above, thousands separated. */
export function fmtUs(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  if (v < 100) return v.toFixed(1);
  return Math.round(v).toLocaleString('en-US');
}

/** Formats a ratio as "1.23×" ("—" when not defined). */
export function fmtRatio(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  return `${v.toFixed(2)}×`;
}

/** Writes `text` to `path`, creating its directory. */
export async function writeText(path: string, text: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, text.endsWith('\n') ? text : `${text}\n`);
}

/** Writes `value` as indented JSON. */
export function writeJson(path: string, value: unknown): Promise<void> {
  return writeText(path, JSON.stringify(value, null, 2));
}

/** One bar group of the chart: a label and its percentiles in microseconds. */
export interface ChartRow {
  label: string;
  p50Us: number;
  p99Us: number;
  p999Us: number;
}

/** A panel of the chart (e.g. one workload) with its rows. */
export interface ChartPanel {
  title: string;
  rows: ChartRow[];
}

const SERIES = [
  { key: 'p50Us', name: 'p50', color: '#4e79a7' },
  { key: 'p99Us', name: 'p99', color: '#f28e2b' },
  { key: 'p999Us', name: 'p99.9', color: '#e15759' },
] as const;

const W = 900;
const LABEL_W = 230;
const BAR_H = 6;
const ROW_H = SERIES.length * BAR_H + 8;
const PANEL_HEAD = 26;
const TOP = 50;

function esc(text: string): string {
  return text.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
}

/** Log10 axis bounds (powers of ten) covering every positive value. */
export function logBounds(values: number[]): { lo: number; hi: number } {
  const pos = values.filter((v) => v > 0 && Number.isFinite(v));
  if (pos.length === 0) return { lo: 0, hi: 1 };
  const lo = Math.floor(Math.log10(Math.min(...pos)));
  const hi = Math.ceil(Math.log10(Math.max(...pos)));
  return { lo, hi: hi > lo ? hi : lo + 1 };
}

/** Renders panels of log-scaled horizontal bars (p50 / p99 / p99.9 per row) as an SVG file. */
export function latencyChartSvg(title: string, panels: ChartPanel[]): string {
  const all = panels.flatMap((p) => p.rows.flatMap((r) => [r.p50Us, r.p99Us, r.p999Us]));
  const { lo, hi } = logBounds(all);
  const plotW = W - LABEL_W - 30;
  const x = (v: number) => (v > 0 ? LABEL_W + ((Math.log10(v) - lo) / (hi - lo)) * plotW : LABEL_W);
  const out: string[] = [];
  let y = TOP;
  for (const panel of panels) {
    out.push(`<text x="10" y="${y + 16}" font-weight="bold">${esc(panel.title)}</text>`);
    y += PANEL_HEAD;
    for (const row of panel.rows) {
      out.push(`<text x="10" y="${y + ROW_H / 2 + 3}">${esc(row.label)}</text>`);
      SERIES.forEach((s, i) => {
        const v = row[s.key];
        const w = Math.max(1, x(v) - LABEL_W);
        const by = y + i * BAR_H;
        out.push(
          `<rect x="${LABEL_W}" y="${by}" width="${w.toFixed(1)}" height="${BAR_H - 1}" fill="${s.color}"><title>${esc(row.label)} ${s.name}: ${fmtUs(v)} µs</title></rect>`,
        );
      });
      y += ROW_H;
    }
    y += 6;
  }
  const grid = axis(lo, hi, x, TOP, y);
  const legend = SERIES.map(
    (s, i) =>
      `<rect x="${LABEL_W + i * 90}" y="28" width="12" height="10" fill="${s.color}"/><text x="${LABEL_W + 16 + i * 90}" y="37">${s.name}</text>`,
  );
  const h = y + 30;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${h}" viewBox="0 0 ${W} ${h}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="18" font-size="14" font-weight="bold">${esc(title)}</text>`,
    ...legend,
    ...grid,
    ...out,
    '</svg>',
  ].join('\n');
}

/** Vertical grid lines at each power of ten, labelled in µs / ms / s. */
function axis(lo: number, hi: number, x: (v: number) => number, top: number, bottom: number) {
  const lines: string[] = [];
  for (let e = lo; e <= hi; e++) {
    const v = 10 ** e;
    const gx = x(v).toFixed(1);
    lines.push(`<line x1="${gx}" y1="${top}" x2="${gx}" y2="${bottom}" stroke="#ddd"/>`);
    lines.push(`<text x="${gx}" y="${bottom + 14}" text-anchor="middle">${unit(v)}</text>`);
  }
  return lines;
}

function unit(us: number): string {
  if (us >= 1e6) return `${us / 1e6} s`;
  if (us >= 1e3) return `${us / 1e3} ms`;
  return `${us} µs`;
}
