/**
 * The network benchmark of record (issue 13). One question: how many frames
 * per second does `vhost-rt net` switch between two vhost-user ports, and at
 * what CPU cost per frame, against a DPDK vhost switch on the same core?
 *
 * Front end: one `dpdk-testpmd` with two `net_virtio_user` ports (an
 * independent virtio driver, millions of packets per second without a
 * guest), pinned to the front-end CPU. Switches under test, pinned together
 * to the switch CPU (taskset; every thread of the process):
 * - A: `vhost-rt net` with one port per socket (its port workers, main
 *   thread and logger all on that CPU);
 * - B: a DPDK `dpdk-testpmd` with two `net_vhost` ports forwarding port 0 ↔
 *   port 1 in io mode (a cross-connect, no learning: the reference ceiling).
 * Modes of the front end: `flowgen` (each port generates frames to the other
 * port's MAC and counts what it receives: an open loop, the switch's own
 * rate) and `io` (`start tx_first N`: N bursts per port, then every frame
 * received on one port is sent back out of the other unchanged — a closed
 * loop; frames a switch drops are gone for good). Frame sizes 64 and 1518
 * bytes (Ethernet frame without FCS).
 *
 * Variants of every case (`--variants`): `split` (split virtqueues, no
 * offloads negotiated), `packed` (the front end's vdevs with `packed_vq=1`:
 * packed virtqueues on both sides) and `offloads` (the front end asks for
 * checksum and TSO offloads — `--rx-offloads=0x1c --tx-offloads=0x2c`:
 * UDP/TCP checksum and LRO, UDP/TCP checksum and TSO; `--enable-rx-cksum`
 * also asks for IPv4 header checksums, which virtio has not, and the port
 * then fails to configure — so its virtio driver
 * negotiates CSUM, GUEST_CSUM, HOST/GUEST_TSO4/6; the DPDK switch is given
 * `tso=1` to offer them too). testpmd's flowgen and io engines put no
 * offload request in the frames they send, so `offloads` measures what
 * negotiating them costs the bare-frame fast path; frames that carry a
 * request are measured with guests (bench/net-guest-tcp.ts).
 *
 * Each case runs A and B in interleaved rounds (A/B, then B/A, ...): after
 * a warm-up the front end's port counters and the switch process's CPU time
 * (/proc/PID/task/∗/stat, utime + stime) are sampled twice, `--seconds`
 * apart. Reported per case: switched Mpps (frames the front end received,
 * both ports), Gbit/s (frame bytes), switch CPU µs per switched frame, lost
 * frames (sent by the front end minus received, as a share of sent), and
 * the A/B ratio per round; medians with min..max over the rounds. What else
 * ran on the machine (load average and the busiest processes) is recorded
 * before and after.
 *
 *   node dist/bench/net-dpdk.js [--rounds 3] [--seconds 5] [--warmup 2] [--sizes 64,1518]
 *     [--modes flowgen,io] [--switch-cpu 0] [--frontend-cpu 1] [--out bench/results/net-dpdk.json]
 *     [--md FILE] [--switch-args "..."] [--node-args "--cpu-prof --cpu-prof-dir=DIR"] [--only vhost-rt[,vhost-rt-baseline]]
 *     [--baseline DIR]   (a built checkout of another vhost-rt version: a third switch, interleaved)
 *     [--baseline-args="..."]  (its arguments, default --quiet; with `--baseline .` this build
 *                          again with other options, e.g. "--quiet --frame-loop typescript")
 *     [--variants split,packed,offloads]
 *
 * It installs Debian's dpdk packages when dpdk-testpmd is missing (needs root).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
} from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { crossCpuLatencyNs } from './cache-line-probe.js';
import { VHOST_RT_CLI } from './loadgen/backends.js';
import { fmtRatio, markdownTable, writeJson, writeText } from './report.js';

const MAC = ['02:00:00:00:13:00', '02:00:00:00:13:01'] as const;
const DPDK_PACKAGES = ['dpdk', 'dpdk-dev', 'librte-net-vhost23', 'librte-net-virtio23'];
/** `vhost-rt-baseline`: another build of vhost-rt (`--baseline DIR`), for before/after in one run. */
const SWITCHES = ['vhost-rt', 'dpdk-vhost', 'vhost-rt-baseline'] as const;
type SwitchKind = (typeof SWITCHES)[number];
type Mode = 'flowgen' | 'io';
const VARIANTS = ['split', 'packed', 'offloads'] as const;
/** Virtqueue layout and offloads of the front end (see the module comment). */
export type Variant = (typeof VARIANTS)[number];

