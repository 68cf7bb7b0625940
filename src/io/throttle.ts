/**
 * Per-device I/O limits (QoS) as token buckets, in the shape of QEMU's
 * throttle options: IOPS and bytes per second, in total and for reads and
 * writes separately, each with a burst (the bucket's size). Pure arithmetic
 * over a preallocated table; the device worker asks it, per request, whether
 * the queue may go on, and waits (a timer, never a sleep or a spin) when not.
 *
 * A request is admitted while every bucket it draws on holds a positive
 * level, and then takes its whole cost, so a bucket may go into debt by at
 * most one request: over any interval T that starts with full buckets, what
 * was admitted is at most limit · T + burst + one request.
 */
import { ConfigError } from '../errors.js';

/**
 * Limits of one device; 0 or absent: no limit. Bursts are the bucket sizes
 * (default: a tenth of a second at the limit, as QEMU's), the same for the
 * total and the read/write buckets of their kind.
 */
export interface ThrottleLimits {
  iops?: number;
  iopsRead?: number;
  iopsWrite?: number;
  bps?: number;
  bpsRead?: number;
  bpsWrite?: number;
  iopsBurst?: number;
  bpsBurst?: number;
}

/** The flags of each limit, as the CLI spells them (QEMU: throttling.iops-total, ...). */
export const THROTTLE_FLAGS = {
  iops: '--iops-limit',
  iopsRead: '--iops-read-limit',
  iopsWrite: '--iops-write-limit',
  bps: '--bps-limit',
  bpsRead: '--bps-read-limit',
  bpsWrite: '--bps-write-limit',
  iopsBurst: '--iops-burst',
  bpsBurst: '--bps-burst',
} as const satisfies Record<keyof ThrottleLimits, string>;

/** The bucket a limit fills, in table order. */
const BUCKETS = ['iops', 'iopsRead', 'iopsWrite', 'bps', 'bpsRead', 'bpsWrite'] as const;
/** Bursts default to this many seconds of the limit. */
const DEFAULT_BURST_SECONDS = 0.1;
/** Largest limit accepted: 2^53 − 1 (any larger is no limit at all). */
const MAX_LIMIT = Number.MAX_SAFE_INTEGER;

/** Checks `limits` (non-negative integers); throws a ConfigError naming the flag. */
export function validateThrottleLimits(limits: ThrottleLimits): ThrottleLimits {
  for (const [key, flag] of Object.entries(THROTTLE_FLAGS)) {
    const v = limits[key as keyof ThrottleLimits];
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || v < 0 || v > MAX_LIMIT)
      throw new ConfigError(`${flag} ${v}: must be a non-negative integer (0: no limit)`);
  }
  const burst = (b: 'iopsBurst' | 'bpsBurst', of: readonly (keyof ThrottleLimits)[]) => {
    if ((limits[b] ?? 0) > 0 && of.every((k) => (limits[k] ?? 0) === 0))
      throw new ConfigError(`${THROTTLE_FLAGS[b]}: needs a limit of its kind to apply to`);
  };
  burst('iopsBurst', BUCKETS.slice(0, 3));
  burst('bpsBurst', BUCKETS.slice(3));
  return limits;
}

/** True when `limits` sets any limit. */
export function hasThrottleLimits(limits: ThrottleLimits | undefined): boolean {
  return limits !== undefined && BUCKETS.some((k) => (limits[k] ?? 0) > 0);
}

/** Token buckets of one device. Not thread-safe: the device worker owns it. */
export class IoThrottle {
  /** Per bucket: tokens per millisecond (0: no limit), size, level. */
  private readonly rate = new Float64Array(6);
  private readonly size = new Float64Array(6);
  private readonly level = new Float64Array(6);
  private last: number;
  private limitsNow: ThrottleLimits = {};

  constructor(limits: ThrottleLimits, now = performance.now()) {
    this.last = now;
    this.set(limits);
  }

  /** Replaces the limits (at run time too); buckets start full. */
  set(limits: ThrottleLimits): void {
    validateThrottleLimits(limits);
    this.limitsNow = { ...limits };
    for (let b = 0; b < BUCKETS.length; b++) {
      const perSecond = limits[BUCKETS[b]] ?? 0;
      const burst = (b < 3 ? limits.iopsBurst : limits.bpsBurst) ?? 0;
      this.rate[b] = perSecond / 1000;
      this.size[b] = perSecond === 0 ? 0 : Math.max(burst || perSecond * DEFAULT_BURST_SECONDS, 1);
      this.level[b] = this.size[b];
    }
  }

  /** The limits in force. */
  get limits(): ThrottleLimits {
    return { ...this.limitsNow };
  }

  /** True when any limit is set. */
  get enabled(): boolean {
    return hasThrottleLimits(this.limitsNow);
  }

  /** Refills every bucket for the time since the last call. */
  private refill(now: number): void {
    const dt = now - this.last;
    if (dt <= 0) return;
    this.last = now;
    for (let b = 0; b < 6; b++) {
      if (this.rate[b] === 0) continue;
      this.level[b] = Math.min(this.size[b], this.level[b] + this.rate[b] * dt);
    }
  }

  /** Whether the next request may start now (every limited bucket above zero). */
  open(now = performance.now()): boolean {
    this.refill(now);
    for (let b = 0; b < 6; b++) if (this.rate[b] !== 0 && this.level[b] <= 0) return false;
    return true;
  }

  /** Takes one request's cost: one I/O and `bytes` from the total and its direction's buckets. */
  charge(write: boolean, bytes: number): void {
    const l = this.level;
    const d = write ? 2 : 1;
    l[0] -= 1;
    l[d] -= 1;
    l[3] -= bytes;
    l[3 + d] -= bytes;
  }

  /** Milliseconds until {@link open} can be true again (0 when it is). */
  waitMs(now = performance.now()): number {
    this.refill(now);
    let wait = 0;
    for (let b = 0; b < 6; b++) {
      if (this.rate[b] === 0 || this.level[b] > 0) continue;
      // Just past zero: a level of exactly 0 is still closed.
      wait = Math.max(wait, (1e-6 - this.level[b]) / this.rate[b]);
    }
    return wait;
  }
}
