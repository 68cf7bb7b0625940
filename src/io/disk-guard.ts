/**
 * The RT guard (issue 14): admission control per backing disk, so that the RT I/O class
 * wins where it is lost otherwise — in the disk's own queue.
 *
 * The kernel's I/O scheduler (mq-deadline, here) puts RT-class requests first in ITS queue,
 * but a request already dispatched to the device is out of its hands: a neighbour's 32 ×
 * 1 MiB writes sit in the device's (deep) hardware queue, and the RT read lands behind them.
 * Measured on this project's machine: A's p99.9 under B's flood stayed 17–22× its idle value
 * with `--ioprio rt` on A. Real products close that gap by limiting what lower classes keep in
 * flight while a higher class is busy: the kernel's io.latency throttles a sibling's queue
 * depth, BFQ idles the disk for a sync/RT queue. This is the same idea inside the back end,
 * per backing disk, across the devices of one process.
 *
 * The policy: while any OTHER device on the same backing disk has RT-class requests in
 * flight, or had some within the last `windowUs`, a device admits a new lower-class
 * request only while it has fewer than `maxRequests` lower-class requests and fewer than
 * `maxBytes` lower-class bytes in flight (a request is admitted below the cap and then
 * counts whole: the bytes may overshoot by at most one request). A request that is not
 * admitted stays in the guest's ring (the queue stops popping); the device pops again
 * after its own next completion. With a cap of one request or more, a device held by the
 * guard always has a request in flight, so a completion always comes: no timer, no sleep,
 * no spin. A cap of 0 requests is strict — the RT class's own meaning, which starves lower
 * classes: nothing lower-class is submitted while the neighbour is active; a device held
 * with nothing in flight looks again on a timer ({@link DiskGuard.recheckMs}). The ring is
 * FIFO: once at the cap, the next chain waits whatever its class (no look-ahead).
 *
 * The rate term (`bytesPerSecond`, issue 14): while a neighbour is active the device's
 * lower-class bytes also draw on a token bucket (src/io/throttle.ts); an empty bucket holds
 * the queue like the cap does. The cap bounds what sits in the kernel's queue in front of
 * the RT request; the rate bounds what the disk underneath has to absorb (its write-back,
 * which the RT read otherwise waits behind inside the device). A device held by the rate
 * with requests in flight pops again at its next completion; with none it looks again on
 * its one timer when the bucket has refilled ({@link DiskGuard.recheckMs}).
 *
 * The shared state is one SharedArrayBuffer per backing disk (src/locking/layout.ts
 * DISK_GUARD): each device owns one cache line and is its only writer (DESIGN rule 6).
 * A device publishes its RT state once per batch; a device reads its neighbours' lines at
 * most once per batch, and reads the clock then only when a neighbour's RT requests have
 * all completed (to test the window).
 */
import { readFileSync, realpathSync, statSync } from 'node:fs';
import { ConfigError } from '../errors.js';
import {
  DISK_GUARD,
  DISK_GUARD_MAGIC_VALUE,
  DISK_GUARD_SLOTS,
  diskGuardByteLength,
} from '../locking/layout.js';
import { IoThrottle } from './throttle.js';

/** What a lower-class device keeps in flight while an RT neighbour on its disk is active. */
export interface RtGuardPolicy {
  /** Most lower-class requests in flight; 0: none (strict). */
  maxRequests: number;
  /** Most lower-class bytes in flight (at least 1; the last admitted request may overshoot it). */
  maxBytes: number;
  /** A neighbour stays active this long after its last RT request in flight (µs). */
  windowUs: number;
  /**
   * Most lower-class bytes per second submitted while the neighbour is active (a token
   * bucket, {@link RT_GUARD_BURST_SECONDS} deep); 0: no rate term, only the in-flight cap.
   */
  bytesPerSecond: number;
}

/**
 * The defaults: one request and 1 MiB in flight (so an RT read waits behind at most one
 * lower-class request in the device's queue), for 100 ms after the neighbour's last RT
 * request (so a periodic RT reader with a period up to 100 ms finds the queue short at
 * its next read; BFQ idles 8 ms for a sync queue, but an RT device is named by its operator),
 * and 64 MiB/s. The rate term exists because the in-flight cap alone left A's p99.9 at 2.3×
 * idle (bench/results/priority-inversion-shared-disk.md): the kernel queue was empty, but
 * the virtual disk under this machine still absorbed ~600 MB/s of B's writes and A's read
 * waited in the device behind their write-back. B throttled to 64 MiB/s by `--bps-limit`
 * gave A ≤ 1× idle in the same experiment; the rows with the guard's rate at this default
 * are in the same report.
 */
