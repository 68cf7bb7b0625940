/**
 * Question: what sequential throughput does a real (TCG) guest see through a vhost-user-blk
 * backend? Boots the test guest on each target in turn and times O_DIRECT busybox dd on
 * /dev/vda: 1 MiB blocks (write, then read) and 4 KiB blocks (write, then read).
 *
 *   node dist/bench/guest-dd.js --socket vhost-rt=/run/vhost-rt/blk0.sock --qsd /tmp/img.raw
 *
 * `--socket [LABEL=]PATH` uses a backend that is already listening (e.g. vhost-rt);
 * `--qsd IMG` starts qemu-storage-daemon (O_DIRECT + Linux AIO, DESIGN.md's reference) on IMG,
 * creating or growing it as a sparse file. Both may be repeated; targets run one after
 * another and share one table. THE GUEST OVERWRITES THE START OF EVERY DISK IT IS GIVEN.
 *
 * Options: --queues N (1), --cpus N (1), --size-mb N for the 1 MiB runs (64),
 * --small-mb N for the 4 KiB runs (16), --repeat N runs of each workload per boot (3),
 * --json (print JSON instead of a table).
 */

import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { ConfigError } from '../src/errors.js';
import {
  ensureGuestImage,
  GuestError,
  lastLines,
  parseDdThroughput,
  runGuest,
  startStorageDaemon,
} from '../test/support/qemu.js';

/** The guest's dd script failed (disk too small, I/O error). */
export class GuestDdError extends GuestError {
  constructor(message: string) {
    super('ERR_GUEST_DD', message);
  }
}

/** Sizes and repetitions of one guest-dd run. */
export interface GuestDdOptions {
  /** MiB moved by each 1 MiB-block run. */
  sizeMb: number;
  /** MiB moved by each 4 KiB-block run. */
  smallMb: number;
  /** Runs of each workload within one boot; the median is reported. */
  repeat: number;
  queues: number;
  cpus: number;
}

/** Median throughput of one workload on one target. */
export interface GuestDdResult {
  target: string;
  workload: string;
  /** Decimal MB/s (median of the runs). */
  mbPerSec: number;
  /** Requests per second implied by the median (block size / throughput). */
  iops: number;
  runs: number;
}

/** The workloads, in the order they run; writes come first so reads hit written blocks. */
const WORKLOADS = [
  { name: 'seq-write-1M', bs: 1 << 20, write: true },
  { name: 'seq-read-1M', bs: 1 << 20, write: false },
  { name: 'write-4k', bs: 4096, write: true },
  { name: 'read-4k', bs: 4096, write: false },
] as const;

export const DEFAULT_OPTIONS: GuestDdOptions = {
  sizeMb: 64,
  smallMb: 16,
  repeat: 3,
  queues: 1,
  cpus: 1,
};

/** Bytes a workload moves per run. */
function workloadBytes(w: (typeof WORKLOADS)[number], o: GuestDdOptions): number {
  return (w.bs === 4096 ? o.smallMb : o.sizeMb) * 1024 * 1024;
}

/** One `timed_dd` line; writes end with a flush (conv=fsync) so cached writes are not free. */
function ddLine(w: (typeof WORKLOADS)[number], o: GuestDdOptions): string {
  const bytes = workloadBytes(w, o);
  const count = bytes / w.bs;
  const io = w.write
    ? `if=/dev/zero of=/dev/vda oflag=direct conv=fsync`
    : `if=/dev/vda of=/dev/null iflag=direct`;
  return `timed_dd ${w.name} ${bytes} ${io} bs=${w.bs} count=${count} || exit 4`;
}

