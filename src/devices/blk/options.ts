/** Options of a virtio-blk device, as the CLI and embedders give them. */
import { ConfigError } from '../../errors.js';
import {
  DEFAULT_RT_GUARD,
  type DiskGuardInit,
  RT_GUARD_FLAGS,
  type RtGuardPolicy,
  rtGuardPolicy,
} from '../../io/disk-guard.js';
import type { IoEngineName, ThreadPolicy } from '../../io/engine.js';
import { type GuestIoprioMode, parseGuestIoprioMode, parseIoprio } from '../../io/ioprio.js';
import { THROTTLE_FLAGS, type ThrottleLimits, validateThrottleLimits } from '../../io/throttle.js';
import type { BlkAccountingInit } from './stats.js';

/**
 * One blk device: image path, queues (1..64) and queue size (power of two, 4..1024),
 * I/O engine (`aio`) and O_DIRECT; checked by {@link validateBlkOptions}.
 */
export interface BlkOptions {
  image: string;
  readonly: boolean;
  /**
   * `--share-rw`: other processes may write the image too (QEMU's share-rw=on); the
   * image lock then leaves the write permission shared. Default false.
   */
  shareWrite?: boolean;
  queues: number;
  queueSize: number;
  aio: IoEngineName;
  direct: boolean;
  /** GET_ID answer; at most 20 bytes are sent. */
  serial: string;
  /** io_uring only: a kernel thread polls the submission ring (IORING_SETUP_SQPOLL). */
  uringSqpoll?: boolean;
  /** threads only: pool size. */
  aioThreads?: number;
  /** threads only: scheduling of the pool threads. */
  aioThreadsPolicy?: ThreadPolicy;
  /** nbd only: how long requests wait for a lost server (ms; default 15 s). */
  nbdTimeoutMs?: number;
  /**
   * Adaptive polling: after a batch (of kicks or of completions) the worker
   * keeps checking the avail rings for up to this many microseconds, with
   * kicks turned off, before it sleeps on the kick eventfds. 0: never poll.
   */
  pollUs?: number;
  /**
   * `--latency-target-us`: a request whose kick-to-completion latency exceeds
   * it is counted (latencyTargetExceeded) and reported, rate-limited
   * (LATENCY_TARGET_EXCEEDED). 0 or absent: no target.
   */
  latencyTargetUs?: number;
  /** Per-queue counters and latency histograms (default true; false: `--no-latency-histograms`). */
  latencyHistograms?: boolean;
  /**
   * `--ioprio CLASS[:LEVEL]` as an ioprio value (src/io/ioprio.ts): the
   * priority of requests whose guest gives none, and in `clamp` mode the
   * highest a guest may ask for. Absent: none (the worker's own), ceiling be:0.
   */
  ioprio?: number;
  /** `--guest-ioprio`: what the ioprio field of the guest's request header counts for (default clamp). */
  guestIoprio?: GuestIoprioMode;
  /** `--iops-limit`, `--bps-limit`, ...: the device's token buckets (none: no limit). */
  throttle?: ThrottleLimits;
  /**
   * The RT guard (src/io/disk-guard.ts): what this device keeps in flight of its
   * lower-class requests while a device with RT-class requests on the same backing disk
   * is active. Absent: {@link DEFAULT_RT_GUARD}; null: `--no-rt-guard`, never capped.
   */
  rtGuard?: RtGuardPolicy | null;
}

/** Largest `--latency-target-us` accepted: 60 s (the histograms' last bound is 1.07 s). */
export const MAX_LATENCY_TARGET_US = 60_000_000;

/** Largest `--poll-us` accepted: a second of spinning is a configuration mistake. */
export const MAX_POLL_US = 1_000_000;

/** What a device worker is given to open one blk device. */
export interface BlkDeviceInit {
  kind: 'blk';
  options: BlkOptions;
  /** StatCounters buffer shared with the main thread. */
  statsBuffer: SharedArrayBuffer;
  /** Per-queue counters and latency histograms shared with the main thread; none when absent. */
  accounting?: BlkAccountingInit;
  /** The device's slot in its backing disk's RT guard; none when absent (nbd, null engine). */
  diskGuard?: DiskGuardInit;
}

/** What an opened blk device reports about its image and engine. */
export interface BlkInfo {
  sizeBytes: number;
  /** The image is open with O_DIRECT. */
  direct: boolean;
  /** Buffer alignment O_DIRECT needs, in bytes. */
  alignment: number;
  /** The I/O engine in use. */
  engine: string;
  pollUs: number;
}

/** Checks the numbers that do not depend on the image; throws RangeError naming the option. */
export function validateBlkOptions(o: BlkOptions): void {
  if (!Number.isInteger(o.queues) || o.queues < 1 || o.queues > 64) {
    throw new RangeError(`--queues ${o.queues}: must be an integer in 1..64`);
  }
  const q = o.queueSize;
  if (!Number.isInteger(q) || q < 4 || q > 1024 || (q & (q - 1)) !== 0) {
    throw new RangeError(`--queue-size ${q}: must be a power of two in 4..1024`);
  }
  const p = o.pollUs ?? 0;
  if (!Number.isInteger(p) || p < 0 || p > MAX_POLL_US) {
    throw new RangeError(`--poll-us ${p}: must be an integer in 0..${MAX_POLL_US}`);
  }
  const t = o.latencyTargetUs ?? 0;
  if (!Number.isInteger(t) || t < 0 || t > MAX_LATENCY_TARGET_US) {
    throw new RangeError(
      `--latency-target-us ${t}: must be an integer in 0..${MAX_LATENCY_TARGET_US}`,
    );
  }
}

