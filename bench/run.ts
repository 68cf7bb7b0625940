/**
 * `npm run bench`: the comparison matrix. Back ends {vhost-rt × each engine it offers,
 * qemu-storage-daemon aio=native, qemu-storage-daemon aio=io_uring} × workloads {4k randread
 * QD1, 4k randread QD32, 4k randwrite QD32, 1M sequential read QD8}, every back end driven by
 * the same load generator (bench/loadgen), plus fio on the same file with the matching ioengine
 * as the physical limit. Writes bench/results/matrix{,-quick}.{md,json,svg}.
 *
 *   node dist/bench/run.js [--quick] [--runtime SEC] [--ramp SEC] [--image PATH] [--out DIR]
 *
 * Every ratio is against a reference measured in the same run.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import {
  availableEngines,
  type Backend,
  ensureImage,
  KNOWN_ENGINES,
  REPO_ROOT,
  startQsd,
  startVhostRt,
} from './loadgen/backends.js';
import { FIO_ENGINE_FOR, runFio } from './loadgen/fio.js';
import { type LoadResult, type RwMode, runLoad } from './loadgen/generator.js';
import type { LatencySummary } from './loadgen/histogram.js';
import {
  fmtCount,
  fmtRatio,
  fmtUs,
  latencyChartSvg,
  markdownTable,
  writeJson,
  writeText,
} from './report.js';

/** One workload of the matrix. */
export interface Workload {
  name: string;
  rw: RwMode;
  bs: number;
  iodepth: number;
  /** Throughput-bound workloads are compared in MB/s, the others in IOPS. */
  metric: 'iops' | 'mbPerSec';
}

/** The four workloads of issue 3. */
export const WORKLOADS: readonly Workload[] = [
  { name: '4k randread QD1', rw: 'randread', bs: 4096, iodepth: 1, metric: 'iops' },
  { name: '4k randread QD32', rw: 'randread', bs: 4096, iodepth: 32, metric: 'iops' },
  { name: '4k randwrite QD32', rw: 'randwrite', bs: 4096, iodepth: 32, metric: 'iops' },
  { name: '1M seq read QD8', rw: 'read', bs: 1 << 20, iodepth: 8, metric: 'mbPerSec' },
];

/** A back end of the matrix. */
export interface BackendSpec {
  /** Table label, e.g. "vhost-rt linux-aio". */
  label: string;
  kind: 'vhost-rt' | 'qsd' | 'fio';
  /** vhost-rt engine, qsd aio= value, or fio ioengine. */
  engine: string;
  /** Label of the fio row this one is compared with. */
  fioRef: string;
  /** False when the engine is not offered (the row says "not available"). */
  available: boolean;
}

/** One cell of the matrix. */
export interface MatrixRow {
  backend: string;
  kind: BackendSpec['kind'];
  engine: string;
  workload: string;
  status: 'ok' | 'not available' | 'failed';
  note?: string;
  iops?: number;
  mbPerSec?: number;
  latency?: LatencySummary;
  /** Back end's CPU µs per I/O (fio: fio's own). */
  backendCpuUsPerIo?: number | null;
  /** The load generator's CPU µs per I/O (not for fio). */
  generatorCpuUsPerIo?: number | null;
  errors?: number;
  /** Throughput ratio to qemu-storage-daemon aio=native, same workload. */
  vsQsd?: number | null;
  /** Throughput ratio to fio with the matching ioengine, same workload. */
  vsFio?: number | null;
}

/** The whole result file. */
export interface MatrixReport {
  date: string;
  host: { cpus: number; node: string };
  quick: boolean;
  runtimeSec: number;
  rampSec: number;
  imageBytes: number;
  engines: { offered: string[]; missing: string[] };
  rows: MatrixRow[];
  targets: Target[];
}

/** A target of issue 3 with its measured ratio. */
export interface Target {
  name: string;
  goal: string;
  ratio: number | null;
  met: boolean | null;
}

