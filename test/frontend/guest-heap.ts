/**
 * A first-fit allocator over one range of guest-physical addresses, for the
 * driver's request buffers. GuestRam's bump allocator never frees; a driver
 * that runs thousands of requests needs its buffers back.
 */
import { FrontendError } from './errors.js';

interface Block {
  gpa: number;
  size: number;
}

/** Allocates and frees guest buffers inside `[base, base + size)`. */
export class GuestHeap {
  /** Free blocks sorted by address, coalesced on free. */
  private readonly freeList: Block[];
  private readonly live = new Map<number, number>();

  constructor(
    readonly base: number,
    readonly size: number,
  ) {
    this.freeList = [{ gpa: base, size }];
  }

  /** Bytes currently handed out. */
  get used(): number {
    let total = 0;
    for (const size of this.live.values()) total += size;
    return total;
  }

  /** Reserves `size` bytes aligned to `align`; throws FRONTEND_BAD_REQUEST when full. */
  alloc(size: number, align = 16): number {
    const want = Math.max(1, size);
    for (let i = 0; i < this.freeList.length; i++) {
      const block = this.freeList[i];
      const gpa = Math.ceil(block.gpa / align) * align;
      const end = gpa + want;
      if (end > block.gpa + block.size) continue;
      this.carve(i, block, gpa, end);
      this.live.set(gpa, want);
      return gpa;
    }
    throw new FrontendError('FRONTEND_BAD_REQUEST', `guest heap has no ${want} free bytes`);
  }

  /** Returns a buffer from {@link alloc}. */
  free(gpa: number): void {
    const size = this.live.get(gpa);
    if (size === undefined) throw new RangeError(`0x${gpa.toString(16)} was not allocated`);
    this.live.delete(gpa);
    let i = this.freeList.findIndex((b) => b.gpa > gpa);
    if (i < 0) i = this.freeList.length;
    this.freeList.splice(i, 0, { gpa, size });
    this.coalesce(i);
    if (i > 0) this.coalesce(i - 1);
  }

  /** Replaces block `i` by what is left of it around `[gpa, end)`. */
  private carve(i: number, block: Block, gpa: number, end: number): void {
    const parts: Block[] = [];
    if (gpa > block.gpa) parts.push({ gpa: block.gpa, size: gpa - block.gpa });
    if (end < block.gpa + block.size) parts.push({ gpa: end, size: block.gpa + block.size - end });
    this.freeList.splice(i, 1, ...parts);
  }

  /** Merges block `i` with its successor when they touch. */
  private coalesce(i: number): void {
    const a = this.freeList[i];
    const b = this.freeList[i + 1];
    if (a && b && a.gpa + a.size === b.gpa) {
      a.size += b.size;
      this.freeList.splice(i + 1, 1);
    }
  }
}
