/**
 * One question (issue 12, `method: redirect`): what does a guest write cost the daemon's CPU
 * while a redirect backup runs, with a sparse overlay (the default: the file system allocates
 * each block at its first write) against a prefilled one (`prefill-overlay`: every block was
 * written once before the start instant)? An O_DIRECT write into a hole of an ext4 file
 * allocates inside io_submit, on the thread that submits it — the device's worker — and
 * converts the extent afterwards in a kernel worker; an overwrite does neither.
 *
 * Two daemons, each with its own image (each overlay sits next to its image), the same load
 * generator (4k randwrite, QD32) on one at a time. Per round and variant, in alternating order:
 * an idle window, then a window during a full redirect backup whose copier is kept quiet
 * (`yield-ms` 1000: a disk-pass read waits for a guest pause, at most 1 s, so the window
 * measures the guest's writes, not the copy), then the cancel and the merge (BACKUP_MERGED)
 * before the next window. Reported per window: IOPS, p50 and p99.9, the daemon's CPU per write
 * (user + system, all threads), its busiest thread's (the device worker), and the kernel
 * workers' (kworker threads, system-wide). CPU is counted from /proc in clock ticks; the load
 * generator runs in this process and is not counted. Medians over the rounds with min..max.
 * Writes bench/results/redirect-cpu.json.
 *
 *   node dist/bench/redirect-cpu.js [--rounds N] [--seconds S] [--image-mib N] [--speed MiB/s]
 */