/** Errors of the benchmark harness; `code` is stable. */
export class NetBenchError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'NetBenchError';
  }
}

/** One measured window of one switch in one case. */
export interface NetSample {
  round: number;
  switch: SwitchKind;
  mode: Mode;
  size: number;
  /** Split or packed rings, offloads negotiated or not. */
  variant: Variant;
  seconds: number;
  /** Frames received by the front end (both ports) per second, in millions. */
  mpps: number;
  /** Frame bits received per second, in 10^9. */
  gbps: number;
  /** Frames the front end sent per second, in millions. */
  txMpps: number;
  /** (sent - received) / sent over the window (negative: frames from before it). */
  lossShare: number;
  /** CPU time of the switch process per switched frame, µs. */
  cpuUsPerFrame: number;
  /** CPU time of the switch process per second of the window (1 = one whole CPU). */
  cpuLoad: number;
  /**
   * One-way cache-line latency between the switch's and the front end's CPU,
   * ns, measured just before this sample's switch started (cache-line-probe.ts:
   * the machine's state for this round; absent in older results files).
   */
  cacheLineNs?: number;
}

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch {
    return '';
  }
}

/** Installs the DPDK packages unless dpdk-testpmd is already there. */
function ensureDpdk(): void {
  if (sh('sh', ['-c', 'command -v dpdk-testpmd']).trim() !== '') return;
  console.error(`net-dpdk: installing ${DPDK_PACKAGES.join(' ')}`);
  execFileSync('apt-get', ['update'], { stdio: 'inherit' });
  execFileSync(
    'apt-get',
    ['-o', 'DPkg::Lock::Timeout=600', 'install', '-y', '--no-install-recommends', ...DPDK_PACKAGES],
    { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } },
  );
}

/** What else runs on the machine: load average and the busiest processes. */
function machineLoad(): string {
  const top = sh('ps', ['-eo', 'pcpu,comm', '--sort=-pcpu', '--no-headers'])
    .split('\n')
    .slice(0, 8)
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .join(', ');
  return `loadavg ${loadavg()
    .map((v) => v.toFixed(2))
    .join(' ')}; top %CPU: ${top}`;
}

const TICKS = Number(sh('getconf', ['CLK_TCK']).trim()) || 100;

/** CPU seconds (user + system) of every thread of process `pid`. */
function cpuSeconds(pid: number): number {
  let ticks = 0;
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return Number.NaN;
  }
  for (const t of tasks) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      // Fields after the command (which may hold spaces) start at ") ".
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
    } catch {
      // the thread ended meanwhile
    }
  }
  return ticks / TICKS;
}

/** A testpmd driven through its interactive prompt on stdin. */
class Testpmd {
  private out = '';
  readonly exited: Promise<number | null>;

