/**
 * Question: when two devices share ONE disk, does telling the kernel which requests matter keep
 * the real-time device's latency flat under its neighbour's flood? (issue 14)
 *
 * Device A: 4 KiB random reads at QD1. Device B: 1 MiB sequential writes at QD32. Both images are
 * files on the same host disk (the root disk, under mq-deadline, set explicitly when the
 * scheduler file is writable), served by one back-end process. A's latency is measured idle and
 * under B's flood for:
 *   (1)  vhost-rt, per-device workers, linux-aio, no priorities;
 *   (2)  A's device `--ioprio rt:0` (every request of A submitted in the RT class), B
 *        `--no-rt-guard` (the kernel's I/O scheduler alone);
 *   (2g) A's priority from the front end: the request header carries rt:0 (as `ionice -c1` in a
 *        Linux guest makes it), A's device `--guest-ioprio honor`; B `--no-rt-guard`;
 *   (3)  B throttled: `--bps-limit` on B's device;
 *   (4)  = (2) + SCHED_FIFO 50, CPU affinity and mlock on A's worker; B `--no-rt-guard`;
 *   (2G), (2gG), (4G) = (2), (2g), (4) with the RT guard's in-flight cap on B (while A has RT
 *        requests in flight, or had within 100 ms, B keeps at most 1 request / 1 MiB in flight),
 *        its rate term off (`rt-guard-bps=0`);
 *   (4S) = (4) with the strict guard on B (`rt-guard-requests=0`: nothing of B submitted while A
 *        is active — the RT class's own meaning, B starves), no rate term;
 *   (2gGB), (4GB) = (2g), (4) with the RT guard's defaults on B: the cap and the rate term
 *        (at most 64 MiB/s of B while A is active);
 *   (4GB4) = (4GB) with the rate term at 256 MiB/s (the price/benefit of the default);
 *   (4GB32) = (4GB) with the rate term at 32 MiB/s;
 *   (2gGBw), (4GBw) = (2gGB), (4GB) with a 10 s window: A counts as active from its idle run on,
 *        so B is under the rate for its whole run (as for an RT device that reads periodically),
 *        not only from A's flood run on — B's first second at full speed is not written back
 *        by the host while A is measured;
 *   (4+3) = (4) with B throttled as in (3);
 *   (q)  qemu-storage-daemon exporting both images (aio=native, O_DIRECT), the reference;
 *   (n1) both devices on the `null` engine: A's back-end-only latency under B's null flood;
 *   (n4) = (n1) + SCHED_FIFO, affinity, mlock on A's worker;
 *   (n4f), (n4c), (n4m) = (n1) + one of those knobs at a time (which one costs n4 its tail);
 *   (n4fs) = (n4f) under node --single-threaded-gc;
 *   (n4g1), (n4g0) = (n4) with A's load generator pinned to A's worker's CPU / the other one;
 *   (n4gr) = (n4g1) with A's load generator at SCHED_FIFO 40 too.
 *
 * During each flood run the disk's own queue is sampled (/sys/dev/block/M:m/inflight every
 * 10 ms: requests dispatched to the device driver, reads and writes), so the table shows what
 * sits in the device's queue in front of A's read.
 *
 * The null-engine rows (n1, n4) are compared with the machine's own scheduling-latency floor
 * (cyclictest, before and after the rounds): their flood p99.9 over the floor's p99.9.
 *
 * Quick mode for a shared machine: short rounds, the configurations interleaved round by round
 * (so a neighbour's burst hits all of them alike), medians over the rounds with the spread
 * (min..max) reported.
 *
 *   node dist/bench/priority-inversion-shared-disk.js [--rounds 3] [--runtime 2] [--only 1,2,q]
 *     [--b-limit BYTES/S] [--out DIR]
 *
 * Writes bench/results/priority-inversion-shared-disk.{md,json,svg}.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { type Json, QmpClient } from '../test/support/qmp-client.js';
import {
  type Backend,
  ensureImage,
  REPO_ROOT,
  startQsd,
  startVhostRt,
} from './loadgen/backends.js';
import type { LoadResult } from './loadgen/generator.js';
import type { LatencySummary } from './loadgen/histogram.js';
import { runGeneratorProcess } from './priority-inversion.js';
import { fmtRatio, fmtUs, latencyChartSvg, markdownTable, writeJson, writeText } from './report.js';

/** A device: its image and socket. */
interface Dev {
  image: string;
  socket: string;
}

/** One configuration of the experiment. */
export interface SdConfig {
  id: string;
  name: string;
  detail: string;
  start(a: Dev, b: Dev): Promise<Backend>;
  /** Extra load-generator flags for A (the header's ioprio in 2g). */
  aLoad?: string[];
  /** Both devices on the null engine: compared with the machine floor. */
  nullEngine?: boolean;
  /** A command A's load generator runs under (taskset, chrt); absent: none. */
  aClientWrap?: string[];
}