export const DEFAULT_RT_GUARD: Readonly<RtGuardPolicy> = {
  maxRequests: 1,
  maxBytes: 1024 * 1024,
  windowUs: 100_000,
  bytesPerSecond: 64 * 1024 * 1024,
};

/**
 * Depth of the rate term's bucket in seconds of its rate: 10 ms. Shallow on purpose: the
 * bucket refills while no neighbour is active, and a deep one would let a device dump its
 * whole burst into the disk just when the RT neighbour wakes.
 */
export const RT_GUARD_BURST_SECONDS = 0.01;

/** Largest `--rt-guard-window-us`: 10 s. */
export const MAX_RT_GUARD_WINDOW_US = 10_000_000;

/** The flags of each field, as the CLI spells them. */
export const RT_GUARD_FLAGS = {
  maxRequests: '--rt-guard-requests',
  maxBytes: '--rt-guard-bytes',
  windowUs: '--rt-guard-window-us',
  bytesPerSecond: '--rt-guard-bps',
} as const satisfies Record<keyof RtGuardPolicy, string>;

/** Fills in the defaults and checks the ranges; throws a ConfigError naming the flag. */
export function rtGuardPolicy(p: Partial<RtGuardPolicy>): RtGuardPolicy {
  const out = { ...DEFAULT_RT_GUARD, ...p };
  const check = (k: keyof RtGuardPolicy, min: number, max: number) => {
    const v = out[k];
    if (!Number.isSafeInteger(v) || v < min || v > max)
      throw new ConfigError(`${RT_GUARD_FLAGS[k]} ${v}: must be an integer in ${min}..${max}`);
  };
  check('maxRequests', 0, 1024);
  check('maxBytes', 1, 2 ** 40);
  check('windowUs', 0, MAX_RT_GUARD_WINDOW_US);
  check('bytesPerSecond', 0, Number.MAX_SAFE_INTEGER);
  return out;
}

/** What a device worker is given to take part in its disk's guard (made by {@link DiskGuardRegistry}). */
export interface DiskGuardInit {
  /** The disk's region (layout: DISK_GUARD). */
  buffer: SharedArrayBuffer;
  /** The device's slot in it. */
  slot: number;
  /** The backing disk, as `major:minor` (for messages). */
  disk: string;
  /** How the device caps itself; null: it never does (it still publishes its own RT requests). */
  policy: RtGuardPolicy | null;
  /** The clock the rate term starts from (performance.now() ms; tests pass their own). */
  now?: number;
}

const TWO_32 = 2 ** 32;

/** The monotonic clock in µs, mod 2^32 as an int32 (CLOCK_MONOTONIC: one clock for every thread). */
function nowUs32(): number {
  // process.hrtime() allocates its pair: called at most once per batch, never per request.
  const t = process.hrtime();
  return ((t[0] * 1e6 + Math.floor(t[1] / 1000)) % TWO_32) | 0;
}

/**
 * One device's side of its disk's guard, on its worker thread. The device tells it each
 * request it starts and finishes (a few integer operations), asks {@link admits} before
 * popping a lower-class request, and calls {@link endBatch} once per batch.
 */
export class DiskGuard {
  /** The disk, as `major:minor`. */
  readonly disk: string;
  /** The cap; null: this device is never held. */
  readonly policy: RtGuardPolicy | null;
  readonly #words: Int32Array;
  /** Index of this device's first word. */
  readonly #own: number;
  #rtInFlight = 0;
  /** An RT request started or finished since the last {@link endBatch}. */
  #rtTouched = false;
  #seenPublished = false;
  /** Lower-class requests and bytes in flight. */
  #lowRequests = 0;
  #lowBytes = 0;
  /** The neighbours' state as read in this batch; -1: not read yet. */
  #active = -1;
  /** The most lower-class requests / bytes in flight right after an admission with a neighbour active. */
  #peakRequests = 0;
  #peakBytes = 0;
  /** The rate term (one bytes-per-second bucket); null: none. Charged only while a neighbour is active. */
  readonly #rate: IoThrottle | null;
  /** Times the rate term stopped an admission (a plain count; the device publishes it). */
  #rateHolds = 0;
  /** The last {@link admits} said no because of the rate term (not the in-flight cap). */
  #rateHeld = false;

  private constructor(init: DiskGuardInit) {
    const words = new Int32Array(init.buffer);
    if (words[DISK_GUARD.MAGIC] !== DISK_GUARD_MAGIC_VALUE)
      throw new TypeError('DiskGuard.attach: not a disk guard region (bad magic)');
    if (!Number.isInteger(init.slot) || init.slot < 0 || init.slot >= words[DISK_GUARD.SLOTS])
      throw new RangeError(`DiskGuard.attach: slot ${init.slot} is outside the region`);
    this.#words = words;
    this.#own = DISK_GUARD.FIRST + init.slot * DISK_GUARD.STRIDE;
    this.disk = init.disk;
    this.policy = init.policy;
    const bps = init.policy?.bytesPerSecond ?? 0;
    this.#rate =
      bps > 0
        ? new IoThrottle(
            { bps, bpsBurst: Math.max(1, Math.round(bps * RT_GUARD_BURST_SECONDS)) },
            init.now ?? performance.now(),
          )
        : null;
  }

