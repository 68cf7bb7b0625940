/**
 * The batched frame copy of the switch's data path (issue 13): every copy of
 * frame bytes between guest RAM and the packet rings in one batch is
 * recorded as an op (source view, offset, destination view, offset, length)
 * and done by ONE native call (native/net.cc FrameCopier, `memcpy`) before
 * anything that exposes the bytes — a ring's HEAD or TAIL, a used index — is
 * published.
 *
 * Why native: guest RAM and the rings are SharedArrayBuffers, where V8's
 * `TypedArray.prototype.set` is a relaxed-atomic byte-by-byte memmove; at
 * 1518-byte frames that copy was 42 % of the switch's CPU. Why only the
 * copy: the rest of the per-frame work (popping and checking chains, routing,
 * learning, counting) measured cheaper in JIT-compiled TypeScript than the
 * cost of crossing into C++ per frame, and it keeps the hostile-guest checks
 * of src/virtio in one place; one native call per batch amortises the
 * crossing over up to 256 frames (bench/results/net-dpdk.md).
 *
 * Views: the caller's fixed views first (the port's ring data areas, a
 * header template), then the regions of the guest memory table in use
 * (re-set on every new table). Nothing here allocates per frame.
 */
import { type FrameCopier, native } from '../native.js';

/** Doubles per op: source view, source offset, destination view, destination offset, length. */
const OP = 5;

/** Ops held before a flush is forced (a batch of 256 full frames over 4 segments fits). */
export const FRAME_COPY_OPS = 4096;

/** Copies recorded during a batch and done in one native call; see the module comment. */
export class FrameCopyBatch {
  private readonly copier: FrameCopier;
  private readonly ops: Float64Array;
  private readonly capacity: number;
  /** Ops recorded and not yet copied. */
  count = 0;
  /** Flushes done so far: an op recorded at generation g is still patchable while it is g. */
  generation = 0;
  /** Index of the first guest-region view (after the ring views). */
  private guestBase = 0;
  private ringViews: readonly Uint8Array[] = [];

  /** @param capacity ops held before {@link add} flushes by itself. */
  constructor(capacity = FRAME_COPY_OPS) {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new RangeError(`FrameCopyBatch capacity ${capacity} must be a positive integer`);
    this.copier = new native.FrameCopier();
    this.capacity = capacity;
    this.ops = new Float64Array(capacity * OP);
  }

  /** Sets the fixed views (view i = fixed view i) and the guest regions that follow them. */
  setViews(ringViews: readonly Uint8Array[], guest: readonly Uint8Array[]): void {
    this.flush();
    this.ringViews = ringViews;
    this.guestBase = ringViews.length;
    this.copier.setViews([...ringViews, ...guest]);
  }

  /** A new guest memory table: its region views replace the old ones. */
  setGuest(guest: readonly Uint8Array[]): void {
    this.setViews(this.ringViews, guest);
  }

  /** The view index of guest region `region`. */
  guestView(region: number): number {
    return this.guestBase + region;
  }

  /** Records one copy; flushes first when the batch is full. */
  add(src: number, srcOffset: number, dst: number, dstOffset: number, length: number): void {
    if (this.count === this.capacity) this.flush();
    const o = this.count * OP;
    const ops = this.ops;
    ops[o] = src;
    ops[o + 1] = srcOffset;
    ops[o + 2] = dst;
    ops[o + 3] = dstOffset;
    ops[o + 4] = length;
    this.count++;
  }

  /**
   * Flushes unless `ops` more ops fit: a caller that must be able to roll
   * back or patch what it records next calls this first.
   */
  ensureRoom(ops: number): void {
    if (this.count + ops > this.capacity) this.flush();
  }

  /** Forgets the ops recorded since `mark` (a frame that could not be placed after all). */
  rollback(mark: number): void {
    if (mark <= this.count) this.count = mark;
  }

  /**
   * Moves the source offset of ops `[first, first + n)` by `delta`; they
   * must be unflushed (recorded in this {@link generation}; see ensureRoom).
   */
  shiftSource(first: number, n: number, delta: number): void {
    for (let i = first; i < first + n; i++) this.ops[i * OP + 1] += delta;
  }

  /**
   * Prefetches the guest memory at pairs `[0, count)` of `at`, pair k being
   * (guest region, buffer offset) at `at[2k, 2k + 2)` (rewritten in place to
   * view indexes); one native call, see native/net.cc Prefetch.
   */
  prefetchGuest(at: Float64Array, count: number): void {
    const base = this.guestBase;
    for (let k = 0; k < count; k++) at[2 * k] += base;
    this.copier.prefetch(at, count);
  }

  /** Does every recorded copy (one native call); call before publishing what they wrote. */
  flush(): void {
    if (this.count === 0) return;
    const n = this.count;
    this.count = 0;
    this.generation++;
    this.copier.copy(this.ops, n);
  }
}