/** A's RT knobs in (4) and (n4). */
const RT_A = 'rt-policy=fifo,rt-priority=50,cpus=1,mlock';
/** rt:0 as the header (and ioprio_set) encodes it. */
const RT0 = 1 << 13;
/** B without the RT guard: the rows that show the kernel's scheduler alone. */
const NO_GUARD = 'no-rt-guard';
/** B with the guard's in-flight cap only (its rate term off): the rows measured before the rate term existed. */
const CAP_ONLY = 'rt-guard-bps=0';
/** A window longer than a round: B stays under the guard from A's idle run on. */
const LONG_WINDOW = 'rt-guard-window-us=10000000';

function spec(d: Dev, extra: string[]): string {
  return [`socket-path=${d.socket}`, `image=${d.image}`, ...extra].join(',');
}

/** The configurations, in the order they run within a round. */
export function sharedDiskConfigs(bLimit: number): SdConfig[] {
  const vr =
    (label: string, aExtra: string[], bExtra: string[] = [], aio = 'linux-aio') =>
    (a: Dev, b: Dev) =>
      startVhostRt({
        label,
        devices: [spec(a, aExtra), spec(b, bExtra)],
        flags: ['--aio', aio, '--quiet', '--control-socket', controlPath(a)],
      });
  return [
    {
      id: '1',
      name: 'vhost-rt, no priorities',
      detail: 'per-device workers, --aio linux-aio',
      start: vr('1', []),
    },
    {
      id: '2',
      name: 'A --ioprio rt:0',
      detail:
        "A's device submits every request in the RT class (Linux AIO aio_reqprio); B --no-rt-guard",
      start: vr('2', ['ioprio=rt:0'], [NO_GUARD]),
    },
    {
      id: '2g',
      name: 'A rt:0 from the front end',
      detail:
        "A's requests carry rt:0 in the virtio-blk header (ionice -c1 in a guest); A's device --guest-ioprio honor; B --no-rt-guard",
      start: vr('2g', ['guest-ioprio=honor'], [NO_GUARD]),
      aLoad: ['--ioprio', String(RT0)],
    },
    {
      id: '2G',
      name: '(2) + RT guard on B',
      detail:
        "as (2), B with the RT guard's in-flight cap (while A has RT requests in flight or had within 100 ms: 1 request / 1 MiB in flight), rt-guard-bps=0",
      start: vr('2G', ['ioprio=rt:0'], [CAP_ONLY]),
    },
    {
      id: '2gG',
      name: '(2g) + RT guard on B',
      detail: "as (2g), B with the RT guard's in-flight cap, rt-guard-bps=0",
      start: vr('2gG', ['guest-ioprio=honor'], [CAP_ONLY]),
      aLoad: ['--ioprio', String(RT0)],
    },
    {
      id: '3',
      name: `B --bps-limit ${Math.round(bLimit / 2 ** 20)} MiB/s`,
      detail: `B's device throttled to ${bLimit} bytes/s (token bucket, burst 0.1 s); no priorities`,
      start: vr('3', [], [`bps-limit=${bLimit}`]),
    },
    {
      id: '4',
      name: '(2) + SCHED_FIFO, affinity, mlock on A',
      detail: `A: ioprio=rt:0,${RT_A}; B: ${NO_GUARD}`,
      start: vr('4', ['ioprio=rt:0', RT_A], [NO_GUARD]),
    },
    {
      id: '4G',
      name: '(4) + RT guard on B',
      detail: `A: ioprio=rt:0,${RT_A}; B: the RT guard's in-flight cap, ${CAP_ONLY}`,
      start: vr('4G', ['ioprio=rt:0', RT_A], [CAP_ONLY]),
    },
    {
      id: '4S',
      name: '(4) + strict RT guard on B',
      detail: `A: ioprio=rt:0,${RT_A}; B: rt-guard-requests=0,${CAP_ONLY} (nothing of B submitted while A is active: B starves)`,
      start: vr('4S', ['ioprio=rt:0', RT_A], ['rt-guard-requests=0', CAP_ONLY]),
    },
    {
      id: '2gGB',
      name: '(2g) + RT guard with rate on B',
      detail:
        "as (2g), B with the RT guard's defaults: 1 request / 1 MiB in flight and at most 64 MiB/s while A is active",
      start: vr('2gGB', ['guest-ioprio=honor']),
      aLoad: ['--ioprio', String(RT0)],
    },
    {
      id: '4GB',
      name: '(4) + RT guard with rate on B',
      detail: `A: ioprio=rt:0,${RT_A}; B: the RT guard's defaults (1 request / 1 MiB in flight, 64 MiB/s while A is active)`,
      start: vr('4GB', ['ioprio=rt:0', RT_A]),
    },
    {
      id: '2gGBw',
      name: '(2gGB) with a 10 s window',
      detail:
        "as (2gGB), B's rt-guard-window-us=10000000 (B under the rate for its whole run: A was active within 10 s)",
      start: vr('2gGBw', ['guest-ioprio=honor'], [LONG_WINDOW]),
      aLoad: ['--ioprio', String(RT0)],
    },
    {
      id: '4GBw',
      name: '(4GB) with a 10 s window',
      detail: `A: ioprio=rt:0,${RT_A}; B: the RT guard's defaults, ${LONG_WINDOW}`,
      start: vr('4GBw', ['ioprio=rt:0', RT_A], [LONG_WINDOW]),
    },
    {
      id: '4GB4',
      name: '(4) + RT guard, rate 256 MiB/s, on B',
      detail: `A: ioprio=rt:0,${RT_A}; B: the RT guard with rt-guard-bps=268435456`,
      start: vr('4GB4', ['ioprio=rt:0', RT_A], ['rt-guard-bps=268435456']),
    },
    {
      id: '4GB32',
      name: '(4) + RT guard, rate 32 MiB/s, on B',
      detail: `A: ioprio=rt:0,${RT_A}; B: the RT guard with rt-guard-bps=33554432 (half the default: B's writes occupy the disk half as often when A's read arrives)`,
      start: vr('4GB32', ['ioprio=rt:0', RT_A], ['rt-guard-bps=33554432']),
    },
    {
      id: '4+3',
      name: '(4) with B throttled as in (3)',
      detail: `A: ioprio=rt:0,${RT_A}; B: bps-limit=${bLimit},${NO_GUARD}`,
      start: vr('4+3', ['ioprio=rt:0', RT_A], [`bps-limit=${bLimit}`, NO_GUARD]),
    },
    {
      id: 'q',
      name: 'qemu-storage-daemon, both exports',
      detail: 'one qsd, two --blockdev/--export pairs, aio=native, O_DIRECT (no priorities)',
      start: (a, b) => startQsd('q', [a, b], 'native'),
    },
    {
      id: 'n1',
      name: 'null engine: back end only',
      detail: 'both devices --aio null (no disk I/O), no RT knobs',
      start: vr('n1', [], [], 'null'),
      nullEngine: true,
    },
    {
      id: 'n4',
      name: 'null engine + RT knobs on A',
      detail: `both --aio null; A: ${RT_A}`,
      start: vr('n4', [RT_A], [], 'null'),
      nullEngine: true,
    },
    // The RT knobs one at a time (issue 14: n4's p99.9 was worse than n1's; which knob does it?).
    {
      id: 'n4f',
      name: 'null engine + SCHED_FIFO only on A',
      detail: 'both --aio null; A: rt-policy=fifo,rt-priority=50',
      start: vr('n4f', ['rt-policy=fifo', 'rt-priority=50'], [], 'null'),
      nullEngine: true,
    },
    {
      id: 'n4fs',
      name: '(n4f) with V8 GC on the worker thread itself',
      detail:
        "both --aio null; A: rt-policy=fifo,rt-priority=50; node --single-threaded-gc (no V8 helper threads at CFS priority for A's FIFO worker to wait on)",
      start: (a, b) =>
        startVhostRt({
          label: 'n4fs',
          devices: [spec(a, ['rt-policy=fifo', 'rt-priority=50']), spec(b, [])],
          flags: ['--aio', 'null', '--quiet', '--control-socket', controlPath(a)],
          nodeFlags: ['--single-threaded-gc'],
        }),
      nullEngine: true,
    },
    {
      id: 'n4g1',
      name: "(n4) with A's load generator on A's CPU",
      detail: `both --aio null; A: ${RT_A}; A's load generator pinned to CPU 1 (taskset), where A's FIFO worker runs`,
      start: vr('n4g1', [RT_A], [], 'null'),
      nullEngine: true,
      aClientWrap: ['taskset', '-c', '1'],
    },
    {
      id: 'n4g0',
      name: "(n4) with A's load generator on the other CPU",
      detail: `both --aio null; A: ${RT_A}; A's load generator pinned to CPU 0 (taskset), away from A's FIFO worker`,
      start: vr('n4g0', [RT_A], [], 'null'),
      nullEngine: true,
      aClientWrap: ['taskset', '-c', '0'],
    },
    {
      id: 'n4gr',
      name: "(n4g1) with A's load generator at SCHED_FIFO 40",
      detail: `both --aio null; A: ${RT_A}; A's load generator pinned to CPU 1 and SCHED_FIFO 40 (chrt), as an RT guest's vCPU thread below its device worker`,
      start: vr('n4gr', [RT_A], [], 'null'),
      nullEngine: true,
      aClientWrap: ['taskset', '-c', '1', 'chrt', '-f', '40'],
    },
    {
      id: 'n4c',
      name: 'null engine + affinity only on A',
      detail: 'both --aio null; A: cpus=1',
      start: vr('n4c', ['cpus=1'], [], 'null'),
      nullEngine: true,
    },
    {
      id: 'n4m',
      name: 'null engine + mlock only on A',
      detail: 'both --aio null; A: mlock',
      start: vr('n4m', ['mlock'], [], 'null'),
      nullEngine: true,
    },
  ];
}

