/**
 * Question: does a flooded device delay another device served by the same process?
 *
 * Two block devices on separate images, one back-end process. Device B is flooded with 1 MiB
 * sequential writes at QD32; device A runs 4 KiB random reads at QD1. A's latency is measured
 * idle (B quiet) and under B's flood, for: (1) vhost-rt, per-device workers, linux-aio;
 * (2) vhost-rt, threads engine with one shared pool; (3) vhost-rt --single-thread (one loop
 * for every device, like a VMM main loop); (4) qemu-storage-daemon exporting both images;
 * (5) = (1) with SCHED_FIFO, CPU affinity and mlock on A's worker; and (0), fio straight on the
 * two image files, for the interference the kernel and the CPUs cause without any back end.
 * B's image lives on a RAM-backed disk by default, so the devices share no disk queue.
 *
 * Each device is driven by its own load-generator process (bench/loadgen/cli.js), so B's
 * completions never share an event loop with A's; A's idle figures include the generator's
 * own wake-up cost, so they are the floor the flood is compared with.
 *
 *   node dist/bench/priority-inversion.js [--runtime SEC] [--only 0,1,5] [--b-on-disk] [--out DIR]
 *
 * Writes bench/results/priority-inversion.{md,json,svg}.
 */
import { spawn } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import {
  availableEngines,
  type Backend,
  ensureImage,
  mountRamDisk,
  REPO_ROOT,
  startQsd,
  startVhostRt,
} from './loadgen/backends.js';
import { type FioResult, runFio } from './loadgen/fio.js';
import { LoadgenError, type LoadResult } from './loadgen/generator.js';
import type { LatencySummary } from './loadgen/histogram.js';
import { fmtRatio, fmtUs, latencyChartSvg, markdownTable, writeJson, writeText } from './report.js';

/** One configuration of the experiment. */
export interface PiConfig {
  id: number;
  name: string;
  /** What exactly runs, for the table. */
  detail: string;
  /** Null when it cannot run here (the reason is in `unavailable`). */
  start: ((a: Dev, b: Dev) => Promise<Backend>) | null;
  /** Measures without a back end (the fio reference) instead of `start`. */
  direct?: (a: Dev, b: Dev, runtime: number) => Promise<Pick<PiResult, 'idle' | 'flood' | 'b'>>;
  unavailable?: string;
}

/** A device: its image and socket. */
export interface Dev {
  image: string;
  socket: string;
}

/** What one side measured (a load-generator run, or fio for the raw-file reference). */
export interface PiSide {
  latency: LatencySummary;
  mbPerSec: number;
  generatorCpuUsPerIo: number | null;
  backendCpuPercent: number | null;
}

/** The outcome of one configuration. */
export interface PiResult {
  id: number;
  name: string;
  detail: string;
  status: 'ok' | 'not available' | 'failed';
  note?: string;
  idle?: PiSide;
  flood?: PiSide;
  /** B's load during A's flood run. */
  b?: PiSide;
  /** A's p99.9 under flood / idle. */
  p999Ratio?: number | null;
}

const GEN_CLI = join(REPO_ROOT, 'dist', 'bench', 'loadgen', 'cli.js');
/** A's RT options in (5): SCHED_FIFO, pinned to CPU 1, its guest RAM locked (mlock). */
const RT_A = 'rt-policy=fifo,rt-priority=50,cpus=1,mlock';

function devSpec(d: Dev, extra = ''): string {
  return `socket-path=${d.socket},image=${d.image}${extra ? `,${extra}` : ''}`;
}

/** The five configurations; (2) depends on the threads engine being offered. */
export function configs(engines: string[]): PiConfig[] {
  const vr =
    (label: string, flags: string[], aExtra = '') =>
    (a: Dev, b: Dev) =>
      startVhostRt({ label, devices: [devSpec(a, aExtra), devSpec(b)], flags });
  const threads = engines.includes('threads');
  return [
    {
      id: 0,
      name: 'reference: fio on the raw files',
      detail:
        "two fio processes (libaio, O_DIRECT) on the two image files: the disk's own interference, no back end",
      start: null,
      direct: fioReference,
    },
    {
      id: 1,
      name: 'vhost-rt per-device workers, linux-aio',
      detail: 'one worker thread per device, --aio linux-aio',
      start: vr('1', ['--aio', 'linux-aio']),
    },
    {
      id: 2,
      name: 'vhost-rt threads engine, one shared pool',
      detail:
        "--single-thread --aio threads (pool of 4, the default): vhost-rt shares a pool among the devices of one worker, so one pool serves both and B's 32 in-flight writes queue in front of A's reads",
      start: threads ? vr('2', ['--aio', 'threads', '--single-thread']) : null,
      unavailable: threads ? undefined : 'the threads engine is not offered by this vhost-rt',
    },
    {
      id: 3,
      name: 'vhost-rt --single-thread',
      detail: 'both devices on one worker thread, --aio linux-aio',
      start: vr('3', ['--aio', 'linux-aio', '--single-thread']),
    },
    {
      id: 4,
      name: 'qemu-storage-daemon, both exports',
      detail: 'one qsd process, two --blockdev/--export pairs, aio=native, O_DIRECT',
      start: (a, b) => startQsd('4', [a, b], 'native'),
    },
    {
      id: 5,
      name: '(1) + SCHED_FIFO, affinity, mlock on A',
      detail: `A's worker: ${RT_A}; B default`,
      start: vr('5', ['--aio', 'linux-aio'], RT_A),
    },
  ];
}

