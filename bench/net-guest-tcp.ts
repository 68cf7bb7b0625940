/**
 * Guest-to-guest TCP throughput (issue 13). One question: how fast does one
 * TCP stream go between two QEMU TCG guests through `vhost-rt net`, with the
 * virtio-net offloads on and off, against two guests wired by QEMU itself?
 *
 * Variants, each two fresh guests (1 vCPU, 256 MiB, the test image), run in
 * interleaved rounds (the order reversed every other round):
 * - `vhost-rt offloads`: both NICs vhost-user ports of one `vhost-rt net`,
 *   QEMU's default virtio-net properties (CSUM, GUEST_CSUM, HOST/GUEST_TSO4/6
 *   negotiated: 64 KiB TCP frames pass the switch with their header);
 * - `vhost-rt sender offloads only`: A (the sender) with offloads, B
 *   without: the switch segments A's 64 KiB frames and completes their
 *   checksums for B, in software;
 * - `vhost-rt no offloads`: the same with every offload property off
 *   (csum=off, guest_csum=off, host_tso4=off, ...): 1514-byte frames,
 *   checksummed by the guests;
 * - `qemu stream`: QEMU's own virtio-net on both ends of a `-netdev stream`
 *   pair over a Unix socket (QEMU 7.2 has `-netdev stream`; it carries no
 *   vnet header, so QEMU offers no offloads): the QEMU-native reference.
 * Guest A sends `--mb` MiB (from /dev/urandom, written to tmpfs first) with
 * busybox nc to guest B; the time is A's, from just before nc to its exit
 * (the guest clock, CLOCK_MONOTONIC via /proc/timer_list), and md5 sums are
 * compared. CPU: user + system time of both QEMU processes and the switch
 * between the start and end lines (host /proc), per MiB moved.
 *
 *   node dist/bench/net-guest-tcp.js [--rounds 3] [--mb 32] [--variants a,b,c]
 *     [--out bench/results/net-guest-tcp.json] [--md FILE]
 *
 * Run it under /tmp/with-bench-lock on a shared machine; TCG makes the
 * guests' CPUs the limit, so the figures compare paths, not line rates.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import {
  bootNetGuest,
  type NetGuest,
  NO_OFFLOADS,
  netUp,
  streamNic,
  vhostUserNic,
  waitPeer,
} from '../test/support/net-guests.js';
import { VHOST_RT_CLI } from './loadgen/backends.js';
import { fmtRatio, markdownTable, writeJson, writeText } from './report.js';

const VARIANTS = [
  'vhost-rt offloads',
  'vhost-rt sender offloads only',
  'vhost-rt no offloads',
  'qemu stream',
] as const;
type Variant = (typeof VARIANTS)[number];
const IP_A = '169.254.12.1';
const IP_B = '169.254.12.2';
const MAC_A = '52:54:00:00:aa:21';
const MAC_B = '52:54:00:00:bb:22';

/** One transfer. */
export interface TcpSample {
  round: number;
  variant: Variant;
  mib: number;
  /** Guest A's time for the transfer, s. */
  seconds: number;
  /** MiB/s. */
  mibPerS: number;
  /** Host CPU seconds (both QEMUs + switch) per MiB. */
  cpuSPerMib: number;
  /** md5 equal on both ends. */
  intact: boolean;
}

const TICKS = 100;

/** CPU seconds (user + system) of every thread of `pid`; 0 when it is gone. */
function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return 0;
  let ticks = 0;
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return 0;
  }
  for (const t of tasks) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]);
    } catch {
      // the thread ended meanwhile
    }
  }
  return ticks / TICKS;
}