/** The disk's queue at the device driver during A's flood run (sysfs `inflight` samples). */
export interface DiskInflight {
  samples: number;
  /** Median and largest number of writes / reads dispatched to the device at a sample. */
  writesP50: number;
  writesMax: number;
  readsMax: number;
}

/** One round of one configuration. */
interface RoundResult {
  idle: LoadResult;
  flood: LoadResult;
  b: LoadResult;
  /** Absent: the disk's inflight file was not readable. */
  disk?: DiskInflight;
  /** B's guard counters over A's flood window; absent: no control socket (qsd), or before run 5. */
  guard?: GuardWindow;
}

/** A configuration over all rounds. */
export interface SdResult {
  id: string;
  name: string;
  detail: string;
  rounds: RoundResult[];
  failures: string[];
  /** The invocation that measured it (index into the report's runs; 0 when there is one). */
  run?: number;
}

/** One invocation of the experiment (`--append` adds rows of another to the report). */
export interface SdRun {
  date: string;
  rounds: number;
  runtimeSec: number;
  ids: string[];
  /** cyclictest before and after its rounds. */
  machineFloor: MachineFloor[];
}

const A_LOAD = ['--rw', 'randread', '--bs', '4k', '--iodepth', '1'];
const B_LOAD = ['--rw', 'write', '--bs', '1M', '--iodepth', '32'];

