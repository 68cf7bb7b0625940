/**
 * Guest RAM for tests, fuzzers, benchmarks and the project's own front end:
 * regions of SharedArrayBuffer (fresh, or existing memfd mappings) plus a bump
 * allocator over guest-physical space. This is the driver's side of memory, so
 * it translates addresses with its own simple code, not with GuestMemory: a
 * bug in the device-side translation cannot hide itself in tests.
 */
import { GuestMemory, type MemoryRegion } from '../../src/virtio/guest-memory.js';

/** How to lay out one region; omitted fields get fresh or derived values. */
export interface GuestRamRegionSpec {
  guestPhysAddr: number;
  size: number;
  /** An existing mapping (e.g. a memfd); a fresh SAB of `mmapOffset + size` bytes when omitted. */
  buffer?: SharedArrayBuffer;
  /** Offset of the region inside `buffer`; 0 when omitted. */
  mmapOffset?: number;
  /** Front-end address of the region; {@link DEFAULT_USER_BASE} + guestPhysAddr when omitted. */
  userAddr?: number;
}

/** Base of the made-up front-end addresses given to regions without a `userAddr`. */
export const DEFAULT_USER_BASE = 0x7f00_0000_0000;

/** Guest RAM as the driver (guest) sees it. */
export class GuestRam {
  /** The regions, in the order given; the same shapes GuestMemory takes. */
  readonly regions: readonly MemoryRegion[];
  /** Region indexes sorted by guest-physical address, for the allocator. */
  private readonly order: number[];
  private allocRegion = 0;
  private allocCursor = 0;

  /** Wraps existing buffers (e.g. memfd mappings) or makes fresh SABs when `buffer` is omitted. */
  constructor(regions: GuestRamRegionSpec[]) {
    this.regions = regions.map((spec) => {
      const mmapOffset = spec.mmapOffset ?? 0;
      return {
        guestPhysAddr: spec.guestPhysAddr,
        size: spec.size,
        userAddr: spec.userAddr ?? DEFAULT_USER_BASE + spec.guestPhysAddr,
        mmapOffset,
        buffer: spec.buffer ?? new SharedArrayBuffer(mmapOffset + spec.size),
      };
    });
    this.order = this.regions.map((_, i) => i);
    this.order.sort((a, b) => this.regions[a].guestPhysAddr - this.regions[b].guestPhysAddr);
    this.allocCursor = this.regions.length > 0 ? this.regions[this.order[0]].guestPhysAddr : 0;
  }

  /**
   * Bump-allocates `size` bytes aligned to `align` inside one region, in
   * ascending guest-physical order. Throws when no region has room left.
   */
  alloc(size: number, align = 8): number {
    for (; this.allocRegion < this.order.length; this.allocRegion++) {
      const r = this.regions[this.order[this.allocRegion]];
      const at = alignUp(Math.max(this.allocCursor, r.guestPhysAddr), align);
      if (at + size <= r.guestPhysAddr + r.size) {
        this.allocCursor = at + size;
        return at;
      }
    }
    throw new RangeError(`guest RAM exhausted: cannot allocate ${size} bytes`);
  }

  /** Copies `data` to `gpa` (may span adjacent regions). */
  write(gpa: number, data: Uint8Array): void {
    let done = 0;
    while (done < data.length) {
      const { bytes, offset, available } = this.locate(gpa + done);
      const n = Math.min(available, data.length - done);
      bytes.set(data.subarray(done, done + n), offset);
      done += n;
    }
  }

  /** Copies `len` bytes from `gpa` (may span adjacent regions). */
  read(gpa: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const { bytes, offset, available } = this.locate(gpa + done);
      const n = Math.min(available, len - done);
      out.set(bytes.subarray(offset, offset + n), done);
      done += n;
    }
    return out;
  }

  /** A live view of `[gpa, gpa + len)`, which must lie inside one region. */
  view(gpa: number, len: number): Uint8Array {
    const { bytes, offset, available } = this.locate(gpa);
    if (len > available) throw new RangeError(`0x${gpa.toString(16)}+${len} crosses a region end`);
    return bytes.subarray(offset, offset + len);
  }

  /** A live u16 view of `count` elements at `gpa` (one region, 2-aligned in the buffer), for Atomics. */
  u16(gpa: number, count: number): Uint16Array {
    const v = this.view(gpa, count * 2);
    return new Uint16Array(v.buffer, v.byteOffset, count);
  }

  /** A live u32 view of `count` elements at `gpa` (one region, 4-aligned in the buffer). */
  u32(gpa: number, count: number): Uint32Array {
    const v = this.view(gpa, count * 4);
    return new Uint32Array(v.buffer, v.byteOffset, count);
  }

  /** The device-side view of the same buffers. */
  toGuestMemory(): GuestMemory {
    return new GuestMemory(this.regions);
  }

  /** The region holding byte `gpa`: whole-buffer bytes, offset of gpa in them, bytes left in the region. */
  private locate(gpa: number): { bytes: Uint8Array; offset: number; available: number } {
    for (const r of this.regions) {
      if (gpa >= r.guestPhysAddr && gpa < r.guestPhysAddr + r.size) {
        const offset = r.mmapOffset + (gpa - r.guestPhysAddr);
        const available = r.guestPhysAddr + r.size - gpa;
        return { bytes: new Uint8Array(r.buffer), offset, available };
      }
    }
    throw new RangeError(`guest address 0x${gpa.toString(16)} is not in guest RAM`);
  }
}

function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}