/** The `blk` flags of I/O priority and QoS (issue 14), as node:util parseArgs options. */
export const BLK_QOS_FLAG_OPTIONS = {
  ioprio: { type: 'string' },
  'guest-ioprio': { type: 'string' },
  'iops-limit': { type: 'string' },
  'iops-read-limit': { type: 'string' },
  'iops-write-limit': { type: 'string' },
  'bps-limit': { type: 'string' },
  'bps-read-limit': { type: 'string' },
  'bps-write-limit': { type: 'string' },
  'iops-burst': { type: 'string' },
  'bps-burst': { type: 'string' },
  'rt-guard-requests': { type: 'string' },
  'rt-guard-bytes': { type: 'string' },
  'rt-guard-window-us': { type: 'string' },
  'rt-guard-bps': { type: 'string' },
  'no-rt-guard': { type: 'boolean' },
} as const;

/** Help text of {@link BLK_QOS_FLAG_OPTIONS}. */
export const BLK_QOS_HELP = `I/O priority and QoS:
  --ioprio CLASS[:LEVEL]
                       the device's I/O priority, as ionice: rt, be (LEVEL 0..7,
                       default 4) or idle; requests are submitted with it (Linux
                       AIO aio_reqprio, io_uring sqe->ioprio, threads/sync:
                       ioprio_set on the thread doing the I/O). It is also the
                       ceiling of what a guest may ask for (without it: none,
                       the worker's own, and a ceiling of be:0)
  --guest-ioprio honor|clamp|ignore
                       the guest's per-request priority (the ioprio field of the
                       virtio-blk header, which Linux fills: ionice in the guest):
                       honor it, clamp it under --ioprio (default), or ignore it;
                       a batch mixing classes is submitted RT first
  --iops-limit N, --iops-read-limit N, --iops-write-limit N
  --bps-limit N, --bps-read-limit N, --bps-write-limit N
                       token-bucket limits of the device (0: none), as QEMU's
                       throttle options; a request over budget waits in the ring
                       (the guest sees latency only); set at run time with the
                       control socket's block-set-io-throttle
  --iops-burst N, --bps-burst N
                       bucket sizes (default: 0.1 s of the limit)
  --rt-guard-requests N, --rt-guard-bytes N, --rt-guard-window-us N
                       the RT guard: while another device of this process on the
                       same backing disk has RT-class requests in flight, or had
                       within the window, this device keeps at most N of its
                       lower-class requests and N bytes in flight (the rest waits
                       in the ring), so the RT request does not queue in the disk
                       behind this device's I/O; requests 0: strict, none at all
                       while the neighbour is active (defaults: ${DEFAULT_RT_GUARD.maxRequests} request, ${DEFAULT_RT_GUARD.maxBytes} bytes,
                       ${DEFAULT_RT_GUARD.windowUs} µs)
  --rt-guard-bps N     and submits at most N lower-class bytes per second while the
                       neighbour is active (a token bucket 10 ms deep; the disk
                       under the RT request absorbs less write-back); 0: no rate,
                       the in-flight cap only (default ${DEFAULT_RT_GUARD.bytesPerSecond})
  --no-rt-guard        never cap this device for an RT neighbour
`;

/** Values of {@link BLK_QOS_FLAG_OPTIONS} as parsed flags give them. */
type QosFlagValues = { [K in keyof typeof BLK_QOS_FLAG_OPTIONS]?: unknown };

function wholeNumber(flag: string, value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !/^\d+$/.test(value))
    throw new ConfigError(`--${flag} ${String(value)}: not a whole number`);
  return Number(value);
}

/** The RT guard flags of one device: undefined (defaults), null (off) or a policy. */
function parseRtGuardFlags(v: QosFlagValues): RtGuardPolicy | null | undefined {
  const given: Partial<RtGuardPolicy> = {};
  for (const [key, flag] of Object.entries(RT_GUARD_FLAGS)) {
    const n = wholeNumber(flag.slice(2), v[flag.slice(2) as keyof QosFlagValues]);
    if (n !== undefined) given[key as keyof RtGuardPolicy] = n;
  }
  const some = Object.keys(given).length > 0;
  if (v['no-rt-guard'] === true) {
    if (some) throw new ConfigError('--no-rt-guard: the other --rt-guard-* flags have no effect');
    return null;
  }
  return some ? rtGuardPolicy(given) : undefined;
}

/** Parses the priority and QoS flags of one device; throws ConfigError naming the flag. */
export function parseBlkQosFlags(
  v: QosFlagValues,
): Pick<BlkOptions, 'ioprio' | 'guestIoprio' | 'throttle' | 'rtGuard'> {
  const out: Pick<BlkOptions, 'ioprio' | 'guestIoprio' | 'throttle' | 'rtGuard'> = {};
  const guard = parseRtGuardFlags(v);
  if (guard !== undefined) out.rtGuard = guard;
  if (v.ioprio !== undefined) out.ioprio = parseIoprio(String(v.ioprio));
  if (v['guest-ioprio'] !== undefined)
    out.guestIoprio = parseGuestIoprioMode(String(v['guest-ioprio']));
  const limits: ThrottleLimits = {};
  for (const [key, flag] of Object.entries(THROTTLE_FLAGS)) {
    const name = flag.slice(2) as keyof QosFlagValues;
    const n = wholeNumber(name, v[name]);
    if (n !== undefined) limits[key as keyof ThrottleLimits] = n;
  }
  if (Object.keys(limits).length > 0) out.throttle = validateThrottleLimits(limits);
  return out;
}
