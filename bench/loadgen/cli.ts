/**
 * The load generator's command line:
 *
 *   node dist/bench/loadgen/cli.js --socket SOCK [--pid PID] --rw randread --bs 4k \
 *     --iodepth 32 --runtime 10 [--ramp 2] [--queues 1] [--offset 0] [--size 0] \
 *     [--rwmixread 50] [--queue-size N] [--json]
 *
 * Prints a fio-like summary, or with --json one JSON object (a {@link LoadResult}) on stdout.
 */
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { type LoadOptions, type LoadResult, RW_MODES, type RwMode, runLoad } from './generator.js';

/** Usage text. */
export const HELP = `vhost-user-blk load generator

  --socket SOCK      vhost-user socket of the back end (vhost-rt, qemu-storage-daemon, ...)
  --pid PID          back-end process, for its CPU time per I/O (/proc/PID/stat)
  --rw MODE          ${RW_MODES.join(' | ')} (default randread)
  --bs SIZE          request size, e.g. 4k, 1M (default 4k)
  --iodepth N        requests in flight per queue (default 1)
  --queues N         virtqueues driven (default 1)
  --runtime SEC      measured seconds (default 10)
  --ramp SEC         seconds run first and not measured (default 1)
  --offset SIZE      first byte of the I/O range (default 0)
  --size SIZE        bytes of the I/O range (default: to the end of the device)
  --rwmixread PCT    reads in percent for rw / randrw (default 50)
  --queue-size N     ring size (default: next power of two >= 3 x iodepth, at least 64)
  --ioprio N         the request header's ioprio (class << 13 | level, as a Linux guest's)
  --dirty-log        turn dirty logging on first (as QEMU for a live migration), bitmap cleared every 100 ms
  --json             print the result as JSON
`;

const UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };

/** Parses "4k", "1M", "512", "1g" (binary units, as fio does). */
export function parseSize(text: string): number {
  const m = /^(\d+)([kmg]?)i?b?$/i.exec(text.trim());
  if (!m) throw new RangeError(`not a size: ${text}`);
  return Number(m[1]) * UNITS[m[2].toLowerCase()];
}

function num(text: string | undefined, fallback: number, name: string): number {
  if (text === undefined) return fallback;
  const v = Number(text);
  if (!Number.isFinite(v)) throw new RangeError(`--${name} must be a number, got ${text}`);
  return v;
}

/** Turns argv into {@link LoadOptions} (plus the --json switch). */
export function parseLoadArgs(argv: string[]): { options: LoadOptions; json: boolean } {
  const { values } = parseArgs({
    args: argv,
    options: {
      socket: { type: 'string' },
      pid: { type: 'string' },
      rw: { type: 'string', default: 'randread' },
      bs: { type: 'string', default: '4k' },
      iodepth: { type: 'string' },
      queues: { type: 'string' },
      runtime: { type: 'string' },
      ramp: { type: 'string' },
      offset: { type: 'string', default: '0' },
      size: { type: 'string', default: '0' },
      rwmixread: { type: 'string' },
      'queue-size': { type: 'string' },
      ioprio: { type: 'string' },
      json: { type: 'boolean', default: false },
      'dirty-log': { type: 'boolean', default: false },
    },
  });
  if (!values.socket) throw new RangeError('--socket is required');
  if (!RW_MODES.includes(values.rw as RwMode)) throw new RangeError(`--rw: ${values.rw}`);
  const options: LoadOptions = {
    socketPath: values.socket,
    backendPid: values.pid === undefined ? undefined : num(values.pid, 0, 'pid'),
    rw: values.rw as RwMode,
    bs: parseSize(values.bs),
    iodepth: num(values.iodepth, 1, 'iodepth'),
    queues: num(values.queues, 1, 'queues'),
    runtimeSec: num(values.runtime, 10, 'runtime'),
    rampSec: num(values.ramp, 1, 'ramp'),
    offset: parseSize(values.offset),
    size: parseSize(values.size),
    rwmixread: num(values.rwmixread, 50, 'rwmixread'),
    queueSize: values['queue-size'] === undefined ? undefined : num(values['queue-size'], 0, 'q'),
    ioprio: values.ioprio === undefined ? undefined : num(values.ioprio, 0, 'ioprio'),
    dirtyLog: values['dirty-log'],
  };
  return { options, json: values.json };
}

const f1 = (v: number) => v.toFixed(1);

/** A fio-like human summary of one result. */
export function formatResult(r: LoadResult): string {
  const l = r.latency;
  const cpu = (v: number | null) => (v === null ? 'n/a' : `${f1(v)} us/IO`);
  return [
    `${r.rw} bs=${r.bs} iodepth=${r.iodepth} queues=${r.queues}: ${r.ios} IOs in ${f1(r.seconds)} s`,
    `  IOPS=${Math.round(r.iops)} BW=${f1(r.mbPerSec)} MB/s errors=${r.errors}`,
    `  lat (us): p50=${f1(l.p50Us)} p90=${f1(l.p90Us)} p99=${f1(l.p99Us)} p99.9=${f1(l.p999Us)} max=${f1(l.maxUs)}`,
    `  cpu: backend ${cpu(r.backendCpuUsPerIo)}, generator ${cpu(r.generatorCpuUsPerIo)}`,
  ].join('\n');
}

async function main(): Promise<void> {
  if (process.argv.includes('--help')) {
    process.stdout.write(HELP);
    return;
  }
  const { options, json } = parseLoadArgs(process.argv.slice(2));
  const result = await runLoad(options);
  process.stdout.write(json ? `${JSON.stringify(result)}\n` : `${formatResult(result)}\n`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: Error) => {
    process.stderr.write(`loadgen: ${err.message}\n`);
    process.exitCode = 1;
  });
}
