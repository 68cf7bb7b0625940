/**
 * Named 64-bit statistics counters in a SharedArrayBuffer, written by one
 * thread (a device worker, once per batch) and read by others (the main
 * thread's stats).
 *
 * Representation — two Int32 halves per counter under one seqlock, chosen
 * over a BigInt64Array because:
 * - a BigInt64Array is tear-free only through Atomics, and every Atomics
 *   call on it takes or returns a BigInt: an allocation per update and per
 *   read, where the device worker must allocate nothing;
 * - Float64Array elements are not tear-free in the ECMAScript memory model;
 * - Int32 Atomics allocate nothing, and the single writer makes a seqlock
 *   cheap: the writer never waits, a reader retries only if it overlaps an
 *   update, and one sequence for the whole block gives snapshots that are
 *   consistent across counters (updates grouped in beginBatch/endBatch
 *   appear together).
 * Values are JS safe integers (|v| < 2^53); sums beyond that saturate.
 * Slots are named in layout.ts.
 */
import { LockError } from './errors.js';
import { COUNTERS, COUNTERS_MAGIC_VALUE, countersByteLength } from './layout.js';

const TWO_32 = 2 ** 32;
/** Reads of one unchanged odd sequence a reader spins through before sleeping between them. */
const READ_SPINS = 1000;
/**
 * 1 ms sleeps on one unchanged odd sequence before a reader gives up: a
 * second, far longer than any preemption of a live writer mid-section, so
 * it means the writer died mid-update (e.g. its worker was terminated).
 */
const READ_SLEEPS = 1000;
/** A private futex word to sleep on: nobody ever notifies it, so waits time out. */
const sleepCell = new Int32Array(new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT));

/** A block of named counters; see the module comment. */
export class StatCounters {
  readonly #buffer: SharedArrayBuffer;
  readonly #slots: Int32Array;
  readonly #names: readonly string[];
  /** Reader scratch, allocated once: snapshot() copies into it under the seqlock. */
  readonly #scratch: Float64Array;
  /** Writer-local nesting depth of update sections (0: the sequence is even). */
  #depth = 0;

  private constructor(buffer: SharedArrayBuffer, names: readonly string[]) {
    this.#buffer = buffer;
    this.#slots = new Int32Array(buffer);
    this.#names = Object.freeze([...names]);
    this.#scratch = new Float64Array(names.length);
  }

  /** A zeroed block with one counter per name (index = position in `names`). */
  static create(names: readonly string[]): StatCounters {
    checkNames(names);
    const buffer = new SharedArrayBuffer(countersByteLength(names.length));
    const slots = new Int32Array(buffer);
    slots[COUNTERS.COUNT] = names.length;
    // Reaches other threads only through postMessage, which orders these
    // initial stores before the receiver's attach().
    slots[COUNTERS.MAGIC] = COUNTERS_MAGIC_VALUE;
    return new StatCounters(buffer, names);
  }

  /** A handle on a block made by {@link create} in another thread, with the same names. */
  static attach(buffer: SharedArrayBuffer, names: readonly string[]): StatCounters {
    checkNames(names);
    const ok =
      buffer instanceof SharedArrayBuffer &&
      buffer.byteLength === countersByteLength(names.length) &&
      new Int32Array(buffer)[COUNTERS.MAGIC] === COUNTERS_MAGIC_VALUE &&
      new Int32Array(buffer)[COUNTERS.COUNT] === names.length;
    if (!ok) {
      throw new LockError('SHM_BAD_LAYOUT', 'StatCounters.attach: not a block of these counters');
    }
    return new StatCounters(buffer, names);
  }

  /** The shared memory; post it (with the names) to a reader, which calls {@link attach}. */
  get buffer(): SharedArrayBuffer {
    return this.#buffer;
  }

  /** Counter names, index order. */
  get names(): readonly string[] {
    return this.#names;
  }