const QSD_NATIVE = 'qsd aio=native';

/** The back ends of a run, vhost-rt engines first; missing engines stay as "not available". */
export function backendSpecs(offered: string[], quick: boolean): BackendSpec[] {
  const engines = quick ? ['linux-aio'] : [...KNOWN_ENGINES];
  const specs: BackendSpec[] = engines.map((e) => ({
    label: `vhost-rt ${e}`,
    kind: 'vhost-rt',
    engine: e,
    fioRef: `fio ${FIO_ENGINE_FOR[e]}`,
    available: offered.includes(e),
  }));
  const qsd = quick ? ['native'] : ['native', 'io_uring'];
  for (const aio of qsd) {
    const fioRef = aio === 'native' ? 'fio libaio' : 'fio io_uring';
    specs.push({ label: `qsd aio=${aio}`, kind: 'qsd', engine: aio, fioRef, available: true });
  }
  const fio = quick ? ['libaio'] : ['libaio', 'io_uring', 'posixaio', 'psync'];
  for (const e of fio) {
    specs.push({ label: `fio ${e}`, kind: 'fio', engine: e, fioRef: '', available: true });
  }
  return specs;
}

interface RunConfig {
  quick: boolean;
  runtimeSec: number;
  rampSec: number;
  image: string;
  imageBytes: number;
  work: string;
  out: string;
}

/** Progress display on stderr: one rewritten line on a TTY, one line per step otherwise. */
class Progress {
  private step = 0;
  constructor(private readonly total: number) {}

  next(what: string): void {
    this.step++;
    this.show(`[${this.step}/${this.total}] ${what}`);
  }

  show(text: string): void {
    if (process.stderr.isTTY) process.stderr.write(`\r\x1b[K${text}`);
  }

  done(text: string): void {
    const line = `[${this.step}/${this.total}] ${text}`;
    process.stderr.write(process.stderr.isTTY ? `\r\x1b[K${line}\n` : `${line}\n`);
  }
}

async function startBackend(spec: BackendSpec, cfg: RunConfig): Promise<Backend> {
  const socket = join(cfg.work, `${spec.kind}-${spec.engine}.sock`);
  if (spec.kind === 'qsd') {
    const exp = [{ image: cfg.image, socket }];
    return startQsd(spec.label, exp, spec.engine as 'native' | 'io_uring');
  }
  return startVhostRt({
    label: spec.label,
    devices: [`socket-path=${socket},image=${cfg.image}`],
    flags: ['--aio', spec.engine],
  });
}

function rowOf(spec: BackendSpec, w: Workload, r: LoadResult): MatrixRow {
  return {
    backend: spec.label,
    kind: spec.kind,
    engine: spec.engine,
    workload: w.name,
    status: r.errors > 0 ? 'failed' : 'ok',
    note: r.errors > 0 ? `${r.errors} requests failed` : undefined,
    iops: r.iops,
    mbPerSec: r.mbPerSec,
    latency: r.latency,
    backendCpuUsPerIo: r.backendCpuUsPerIo,
    generatorCpuUsPerIo: r.generatorCpuUsPerIo,
    errors: r.errors,
  };
}

function emptyRow(spec: BackendSpec, w: Workload, status: MatrixRow['status'], note: string) {
  return {
    backend: spec.label,
    kind: spec.kind,
    engine: spec.engine,
    workload: w.name,
    status,
    note,
  };
}

async function runGenerator(
  spec: BackendSpec,
  backend: Backend,
  w: Workload,
  cfg: RunConfig,
  progress: Progress,
): Promise<MatrixRow> {
  const r = await runLoad({
    socketPath: backend.sockets[0],
    backendPid: backend.pid,
    rw: w.rw,
    bs: w.bs,
    iodepth: w.iodepth,
    runtimeSec: cfg.runtimeSec,
    rampSec: cfg.rampSec,
    onProgress: (p) => {
      const rate = p.phase === 'measure' ? ` ${fmtCount(p.ios / p.elapsedSec)} IOPS` : '';
      progress.show(`${spec.label} · ${w.name} · ${p.phase} ${p.elapsedSec.toFixed(0)} s${rate}`);
    },
  });
  return rowOf(spec, w, r);
}