function gen(socket: string, pid: number, load: string[], runtime: number, ramp: number) {
  return [
    '--socket',
    socket,
    '--pid',
    String(pid),
    ...load,
    '--runtime',
    String(runtime),
    '--ramp',
    String(ramp),
  ];
}

/**
 * Samples `file` (a block device's sysfs `inflight`: "READS WRITES") every 10 ms until the
 * returned stop is called. A measurement aid, not a test: it shows how deep the device's
 * queue is while A's reads wait.
 */
export function sampleInflight(file: string | null): () => DiskInflight | undefined {
  if (file === null) return () => undefined;
  const reads: number[] = [];
  const writes: number[] = [];
  const timer = setInterval(() => {
    try {
      const [r, w] = readFileSync(file, 'utf8').trim().split(/\s+/).map(Number);
      reads.push(r);
      writes.push(w);
    } catch {
      // Not readable here: the round reports no samples.
    }
  }, 10);
  return () => {
    clearInterval(timer);
    if (writes.length === 0) return undefined;
    return {
      samples: writes.length,
      writesP50: median(writes),
      writesMax: Math.max(...writes),
      readsMax: Math.max(...reads),
    };
  };
}

/** B's guard counters over A's measured flood window (query-stats deltas). */
export interface GuardWindow {
  /** Seconds between the two reads. */
  seconds: number;
  /** B's requests that waited for the guard, and for how long its queue was held (µs). */
  heldRequests: number;
  heldUs: number;
  /** Admissions the guard's rate term refused. */
  rateHolds: number;
  /** B's bytes written, in decimal MB/s over the window. */
  bMbPerSec: number;
}

const A_CLIENT = join(REPO_ROOT, 'dist', 'bench', 'priority-inversion-a-client.js');
const GUARD_KEYS = ['guardHeldRequests', 'guardHeldUs', 'guardRateHolds', 'bytesWritten'] as const;
type GuardSnap = Record<(typeof GUARD_KEYS)[number], number> & { at: number };

/** The control socket of a vhost-rt configuration (qsd has none). */
function controlPath(a: Dev): string {
  return join(dirname(a.socket), 'control.qmp');
}

/** B's (device 1's) guard counters now. */
async function guardSnap(q: QmpClient): Promise<GuardSnap> {
  const r = (await q.execute('query-stats', { device: 1 })).return as { stats: Json }[];
  const st = r[0].stats as Record<string, number>;
  const out = { at: performance.now() } as GuardSnap;
  for (const k of GUARD_KEYS) out[k] = Number(st[k] ?? 0);
  return out;
}

function guardDelta(x: GuardSnap, y: GuardSnap): GuardWindow {
  const seconds = (y.at - x.at) / 1000;
  return {
    seconds,
    heldRequests: y.guardHeldRequests - x.guardHeldRequests,
    heldUs: y.guardHeldUs - x.guardHeldUs,
    rateHolds: y.guardRateHolds - x.guardRateHolds,
    bMbPerSec: (y.bytesWritten - x.bytesWritten) / 1e6 / seconds,
  };
}

/** A's client (one connection, two windows): its events as they come, and its exit. */
function startAClient(args: string[], wrap: string[] = []) {
  const argv = [...wrap, process.execPath, A_CLIENT, '--windows', '2', ...args];
  const child = spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
  const events: Json[] = [];
  let waiters: (() => void)[] = [];
  let err = '';
  let exit: number | null | undefined;
  const wake = () => {
    const w = waiters;
    waiters = [];
    for (const f of w) f();
  };
  createInterface({ input: child.stdout }).on('line', (line) => {
    events.push(JSON.parse(line) as Json);
    wake();
  });
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  child.once('close', (code) => {
    exit = code;
    wake();
  });
  /** Resolves with the first event `match` accepts; rejects when the client exits first. */
  const next = (match: (e: Json) => boolean): Promise<Json> =>
    new Promise((resolve, reject) => {
      const look = () => {
        const e = events.find(match);
        if (e !== undefined) return resolve(e);
        if (exit !== undefined)
          return reject(new Error(`A's client exited ${exit} early: ${err.trim()}`));
        waiters.push(look);
      };
      look();
    });
  return {
    next,
    go: () => child.stdin.write('go\n'),
    kill: () => child.kill('SIGKILL'),
  };
}