  /** Joins the guard of a disk, in the slot the main thread handed out. */
  static attach(init: DiskGuardInit): DiskGuard {
    return new DiskGuard(init);
  }

  /** An RT-class request was handed to the engine. */
  rtStarted(): void {
    this.#rtInFlight++;
    this.#rtTouched = true;
  }

  /** An RT-class request finished. */
  rtFinished(): void {
    this.#rtInFlight--;
    this.#rtTouched = true;
  }

  /** A lower-class request of `bytes` payload was handed to the engine. */
  lowStarted(bytes: number): void {
    this.#lowRequests++;
    this.#lowBytes += bytes;
    if (this.#active !== 1) return;
    // Only while a neighbour is active: the bucket is the guard's, not the device's own QoS.
    this.#rate?.charge(true, bytes);
    if (this.#lowRequests > this.#peakRequests) this.#peakRequests = this.#lowRequests;
    if (this.#lowBytes > this.#peakBytes) this.#peakBytes = this.#lowBytes;
  }

  /** A lower-class request of `bytes` payload finished. */
  lowFinished(bytes: number): void {
    this.#lowRequests--;
    this.#lowBytes -= bytes;
  }

  /** Lower-class requests in flight. */
  get lowRequests(): number {
    return this.#lowRequests;
  }

  /** Lower-class bytes in flight. */
  get lowBytes(): number {
    return this.#lowBytes;
  }

  /** The most lower-class requests in flight just after one was admitted while a neighbour was active. */
  get peakRequests(): number {
    return this.#peakRequests;
  }

  /** The same in bytes. */
  get peakBytes(): number {
    return this.#peakBytes;
  }

  /**
   * Whether the device may pop one more request now: always without a policy or with no
   * active RT neighbour, else only under the cap.
   */
  admits(now?: number): boolean {
    const p = this.policy;
    this.#rateHeld = false;
    if (p === null || !this.neighbourActive()) return true;
    if (this.#lowRequests >= p.maxRequests || this.#lowBytes >= p.maxBytes) return false;
    const rate = this.#rate;
    if (rate === null || rate.open(now)) return true;
    this.#rateHeld = true;
    this.#rateHolds++;
    return false;
  }

  /** Times the rate term said no in {@link admits} (a running count). */
  get rateHolds(): number {
    return this.#rateHolds;
  }

  /**
   * How long a device held with nothing in flight waits before it looks again: when the
   * rate term held it, until its bucket refills (at least 1 ms); else (a strict cap) an
   * eighth of the window, at least 1 ms. One timer per device, never per request.
   */
  recheckMs(now?: number): number {
    if (this.#rateHeld && this.#rate !== null)
      return Math.max(1, Math.ceil(this.#rate.waitMs(now)));
    return Math.max(1, Math.ceil((this.policy?.windowUs ?? 0) / 8000));
  }

  /** Whether another device on the disk is RT-active (read at most once per batch). */
  neighbourActive(): boolean {
    if (this.#active === -1) this.#active = this.#scan() ? 1 : 0;
    return this.#active === 1;
  }

  #scan(): boolean {
    const w = this.#words;
    const used = Atomics.load(w, DISK_GUARD.SLOTS_USED);
    const window = (this.policy as RtGuardPolicy).windowUs;
    let now = 0;
    let clock = false;
    for (let s = 0; s < used; s++) {
      const at = DISK_GUARD.FIRST + s * DISK_GUARD.STRIDE;
      if (at === this.#own) continue;
      // RT_IN_FLIGHT first: its owner stores RT_LAST_US before it, so a 0 read here comes with
      // the RT_LAST_US of the batch that finished those requests (Atomics are sequentially consistent).
      if (Atomics.load(w, at + DISK_GUARD.RT_IN_FLIGHT) > 0) return true;
      if (Atomics.load(w, at + DISK_GUARD.RT_SEEN) === 0) continue;
      if (!clock) {
        now = nowUs32();
        clock = true;
      }
      // Signed 32-bit difference: wraps correctly; negative (the owner's clock read came
      // after ours) counts as active.
      if (((now - Atomics.load(w, at + DISK_GUARD.RT_LAST_US)) | 0) < window) return true;
    }
    return false;
  }

  /**
   * Ends a batch: publishes this device's RT state when it changed (RT_LAST_US, then
   * RT_IN_FLIGHT), and forgets the neighbours' state read during the batch.
   */
  endBatch(): void {
    this.#active = -1;
    if (!this.#rtTouched) return;
    this.#rtTouched = false;
    const w = this.#words;
    const own = this.#own;
    // Before RT_IN_FLIGHT (see #scan): a reader that sees the new count sees this time too.
    Atomics.store(w, own + DISK_GUARD.RT_LAST_US, nowUs32());
    if (!this.#seenPublished) {
      Atomics.store(w, own + DISK_GUARD.RT_SEEN, 1);
      this.#seenPublished = true;
    }
    Atomics.store(w, own + DISK_GUARD.RT_IN_FLIGHT, this.#rtInFlight);
  }

  /** The device closed: nothing in flight; CLOSED last, after which the slot is the main thread's. */
  close(): void {
    const w = this.#words;
    Atomics.store(w, this.#own + DISK_GUARD.RT_IN_FLIGHT, 0);
    Atomics.store(w, this.#own + DISK_GUARD.RT_SEEN, 0);
    Atomics.store(w, this.#own + DISK_GUARD.CLOSED, 1);
  }
}

/**
 * The backing disk of an image, as the `major:minor` of the whole disk (a partition's
 * parent), or of its file system when sysfs does not know it (tmpfs, overlay: devices on
 * one file system still share it). A block device image counts as the disk it is.
 */
export function backingDisk(image: string): string {
  const st = statSync(image);
  const dev = st.isBlockDevice() ? st.rdev : st.dev;
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00);
  const id = `${major}:${minor}`;
  try {
    const sys = realpathSync(`/sys/dev/block/${id}`);
    try {
      // A partition: its parent directory is the disk.
      readFileSync(`${sys}/partition`);
      return readFileSync(`${sys}/../dev`, 'utf8').trim();
    } catch {
      return id;
    }
  } catch {
    return id;
  }
}

interface DiskRegion {
  buffer: SharedArrayBuffer;
  words: Int32Array;
}

/**
 * The main thread's table of disk guard regions: one per backing disk, a slot per device.
 * A slot whose device closed (CLOSED) is cleared and handed out again once all are used.
 */
export class DiskGuardRegistry {
  readonly #disks = new Map<string, DiskRegion>();
  readonly #slots: number;

  /** @param slots slots per disk (default {@link DISK_GUARD_SLOTS}). */
  constructor(slots = DISK_GUARD_SLOTS) {
    this.#slots = slots;
  }

  /**
   * A slot on the guard of `image`'s backing disk for a device capped by `policy` (null:
   * never capped); undefined when the disk's slots are all taken by running devices
   * (`warn` says so; the device runs unguarded and unseen by its neighbours), or when the
   * image cannot be found (opening it fails next, with the error that says why).
   */
  assign(
    image: string,
    policy: RtGuardPolicy | null,
    warn: (message: string) => void,
  ): DiskGuardInit | undefined {
    let disk: string;
    try {
      disk = backingDisk(image);
    } catch {
      return undefined;
    }
    const region = this.#region(disk);
    const slot = this.#freeSlot(region);
    if (slot < 0) {
      warn(
        `RT guard: ${this.#slots} devices already on disk ${disk}: ${image} is served without it`,
      );
      return undefined;
    }
    return { buffer: region.buffer, slot, disk, policy };
  }

  #region(disk: string): DiskRegion {
    let r = this.#disks.get(disk);
    if (r === undefined) {
      const buffer = new SharedArrayBuffer(diskGuardByteLength(this.#slots));
      const words = new Int32Array(buffer);
      words[DISK_GUARD.MAGIC] = DISK_GUARD_MAGIC_VALUE;
      words[DISK_GUARD.SLOTS] = this.#slots;
      r = { buffer, words };
      this.#disks.set(disk, r);
    }
    return r;
  }

  #freeSlot(r: DiskRegion): number {
    const w = r.words;
    const used = Atomics.load(w, DISK_GUARD.SLOTS_USED);
    if (used < this.#slots) {
      // Published before the worker that owns the slot starts (its start is the hand-over).
      Atomics.store(w, DISK_GUARD.SLOTS_USED, used + 1);
      return used;
    }
    for (let s = 0; s < used; s++) {
      const at = DISK_GUARD.FIRST + s * DISK_GUARD.STRIDE;
      if (Atomics.load(w, at + DISK_GUARD.CLOSED) !== 1) continue;
      // The closed owner's last store was CLOSED; the line is the main thread's until the next owner starts.
      for (let i = 0; i < DISK_GUARD.STRIDE; i++) Atomics.store(w, at + i, 0);
      return s;
    }
    return -1;
  }
}

/** The process's registry: every blk device of one daemon shares its disk's guard. */
export const diskGuards = new DiskGuardRegistry();
