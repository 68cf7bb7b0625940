/**
 * A lock-free single-producer / single-consumer byte ring in a
 * SharedArrayBuffer: the path console output takes from a device worker to
 * the low-priority logger thread (DESIGN rule 7), without the worker ever
 * blocking or taking a lock.
 *
 * Indexes are free-running u32 byte counts (HEAD written only by the
 * producer, TAIL only by the consumer); `HEAD - TAIL` mod 2^32 is the fill
 * level, and `index & (capacity - 1)` the position in the data area. A
 * power-of-two capacity <= 2^30 makes both wrap-arounds (of the position and
 * of the u32) exact. Slots are named in layout.ts.
 *
 * Exactly one thread may call the producer side (write, writeAll,
 * notifyIfWaiting, waitWritable) and one thread the consumer side (read,
 * notifyWriterIfWaiting, waitReadable); they may be the same thread.
 */
import { copyBytes } from './copy.js';
import { LockError } from './errors.js';
import { RING, RING_HEADER_BYTES, RING_MAGIC_VALUE, RING_MAX_CAPACITY } from './layout.js';

/** Options of a ring handle (each thread's handle has its own). */
export interface SpscByteRingOptions {
  /**
   * Turns off the "notify only when the other side sleeps" fast path:
   * notifyIfWaiting()/notifyWriterIfWaiting() always call Atomics.notify.
   * For ruling out a lost wake-up when debugging; costs a futex call per batch.
   */
  alwaysNotify?: boolean;
}

/** Period of the keep-alive timer of a sleeping wait: it only has to exist, not fire. */
const KEEP_ALIVE_MS = 2 ** 30;
const noop = (): void => {};

type WaitAsyncResult =
  | { async: false; value: 'not-equal' | 'timed-out' }
  | { async: true; value: Promise<'ok' | 'timed-out'> };

/** Atomics.waitAsync exists in Node 20 (V8 ≥ 8.7), but the ES2022 lib does not declare it. */
const AtomicsAsync = Atomics as unknown as {
  waitAsync(typedArray: Int32Array, index: number, value: number, timeout: number): WaitAsyncResult;
};

/** A lock-free single-producer / single-consumer byte ring; see the module comment. */
export class SpscByteRing {
  readonly #buffer: SharedArrayBuffer;
  readonly #header: Int32Array;
  readonly #data: Uint8Array;
  readonly #capacity: number;
  readonly #mask: number;
  readonly #alwaysNotify: boolean;
  #readerWaiting = false;
  #writerWaiting = false;
  /** {@link cancelWaits} was called: every wait of this handle returns false at once. */
  #cancelled = false;

  private constructor(buffer: SharedArrayBuffer, capacity: number, options: SpscByteRingOptions) {
    this.#buffer = buffer;
    this.#header = new Int32Array(buffer, 0, RING_HEADER_BYTES / Int32Array.BYTES_PER_ELEMENT);
    this.#data = new Uint8Array(buffer, RING_HEADER_BYTES, capacity);
    this.#capacity = capacity;
    this.#mask = capacity - 1;
    this.#alwaysNotify = options.alwaysNotify ?? false;
  }

  /** A new empty ring with a data area of `capacity` bytes (a power of two, 1..2^30). */
  static create(capacity: number, options: SpscByteRingOptions = {}): SpscByteRing {
    if (!isValidCapacity(capacity)) {
      throw new RangeError(
        `SpscByteRing.create: capacity ${capacity} must be a power of two in 1..${RING_MAX_CAPACITY}`,
      );
    }
    const buffer = new SharedArrayBuffer(RING_HEADER_BYTES + capacity);
    const header = new Int32Array(buffer, 0, RING_HEADER_BYTES / Int32Array.BYTES_PER_ELEMENT);
    header[RING.CAPACITY] = capacity;
    // Written last, and the buffer reaches another thread only through
    // postMessage, which orders these initial stores before the receiver's attach().
    header[RING.MAGIC] = RING_MAGIC_VALUE;
    return new SpscByteRing(buffer, capacity, options);
  }