/** Runs one generator process and resolves with its JSON result. */
export function runGeneratorProcess(args: string[]): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [GEN_CLI, ...args, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.once('close', (code) => {
      if (code !== 0)
        return reject(new LoadgenError('LOADGEN_EXIT', `loadgen exited ${code}: ${err}`));
      resolve(JSON.parse(out) as LoadResult);
    });
  });
}

function genArgs(socket: string, pid: number, w: string[], runtime: number, ramp: number) {
  return [
    '--socket',
    socket,
    '--pid',
    String(pid),
    ...w,
    '--runtime',
    String(runtime),
    '--ramp',
    String(ramp),
  ];
}

function fioSide(r: FioResult): PiSide {
  return {
    latency: r.latency,
    mbPerSec: r.mbPerSec,
    generatorCpuUsPerIo: r.cpuUsPerIo,
    backendCpuPercent: null,
  };
}

/** Config (0): the same two loads with fio straight on the image files. */
async function fioReference(a: Dev, b: Dev, runtime: number) {
  const aJob = {
    filename: a.image,
    ioengine: 'libaio',
    rw: 'randread',
    bs: 4096,
    iodepth: 1,
    runtimeSec: runtime,
    rampSec: 1,
  };
  const bJob = {
    filename: b.image,
    ioengine: 'libaio',
    rw: 'write',
    bs: 1 << 20,
    iodepth: 32,
    runtimeSec: runtime + 1,
    rampSec: 2,
  };
  const idle = await runFio(aJob);
  const bRun = runFio(bJob).then(
    (r) => ({ r, err: undefined }),
    (err: Error) => ({ r: undefined, err }),
  );
  await new Promise((r) => setTimeout(r, 1000));
  const flood = await runFio(aJob);
  const bDone = await bRun;
  if (bDone.err) throw bDone.err;
  return { idle: fioSide(idle), flood: fioSide(flood), b: fioSide(bDone.r as FioResult) };
}

const A_LOAD = ['--rw', 'randread', '--bs', '4k', '--iodepth', '1'];
const B_LOAD = ['--rw', 'write', '--bs', '1M', '--iodepth', '32'];

/** A idle, then A under B's flood (B starts first and outlasts A). */
async function measure(
  backend: Backend,
  runtime: number,
): Promise<Pick<PiResult, 'idle' | 'flood' | 'b'>> {
  const [sa, sb] = backend.sockets;
  const idle = await runGeneratorProcess(genArgs(sa, backend.pid, A_LOAD, runtime, 1));
  // Settled promptly so that a failing B run cannot become an unhandled rejection.
  const bRun = runGeneratorProcess(genArgs(sb, backend.pid, B_LOAD, runtime + 1, 2)).then(
    (r) => ({ r, err: undefined }),
    (err: Error) => ({ r: undefined, err }),
  );
  await new Promise((r) => setTimeout(r, 1000));
  const flood = await runGeneratorProcess(genArgs(sa, backend.pid, A_LOAD, runtime, 1));
  const b = await bRun;
  if (b.err) throw b.err;
  return { idle, flood, b: b.r };
}

async function runConfig(c: PiConfig, a: Dev, b: Dev, runtime: number): Promise<PiResult> {
  const base = { id: c.id, name: c.name, detail: c.detail };
  if (!c.start && !c.direct) return { ...base, status: 'not available', note: c.unavailable };
  let backend: Backend | undefined;
  try {
    if (c.start) backend = await c.start(a, b);
    const m = backend
      ? await measure(backend, runtime)
      : await (c.direct as NonNullable<PiConfig['direct']>)(a, b, runtime);
    const ratio = m.idle && m.flood ? m.flood.latency.p999Us / m.idle.latency.p999Us : null;
    return { ...base, status: 'ok', ...m, p999Ratio: ratio };
  } catch (err) {
    return { ...base, status: 'failed', note: (err as Error).message.split('\n')[0] };
  } finally {
    await backend?.stop();
  }
}