/** The guest script: check the disk is big enough, then every workload `repeat` times. */
export function guestDdScript(o: GuestDdOptions): string {
  const need = Math.max(o.sizeMb, o.smallMb) * 1024 * 1024;
  const lines = ['wait_dev /dev/vda || exit 2', 'size=$(blockdev --getsize64 /dev/vda)'];
  lines.push(`[ "$size" -ge ${need} ] || { echo "disk has $size bytes, need ${need}"; exit 3; }`);
  for (const w of WORKLOADS) {
    for (let i = 0; i < o.repeat; i++) lines.push(ddLine(w, o));
  }
  return `${lines.join('\n')}\n`;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Boots the guest on `socket` and returns the median throughput of each workload. */
export async function runGuestDd(
  target: string,
  socket: string,
  o: GuestDdOptions,
): Promise<GuestDdResult[]> {
  const blk = [{ socket, queues: o.queues }];
  const timeoutMs = 60_000 + o.repeat * (o.sizeMb + o.smallMb) * 2000;
  const r = await runGuest({ script: guestDdScript(o), blk, cpus: o.cpus, timeoutMs });
  if (r.exitCode !== 0) {
    throw new GuestDdError(
      `guest-dd on ${target} failed (exit ${r.exitCode}):\n${lastLines(r.output)}`,
    );
  }
  const runs = parseDdThroughput(r.output);
  return WORKLOADS.map((w) => {
    const rates = runs.filter((d) => d.label === w.name).map((d) => d.mbPerSec);
    const mbPerSec = median(rates);
    return {
      target,
      workload: w.name,
      mbPerSec,
      iops: (mbPerSec * 1e6) / w.bs,
      runs: rates.length,
    };
  });
}

/** Makes `image` a file of at least `bytes` (sparse growth; existing data is kept). */
async function ensureImage(image: string, bytes: number): Promise<void> {
  const file = await open(image, 'a+');
  try {
    if ((await file.stat()).size < bytes) await file.truncate(bytes);
  } finally {
    await file.close();
  }
}

/** Starts qemu-storage-daemon on `image`, runs {@link runGuestDd}, stops the daemon. */
export async function runGuestDdOnQsd(image: string, o: GuestDdOptions): Promise<GuestDdResult[]> {
  await ensureImage(image, Math.max(o.sizeMb, o.smallMb) * 1024 * 1024);
  const dir = await mkdtemp(join(tmpdir(), 'vhost-rt-guest-dd-'));
  const qsd = await startStorageDaemon({ image, socket: join(dir, 'qsd.sock'), queues: o.queues });
  try {
    return await runGuestDd(`qsd:${image}`, qsd.socket, o);
  } finally {
    await qsd.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** A plain-text table of results, one row per target and workload. */
export function formatTable(results: GuestDdResult[]): string {
  const rows = results.map((r) => [
    r.target,
    r.workload,
    r.mbPerSec.toFixed(1),
    r.iops.toFixed(0),
    String(r.runs),
  ]);
  const header = ['target', 'workload', 'MB/s', 'IOPS', 'runs'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]))
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** A positive integer option value, or a ConfigError naming the option. */
function intOption(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new ConfigError(`--${name} needs a positive integer`);
  return n;
}

interface Target {
  label: string;
  socket?: string;
  qsdImage?: string;
}

function parseCli(argv: string[]): { targets: Target[]; options: GuestDdOptions; json: boolean } {
  const { values } = parseArgs({
    args: argv,
    options: {
      socket: { type: 'string', multiple: true },
      qsd: { type: 'string', multiple: true },
      queues: { type: 'string' },
      cpus: { type: 'string' },
      'size-mb': { type: 'string' },
      'small-mb': { type: 'string' },
      repeat: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  const targets: Target[] = (values.socket ?? []).map((s) => {
    const eq = s.indexOf('=');
    return eq < 0 ? { label: s, socket: s } : { label: s.slice(0, eq), socket: s.slice(eq + 1) };
  });
  for (const image of values.qsd ?? []) targets.push({ label: `qsd:${image}`, qsdImage: image });
  if (targets.length === 0) throw new ConfigError('give at least one --socket or --qsd target');
  const d = DEFAULT_OPTIONS;
  const options: GuestDdOptions = {
    queues: intOption('queues', values.queues, d.queues),
    cpus: intOption('cpus', values.cpus, d.cpus),
    sizeMb: intOption('size-mb', values['size-mb'], d.sizeMb),
    smallMb: intOption('small-mb', values['small-mb'], d.smallMb),
    repeat: intOption('repeat', values.repeat, d.repeat),
  };
  return { targets, options, json: values.json ?? false };
}

async function main(argv: string[]): Promise<void> {
  const { targets, options, json } = parseCli(argv);
  ensureGuestImage();
  const results: GuestDdResult[] = [];
  for (const t of targets) {
    const r =
      t.qsdImage !== undefined
        ? await runGuestDdOnQsd(t.qsdImage, options)
        : await runGuestDd(t.label, t.socket!, options);
    results.push(...r);
  }
  if (json) console.log(JSON.stringify({ options, results }, null, 2));
  else console.log(formatTable(results));
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  });
}