/**
 * A alone, then A while B floods, over ONE connection of A that never stops reading: after
 * A's idle window, A reads on (unmeasured) while B starts; 1 s later A ramps 0.5 s and
 * measures under B's flood; B outlasts it. B's guard counters are read when A's flood window
 * starts and ends, so the report shows whether B was held while A was measured.
 */
async function measure(
  c: SdConfig,
  backend: Backend,
  runtime: number,
  inflight: string | null,
  a: Dev,
): Promise<RoundResult> {
  const [sa, sb] = backend.sockets;
  const aLoad = [...A_LOAD, ...(c.aLoad ?? [])];
  const control = existsSync(controlPath(a)) ? await QmpClient.connect(controlPath(a)) : undefined;
  const client = startAClient(gen(sa, backend.pid, aLoad, runtime, 0.5), c.aClientWrap);
  try {
    const idle = (await client.next((e) => e.event === 'result' && e.window === 0))
      .result as LoadResult;
    await client.next((e) => e.event === 'waiting' && e.window === 1);
    const bRun = runGeneratorProcess(gen(sb, backend.pid, B_LOAD, runtime + 1.5, 1)).then(
      (r) => ({ r, err: undefined }),
      (err: Error) => ({ r: undefined, err }),
    );
    await new Promise((r) => setTimeout(r, 1000));
    client.go();
    await client.next((e) => e.event === 'measure' && e.window === 1);
    const g0 = control === undefined ? undefined : await guardSnap(control);
    const stopSampling = sampleInflight(c.nullEngine === true ? null : inflight);
    const flood = (await client.next((e) => e.event === 'result' && e.window === 1))
      .result as LoadResult;
    const disk = stopSampling();
    const g1 = control === undefined ? undefined : await guardSnap(control);
    const b = await bRun;
    if (b.err) throw b.err;
    const guard = g0 !== undefined && g1 !== undefined ? guardDelta(g0, g1) : undefined;
    return { idle, flood, b: b.r as LoadResult, disk, guard };
  } finally {
    client.kill();
    control?.close();
  }
}

async function runRound(
  c: SdConfig,
  a: Dev,
  b: Dev,
  runtime: number,
  inflight: string | null,
): Promise<RoundResult> {
  const backend = await c.start(a, b);
  try {
    return await measure(c, backend, runtime, inflight, a);
  } finally {
    await backend.stop();
  }
}

/** The sysfs directory of the block device under `path`'s file system. */
function sysBlockDir(path: string): string {
  const dev = statSync(path).dev;
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
  return `/sys/dev/block/${major}:${minor}`;
}

/** The block device's scheduler file, as the kernel shows it. */
function schedulerFile(path: string): string {
  return `${sysBlockDir(path)}/queue/scheduler`;
}

/** The block device's `inflight` file (requests at the driver), or null when not readable. */
function inflightFile(path: string): string | null {
  const file = `${sysBlockDir(path)}/inflight`;
  try {
    readFileSync(file);
    return file;
  } catch {
    return null;
  }
}

/** Sets mq-deadline on the disk holding `path` when possible; says what it found and did. */
export function ensureMqDeadline(path: string): string {
  const file = schedulerFile(path);
  let before: string;
  try {
    before = readFileSync(file, 'utf8').trim();
  } catch {
    return `the disk's scheduler file (${file}) is not readable here: the scheduler is whatever the kernel chose`;
  }
  try {
    writeFileSync(file, 'mq-deadline');
  } catch (err) {
    return `${file} is not writable here (${(err as NodeJS.ErrnoException).code}): scheduler left as "${before}"`;
  }
  const after = readFileSync(file, 'utf8').trim();
  return `${file}: "${before}" before, mq-deadline written, "${after}" now`;
}

/** The machine's own scheduling-latency floor at the time: cyclictest's percentiles, or why there are none. */
export interface MachineFloor {
  p50Us?: number;
  p99Us?: number;
  p999Us?: number;
  maxUs?: number;
  note: string;
}

/**
 * Percentiles of a cyclictest histogram (`-h N -q`: one "USEC COUNT" line per microsecond,
 * then "# Histogram Overflows: N" for what lay past N µs, counted as beyond the last bucket).
 */
export function cyclictestPercentiles(text: string): Omit<MachineFloor, 'note'> | null {
  const counts: [number, number][] = [];
  let overflow = 0;
  let max = 0;
  for (const line of text.split('\n')) {
    const bucket = /^(\d+) (\d+)$/.exec(line);
    if (bucket !== null) counts.push([Number(bucket[1]), Number(bucket[2])]);
    const over = /^# Histogram Overflows: (\d+)/.exec(line);
    if (over !== null) overflow = Number(over[1]);
    const m = /^# Max Latencies: (\d+)/.exec(line);
    if (m !== null) max = Number(m[1]);
  }
  const total = counts.reduce((n, [, c]) => n + c, 0) + overflow;
  if (total === 0) return null;
  const at = (q: number) => {
    let seen = 0;
    for (const [us, c] of counts) {
      seen += c;
      if (seen >= q * total) return us;
    }
    return max;
  };
  return { p50Us: at(0.5), p99Us: at(0.99), p999Us: at(0.999), maxUs: max };
}