/** The markdown table of the experiment. */
export function piMarkdown(results: PiResult[], runtime: number): string {
  const header = [
    'configuration',
    'A idle p50 / p99 / p99.9 / max µs',
    'A under flood p50 / p99 / p99.9 / max µs',
    'p99.9 flood/idle',
    'B MB/s',
    'backend CPU % (flood)',
  ];
  const lat = (l?: LatencySummary) =>
    l ? [l.p50Us, l.p99Us, l.p999Us, l.maxUs].map(fmtUs).join(' / ') : '—';
  const rows = results.map((r) => {
    const name = `(${r.id}) ${r.name}`;
    if (r.status !== 'ok') return [name, r.status, r.note ?? '', '', '', ''];
    const cpu = r.flood?.backendCpuPercent;
    return [
      name,
      lat(r.idle?.latency),
      lat(r.flood?.latency),
      fmtRatio(r.p999Ratio),
      (r.b?.mbPerSec ?? 0).toFixed(0),
      cpu == null ? '—' : cpu.toFixed(0),
    ];
  });
  const details = results.map((r) => `- (${r.id}) ${r.detail}`);
  const gen = results
    .filter((r) => r.status === 'ok')
    .map(
      (r) =>
        `(${r.id}) A ${fmtUs(r.idle?.generatorCpuUsPerIo)} µs/IO idle, ${fmtUs(r.flood?.generatorCpuUsPerIo)} flood; B ${fmtUs(r.b?.generatorCpuUsPerIo)} µs/IO`,
    );
  return [
    `Device A: 4k randread QD1, ${runtime} s measured (1 s ramp). Device B: 1M sequential write QD32, started 1 s before A's flood run and running until after it. Each device has its own load-generator process; "idle" is A alone (B connected but quiet), which includes the generator's own wake-up cost.`,
    markdownTable(header, rows),
    'What ran:',
    details.join('\n'),
    `Generator CPU per I/O: ${gen.join('; ')}.`,
  ].join('\n\n');
}

/** The chart: one panel per configuration, A idle and A under flood. */
export function piSvg(results: PiResult[]): string {
  const pick = (label: string, l: LatencySummary) => ({
    label,
    p50Us: l.p50Us,
    p99Us: l.p99Us,
    p999Us: l.p999Us,
  });
  const panels = results
    .filter((r) => r.status === 'ok' && r.idle && r.flood)
    .map((r) => ({
      title: `(${r.id}) ${r.name}`,
      rows: [
        pick('A idle', (r.idle as LoadResult).latency),
        pick('A under B flood', (r.flood as LoadResult).latency),
      ],
    }));
  return latencyChartSvg(
    'Priority inversion: device A 4k randread QD1 latency, idle vs B flooded (1M seq write QD32)',
    panels,
  );
}

/**
 * B's image: by default a RAM-backed loop device, so B's flood shares nothing with A but the
 * back-end process and the CPUs (on one disk, the disk's own queue dominates, as config (0)
 * shows with --b-on-disk); a second file on A's disk with --b-on-disk or when losetup fails.
 */
function bImage(onDisk: boolean): { path: string; note: string; close(): void } {
  if (!onDisk) {
    try {
      const ram = mountRamDisk(2 ** 30, join(REPO_ROOT, '.cache', 'bench', `ram-${process.pid}`));
      const note = `A's image is a file on the host disk; B's image is a file on a RAM-backed disk (ext4 on a loop device over /dev/shm), so B's flood shares no disk queue with A: only the back-end process, the kernel and the 2 CPUs.`;
      return { path: ram.path, note, close: ram.close };
    } catch (err) {
      process.stderr.write(`no RAM disk (${(err as Error).message}); B on disk\n`);
    }
  }
  const file = join(REPO_ROOT, '.cache', 'bench', 'image-b-1g.raw');
  ensureImage(file, 2 ** 30);
  const note = "A's and B's images are two files on the same host disk.";
  return { path: file, note, close: () => undefined };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runtime: { type: 'string' },
      out: { type: 'string' },
      only: { type: 'string' },
      'b-on-disk': { type: 'boolean' },
    },
  });
  const runtime = Number(values.runtime ?? 8);
  const out = values.out ?? join(REPO_ROOT, 'bench', 'results');
  const work = join(REPO_ROOT, '.cache', 'bench', `pi-${process.pid}`);
  await mkdir(work, { recursive: true });
  const a = {
    image: join(REPO_ROOT, '.cache', 'bench', 'image-1g.raw'),
    socket: join(work, 'a.sock'),
  };
  ensureImage(a.image, 2 ** 30);
  const bDisk = bImage(values['b-on-disk'] ?? false);
  const b = { image: bDisk.path, socket: join(work, 'b.sock') };
  const only = values.only?.split(',').map(Number);
  const results: PiResult[] = [];
  try {
    for (const c of configs(availableEngines())) {
      if (only && !only.includes(c.id)) continue;
      process.stderr.write(`[${c.id}/5] ${c.name}...\n`);
      const r = await runConfig(c, a, b, runtime);
      process.stderr.write(`  ${r.status} ${r.note ?? ''} p99.9 ratio ${fmtRatio(r.p999Ratio)}\n`);
      results.push(r);
    }
  } finally {
    bDisk.close();
    await rm(work, { recursive: true, force: true });
  }
  const md = `${bDisk.note}\n\n${piMarkdown(results, runtime)}`;
  await writeText(join(out, 'priority-inversion.md'), md);
  const json = { date: new Date().toISOString(), runtimeSec: runtime, setup: bDisk.note, results };
  await writeJson(join(out, 'priority-inversion.json'), json);
  await writeText(join(out, 'priority-inversion.svg'), piSvg(results));
  process.stdout.write(`${md}\n`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: Error) => {
    process.stderr.write(`priority-inversion: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  });
}