import { readdirSync, readFileSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { redirectPath } from '../src/io/redirect-file.js';
import { QmpClient } from '../test/support/qmp-client.js';
import { waitFor } from '../test/support/wait.js';
import { type Backend, ensureImage, REPO_ROOT, startVhostRt } from './loadgen/backends.js';
import { type LoadResult, runLoad } from './loadgen/generator.js';
import { markdownTable, writeText } from './report.js';

const MiB = 1024 * 1024;
/** Clock ticks per second of /proc's utime and stime (USER_HZ; 100 on every Linux port). */
const USER_HZ = 100;
/** The longest a merge may take before the bench gives up (ms). */
const MERGE_TIMEOUT_MS = 600_000;

type Variant = 'sparse' | 'prefilled';
type Phase = 'idle' | 'backup';

interface Window {
  round: number;
  variant: Variant;
  phase: Phase;
  iops: number;
  p50Us: number;
  p999Us: number;
  /** The daemon's CPU (all threads) per write, µs. */
  daemonUsPerWrite: number;
  /** The daemon's busiest thread's CPU per write, µs. */
  busiestUsPerWrite: number;
  /** Every kworker thread's CPU per write, µs (system-wide). */
  kworkerUsPerWrite: number;
}

/** utime + stime of /proc/.../stat's text, in ticks; the name is between the parentheses. */
function ticksOf(stat: string): { name: string; ticks: number } {
  const close = stat.lastIndexOf(')');
  const fields = stat.slice(close + 2).split(' ');
  // Fields after the name: state is [0], utime [11], stime [12].
  return {
    name: stat.slice(stat.indexOf('(') + 1, close),
    ticks: Number(fields[11]) + Number(fields[12]),
  };
}

/** Ticks of each thread of `pid`, by thread id. */
function threadTicks(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      out.set(tid, ticksOf(readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')).ticks);
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return out;
}

/** Ticks of every kworker thread on the machine. */
function kworkerTicks(): number {
  let sum = 0;
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const t = ticksOf(readFileSync(`/proc/${p}/stat`, 'utf8'));
      if (t.name.startsWith('kworker')) sum += t.ticks;
    } catch {
      // The process ended between the listing and the read.
    }
  }
  return sum;
}

/** One measured window on `b`: the load, and the CPU its writes cost. */
async function measure(
  b: Backend,
  seconds: number,
): Promise<Omit<Window, 'round' | 'variant' | 'phase'>> {
  const t0 = threadTicks(b.pid);
  const k0 = kworkerTicks();
  const r: LoadResult = await runLoad({
    socketPath: b.sockets[0],
    rw: 'randwrite',
    bs: 4096,
    iodepth: 32,
    runtimeSec: seconds,
    rampSec: 0,
  });
  const t1 = threadTicks(b.pid);
  const k1 = kworkerTicks();
  let all = 0;
  let busiest = 0;
  for (const [tid, ticks] of t1) {
    const d = ticks - (t0.get(tid) ?? 0);
    all += d;
    busiest = Math.max(busiest, d);
  }
  const writes = Math.max(1, r.ios);
  const us = (ticks: number) => (ticks * 1e6) / USER_HZ / writes;
  return {
    iops: r.iops,
    p50Us: r.latency.p50Us,
    p999Us: r.latency.p999Us,
    daemonUsPerWrite: us(all),
    busiestUsPerWrite: us(busiest),
    kworkerUsPerWrite: us(k1 - k0),
  };
}

/** The table's figures after the overlay and the window: what each column picks, and its decimals. */
const COLUMNS: readonly [(w: Window) => number, number][] = [
  [(w) => w.iops, 0],
  [(w) => w.p50Us, 0],
  [(w) => w.p999Us, 0],
  [(w) => w.daemonUsPerWrite, 1],
  [(w) => w.busiestUsPerWrite, 1],
  [(w) => w.kworkerUsPerWrite, 1],
];

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function cell(v: number[], digits: number): string {
  return `${median(v).toFixed(digits)} (${Math.min(...v).toFixed(digits)}..${Math.max(...v).toFixed(digits)})`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '3' },
      seconds: { type: 'string', default: '10' },
      'image-mib': { type: 'string', default: '1024' },
      speed: { type: 'string', default: '32' },
      out: { type: 'string' },
    },
  });
  const rounds = Number(values.rounds);
  const seconds = Number(values.seconds);
  const imageMiB = Number(values['image-mib']);
  const speed = Number(values.speed) * MiB;
  if (!(Number.isInteger(rounds) && rounds >= 1))
    throw new Error(`--rounds must be 1 or more, not ${values.rounds}`);
  if (!(seconds > 0)) throw new Error(`--seconds must be above 0, not ${values.seconds}`);
  if (!(Number.isInteger(imageMiB) && imageMiB >= 16))
    throw new Error(`--image-mib must be a whole number from 16, not ${values['image-mib']}`);
  if (!(speed > 0)) throw new Error(`--speed must be above 0 MiB/s, not ${values.speed}`);
  const work = join(REPO_ROOT, '.cache', 'bench', `redirect-cpu-${process.pid}`);
  await mkdir(work, { recursive: true });
  const variants: Variant[] = ['sparse', 'prefilled'];
  const sides = new Map<Variant, { backend: Backend; qmp: QmpClient; image: string }>();
  const windows: Window[] = [];
  try {
    for (const variant of variants) {
      const image = join(work, `${variant}.raw`);
      ensureImage(image, imageMiB * MiB);
      const ctl = join(work, `${variant}.qmp`);
      const backend = await startVhostRt({
        label: variant,
        devices: [`socket-path=${join(work, `${variant}.sock`)},image=${image}`],
        flags: ['--queues', '1', '--control-socket', ctl],
      });
      sides.set(variant, { backend, qmp: await QmpClient.connect(ctl), image });
    }
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? variants : [...variants].reverse();
      for (const variant of order) {
        const side = sides.get(variant);
        if (side === undefined) throw new Error(`no daemon for ${variant}`);
        const idle = await measure(side.backend, seconds);
        windows.push({ round, variant, phase: 'idle', ...idle });
        const from = side.qmp.messages.length;
        const started = await side.qmp.execute(
          'blockdev-backup',
          {
            device: 0,
            target: join(work, `${variant}-target.raw`),
            sync: 'full',
            speed,
            method: 'redirect',
            'yield-ms': 1000,
            ...(variant === 'prefilled' ? { 'prefill-overlay': true } : {}),
          },
          // The first prefilled backup answers after its prefill pass (the image at `speed`).
          MERGE_TIMEOUT_MS,
        );
        if (!('return' in started))
          throw new Error(`blockdev-backup on ${variant}: ${JSON.stringify(started)}`);
        const during = await measure(side.backend, seconds);
        windows.push({ round, variant, phase: 'backup', ...during });
        await side.qmp.execute('backup-cancel', { device: 0 });
        await waitFor(
          () => side.qmp.messages.slice(from).find((m) => m.event === 'BACKUP_MERGED'),
          `BACKUP_MERGED on ${variant}`,
          MERGE_TIMEOUT_MS,
        );
        const w = windows.slice(-2);
        process.stderr.write(
          `round ${round + 1}/${rounds} ${variant}: ${w
            .map(
              (x) =>
                `${x.phase} ${Math.round(x.iops)} IOPS p50 ${x.p50Us.toFixed(0)} p99.9 ${x.p999Us.toFixed(0)} µs, CPU µs/write daemon ${x.daemonUsPerWrite.toFixed(1)} busiest thread ${x.busiestUsPerWrite.toFixed(1)} kworkers ${x.kworkerUsPerWrite.toFixed(1)}`,
            )
            .join('; ')}\n`,
        );
      }
    }
  } finally {
    for (const side of sides.values()) {
      side.qmp.close();
      await side.backend.stop();
      await rm(redirectPath(side.image), { force: true });
    }
    await rm(work, { recursive: true, force: true });
  }
  const rows: string[][] = [];
  for (const variant of variants)
    for (const phase of ['idle', 'backup'] as const) {
      const xs = windows.filter((w) => w.variant === variant && w.phase === phase);
      rows.push([variant, phase, ...COLUMNS.map(([pick, digits]) => cell(xs.map(pick), digits))]);
    }
  const table = `${markdownTable(
    [
      'overlay',
      'window',
      'IOPS',
      'p50 µs',
      'p99.9 µs',
      'daemon CPU µs/write',
      'busiest thread µs/write',
      'kworkers µs/write',
    ],
    rows,
  )}\n\n${rounds} interleaved rounds of ${seconds} s windows, 4k randwrite QD32 on a ${imageMiB} MiB image; median (min..max) over the rounds. "backup": a redirect backup with its copier quiet (yield-ms 1000).\n`;
  process.stdout.write(table);
  const out = values.out ?? join(REPO_ROOT, 'bench', 'results');
  await mkdir(out, { recursive: true });
  await writeText(
    join(out, 'redirect-cpu.json'),
    `${JSON.stringify({ date: new Date().toISOString(), rounds, seconds, imageMiB, speed, windows }, null, 2)}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