  /** Index of the counter called `name` (resolve once, then use the index). */
  indexOf(name: string): number {
    const index = this.#names.indexOf(name);
    if (index < 0) throw new RangeError(`StatCounters: no counter named '${name}'`);
    return index;
  }

  /** Writer: adds `n` (a safe integer, may be negative) to counter `index`. */
  add(index: number, n: number): void {
    this.#checkWrite(index, n);
    this.beginBatch();
    this.#store(index, this.#load(index) + n);
    this.endBatch();
  }

  /** Writer: sets counter `index` to `n`. */
  set(index: number, n: number): void {
    this.#checkWrite(index, n);
    this.beginBatch();
    this.#store(index, n);
    this.endBatch();
  }

  /**
   * Writer, inside {@link beginBatch}/{@link endBatch}: sets counter `index`
   * to `n` without the checks of {@link set} — the hot path's once-per-batch
   * publish, whose caller owns a valid index and a safe integer. The high
   * half is stored only when it changes.
   */
  setInBatch(index: number, n: number): void {
    const base = COUNTERS.FIRST + index * COUNTERS.STRIDE;
    const hi = Math.floor(n / TWO_32);
    // Atomics stores inside the odd-sequence window beginBatch opened: ordered
    // after its CAS and before endBatch's increment. The plain read is of this
    // writer's own earlier store.
    Atomics.store(this.#slots, base + COUNTERS.LO, (n - hi * TWO_32) | 0);
    if (this.#slots[base + COUNTERS.HI] !== hi) Atomics.store(this.#slots, base + COUNTERS.HI, hi);
  }

  /** Writer: raises counter `index` to `n` if `n` is larger (a high-water mark). */
  max(index: number, n: number): void {
    this.#checkWrite(index, n);
    // The writer's own value is current, so the comparison needs no section.
    if (n <= this.#load(index)) return;
    this.beginBatch();
    this.#store(index, n);
    this.endBatch();
  }

  /**
   * Writer: opens an update section, so that several updates appear to
   * readers all at once (call once per batch). Sections nest; each must be
   * closed by {@link endBatch}.
   */
  beginBatch(): void {
    if (this.#depth++ > 0) return;
    try {
      seqlockWriteBegin(this.#slots, COUNTERS.SEQ, 'StatCounters');
    } catch (err) {
      this.#depth = 0;
      throw err;
    }
  }

  /** Writer: closes the section opened by the matching {@link beginBatch}. */
  endBatch(): void {
    if (this.#depth === 0)
      throw new LockError('LOCK_NOT_HELD', 'StatCounters.endBatch: no batch open');
    if (--this.#depth > 0) return;
    seqlockWriteEnd(this.#slots, COUNTERS.SEQ);
  }

  /** Any thread: the current value of counter `index`. Never torn. */
  get(index: number): number {
    this.#checkIndex(index);
    for (;;) {
      const before = this.#readBegin();
      const value = this.#load(index);
      if (this.#readValid(before)) return value;
    }
  }

  /** Any thread: every counter by name, all from one consistent moment. */
  snapshot(): Record<string, number> {
    const scratch = this.#scratch;
    for (;;) {
      const before = this.#readBegin();
      for (let i = 0; i < scratch.length; i++) scratch[i] = this.#load(i);
      if (this.#readValid(before)) break;
    }
    const out: Record<string, number> = {};
    for (let i = 0; i < scratch.length; i++) out[this.#names[i]] = scratch[i];
    return out;
  }

  #readBegin(): number {
    return seqlockReadBegin(this.#slots, COUNTERS.SEQ, 'StatCounters');
  }

  #readValid(before: number): boolean {
    return seqlockReadValid(this.#slots, COUNTERS.SEQ, before);
  }

  #load(index: number): number {
    const base = COUNTERS.FIRST + index * COUNTERS.STRIDE;
    // Atomics loads (not plain reads) so they cannot be reordered across the
    // sequence loads around them.
    const lo = Atomics.load(this.#slots, base + COUNTERS.LO) >>> 0;
    return Atomics.load(this.#slots, base + COUNTERS.HI) * TWO_32 + lo;
  }

  #store(index: number, value: number): void {
    const v = Math.max(Number.MIN_SAFE_INTEGER, Math.min(Number.MAX_SAFE_INTEGER, value));
    const hi = Math.floor(v / TWO_32);
    const base = COUNTERS.FIRST + index * COUNTERS.STRIDE;
    // Atomics stores, inside the odd-sequence window opened by beginBatch.
    Atomics.store(this.#slots, base + COUNTERS.LO, (v - hi * TWO_32) | 0);
    Atomics.store(this.#slots, base + COUNTERS.HI, hi);
  }

  #checkIndex(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.#names.length) {
      throw new RangeError(`StatCounters: index ${index} is outside 0..${this.#names.length - 1}`);
    }
  }

  #checkWrite(index: number, n: number): void {
    this.#checkIndex(index);
    if (!Number.isSafeInteger(n)) throw new RangeError(`StatCounters: ${n} is not a safe integer`);
  }
}

function checkNames(names: readonly string[]): void {
  if (!Array.isArray(names) || names.some((n) => typeof n !== 'string' || n === '')) {
    throw new TypeError('StatCounters: names must be an array of non-empty strings');
  }
  if (new Set(names).size !== names.length) {
    throw new RangeError('StatCounters: counter names must be unique');
  }
}

/**
 * Seqlock write entry on `slots[seq]` (the one writer opens an update
 * section). Making the sequence odd is seq-cst, so it is ordered before the
 * Atomics stores of the section; readers that load an odd sequence, or a
 * different one after their reads, retry. The CAS (rather than a store)
 * catches a second writer that overlaps us: a LockError naming `who`.
 */
export function seqlockWriteBegin(slots: Int32Array, seq: number, who: string): void {
  const s = Atomics.load(slots, seq);
  if ((s & 1) !== 0 || Atomics.compareExchange(slots, seq, s, s + 1) !== s) {
    throw new LockError('COUNTERS_SECOND_WRITER', `${who}: another thread is updating`);
  }
}

/**
 * Seqlock write exit: the section's Atomics stores are seq-cst and precede
 * this increment making the sequence even again, so a reader that sees the
 * same even value before and after its reads saw none of them half-done.
 */
export function seqlockWriteEnd(slots: Int32Array, seq: number): void {
  Atomics.add(slots, seq, 1);
}

/**
 * Seqlock read entry: an even sequence, waiting out a writer mid-update
 * (spinning, then sleeping 1 ms per try; a LockError COUNTERS_BUSY naming
 * `who` when the writer seems dead).
 */
export function seqlockReadBegin(slots: Int32Array, seq: number, who: string): number {
  let stuck = 0;
  let last = 0;
  for (;;) {
    // Seq-cst load: ordered before the Atomics loads of the data that follow it.
    const s = Atomics.load(slots, seq);
    if ((s & 1) === 0) return s;
    // Only the same odd value over and over means a stalled writer; a
    // changing one is a live writer between batches, and we just retry.
    stuck = s === last ? stuck + 1 : 0;
    last = s;
    backOff(stuck, who);
  }
}

/** Seqlock read exit: true when no update section overlapped the reads since `before`. */
export function seqlockReadValid(slots: Int32Array, seq: number, before: number): boolean {
  // Seq-cst load: ordered after the data loads above it. Unchanged and even
  // means no writer section overlapped them.
  return Atomics.load(slots, seq) === before;
}

/** Spin a while, then sleep 1 ms per try; give up when the writer seems dead. */
function backOff(stuck: number, who: string): void {
  if (stuck < READ_SPINS) return;
  if (stuck >= READ_SPINS + READ_SLEEPS) {
    throw new LockError('COUNTERS_BUSY', `${who}: the writer has been mid-update for 1 s`);
  }
  // Nothing orders against this wait: it is a sleep (the value never changes, no one notifies).
  Atomics.wait(sleepCell, 0, 0, 1);
}