async function runFioRow(spec: BackendSpec, w: Workload, cfg: RunConfig): Promise<MatrixRow> {
  const sync = spec.engine === 'psync';
  const r = await runFio({
    filename: cfg.image,
    ioengine: spec.engine,
    rw: w.rw,
    bs: w.bs,
    iodepth: sync ? 1 : w.iodepth,
    runtimeSec: cfg.runtimeSec,
    rampSec: cfg.rampSec,
  });
  return {
    backend: spec.label,
    kind: 'fio',
    engine: spec.engine,
    workload: w.name,
    status: 'ok',
    note: sync && w.iodepth > 1 ? 'psync is synchronous: QD1' : undefined,
    iops: r.iops,
    mbPerSec: r.mbPerSec,
    latency: r.latency,
    backendCpuUsPerIo: r.cpuUsPerIo,
    generatorCpuUsPerIo: null,
  };
}

/** Runs every workload against one back end (started once; the generator reconnects). */
async function runBackend(
  spec: BackendSpec,
  cfg: RunConfig,
  progress: Progress,
): Promise<MatrixRow[]> {
  if (!spec.available) {
    for (const _ of WORKLOADS) progress.next(`${spec.label}: not available`);
    return WORKLOADS.map((w) => emptyRow(spec, w, 'not available', 'engine not offered'));
  }
  if (spec.kind === 'fio') return runFioBackend(spec, cfg, progress);
  let backend: Backend;
  try {
    backend = await startBackend(spec, cfg);
  } catch (err) {
    const note = (err as Error).message.split('\n')[0];
    for (const _ of WORKLOADS) progress.next(`${spec.label}: failed to start`);
    return WORKLOADS.map((w) => emptyRow(spec, w, 'failed', note));
  }
  const rows: MatrixRow[] = [];
  try {
    for (const w of WORKLOADS) {
      progress.next(`${spec.label} · ${w.name}`);
      rows.push(await measureOne(spec, w, () => runGenerator(spec, backend, w, cfg, progress)));
      progress.done(summaryLine(rows[rows.length - 1]));
    }
  } finally {
    await backend.stop();
  }
  return rows;
}

async function runFioBackend(spec: BackendSpec, cfg: RunConfig, progress: Progress) {
  const rows: MatrixRow[] = [];
  for (const w of WORKLOADS) {
    progress.next(`${spec.label} · ${w.name}`);
    rows.push(await measureOne(spec, w, () => runFioRow(spec, w, cfg)));
    progress.done(summaryLine(rows[rows.length - 1]));
  }
  return rows;
}

async function measureOne(spec: BackendSpec, w: Workload, run: () => Promise<MatrixRow>) {
  try {
    return await run();
  } catch (err) {
    return emptyRow(spec, w, 'failed', (err as Error).message.split('\n')[0]);
  }
}

function summaryLine(r: MatrixRow): string {
  if (r.status !== 'ok' || !r.latency)
    return `${r.backend} · ${r.workload}: ${r.status} ${r.note ?? ''}`;
  const l = r.latency;
  return `${r.backend} · ${r.workload}: ${fmtCount(r.iops)} IOPS ${r.mbPerSec?.toFixed(0)} MB/s p50 ${fmtUs(l.p50Us)} µs p99.9 ${fmtUs(l.p999Us)} µs`;
}

function metricOf(r: MatrixRow | undefined, w: Workload): number | undefined {
  if (r?.status !== 'ok') return undefined;
  return w.metric === 'iops' ? r.iops : r.mbPerSec;
}

