/**
 * Guest-physical address translation over the regions of guest RAM announced
 * by the front end (vhost-user SET_MEM_TABLE / ADD_MEM_REG). Every lookup is
 * bounds-checked against the region it lands in: nothing built on this module
 * ever indexes a buffer outside `[mmapOffset, mmapOffset + size)` of a region.
 */
import { copyBytes } from '../locking/copy.js';
import { GuestMemoryError, GuestMemoryErrorCode } from './errors.js';

/**
 * One region of guest RAM as announced by SET_MEM_TABLE / ADD_MEM_REG. `buffer`
 * maps the region's fd from file offset 0, so the region's first byte is
 * `buffer[mmapOffset]` and `buffer.byteLength >= mmapOffset + size`.
 */
export interface MemoryRegion {
  /** Guest-physical address of the region's first byte. */
  guestPhysAddr: number;
  /** Length of the region in bytes (> 0). */
  size: number;
  /** Address of the region's first byte in the front end's address space (vring addresses use it). */
  userAddr: number;
  /** Offset of the region's first byte inside `buffer` (the fd's mmap offset). */
  mmapOffset: number;
  /** The mapping of the region's fd, from file offset 0. */
  buffer: SharedArrayBuffer;
}

/**
 * Device-side view of guest RAM: a fixed set of regions, immutable once built
 * (a new memory table means a new GuestMemory). One instance per thread: the
 * lookup cache is not shared.
 */
export class GuestMemory {
  /** The regions, in the order the front end gave them (indexes are stable). */
  readonly regions: readonly MemoryRegion[];
  /** `buffers[i]` is `regions[i].buffer`, for the native BufferTable. */
  readonly buffers: SharedArrayBuffer[];
  /** Whole-buffer byte views, per region; index with {@link bufferOffset}. */
  readonly bytes: readonly Uint8Array[];
  /** Whole-buffer DataViews, per region, created once (descriptors are read through them). */
  readonly views: readonly DataView[];

  /** gpa - bias[i] is the buffer offset: bias = guestPhysAddr - mmapOffset. */
  private readonly bias: Float64Array;
  /** Guest-physical start and end (exclusive) of each region, by region index. */
  private readonly starts: Float64Array;
  private readonly ends: Float64Array;
  /** Region starts sorted ascending, and the region index at each sorted position. */
  private readonly sortedStarts: Float64Array;
  private readonly sortedIndex: Int32Array;
  /** Region index of the last successful lookup: chains mostly stay in one region. */
  private lastHit = 0;

  /** Validates the table: sizes > 0, integer fields, buffers big enough, no guest-physical overlap. */
  constructor(regions: readonly MemoryRegion[]) {
    regions.forEach(validateRegion);
    this.regions = Object.freeze(regions.map((r) => Object.freeze({ ...r })));
    this.buffers = this.regions.map((r) => r.buffer);
    this.bytes = Object.freeze(this.buffers.map((b) => new Uint8Array(b)));
    this.views = Object.freeze(this.buffers.map((b) => new DataView(b)));
    this.bias = Float64Array.from(this.regions, (r) => r.guestPhysAddr - r.mmapOffset);
    this.starts = Float64Array.from(this.regions, (r) => r.guestPhysAddr);
    this.ends = Float64Array.from(this.regions, (r) => r.guestPhysAddr + r.size);
    const order = this.regions.map((_, i) => i);
    order.sort((a, b) => this.regions[a].guestPhysAddr - this.regions[b].guestPhysAddr);
    this.sortedIndex = Int32Array.from(order);
    this.sortedStarts = Float64Array.from(order, (i) => this.regions[i].guestPhysAddr);
    this.checkOverlap();
  }

  /** Index of the region wholly containing `[gpa, gpa + len)`, else -1. `len` 0 asks for the byte at `gpa`. */
  findRegion(gpa: number, len: number): number {
    const r = this.regionAt(gpa);
    if (r < 0 || !(len >= 0) || gpa + len > this.ends[r]) return -1;
    return r;
  }

  /** Index of the region holding the byte at `gpa`, else -1 (NaN and negatives are unmapped). */
  regionAt(gpa: number): number {
    const c = this.lastHit;
    if (c < this.starts.length && gpa >= this.starts[c] && gpa < this.ends[c]) return c;
    const pos = this.lastStartAtOrBelow(gpa);
    if (pos < 0) return -1;
    const r = this.sortedIndex[pos];
    if (!(gpa < this.ends[r])) return -1;
    this.lastHit = r;
    return r;
  }