  /** A handle on a ring made by {@link create} in another thread (post {@link buffer} to it). */
  static attach(buffer: SharedArrayBuffer, options: SpscByteRingOptions = {}): SpscByteRing {
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength < RING_HEADER_BYTES) {
      throw new LockError('SHM_BAD_LAYOUT', 'SpscByteRing.attach: not a ring buffer (too small)');
    }
    const header = new Int32Array(buffer, 0, RING_HEADER_BYTES / Int32Array.BYTES_PER_ELEMENT);
    const capacity = header[RING.CAPACITY];
    if (header[RING.MAGIC] !== RING_MAGIC_VALUE || !isValidCapacity(capacity)) {
      throw new LockError('SHM_BAD_LAYOUT', 'SpscByteRing.attach: not a ring buffer (bad header)');
    }
    if (buffer.byteLength !== RING_HEADER_BYTES + capacity) {
      throw new LockError(
        'SHM_BAD_LAYOUT',
        'SpscByteRing.attach: buffer size disagrees with header',
      );
    }
    return new SpscByteRing(buffer, capacity, options);
  }

  /** The shared memory; post it to the other thread, which calls {@link attach}. */
  get buffer(): SharedArrayBuffer {
    return this.#buffer;
  }

  /** Size of the data area in bytes. */
  get capacity(): number {
    return this.#capacity;
  }

  /** Bytes the consumer could read now (a snapshot; only grows until the consumer reads). */
  get readable(): number {
    // Two seq-cst loads: a snapshot. The caller's own index is current, the
    // other side's may only have moved on since, in the caller's favour.
    return (Atomics.load(this.#header, RING.HEAD) - Atomics.load(this.#header, RING.TAIL)) >>> 0;
  }

  /** Bytes the producer could write now (a snapshot; only grows until the producer writes). */
  get writable(): number {
    return this.#capacity - this.readable;
  }

  /** The highest fill level any write has left behind, in bytes. */
  get highWater(): number {
    // Pairs with the producer's store in #publish; a snapshot for statistics.
    return Atomics.load(this.#header, RING.HIGH_WATER);
  }

  /**
   * Producer: copies as much of `src[off, off + len)` as fits and returns how
   * many bytes were accepted (0 when full). Never blocks.
   */
  write(src: Uint8Array, off = 0, len = src.length - off): number {
    checkRange('write', src, off, len);
    const head = Atomics.load(this.#header, RING.HEAD); // our own index: current
    const used = this.#usedFrom(head);
    const n = Math.min(len, this.#capacity - used);
    if (n > 0) this.#publish(src, off, n, head, used);
    return n;
  }

  /**
   * Producer: writes all of `src[off, off + len)` or nothing, returning
   * whether it was written (the 'drop' policy counts the `false`s). Never blocks.
   */
  writeAll(src: Uint8Array, off = 0, len = src.length - off): boolean {
    checkRange('writeAll', src, off, len);
    const head = Atomics.load(this.#header, RING.HEAD);
    const used = this.#usedFrom(head);
    if (len > this.#capacity - used) return false;
    if (len > 0) this.#publish(src, off, len, head, used);
    return true;
  }

  /**
   * Consumer: moves up to `len` readable bytes into `dst[off, ...)` and
   * returns how many (0 when empty). Never blocks.
   */
  read(dst: Uint8Array, off = 0, len = dst.length - off): number {
    checkRange('read', dst, off, len);
    // Acquire: the producer copied every byte before `head` ahead of its
    // seq-cst store of HEAD, so this load makes those bytes visible to us.
    const head = Atomics.load(this.#header, RING.HEAD);
    const tail = Atomics.load(this.#header, RING.TAIL); // our own index: current
    const n = Math.min(len, (head - tail) >>> 0);
    if (n === 0) return 0;
    const pos = tail & this.#mask;
    const first = Math.min(n, this.#capacity - pos);
    copyBytes(this.#data, pos, dst, off, first);
    copyBytes(this.#data, 0, dst, off + first, n - first);
    // Release: our reads of the bytes above happen before this store; the
    // producer overwrites them only after its seq-cst load of TAIL sees it.
    Atomics.store(this.#header, RING.TAIL, (tail + n) | 0);
    return n;
  }

  /**
   * Producer, after a batch of writes: wakes the consumer if it sleeps in
   * {@link waitReadable}. Costs one atomic load when it does not. Returns
   * whether Atomics.notify was called.
   */
  notifyIfWaiting(): boolean {
    // Dekker pairing: we stored HEAD (in write) then load CONSUMER_WAITING;
    // the consumer stores CONSUMER_WAITING then loads HEAD. Both seq-cst, so
    // at least one of us sees the other's store: no lost wake-up.
    if (!this.#alwaysNotify && Atomics.load(this.#header, RING.CONSUMER_WAITING) === 0) {
      return false;
    }
    // Wakes the consumer queued on HEAD in #sleepUntil; it re-reads HEAD after.
    Atomics.notify(this.#header, RING.HEAD, 1);
    return true;
  }

  /**
   * Consumer, after reads: wakes the producer if it sleeps in
   * {@link waitWritable}. Costs one atomic load when it does not. Returns
   * whether Atomics.notify was called.
   */
  notifyWriterIfWaiting(): boolean {
    // Same Dekker pairing as notifyIfWaiting, on TAIL / PRODUCER_WAITING.
    if (!this.#alwaysNotify && Atomics.load(this.#header, RING.PRODUCER_WAITING) === 0) {
      return false;
    }
    // Wakes the producer queued on TAIL in #sleepUntil; it re-reads TAIL after.
    Atomics.notify(this.#header, RING.TAIL, 1);
    return true;
  }

  /**
   * Consumer: resolves true as soon as at least one byte is readable, or
   * false after `timeoutMs` (default: no limit). Sleeps with
   * Atomics.waitAsync, so the consumer's event loop keeps running.
   */
  async waitReadable(timeoutMs = Number.POSITIVE_INFINITY): Promise<boolean> {
    const tail = Atomics.load(this.#header, RING.TAIL); // our own index: stable while we wait
    if (Atomics.load(this.#header, RING.HEAD) !== tail) return true;
    if (this.#readerWaiting) throw alreadyWaiting('waitReadable');
    this.#readerWaiting = true;
    try {
      return await this.#sleepUntil(RING.CONSUMER_WAITING, RING.HEAD, timeoutMs, (head) => {
        return head !== tail;
      });
    } finally {
      this.#readerWaiting = false;
    }
  }

  /**
   * Producer: resolves true as soon as at least `bytes` (default 1, at most
   * {@link capacity}) are writable, or false after `timeoutMs` (default: no
   * limit). For the lossless policy: write what fits, then wait for space.
   */
  async waitWritable(bytes = 1, timeoutMs = Number.POSITIVE_INFINITY): Promise<boolean> {
    if (!Number.isInteger(bytes) || bytes < 0 || bytes > this.#capacity) {
      throw new RangeError(
        `SpscByteRing.waitWritable: bytes ${bytes} is outside 0..${this.#capacity}`,
      );
    }
    const head = Atomics.load(this.#header, RING.HEAD); // our own index: stable while we wait
    const fits = (tail: number): boolean => this.#capacity - ((head - tail) >>> 0) >= bytes;
    if (fits(Atomics.load(this.#header, RING.TAIL))) return true;
    if (this.#writerWaiting) throw alreadyWaiting('waitWritable');
    this.#writerWaiting = true;
    try {
      return await this.#sleepUntil(RING.PRODUCER_WAITING, RING.TAIL, timeoutMs, fits);
    } finally {
      this.#writerWaiting = false;
    }
  }

  /**
   * Ends this handle's pending and future waits (they resolve false), e.g.
   * when the device that produces into the ring closes: a wait holds a timer
   * that would keep the thread's event loop alive.
   */
  cancelWaits(): void {
    this.#cancelled = true;
    // Wakes our own waitAsync, whichever side's index it sleeps on.
    Atomics.notify(this.#header, RING.HEAD);
    Atomics.notify(this.#header, RING.TAIL);
  }

  /** Free-running fill level as the producer sees it, given its own `head`. */
  #usedFrom(head: number): number {
    // Acquire: the consumer finished reading every byte before TAIL ahead of
    // its seq-cst store, so the space we are about to overwrite is really free.
    return (head - Atomics.load(this.#header, RING.TAIL)) >>> 0;
  }

  /** Copies `n` bytes in at `head`, then publishes them and the high-water mark. */
  #publish(src: Uint8Array, off: number, n: number, head: number, used: number): void {
    const pos = head & this.#mask;
    const first = Math.min(n, this.#capacity - pos);
    copyBytes(src, off, this.#data, pos, first);
    copyBytes(src, off + first, this.#data, 0, n - first);
    // Release: the bytes copied above happen before this seq-cst store; the
    // consumer's load of HEAD that sees it therefore sees them.
    Atomics.store(this.#header, RING.HEAD, (head + n) | 0);
    // Producer-owned statistic; the store publishes it to any reader of highWater.
    if (used + n > Atomics.load(this.#header, RING.HIGH_WATER)) {
      Atomics.store(this.#header, RING.HIGH_WATER, used + n);
    }
  }

  /**
   * The sleeping half of the wake-up protocol: announce sleep in `flagSlot`,
   * re-check `ready` on the other side's index `futexSlot`, and sleep on that
   * index while it is unchanged, until ready or the deadline passes.
   */
  async #sleepUntil(
    flagSlot: number,
    futexSlot: number,
    timeoutMs: number,
    ready: (otherIndex: number) => boolean,
  ): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    // A pending Atomics.waitAsync does not keep Node's event loop alive
    // (nodejs/node#61941, unfixed in Node 20): a worker whose only work is this
    // wait would exit with code 13. A ref'd timer holds the loop open meanwhile.
    const keepAlive = setInterval(noop, KEEP_ALIVE_MS);
    try {
      for (;;) {
        // Dekker pairing with notify*IfWaiting: this seq-cst store of the flag
        // comes before our load of the other side's index, and the other side
        // stores its index before loading the flag.
        Atomics.store(this.#header, flagSlot, 1);
        const seen = Atomics.load(this.#header, futexSlot);
        if (ready(seen)) return true;
        if (this.#cancelled) return false;
        const remaining = deadline - performance.now();
        if (remaining <= 0) return false;
        // waitAsync compares the slot with `seen` atomically with queueing us:
        // if the index moved after our load, it returns 'not-equal' at once.
        const result = AtomicsAsync.waitAsync(this.#header, futexSlot, seen, remaining);
        if (result.async) await result.value;
      }
    } finally {
      // Tells the other side to stop notifying; a notify racing with this
      // store finds no waiter and costs only the futex call.
      Atomics.store(this.#header, flagSlot, 0);
      clearInterval(keepAlive);
    }
  }
}

function isValidCapacity(capacity: number): boolean {
  return (
    Number.isInteger(capacity) &&
    capacity >= 1 &&
    capacity <= RING_MAX_CAPACITY &&
    (capacity & (capacity - 1)) === 0
  );
}

function checkRange(what: string, bytes: Uint8Array, off: number, len: number): void {
  if (!Number.isInteger(off) || !Number.isInteger(len) || off < 0 || len < 0) {
    throw new RangeError(`SpscByteRing.${what}: off ${off} and len ${len} must be integers >= 0`);
  }
  if (off + len > bytes.length) {
    throw new RangeError(
      `SpscByteRing.${what}: off ${off} + len ${len} exceeds the array's ${bytes.length} bytes`,
    );
  }
}

function alreadyWaiting(what: string): LockError {
  return new LockError('RING_ALREADY_WAITING', `SpscByteRing.${what}: a wait is already pending`);
}