/** Fills vsQsd (vs qsd aio=native) and vsFio (vs the matching fio engine) of every row. */
export function addRatios(rows: MatrixRow[], specs: BackendSpec[]): void {
  const find = (backend: string, workload: string) =>
    rows.find((r) => r.backend === backend && r.workload === workload);
  for (const r of rows) {
    const w = WORKLOADS.find((x) => x.name === r.workload);
    const spec = specs.find((s) => s.label === r.backend);
    const mine = metricOf(r, w as Workload);
    if (!w || !spec || mine === undefined) continue;
    const ratio = (ref: MatrixRow | undefined) => {
      const v = metricOf(ref, w);
      return v ? mine / v : null;
    };
    r.vsQsd = spec.kind === 'vhost-rt' ? ratio(find(QSD_NATIVE, w.name)) : null;
    r.vsFio = spec.fioRef ? ratio(find(spec.fioRef, w.name)) : null;
  }
}

/** The five numeric targets of issue 3 that the matrix answers. */
export function computeTargets(rows: MatrixRow[]): Target[] {
  const get = (b: string, w: string) =>
    rows.find((r) => r.backend === b && r.workload === w && r.status === 'ok');
  const vr = 'vhost-rt linux-aio';
  const qd32 = '4k randread QD32';
  const qd1 = '4k randread QD1';
  const div = (a?: number | null, b?: number | null) => (a && b ? a / b : null);
  const t = (name: string, goal: string, ratio: number | null, ok: (r: number) => boolean) => ({
    name,
    goal,
    ratio,
    met: ratio === null ? null : ok(ratio),
  });
  return [
    t(
      '4k randread QD32 IOPS vs qsd',
      '≥ 1.0×',
      div(get(vr, qd32)?.iops, get(QSD_NATIVE, qd32)?.iops),
      (r) => r >= 1,
    ),
    t(
      '4k randread QD1 p50 vs qsd',
      '≤ 1.0×',
      div(get(vr, qd1)?.latency?.p50Us, get(QSD_NATIVE, qd1)?.latency?.p50Us),
      (r) => r <= 1,
    ),
    t(
      '4k randread QD32 CPU per I/O vs qsd',
      '≤ 1.2×',
      div(get(vr, qd32)?.backendCpuUsPerIo, get(QSD_NATIVE, qd32)?.backendCpuUsPerIo),
      (r) => r <= 1.2,
    ),
    t(
      '4k randread QD32 IOPS vs fio libaio',
      '≥ 0.9×',
      div(get(vr, qd32)?.iops, get('fio libaio', qd32)?.iops),
      (r) => r >= 0.9,
    ),
    t(
      'generator: qsd 4k randread QD32 IOPS vs fio libaio',
      '≥ 1.0× (or saturation named)',
      div(get(QSD_NATIVE, qd32)?.iops, get('fio libaio', qd32)?.iops),
      (r) => r >= 1,
    ),
  ];
}

/** The markdown report: one table per workload, then the targets. */
export function matrixMarkdown(report: MatrixReport): string {
  const header = [
    'back end',
    'IOPS',
    'MB/s',
    'p50 µs',
    'p99 µs',
    'p99.9 µs',
    'max µs',
    'CPU µs/IO',
    'gen CPU µs/IO',
    '× qsd',
    '× fio',
  ];
  const parts = [
    `Run ${report.date} on ${report.host.cpus} CPUs (Node ${report.host.node}); ${report.runtimeSec} s measured after ${report.rampSec} s ramp-up per cell; ${report.imageBytes / 2 ** 30} GiB image, O_DIRECT everywhere.`,
  ];
  for (const w of WORKLOADS) {
    const rows = report.rows.filter((r) => r.workload === w.name).map(tableRow);
    parts.push(
      `### ${w.name} (ratios in ${w.metric === 'iops' ? 'IOPS' : 'MB/s'})`,
      markdownTable(header, rows),
    );
  }
  const targets = report.targets.map((t) => [
    t.name,
    t.goal,
    fmtRatio(t.ratio),
    t.met === null ? '—' : t.met ? 'met' : 'missed',
  ]);
  parts.push('### Targets (issue 3)', markdownTable(['target', 'goal', 'measured', ''], targets));
  return `${parts.join('\n\n')}\n`;
}