  /** Guest-physical end (exclusive) of region `region`. */
  regionEnd(region: number): number {
    return this.ends[region];
  }

  /** Byte offset inside `regions[region].buffer` of guest-physical `gpa` (caller checked the range). */
  bufferOffset(region: number, gpa: number): number {
    return gpa - this.bias[region];
  }

  /** Front-end user address → gpa, or -1 when `[uva, uva + len)` is not wholly inside one region. */
  uvaToGpa(uva: number, len: number): number {
    if (!(uva >= 0) || !(len >= 0)) return -1;
    for (const r of this.regions) {
      if (uva >= r.userAddr && uva + len <= r.userAddr + r.size && uva < r.userAddr + r.size) {
        return r.guestPhysAddr + (uva - r.userAddr);
      }
    }
    return -1;
  }

  /**
   * Copies guest memory at `gpa` into `out` (may span adjacent regions).
   * Convenience for control paths: the data path uses chain segments and
   * {@link bytes} directly. Throws GuestMemoryError before copying anything if
   * any byte is unmapped.
   */
  read(gpa: number, out: Uint8Array): void {
    this.copy(gpa, out, false);
  }

  /** Copies `data` into guest memory at `gpa` (may span regions); all-or-nothing like {@link read}. */
  write(gpa: number, data: Uint8Array): void {
    this.copy(gpa, data, true);
  }

  private copy(gpa: number, data: Uint8Array, toGuest: boolean): void {
    this.assertMapped(gpa, data.length);
    let done = 0;
    while (done < data.length) {
      const pos = gpa + done;
      const r = this.regionAt(pos);
      const n = Math.min(data.length - done, this.ends[r] - pos);
      const at = this.bufferOffset(r, pos);
      if (toGuest) copyBytes(data, done, this.bytes[r], at, n);
      else copyBytes(this.bytes[r], at, data, done, n);
      done += n;
    }
  }

  /** Throws unless every byte of `[gpa, gpa + len)` lies in some region. */
  private assertMapped(gpa: number, len: number): void {
    let pos = gpa;
    const end = gpa + len;
    while (pos < end) {
      const r = this.regionAt(pos);
      if (r < 0) {
        throw new GuestMemoryError(
          GuestMemoryErrorCode.UNMAPPED,
          `guest range 0x${gpa.toString(16)}+${len} is not mapped at 0x${pos.toString(16)}`,
        );
      }
      pos = this.ends[r];
    }
  }

  /** Binary search: sorted position of the last region starting at or below `gpa`, else -1. */
  private lastStartAtOrBelow(gpa: number): number {
    let lo = 0;
    let hi = this.sortedStarts.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.sortedStarts[mid] <= gpa) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found;
  }

  private checkOverlap(): void {
    for (let pos = 1; pos < this.sortedIndex.length; pos++) {
      const prev = this.sortedIndex[pos - 1];
      if (this.ends[prev] > this.sortedStarts[pos]) {
        throw new GuestMemoryError(
          GuestMemoryErrorCode.OVERLAP,
          `memory regions ${prev} and ${this.sortedIndex[pos]} overlap in guest-physical space`,
        );
      }
    }
  }
}

function validateRegion(r: MemoryRegion, i: number): void {
  const fields = ['guestPhysAddr', 'size', 'userAddr', 'mmapOffset'] as const;
  for (const f of fields) {
    if (!Number.isSafeInteger(r[f]) || r[f] < 0)
      badRegion(i, `${f} must be a non-negative integer`);
  }
  if (r.size === 0) badRegion(i, 'size must be > 0');
  if (!(r.buffer instanceof SharedArrayBuffer)) badRegion(i, 'buffer must be a SharedArrayBuffer');
  if (r.mmapOffset + r.size > r.buffer.byteLength) {
    badRegion(i, `buffer of ${r.buffer.byteLength} bytes is smaller than mmapOffset + size`);
  }
  // Keeps every end address exact in a double, so range checks never round.
  if (r.guestPhysAddr + r.size > Number.MAX_SAFE_INTEGER) badRegion(i, 'guest range beyond 2^53');
  if (r.userAddr + r.size > Number.MAX_SAFE_INTEGER) badRegion(i, 'user range beyond 2^53');
}

function badRegion(i: number, why: string): never {
  throw new GuestMemoryError(GuestMemoryErrorCode.BAD_REGION, `memory region ${i}: ${why}`);
}