  constructor(readonly child: ChildProcess) {
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (d: string) => {
      this.out += d;
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => {
      this.out += d;
    });
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Everything it printed so far. */
  get output(): string {
    return this.out;
  }

  /** Waits for `re` in what was printed after offset `from`; returns the match. */
  async waitFor(re: RegExp, from: number, timeoutMs: number): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.out.slice(from));
      if (m !== null) return m;
      if (this.child.exitCode !== null || Date.now() > deadline) {
        throw new NetBenchError(
          'BENCH_TESTPMD',
          `testpmd (pid ${this.pid}) did not print ${re}: ${this.out.slice(-2000)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Sends one command line and waits for the next prompt; returns what it printed. */
  async command(line: string, until = /testpmd> /, timeoutMs = 15_000): Promise<string> {
    const from = this.out.length;
    this.child.stdin?.write(`${line}\n`);
    await this.waitFor(until, from, timeoutMs);
    return this.out.slice(from);
  }

  /**
   * Waits for `pattern` as {@link waitFor}; on failure kills the process and waits for its
   * exit before rethrowing, so a testpmd that never started is not left running (the retry
   * starts another, and the leaked one kept the bench from exiting).
   */
  async started(pattern: RegExp, timeoutMs: number): Promise<void> {
    try {
      await this.waitFor(pattern, 0, timeoutMs);
    } catch (err) {
      if (this.child.exitCode === null && this.child.signalCode === null)
        this.child.kill('SIGKILL');
      await this.exited;
      throw err;
    }
  }

  async quit(): Promise<void> {
    if (this.child.exitCode === null) {
      this.child.stdin?.write('quit\n');
      const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
      await this.exited;
      clearTimeout(t);
    }
  }
}

/** Per port: RX/TX packets and bytes of a `show port stats all`. */
interface PortCounters {
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
}

function parsePortStats(text: string): PortCounters[] {
  const ports: PortCounters[] = [];
  const blocks = text.split(/NIC statistics for port/).slice(1);
  for (const b of blocks) {
    const n = (re: RegExp) => Number(re.exec(b)?.[1] ?? Number.NaN);
    ports.push({
      rxPackets: n(/RX-packets:\s*(\d+)/),
      rxBytes: n(/RX-bytes:\s*(\d+)/),
      txPackets: n(/TX-packets:\s*(\d+)/),
      txBytes: n(/TX-bytes:\s*(\d+)/),
    });
  }
  if (ports.length !== 2 || ports.some((p) => Object.values(p).some(Number.isNaN)))
    throw new NetBenchError('BENCH_STATS', `unexpected port stats: ${text.slice(0, 800)}`);
  return ports;
}

/** The end of the second port's block of `show port stats all`. */
const STATS_END = /NIC statistics for port 1[\s\S]*Tx-pps[^\n]*\n[^\n]*#{10,}/;

const sum = (ps: PortCounters[], k: keyof PortCounters) => ps.reduce((n, p) => n + p[k], 0);

async function waitSockets(paths: string[], proc: ChildProcess, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!paths.every(existsSync)) {
    if (proc.exitCode !== null || Date.now() > deadline)
      throw new NetBenchError('BENCH_SWITCH', `${what} did not create ${paths.join(', ')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface RunningSwitch {
  pid: number;
  stop(): Promise<string>;
}

/** `vhost-rt net` on two sockets, every thread on `cpu`. */
async function startVhostRt(
  socks: string[],
  cpu: number,
  extra: string[],
  nodeArgs: string[],
  cli = VHOST_RT_CLI,
): Promise<RunningSwitch> {
  const args = ['-c', String(cpu), process.execPath, ...nodeArgs, cli, 'net', ...extra];
  for (const s of socks) args.push('--socket-path', s);
  // NET_DPDK_SWITCH_STDOUT=FILE keeps the switch's stdout (V8 traces such as --trace-gc go there).
  const outPath = process.env.NET_DPDK_SWITCH_STDOUT;
  const out = outPath ? openSync(outPath, 'a') : 'ignore';
  const child = spawn('taskset', args, { stdio: ['ignore', out, 'pipe'] });
  if (typeof out === 'number') closeSync(out);
  let err = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (d: string) => {
    err += d;
  });
  const exited = new Promise((r) => child.once('exit', r));
  await waitSockets(socks, child, 'vhost-rt net');
  return {
    pid: child.pid ?? -1,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
      return err;
    },
  };
}

function eal(cpu: number, prefix: string): string[] {
  // Two lcores (main + one forwarding) both on `cpu`; the main one sleeps at the prompt.
  return [
    '--no-pci',
    '--no-huge',
    '-m',
    '256',
    `--file-prefix=${prefix}`,
    `--lcores=0@${cpu},1@${cpu}`,
  ];
}

function spawnTestpmd(args: string[]): Testpmd {
  return new Testpmd(
    spawn('stdbuf', ['-o0', '-e0', 'dpdk-testpmd', ...args], { stdio: ['pipe', 'pipe', 'pipe'] }),
  );
}

/** The reference: a DPDK testpmd switching two net_vhost ports in io mode on `cpu`. */
async function startDpdkSwitch(
  socks: string[],
  cpu: number,
  prefix: string,
  variant: Variant,
): Promise<RunningSwitch> {
  const args = [...eal(cpu, prefix)];
  // tso=1: the vhost library then offers the TSO features (off by default).
  const tso = variant === 'offloads' ? ',tso=1' : '';
  for (const [i, s] of socks.entries())
    args.push('--vdev', `net_vhost${i},iface=${s},queues=1${tso}`);
  args.push(
    '--',
    '-i',
    '--forward-mode=io',
    '--nb-cores=1',
    '--total-num-mbufs=32768',
    '--auto-start',
  );
  const pmd = spawnTestpmd(args);
  await pmd.started(/testpmd> /, 30_000);
  try {
    await waitSockets(socks, pmd.child, 'dpdk net_vhost');
  } catch (err) {
    await pmd.quit();
    throw err;
  }
  return {
    pid: pmd.pid,
    stop: async () => {
      await pmd.quit();
      return pmd.output;
    },
  };
}

/** The front end: two net_virtio_user ports on `cpu`, in `mode`. */
async function startFrontend(
  socks: string[],
  cpu: number,
  prefix: string,
  mode: Mode,
  size: number,
  queueSize: number,
  variant: Variant,
): Promise<Testpmd> {
  const args = [...eal(cpu, prefix)];
  const packed = variant === 'packed' ? ',packed_vq=1' : '';
  for (const [i, s] of socks.entries())
    args.push(
      '--vdev',
      `net_virtio_user${i},path=${s},mac=${MAC[i]},queues=1,queue_size=${queueSize}${packed}`,
    );
  args.push('--', '-i', `--forward-mode=${mode}`, '--nb-cores=1', '--total-num-mbufs=32768');
  // RX: UDP (0x4) and TCP (0x8) checksum, LRO (0x10); TX: the same checksums and TCP TSO
  // (0x20). The virtio driver negotiates GUEST_CSUM / GUEST_TSO4/6 and CSUM / HOST_TSO4/6
  // only when asked for them.
  if (variant === 'offloads') args.push('--rx-offloads=0x1c', '--tx-offloads=0x2c');
  args.push(`--txpkts=${size}`);
  args.push(`--eth-peer=0,${MAC[1]}`, `--eth-peer=1,${MAC[0]}`);
  const pmd = spawnTestpmd(args);
  await pmd.started(/testpmd> /, 30_000);
  return pmd;
}

interface CaseOptions {
  round: number;
  kind: SwitchKind;
  mode: Mode;
  size: number;
  variant: Variant;
  seconds: number;
  warmup: number;
  switchCpu: number;
  frontendCpu: number;
  switchArgs: string[];
  /** Node options of the vhost-rt process (e.g. --cpu-prof). */
  nodeArgs: string[];
  /** The CLI of the baseline build (`--baseline DIR`: DIR/dist/src/cli/main.js). */
  baselineCli: string;
  /** Arguments of the baseline switch (`--baseline-args`). */
  baselineArgs: string[];
  /** The front end's ring size (vhost-rt is started with `--queue-size` to match). */
  queueSize: number;
}

let runs = 0;

/** Runs one switch through one case and measures one window. */
async function measure(o: CaseOptions): Promise<NetSample & { log: string }> {
  // Before anything polls either CPU: the probe needs both to itself.
  const cacheLineNs = await crossCpuLatencyNs(o.switchCpu, o.frontendCpu);
  const dir = mkdtempSync(join(tmpdir(), 'vhrt-net-dpdk-'));
  const socks = [join(dir, 'p0.sock'), join(dir, 'p1.sock')];
  const tag = `vhrtb${process.pid}x${runs++}`;
  const sw =
    o.kind === 'dpdk-vhost'
      ? await startDpdkSwitch(socks, o.switchCpu, `${tag}s`, o.variant)
      : await startVhostRt(
          socks,
          o.switchCpu,
          [
            ...(o.kind === 'vhost-rt' ? o.switchArgs : o.baselineArgs),
            '--queue-size',
            `${o.queueSize}`,
          ],
          o.nodeArgs,
          o.kind === 'vhost-rt' ? VHOST_RT_CLI : o.baselineCli,
        );
  let fe: Testpmd | null = null;
  const result = { log: '' };
  try {
    fe = await startFrontend(
      socks,
      o.frontendCpu,
      `${tag}f`,
      o.mode,
      o.size,
      o.queueSize,
      o.variant,
    );
    // The links come up once the back end has taken the rings: frames sent
    // before are lost, and io mode never gets them back.
    await fe
      .waitFor(/Port 1: link state change event|Link status: up/, 0, 5_000)
      .catch(() => undefined);
    await new Promise((r) => setTimeout(r, 1000));
    await fe.command(o.mode === 'io' ? 'start tx_first 8' : 'start');
    await new Promise((r) => setTimeout(r, o.warmup * 1000));
    const before = parsePortStats(await fe.command('show port stats all', STATS_END));
    const cpu0 = cpuSeconds(sw.pid);
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, o.seconds * 1000));
    const after = parsePortStats(await fe.command('show port stats all', STATS_END));
    const cpu1 = cpuSeconds(sw.pid);
    const dt = (performance.now() - t0) / 1000;
    const stopped = await fe.command('stop', /Done|Telling cores to stop[\s\S]*testpmd> /);
    if (process.env.NET_DPDK_DEBUG) console.error(stopped);
    const rx = sum(after, 'rxPackets') - sum(before, 'rxPackets');
    const tx = sum(after, 'txPackets') - sum(before, 'txPackets');
    const rxBytes = sum(after, 'rxBytes') - sum(before, 'rxBytes');
    return Object.assign(result, {
      round: o.round,
      switch: o.kind,
      mode: o.mode,
      size: o.size,
      variant: o.variant,
      seconds: dt,
      mpps: rx / dt / 1e6,
      gbps: (rxBytes * 8) / dt / 1e9,
      txMpps: tx / dt / 1e6,
      lossShare: tx > 0 ? (tx - rx) / tx : 0,
      cpuUsPerFrame: rx > 0 ? ((cpu1 - cpu0) * 1e6) / rx : Number.NaN,
      cpuLoad: (cpu1 - cpu0) / dt,
      cacheLineNs,
    });
  } finally {
    await fe?.quit();
    result.log = await sw.stop();
    rmSync(dir, { recursive: true, force: true });
    for (const p of [`${tag}s`, `${tag}f`])
      rmSync(`/var/run/dpdk/${p}`, { recursive: true, force: true });
  }
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? Number.NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function spread(v: number[], digits: number, scale = 1): string {
  const f = (x: number) => (x * scale).toFixed(digits);
  return `${f(median(v))} (${f(Math.min(...v))}..${f(Math.max(...v))})`;
}

/** The markdown table of all cases. */
export function netReport(samples: NetSample[]): string {
  const rows: string[][] = [];
  // Samples of results files written before variants existed are `split`.
  const variantOf = (s: NetSample) => s.variant ?? 'split';
  const cases = [...new Set(samples.map((s) => `${s.mode}|${s.size}|${variantOf(s)}`))];
  for (const c of cases) {
    const [mode, size, variant] = c.split('|');
    const of = (k: SwitchKind) =>
      samples.filter(
        (s) =>
          s.mode === mode && `${s.size}` === size && variantOf(s) === variant && s.switch === k,
      );
    const ratiosOf = (k: SwitchKind) => {
      const out: number[] = [];
      for (const a of of(k)) {
        const b = of('dpdk-vhost').find((s) => s.round === a.round);
        if (b !== undefined && b.mpps > 0) out.push(a.mpps / b.mpps);
      }
      return out;
    };
    for (const k of SWITCHES) {
      const xs = of(k);
      if (xs.length === 0) continue;
      const ratios = k === 'dpdk-vhost' ? [] : ratiosOf(k);
      rows.push([
        `${mode} ${size} B${variant === 'split' ? '' : ` ${variant}`}`,
        k,
        spread(
          xs.map((s) => s.mpps),
          3,
        ),
        spread(
          xs.map((s) => s.gbps),
          2,
        ),
        spread(
          xs.map((s) => s.cpuUsPerFrame),
          3,
        ),
        spread(
          xs.map((s) => s.cpuLoad),
          2,
        ),
        spread(
          xs.map((s) => s.lossShare),
          2,
          100,
        ),
        ratios.length > 0
          ? `${fmtRatio(median(ratios))} (${fmtRatio(Math.min(...ratios))}..${fmtRatio(Math.max(...ratios))})`
          : '',
        xs.every((s) => s.cacheLineNs !== undefined)
          ? spread(
              xs.map((s) => s.cacheLineNs as number),
              0,
            )
          : '',
      ]);
    }
  }
  return markdownTable(
    [
      'case',
      'switch',
      'Mpps switched',
      'Gbit/s',
      'switch CPU µs/frame',
      'switch CPUs busy',
      'lost % of sent',
      'Mpps ratio to DPDK, per round',
      'CPU↔CPU cache line, ns one way',
    ],
    rows,
  );
}

/**
 * Every sample on its own line, in the order measured: which rounds ran on a
 * slow placement of the machine's CPUs shows in the cache-line column.
 */
export function roundsReport(samples: NetSample[]): string {
  return markdownTable(
    ['round', 'case', 'switch', 'Mpps', 'switch CPU µs/frame', 'switch CPUs busy', 'cache line ns'],
    samples.map((s) => [
      `${s.round}`,
      `${s.mode} ${s.size} B${(s.variant ?? 'split') === 'split' ? '' : ` ${s.variant}`}`,
      s.switch,
      s.mpps.toFixed(3),
      s.cpuUsPerFrame.toFixed(3),
      // Below ~0.9 the switch waited for frames: the front end's CPU was the limit.
      `${s.cpuLoad.toFixed(2)}${s.cpuLoad < 0.9 ? ' (front-end bound)' : ''}`,
      s.cacheLineNs === undefined ? '' : s.cacheLineNs.toFixed(0),
    ]),
  );
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    options: {
      rounds: { type: 'string', default: '3' },
      seconds: { type: 'string', default: '5' },
      warmup: { type: 'string', default: '2' },
      sizes: { type: 'string', default: '64,1518' },
      modes: { type: 'string', default: 'flowgen,io' },
      'switch-cpu': { type: 'string', default: '0' },
      'frontend-cpu': { type: 'string', default: '1' },
      'switch-args': { type: 'string', default: '--quiet' },
      'baseline-args': { type: 'string', default: '--quiet' },
      'queue-size': { type: 'string', default: '1024' },
      'node-args': { type: 'string', default: '' },
      only: { type: 'string' },
      baseline: { type: 'string' },
      out: { type: 'string', default: 'bench/results/net-dpdk.json' },
      md: { type: 'string' },
      variants: { type: 'string', default: 'split' },
    },
  });
  ensureDpdk();
  const variants = (v.variants as string).split(',') as Variant[];
  for (const x of variants)
    if (!VARIANTS.includes(x)) throw new RangeError(`--variants: unknown variant ${x}`);
  const rounds = Number(v.rounds);
  const sizes = (v.sizes as string).split(',').map(Number);
  const modes = (v.modes as string).split(',') as Mode[];
  const kinds: SwitchKind[] =
    v.only !== undefined
      ? ((v.only as string).split(',') as SwitchKind[])
      : v.baseline !== undefined
        ? [...SWITCHES]
        : ['vhost-rt', 'dpdk-vhost'];
  const base = {
    seconds: Number(v.seconds),
    warmup: Number(v.warmup),
    switchCpu: Number(v['switch-cpu']),
    frontendCpu: Number(v['frontend-cpu']),
    switchArgs: (v['switch-args'] as string).split(' ').filter((a) => a !== ''),
    baselineArgs: (v['baseline-args'] as string).split(' ').filter((a) => a !== ''),
    nodeArgs: (v['node-args'] as string).split(' ').filter((a) => a !== ''),
    baselineCli: join(v.baseline ?? '.', 'dist', 'src', 'cli', 'main.js'),
    queueSize: Number(v['queue-size']),
  };
  const loadBefore = machineLoad();
  const startedAt = new Date().toISOString();
  const samples: NetSample[] = [];
  for (let round = 0; round < rounds; round++) {
    for (const mode of modes) {
      for (const size of sizes) {
        for (const variant of variants) {
          // Interleaved: A/B(/C) in even rounds, reversed in odd ones.
          const order = round % 2 === 0 ? kinds : [...kinds].reverse();
          for (const kind of order) {
            // One retry: a front end that failed to start must not end the whole run.
            const c = { ...base, round, kind, mode, size, variant };
            const s = await measure(c).catch((err) => {
              console.error(
                `round ${round} ${mode} ${size} B ${variant} ${kind}: retrying after ${err}`,
              );
              return measure(c);
            });
            const { log, ...sample } = s;
            if (process.env.NET_DPDK_DEBUG) console.error(log.slice(-3000));
            samples.push(sample);
            console.error(
              `round ${round} ${mode} ${size} B ${variant} ${kind}: ${s.mpps.toFixed(3)} Mpps, ${s.gbps.toFixed(2)} Gbit/s, ` +
                `${s.cpuUsPerFrame.toFixed(3)} µs CPU/frame (${s.cpuLoad.toFixed(2)} CPUs), lost ${(100 * s.lossShare).toFixed(2)} %, ` +
                `cache line ${s.cacheLineNs?.toFixed(0)} ns`,
            );
          }
        }
      }
    }
  }
  const loadAfter = machineLoad();
  const table = `${netReport(samples)}\n\nPer sample, in the order measured:\n\n${roundsReport(samples)}`;
  const conditions = [
    `started ${startedAt}, ended ${new Date().toISOString()}; ${rounds} rounds, ${base.seconds} s windows after ${base.warmup} s warm-up`,
    `switch on CPU ${base.switchCpu} (taskset, every thread), front end on CPU ${base.frontendCpu}; rings of ${base.queueSize}; vhost-rt args: ${base.switchArgs.join(' ')} --queue-size ${base.queueSize}; baseline args: ${base.baselineArgs.join(' ')}`,
    `before: ${loadBefore}`,
    `after: ${loadAfter}`,
  ];
  console.log(table);
  console.log(conditions.map((c) => `- ${c}`).join('\n'));
  await writeJson(v.out as string, { conditions, samples });
  if (v.md !== undefined)
    await writeText(v.md, `${table}\n\n${conditions.map((c) => `- ${c}`).join('\n')}\n`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