async function waitPath(path: string, what: string, proc?: ChildProcess): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!existsSync(path)) {
    if (Date.now() > deadline || (proc !== undefined && proc.exitCode !== null))
      throw new Error(`${what} did not create ${path}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function scripts(mib: number): { a: string; b: string } {
  const b = `${netUp(IP_B)}${waitPeer(IP_A)}
nc -l -p 5000 > /tmp/f
echo "B_MD5 $(md5sum < /tmp/f | cut -d' ' -f1) $(wc -c < /tmp/f)"
sleep 600
`;
  const a = `${netUp(IP_A)}${waitPeer(IP_B)}
dd if=/dev/urandom of=/tmp/f bs=1M count=${mib} 2>/dev/null
echo "A_MD5 $(md5sum < /tmp/f | cut -d' ' -f1)"
sleep 1
echo A_GO
t0=$(now_ns)
n=0; until nc ${IP_B} 5000 < /tmp/f; do n=$((n+1)); [ $n -lt 20 ] || exit 12; sleep 1; t0=$(now_ns); done
echo "A_SENT ns=$(($(now_ns) - t0))"
sleep 600
`;
  return { a, b };
}

/** One transfer in `variant`. */
async function measure(round: number, variant: Variant, mib: number): Promise<TcpSample> {
  const dir = mkdtempSync(join(tmpdir(), 'vhrt-guest-tcp-'));
  const guests: NetGuest[] = [];
  let daemon: ChildProcess | undefined;
  try {
    const { a: scriptA, b: scriptB } = scripts(mib);
    let nicA: string[];
    let nicB: string[];
    if (variant === 'qemu stream') {
      const path = join(dir, 'stream.sock');
      nicB = streamNic(path, true, MAC_B);
      nicA = streamNic(path, false, MAC_A);
    } else {
      const sa = join(dir, 'a.sock');
      const sb = join(dir, 'b.sock');
      daemon = spawn(
        process.execPath,
        [VHOST_RT_CLI, 'net', '--quiet', '--socket-path', sa, '--socket-path', sb],
        { stdio: 'ignore' },
      );
      await waitPath(sb, 'vhost-rt net', daemon);
      const offA = variant !== 'vhost-rt no offloads';
      const offB = variant === 'vhost-rt offloads';
      nicA = vhostUserNic(sa, MAC_A, offA ? '' : NO_OFFLOADS);
      nicB = vhostUserNic(sb, MAC_B, offB ? '' : NO_OFFLOADS);
    }
    const b = bootNetGuest('b', dir, nicB, scriptB);
    guests.push(b);
    // The stream client connects once at start: the server must listen first.
    if (variant === 'qemu stream') await waitPath(join(dir, 'stream.sock'), 'qemu stream server');
    const a = bootNetGuest('a', dir, nicA, scriptA);
    guests.push(a);
    const md5A = (await a.waitFor(/A_MD5 ([0-9a-f]{32})\n/, 120_000))[1];
    await a.waitFor(/A_GO\n/, 30_000);
    const pids = [a.proc.pid, b.proc.pid, daemon?.pid];
    const cpu = () => pids.reduce<number>((sum, p) => sum + cpuSeconds(p), 0);
    const cpu0 = cpu();
    const ns = Number((await a.waitFor(/A_SENT ns=(\d+)\n/, 300_000))[1]);
    const cpu1 = cpu();
    const got = await b.waitFor(/B_MD5 ([0-9a-f]{32}) (\d+)\n/, 60_000);
    const seconds = ns / 1e9;
    return {
      round,
      variant,
      mib,
      seconds,
      mibPerS: mib / seconds,
      cpuSPerMib: (cpu1 - cpu0) / mib,
      intact: got[1] === md5A && Number(got[2]) === mib << 20,
    };
  } finally {
    await Promise.all(guests.map((g) => g.kill()));
    if (daemon !== undefined && daemon.exitCode === null) {
      const exited = new Promise((r) => daemon?.once('exit', r));
      daemon.kill('SIGTERM');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

function median(v: number[]): number {
  const s = [...v].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length === 0 ? Number.NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function spread(v: number[], digits: number): string {
  return `${median(v).toFixed(digits)} (${Math.min(...v).toFixed(digits)}..${Math.max(...v).toFixed(digits)})`;
}

/** The markdown table: per variant MiB/s, CPU s/MiB and the per-round ratio to `qemu stream`. */
export function tcpReport(samples: TcpSample[]): string {
  const rows: string[][] = [];
  for (const v of VARIANTS) {
    const xs = samples.filter((s) => s.variant === v);
    if (xs.length === 0) continue;
    const ratios: number[] = [];
    for (const s of xs) {
      const ref = samples.find((r) => r.variant === 'qemu stream' && r.round === s.round);
      if (ref !== undefined && v !== 'qemu stream') ratios.push(s.mibPerS / ref.mibPerS);
    }
    rows.push([
      v,
      spread(
        xs.map((s) => s.mibPerS),
        1,
      ),
      spread(
        xs.map((s) => s.cpuSPerMib),
        3,
      ),
      ratios.length === 0
        ? ''
        : `${fmtRatio(median(ratios))} (${fmtRatio(Math.min(...ratios))}..${fmtRatio(Math.max(...ratios))})`,
      xs.every((s) => s.intact) ? 'yes' : 'NO',
    ]);
  }
  return markdownTable(
    ['variant', 'MiB/s', 'host CPU s per MiB', 'ratio to qemu stream, per round', 'md5 equal'],
    rows,
  );
}

function machineLoad(): string {
  return `loadavg ${loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')}`;
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    options: {
      rounds: { type: 'string', default: '3' },
      mb: { type: 'string', default: '32' },
      variants: { type: 'string', default: VARIANTS.join(',') },
      out: { type: 'string', default: 'bench/results/net-guest-tcp.json' },
      md: { type: 'string' },
    },
  });
  const rounds = Number(v.rounds);
  const mib = Number(v.mb);
  const variants = (v.variants as string).split(',') as Variant[];
  for (const x of variants)
    if (!VARIANTS.includes(x)) throw new RangeError(`--variants: unknown variant ${x}`);
  const startedAt = new Date().toISOString();
  const before = machineLoad();
  const samples: TcpSample[] = [];
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? variants : [...variants].reverse();
    for (const variant of order) {
      const s = await measure(round, variant, mib);
      samples.push(s);
      console.error(
        `round ${round} ${variant}: ${s.mibPerS.toFixed(1)} MiB/s, ${s.cpuSPerMib.toFixed(3)} CPU s/MiB, md5 ${s.intact ? 'equal' : 'DIFFERENT'}`,
      );
    }
  }
  const table = tcpReport(samples);
  const conditions = [
    `started ${startedAt}, ended ${new Date().toISOString()}; ${rounds} rounds of ${mib} MiB per variant, interleaved`,
    `before: ${before}; after: ${machineLoad()}`,
  ];
  console.log(table);
  console.log(conditions.map((c) => `- ${c}`).join('\n'));
  await writeJson(v.out as string, { conditions, samples });
  if (v.md !== undefined)
    await writeText(v.md, `${table}\n\n${conditions.map((c) => `- ${c}`).join('\n')}\n`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