/** Runs cyclictest (rt-tests) for `seconds` on one SCHED_FIFO 90 thread, 200 µs interval. */
export function machineFloor(seconds: number): MachineFloor {
  const args = [
    '-m',
    '-p',
    '90',
    '-t',
    '1',
    '-i',
    '200',
    '-D',
    String(seconds),
    '-q',
    '-h',
    '20000',
  ];
  const r = spawnSync('cyclictest', args, { encoding: 'utf8', timeout: (seconds + 10) * 1000 });
  if (r.error !== undefined)
    return { note: `cyclictest not run (${r.error.message}; apt-get install rt-tests)` };
  const p = cyclictestPercentiles(r.stdout ?? '');
  if (p === null) return { note: `cyclictest gave no histogram (exit ${r.status})` };
  return { ...p, note: `cyclictest ${args.join(' ')}` };
}

function fmtFloor(f: MachineFloor): string {
  if (f.p999Us === undefined) return f.note;
  return `p50 ${f.p50Us} / p99 ${f.p99Us} / p99.9 ${f.p999Us} / max ${f.maxUs} µs (${f.note})`;
}

function median(v: number[]): number {
  const s = [...v].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median over rounds of each percentile. */
function medianLatency(ls: LatencySummary[]): LatencySummary {
  const pick = (k: keyof LatencySummary) => median(ls.map((l) => l[k]));
  return {
    count: pick('count'),
    minUs: pick('minUs'),
    meanUs: pick('meanUs'),
    p50Us: pick('p50Us'),
    p90Us: pick('p90Us'),
    p99Us: pick('p99Us'),
    p999Us: pick('p999Us'),
    maxUs: pick('maxUs'),
  };
}

/** Per round, A's p99.9 under flood over idle. */
function ratios(r: SdResult): number[] {
  return r.rounds.map((x) => x.flood.latency.p999Us / x.idle.latency.p999Us);
}

function spread(v: number[], fmt: (x: number) => string): string {
  if (v.length === 0) return '—';
  return `${fmt(Math.min(...v))}–${fmt(Math.max(...v))}`;
}

/** The disk's writes in flight during the flood runs: median over rounds of the per-round median, and the largest seen. */
function diskColumn(r: SdResult): string {
  const d = r.rounds.flatMap((x) => (x.disk === undefined ? [] : [x.disk]));
  if (d.length === 0) return '—';
  return `${median(d.map((x) => x.writesP50))} / ${Math.max(...d.map((x) => x.writesMax))}`;
}

/**
 * B's guard counters over A's flood windows: B's MB/s then, the share of the window B's queue
 * was held, the rate term's refusals (medians over rounds); "—" where not measured.
 */
function guardColumn(r: SdResult): string {
  const g = r.rounds.flatMap((x) => (x.guard === undefined ? [] : [x.guard]));
  if (g.length === 0) return '—';
  const mb = median(g.map((x) => x.bMbPerSec)).toFixed(0);
  const held = median(g.map((x) => x.heldUs / 1e4 / x.seconds)).toFixed(0);
  const holds = median(g.map((x) => x.rateHolds)).toFixed(0);
  return `${mb}, ${held} %, ${holds}`;
}

/** The machine floor's p99.9: the median of the measurements that have one. */
export function floorP999(floors: MachineFloor[]): number | undefined {
  const v = floors.flatMap((f) => (f.p999Us === undefined ? [] : [f.p999Us]));
  return v.length === 0 ? undefined : median(v);
}

/**
 * The null-engine rows against the machine's floor: A's back-end-only p99.9 under flood
 * (median over rounds, and its spread) over cyclictest's p99.9 in the same run.
 */
export function floorMarkdown(results: SdResult[], runs: MachineFloor[][]): string {
  const nulls = results.filter((r) => r.id.startsWith('n') && r.rounds.length > 0);
  // Each row against the floor of the invocation that measured it (rows of several runs share the table).
  const rows = nulls.map((r) => {
    const floor = floorP999(runs[r.run ?? 0] ?? []);
    const p = r.rounds.map((x) => x.flood.latency.p999Us);
    const p50 = median(r.rounds.map((x) => x.flood.latency.p50Us));
    const ratio = floor === undefined ? '—' : fmtRatio(median(p) / floor);
    const range = floor === undefined ? '' : ` (${spread(p, (x) => fmtRatio(x / floor))})`;
    return [
      `(${r.id}) ${r.name}`,
      fmtUs(p50),
      fmtUs(median(p)),
      floor === undefined ? 'not measured' : fmtUs(floor),
      `${ratio}${range}`,
      String((r.run ?? 0) + 1),
    ];
  });
  if (rows.length === 0) return '';
  const head = [
    'configuration',
    'A flood p50 µs',
    'A flood p99.9 µs',
    'machine floor p99.9 µs (its run)',
    'p99.9 / floor',
    'run',
  ];
  return [
    "The back end's own latency against the machine's floor (the null engine: no disk; the floor: cyclictest's p99.9 in the row's own run, median of the measurements before and after its rounds; the goal of 50 µs is below this machine's floor):",
    markdownTable(head, rows),
  ].join('\n\n');
}

/**
 * The markdown table: medians over rounds, with the spread of p99.9 and of the ratio.
 * `_runtime` is unused since rows of several runs (each with its own runtime) share the table.
 */
export function sdMarkdown(results: SdResult[], _runtime: number, rounds: number): string {
  const header = [
    'configuration',
    'A idle p50 / p99 / p99.9 µs',
    'A under flood p50 / p99 / p99.9 µs',
    'flood p99.9 spread µs',
    'p99.9 flood/idle (spread)',
    'B MB/s',
    'disk writes in flight p50 / max',
    "B in A's flood window: MB/s, held % of time, rate holds",
    'run',
    'rounds ok',
  ];
  const lat = (l: LatencySummary) => [l.p50Us, l.p99Us, l.p999Us].map(fmtUs).join(' / ');
  const rows = results.map((r) => {
    const name = `(${r.id}) ${r.name}`;
    if (r.rounds.length === 0)
      return [name, 'failed', r.failures[0] ?? '', '', '', '', '', '', '', '0'];
    const idle = medianLatency(r.rounds.map((x) => x.idle.latency));
    const flood = medianLatency(r.rounds.map((x) => x.flood.latency));
    const q = ratios(r);
    return [
      name,
      lat(idle),
      lat(flood),
      spread(
        r.rounds.map((x) => x.flood.latency.p999Us),
        (x) => fmtUs(x),
      ),
      `${fmtRatio(median(q))} (${spread(q, (x) => fmtRatio(x))})`,
      median(r.rounds.map((x) => x.b.mbPerSec)).toFixed(0),
      diskColumn(r),
      guardColumn(r),
      String((r.run ?? 0) + 1),
      `${r.rounds.length}/${rounds}`,
    ];
  });
  const details = results.map((r) => `- (${r.id}) ${r.detail}`);
  const failures = results.flatMap((r) => r.failures.map((f) => `- (${r.id}) ${f}`));
  return [
    `Device A: 4k randread QD1; device B: 1M sequential write QD32, started 1 s before A's flood run and outlasting it; one back-end process; both images are 1 GiB files on the same host disk. Interleaved rounds, as many and as long per measurement as the row's run (column "run", list above) states (0.5 s ramp); medians over the rounds, spread = min–max over the rounds. "Disk writes in flight": the host disk's sysfs inflight (requests dispatched to its driver) sampled every 10 ms during A's flood run: median of the per-round medians / largest sample.`,
    `How A is driven, by run ("run" column): in runs 1–4 A's idle and flood runs were two load-generator connections, and B started in the gap between them, with A not reading: the guard saw no RT neighbour and B wrote ~1 s unheld right before A was measured. From run 5 on, A is ONE connection that reads without a pause from its idle window through B's start into its flood window (bench/priority-inversion-a-client.ts), the steady state of an RT guest; B's guard counters (query-stats of B between the start and the end of A's measured flood window) are in the column "B in A's flood window": B's write rate then, the share of the window B's queue was held by the guard, and the guard's rate-term refusals.`,
    markdownTable(header, rows),
    'What ran:',
    details.join('\n'),
    ...(failures.length > 0 ? ['Failures:', failures.join('\n')] : []),
  ].join('\n\n');
}

/** The chart: per configuration, A idle and under flood (medians over the rounds). */
export function sdSvg(results: SdResult[]): string {
  const panels = results
    .filter((r) => r.rounds.length > 0)
    .map((r) => {
      const idle = medianLatency(r.rounds.map((x) => x.idle.latency));
      const flood = medianLatency(r.rounds.map((x) => x.flood.latency));
      return {
        title: `(${r.id}) ${r.name}`,
        rows: [
          { label: 'A idle', p50Us: idle.p50Us, p99Us: idle.p99Us, p999Us: idle.p999Us },
          {
            label: 'A under B flood',
            p50Us: flood.p50Us,
            p99Us: flood.p99Us,
            p999Us: flood.p999Us,
          },
        ],
      };
    });
  return latencyChartSvg(
    'One disk: device A 4k randread QD1 latency, idle vs B flooding (1M seq write QD32), medians over rounds',
    panels,
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string' },
      runtime: { type: 'string' },
      only: { type: 'string' },
      'b-limit': { type: 'string' },
      out: { type: 'string' },
      append: { type: 'boolean' },
    },
  });
  const rounds = Number(values.rounds ?? 3);
  const runtime = Number(values.runtime ?? 2);
  const bLimit = Number(values['b-limit'] ?? 64 * 2 ** 20);
  const out = values.out ?? join(REPO_ROOT, 'bench', 'results');
  const work = join(REPO_ROOT, '.cache', 'bench', `pisd-${process.pid}`);
  await mkdir(work, { recursive: true });
  const a = {
    image: join(REPO_ROOT, '.cache', 'bench', 'image-1g.raw'),
    socket: join(work, 'a.sock'),
  };
  const b = {
    image: join(REPO_ROOT, '.cache', 'bench', 'image-b-1g.raw'),
    socket: join(work, 'b.sock'),
  };
  ensureImage(a.image, 2 ** 30);
  ensureImage(b.image, 2 ** 30);
  const scheduler = ensureMqDeadline(a.image);
  process.stderr.write(`${scheduler}\n`);
  const inflight = inflightFile(a.image);
  const only = values.only?.split(',');
  const configs = sharedDiskConfigs(bLimit).filter((c) => !only || only.includes(c.id));
  const results: SdResult[] = configs.map((c) => ({
    id: c.id,
    name: c.name,
    detail: c.detail,
    rounds: [],
    failures: [],
  }));
  const started = new Date().toISOString();
  const floors: MachineFloor[] = [machineFloor(5)];
  process.stderr.write(`machine floor: ${fmtFloor(floors[0])}\n`);
  try {
    for (let round = 1; round <= rounds; round++) {
      for (let i = 0; i < configs.length; i++) {
        const c = configs[i];
        process.stderr.write(`[round ${round}/${rounds}] (${c.id}) ${c.name}... `);
        try {
          const r = await runRound(c, a, b, runtime, inflight);
          results[i].rounds.push(r);
          const q = r.flood.latency.p999Us / r.idle.latency.p999Us;
          const disk =
            r.disk === undefined
              ? ''
              : `, disk writes in flight p50 ${r.disk.writesP50} max ${r.disk.writesMax}`;
          const g =
            r.guard === undefined
              ? ''
              : `; in A's window B ${r.guard.bMbPerSec.toFixed(0)} MB/s, held ${(r.guard.heldUs / 1000).toFixed(0)} ms (${r.guard.heldRequests} requests), rate holds ${r.guard.rateHolds}`;
          process.stderr.write(
            `idle p99.9 ${fmtUs(r.idle.latency.p999Us)} flood p99.9 ${fmtUs(r.flood.latency.p999Us)} (${fmtRatio(q)})${disk}, B ${r.b.mbPerSec.toFixed(0)} MB/s${g}\n`,
          );
        } catch (err) {
          const why = (err as Error).message.split('\n')[0];
          results[i].failures.push(`round ${round}: ${why}`);
          process.stderr.write(`failed: ${why}\n`);
        }
      }
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  floors.push(machineFloor(5));
  const jsonPath = join(out, 'priority-inversion-shared-disk.json');
  const prior: { runs: SdRun[]; results: SdResult[] } = values.append
    ? loadPrior(jsonPath)
    : { runs: [], results: [] };
  const run = prior.runs.length;
  const runs: SdRun[] = [
    ...prior.runs,
    {
      date: started,
      rounds,
      runtimeSec: runtime,
      ids: results.map((r) => r.id),
      machineFloor: floors,
    },
  ];
  for (const r of results) r.run = run;
  // This run's rows replace the same rows of an earlier one; the order is the configurations'.
  const order = sharedDiskConfigs(bLimit).map((c) => c.id);
  const all = [
    ...prior.results.filter((p) => !results.some((r) => r.id === p.id)),
    ...results,
  ].sort((x, y) => order.indexOf(x.id) - order.indexOf(y.id));
  const setup = [
    `On a 2-CPU VM shared with other engineers (no KVM), under /tmp/with-bench-lock (no test run meanwhile; editors and builds may run), so the absolute figures carry some noise: compare rows of one run, and read the spread.`,
    `Disk scheduler: ${scheduler}.`,
  ].join(' ');
  const runLines = runs.map(
    (r, i) =>
      `- Run ${i + 1} (${r.date}), rows ${r.ids.map((id) => `(${id})`).join(' ')}: ${r.rounds} interleaved rounds of ${r.runtimeSec} s; \`npm run build:ts && node dist/bench/priority-inversion-shared-disk.js --rounds ${r.rounds} --runtime ${r.runtimeSec} --only ${r.ids.join(',')}${i > 0 ? ' --append' : ''}\`. The machine's own scheduling latency (the floor any back end sits on) before its rounds: ${fmtFloor(r.machineFloor[0])}; after: ${fmtFloor(r.machineFloor[1] ?? { note: 'not measured' })}.`,
  );
  const floorMd = floorMarkdown(
    all,
    runs.map((r) => r.machineFloor),
  );
  const md = [
    setup,
    runLines.join('\n'),
    sdMarkdown(all, runtime, rounds),
    ...(floorMd === '' ? [] : [floorMd]),
  ].join('\n\n');
  await writeText(join(out, 'priority-inversion-shared-disk.md'), md);
  await writeJson(jsonPath, { scheduler, bLimit, runs, results: all });
  await writeText(join(out, 'priority-inversion-shared-disk.svg'), sdSvg(all));
  process.stdout.write(`${md}\n`);
}

/** The runs and rows of an earlier report (`--append`); none when there is no report of this shape. */
function loadPrior(path: string): { runs: SdRun[]; results: SdResult[] } {
  try {
    const j = JSON.parse(readFileSync(path, 'utf8')) as { runs?: SdRun[]; results?: SdResult[] };
    if (!Array.isArray(j.runs) || !Array.isArray(j.results)) return { runs: [], results: [] };
    return { runs: j.runs, results: j.results };
  } catch {
    return { runs: [], results: [] };
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: Error) => {
    process.stderr.write(`priority-inversion-shared-disk: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  });
}