function tableRow(r: MatrixRow): string[] {
  if (r.status !== 'ok' || !r.latency)
    return [r.backend, r.status, r.note ?? '', '', '', '', '', '', '', '', ''];
  const l = r.latency;
  const name = r.note ? `${r.backend} (${r.note})` : r.backend;
  return [
    name,
    fmtCount(r.iops),
    (r.mbPerSec ?? 0).toFixed(0),
    fmtUs(l.p50Us),
    fmtUs(l.p99Us),
    fmtUs(l.p999Us),
    fmtUs(l.maxUs),
    fmtUs(r.backendCpuUsPerIo),
    fmtUs(r.generatorCpuUsPerIo),
    fmtRatio(r.vsQsd),
    fmtRatio(r.vsFio),
  ];
}

/** The chart: one panel per workload, one bar group per back end that ran. */
export function matrixSvg(report: MatrixReport): string {
  const panels = WORKLOADS.map((w) => ({
    title: w.name,
    rows: report.rows
      .filter((r) => r.workload === w.name && r.status === 'ok' && r.latency)
      .map((r) => ({ label: r.backend, ...pick(r.latency as LatencySummary) })),
  }));
  return latencyChartSvg(
    'Latency percentiles (µs, log scale) — vhost-rt vs qemu-storage-daemon vs fio',
    panels,
  );
}

function pick(l: LatencySummary) {
  return { p50Us: l.p50Us, p99Us: l.p99Us, p999Us: l.p999Us };
}

function parseConfig(argv: string[]): RunConfig {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      runtime: { type: 'string' },
      ramp: { type: 'string' },
      image: { type: 'string' },
      out: { type: 'string' },
    },
  });
  const quick = values.quick ?? false;
  return {
    quick,
    runtimeSec: Number(values.runtime ?? (quick ? 3 : 5)),
    rampSec: Number(values.ramp ?? 1),
    image: values.image ?? join(REPO_ROOT, '.cache', 'bench', 'image-1g.raw'),
    imageBytes: 2 ** 30,
    work: join(REPO_ROOT, '.cache', 'bench', `run-${process.pid}`),
    out: values.out ?? join(REPO_ROOT, 'bench', 'results'),
  };
}

async function main(): Promise<void> {
  const cfg = parseConfig(process.argv.slice(2));
  await mkdir(cfg.work, { recursive: true });
  ensureImage(cfg.image, cfg.imageBytes);
  const offered = availableEngines();
  const specs = backendSpecs(offered, cfg.quick);
  const progress = new Progress(specs.length * WORKLOADS.length);
  const rows: MatrixRow[] = [];
  try {
    for (const spec of specs) rows.push(...(await runBackend(spec, cfg, progress)));
  } finally {
    await rm(cfg.work, { recursive: true, force: true });
  }
  addRatios(rows, specs);
  const report: MatrixReport = {
    date: new Date().toISOString(),
    host: { cpus: (await import('node:os')).cpus().length, node: process.versions.node },
    quick: cfg.quick,
    runtimeSec: cfg.runtimeSec,
    rampSec: cfg.rampSec,
    imageBytes: cfg.imageBytes,
    engines: { offered, missing: KNOWN_ENGINES.filter((e) => !offered.includes(e)) },
    rows,
    targets: computeTargets(rows),
  };
  const base = join(cfg.out, cfg.quick ? 'matrix-quick' : 'matrix');
  const md = matrixMarkdown(report);
  await writeText(`${base}.md`, md);
  await writeJson(`${base}.json`, report);
  await writeText(`${base}.svg`, matrixSvg(report));
  process.stdout.write(`${md}\nwrote ${base}.{md,json,svg}\n`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: Error) => {
    process.stderr.write(`bench: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  });
}
