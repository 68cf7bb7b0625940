/**
 * Dirty-page logging for live migration (vhost-user §"Migration", "Dirty
 * pages logging"): while the front end has VHOST_F_LOG_ALL on and has handed
 * a log (SET_LOG_BASE), every byte the device writes into guest memory marks
 * its page in a bitmap shared with the front end — one bit per 4 KiB page of
 * guest-physical address, bit `p % 8` of byte `p / 8` for page `p` — which
 * the front end reads and clears while the device runs. The marks are made
 * with `Atomics.or`, so a bit the front end is clearing concurrently is never
 * lost, and before the used index that hands the buffers back is published:
 * a page is marked after it was written and before the driver can see it, so
 * the front end's last pass (after GET_VRING_BASE) finds every page.
 *
 * What is marked, per batch ({@link DirtyLog.logBatch}, called by
 * `Vring.flush` before it stores used.idx):
 * - the device-writable buffers of every chain returned in the batch, up to
 *   its used length (payload written from the start: net and console
 *   receive) or wholly (devices whose used length does not say where they
 *   wrote: blk's status byte is the last writable byte, and a failed read may
 *   have left part of its data);
 * - the used elements written and used.idx, at the ring's log address
 *   (SET_VRING_ADDR with VHOST_VRING_F_LOG), as the spec asks.
 * The ring's own marks come before the store that publishes them (used.idx,
 * a packed ring's flags), so a front end reading and clearing the bitmap in
 * between misses that store: `Vring.stop` (GET_VRING_BASE, before the
 * front end's last read) marks every ring area the device writes whole.
 * The chains are walked again from the descriptor table (a chain stays the
 * device's until its used entry is published: the driver may not touch it), with every
 * check `pop()` makes, and their heads are read back from the used elements
 * the device wrote: a guest that rewrites either meanwhile only breaks its
 * own migration, never the device.
 *
 * Cost. While logging is off a ring holds no log: one null test per batch in
 * `Vring.flush`, nothing per request. While on, per returned chain: one
 * descriptor walk (as pop's, no allocation) and one `Atomics.or` per byte of
 * the bitmap touched (8 pages per byte: a 4 KiB read is one or two), plus
 * one or two per batch for the used ring; bench/results/dirty-log.md
 * measures it.
 */
import { DescriptorChain } from './descriptor-chain.js';
import type { GuestMemory } from './guest-memory.js';
import type { SplitVirtqueue } from './virtqueue.js';

/** log2 of the page size the bitmap counts in (VHOST_LOG_PAGE, 4 KiB). */
export const LOG_PAGE_SHIFT = 12;
/** Bytes per page of the dirty bitmap. */
export const LOG_PAGE_SIZE = 1 << LOG_PAGE_SHIFT;
/** Bytes of used.flags + used.idx before the used elements (§2.7.8). */
const USED_HEADER = 4;
/** Bytes per used element. */
const USED_ELEM = 8;

/** Bitmap bytes needed to log guest-physical addresses below `end`. */
export function logBytesFor(end: number): number {
  return Math.ceil(end / LOG_PAGE_SIZE / 8);
}

/**
 * The dirty bitmap of one front end as a device's thread marks it; see the
 * module comment. Made on the control path when logging is switched on (it
 * preallocates its scratch chain), never per request.
 */
export class DirtyLog {
  /** The bitmap: byte `p >> 3`, bit `p & 7` for page `p`. */
  readonly bits: Uint8Array;
  /** Marks that fell outside the bitmap (an address beyond what the front end sized it for). */
  outside = 0;
  /** gpa - buffer offset, per region of the memory table the rings use. */
  private bias = new Float64Array(0);
  /** Scratch for walking a returned chain again; never the device's own. */
  private readonly chain: DescriptorChain;

  /**
   * @param log the mapping of the log fd (from file offset 0)
   * @param offset where the bitmap starts in it (SET_LOG_BASE mmap_offset)
   * @param size bitmap bytes (SET_LOG_BASE mmap_size)
   * @param maxSegments segment capacity of the scratch chain (as the rings' pop uses)
   * @throws RangeError when `[offset, offset + size)` is not inside `log`.
   */
  constructor(log: SharedArrayBuffer, offset: number, size: number, maxSegments: number) {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(size) || offset < 0 || size < 1)
      throw new RangeError(
        `dirty log offset ${offset} and size ${size} must be integers, size > 0`,
      );
    if (offset + size > log.byteLength)
      throw new RangeError(
        `dirty log ${offset}+${size} exceeds its ${log.byteLength}-byte mapping`,
      );
    this.bits = new Uint8Array(log, offset, size);
    this.chain = new DescriptorChain(maxSegments);
  }

  /** Takes the memory table the rings use (chain segments name its regions). */
  setMemory(memory: GuestMemory): void {
    this.bias = Float64Array.from(memory.regions, (r) => r.guestPhysAddr - r.mmapOffset);
  }

  /**
   * Marks every page of guest-physical `[gpa, gpa + len)`, a bitmap byte at
   * a time (one `Atomics.or` per 8 pages). Pages beyond the bitmap are
   * counted in {@link outside}, not marked.
   */
  markRange(gpa: number, len: number): void {
    if (!(len > 0) || !(gpa >= 0)) return;
    let page = Math.floor(gpa / LOG_PAGE_SIZE);
    const last = Math.floor((gpa + len - 1) / LOG_PAGE_SIZE);
    const bits = this.bits;
    while (page <= last) {
      const byte = Math.floor(page / 8);
      if (byte >= bits.length) {
        this.outside++;
        return;
      }
      const from = page % 8;
      const to = Math.min(7, from + (last - page));
      // Seq-cst RMW: the front end clears bytes (or words) of the same bitmap
      // with atomic exchanges; an or never undoes its clear nor loses a bit.
      Atomics.or(bits, byte, (0xff << from) & (0xff >> (7 - to)));
      page += to - from + 1;
    }
  }

  /**
   * Marks what the device wrote for the used entries `[from, q.usedIdx)` of
   * `q` (u16 indexes), before the caller publishes used.idx: each chain's
   * writable buffers, up to its used length unless `whole`, and the used
   * elements and used.idx at `usedLogAddr` (-1: the ring is not logged).
   */
  logBatch(q: SplitVirtqueue, from: number, usedLogAddr: number, whole: boolean): void {
    const to = q.usedIdx;
    const count = Math.min((to - from) & 0xffff, q.size);
    for (let k = 0; k < count; k++) {
      const idx = (from + k) & 0xffff;
      const len = q.usedLenAt(idx);
      if (len === 0 && !whole) continue;
      const head = q.usedHeadAt(idx);
      if (head >= q.size) continue;
      q.walkHead(head, this.chain);
      this.markWritable(whole ? Number.POSITIVE_INFINITY : len);
    }
    if (usedLogAddr < 0 || count === 0) return;
    const first = from & (q.size - 1);
    const run = Math.min(count, q.size - first);
    this.markRange(usedLogAddr + USED_HEADER + first * USED_ELEM, run * USED_ELEM);
    if (run < count) this.markRange(usedLogAddr + USED_HEADER, (count - run) * USED_ELEM);
    // used.idx (its page is the header's).
    this.markRange(usedLogAddr + 2, 2);
  }

  /** Marks the first `limit` bytes of the scratch chain's writable part. */
  private markWritable(limit: number): void {
    const c = this.chain;
    let left = limit;
    for (let s = c.firstWritable; s < c.segments && left > 0; s++) {
      const n = Math.min(c.length[s], left);
      this.markRange(c.offset[s] + this.bias[c.region[s]], n);
      left -= n;
    }
  }
}
