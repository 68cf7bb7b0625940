/**
 * Command-line parsing for `vhost-rt`. Every flag is documented in HELP; a
 * wrong flag or value becomes a ConfigError whose one-line message names it.
 */
import { parseArgs } from 'node:util';
import type { BlkOptions } from '../devices/blk/options.js';
import { ConfigError } from '../errors.js';
import { parseEngineName } from '../io/index.js';
import {
  parseCpuList,
  RT_POLICIES,
  type RtOptions,
  type RtPolicy,
  validateRtOptions,
} from '../rt/index.js';

export const HELP = `vhost-rt — real-time-aware virtio device back ends over vhost-user

Usage:
  vhost-rt blk --socket-path SOCK --image FILE [options]
  vhost-rt --help

vhost-rt blk: serve a virtio-blk device (QEMU: -device vhost-user-blk-pci)
  --socket-path SOCK   Unix socket to listen on (a stale socket file is replaced;
                       any other existing file is an error)
  --image FILE         disk image (regular file or block device) to serve
  --readonly           refuse writes (the guest sees VIRTIO_BLK_F_RO)
  --queues N           number of request queues, 1..64 (default 1)
  --queue-size N       largest ring size, a power of two in 4..1024 (default 256)
  --aio ENGINE         I/O engine: linux-aio (default linux-aio)
  --no-direct          do not open the image with O_DIRECT
  --serial ID          answer to VIRTIO_BLK_T_GET_ID, up to 20 bytes (default vhost-rt)
  --quiet              log warnings and errors only

Real-time options (every device; they apply to the device's worker thread):
  --rt-policy POLICY   scheduling policy: fifo, rr, other, batch or idle
  --rt-priority N      priority for fifo/rr, 1..99
  --cpus LIST          CPU affinity, e.g. 0 or 0-1,3
  --mlock              lock all current and future memory (mlockall)

The daemon prints a line containing "ready" once the socket listens, and on
SIGINT or SIGTERM completes in-flight requests, removes its socket and prints
its counters. SIGUSR1 prints the counters at any time.
`;

export interface BlkCommand {
  command: 'blk';
  socketPath: string;
  blk: BlkOptions;
  rt: RtOptions;
  quiet: boolean;
}

export type Command = BlkCommand | { command: 'help' };

const BLK_FLAGS = {
  'socket-path': { type: 'string' },
  image: { type: 'string' },
  readonly: { type: 'boolean' },
  queues: { type: 'string' },
  'queue-size': { type: 'string' },
  aio: { type: 'string' },
  'no-direct': { type: 'boolean' },
  serial: { type: 'string' },
  quiet: { type: 'boolean' },
  'rt-policy': { type: 'string' },
  'rt-priority': { type: 'string' },
  cpus: { type: 'string' },
  mlock: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function integer(flag: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value)) throw new ConfigError(`--${flag} ${value}: not a whole number`);
  return Number(value);
}

function required(flag: string, value: string | undefined): string {
  if (value === undefined || value === '') throw new ConfigError(`--${flag} is required`);
  return value;
}

function parseRt(v: Record<string, string | boolean | undefined>): RtOptions {
  const policy = v['rt-policy'] as string | undefined;
  if (policy !== undefined && !(RT_POLICIES as readonly string[]).includes(policy)) {
    throw new ConfigError(`--rt-policy ${policy}: choose one of ${RT_POLICIES.join(', ')}`);
  }
  const rt: RtOptions = {};
  if (policy !== undefined) rt.policy = policy as RtPolicy;
  if (v['rt-priority'] !== undefined)
    rt.priority = integer('rt-priority', v['rt-priority'] as string, 0);
  if (v.cpus !== undefined) rt.cpus = parseCpuList(v.cpus as string);
  if (v.mlock === true) rt.mlock = true;
  return validateRtOptions(rt);
}

function parseBlk(args: string[]): Command {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args, options: BLK_FLAGS, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new ConfigError(`vhost-rt blk: ${(err as Error).message.split('\n')[0]}`);
  }
  if (values.help === true) return { command: 'help' };
  const blk: BlkOptions = {
    image: required('image', values.image as string | undefined),
    readonly: values.readonly === true,
    queues: integer('queues', values.queues as string | undefined, 1),
    queueSize: integer('queue-size', values['queue-size'] as string | undefined, 256),
    aio: parseEngineName((values.aio as string | undefined) ?? 'linux-aio'),
    direct: values['no-direct'] !== true,
    serial: (values.serial as string | undefined) ?? 'vhost-rt',
  };
  return {
    command: 'blk',
    socketPath: required('socket-path', values['socket-path'] as string | undefined),
    blk,
    rt: parseRt(values),
    quiet: values.quiet === true,
  };
}

/** Parses argv (without node and the script). */
export function parseCommand(argv: string[]): Command {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help')
    return { command: 'help' };
  if (sub === 'blk') return parseBlk(rest);
  throw new ConfigError(`unknown command '${sub}' (try: vhost-rt --help)`);
}
