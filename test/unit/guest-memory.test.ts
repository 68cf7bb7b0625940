import { describe, expect, it } from 'vitest';
import { GuestMemoryError, GuestMemoryErrorCode } from '../../src/virtio/errors.js';
import { GuestMemory, type MemoryRegion } from '../../src/virtio/guest-memory.js';
import { GuestRam } from '../support/guest-ram.js';

const KiB = 1024;

/** Two adjacent regions with different buffers and mmap offsets, and one more after a gap. */
function threeRegions(): MemoryRegion[] {
  return [
    // Given out of guest-physical order on purpose: indexes must follow this order.
    region(0x20000, 16 * KiB, 0x9000_0000, 0),
    region(0x0, 64 * KiB, 0x7000_0000, 0x1000),
    region(0x10000, 32 * KiB, 0x8000_0000, 0x40),
  ];
}

function region(gpa: number, size: number, uva: number, mmapOffset: number): MemoryRegion {
  return {
    guestPhysAddr: gpa,
    size,
    userAddr: uva,
    mmapOffset,
    buffer: new SharedArrayBuffer(mmapOffset + size + 64),
  };
}

function expectCode(fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(GuestMemoryError);
    expect((error as GuestMemoryError).code).toBe(code);
    return;
  }
  throw new Error(`expected GuestMemoryError ${code}`);
}

describe('GuestMemory translation', () => {
  const mem = new GuestMemory(threeRegions());

  it('keeps the given region order for buffers and bytes', () => {
    expect(mem.regions.map((r) => r.guestPhysAddr)).toEqual([0x20000, 0x0, 0x10000]);
    mem.regions.forEach((r, i) => {
      expect(mem.buffers[i]).toBe(r.buffer);
      expect(mem.bytes[i].buffer).toBe(r.buffer);
      expect(mem.bytes[i].byteLength).toBe(r.buffer.byteLength);
    });
  });

  it('finds the region wholly containing a range', () => {
    expect(mem.findRegion(0x0, 1)).toBe(1);
    expect(mem.findRegion(0xfff0, 0x10)).toBe(1);
    expect(mem.findRegion(0x10000, 0x8000)).toBe(2);
    expect(mem.findRegion(0x20000 + 16 * KiB - 1, 1)).toBe(0);
    expect(mem.findRegion(0x5000, 0)).toBe(1);
  });

  it('refuses ranges crossing a region end, in gaps, or out of range', () => {
    expect(mem.findRegion(0xfff0, 0x11)).toBe(-1); // spans regions 1 and 2
    expect(mem.findRegion(0x18000, 1)).toBe(-1); // gap
    expect(mem.findRegion(0x20000 + 16 * KiB, 0)).toBe(-1); // one past the end
    expect(mem.findRegion(-1, 1)).toBe(-1);
    expect(mem.findRegion(Number.NaN, 1)).toBe(-1);
    expect(mem.findRegion(0x0, -1)).toBe(-1);
    expect(mem.findRegion(2 ** 64, 1)).toBe(-1);
  });

  it('maps guest-physical addresses to buffer offsets through mmapOffset', () => {
    expect(mem.bufferOffset(1, 0x0)).toBe(0x1000);
    expect(mem.bufferOffset(1, 0x1234)).toBe(0x2234);
    expect(mem.bufferOffset(2, 0x10010)).toBe(0x50);
    expect(mem.regionEnd(2)).toBe(0x18000);
  });

  it('translates front-end user addresses', () => {
    expect(mem.uvaToGpa(0x7000_0000, 16)).toBe(0x0);
    expect(mem.uvaToGpa(0x8000_0100, 0x100)).toBe(0x10100);
    expect(mem.uvaToGpa(0x9000_0000 + 16 * KiB - 4, 4)).toBe(0x20000 + 16 * KiB - 4);
    expect(mem.uvaToGpa(0x9000_0000 + 16 * KiB - 4, 5)).toBe(-1);
    expect(mem.uvaToGpa(0x6000_0000, 1)).toBe(-1);
    expect(mem.uvaToGpa(-5, 1)).toBe(-1);
  });

  it('binary-searches many regions', () => {
    const many: MemoryRegion[] = [];
    for (let i = 31; i >= 0; i--) many.push(region(i * 0x2000, 0x1000, i * 0x10000, 8));
    const m = new GuestMemory(many);
    for (let i = 0; i < 32; i++) {
      const index = 31 - i;
      expect(m.findRegion(i * 0x2000, 0x1000)).toBe(index);
      expect(m.regionAt(i * 0x2000 + 0xfff)).toBe(index);
      expect(m.regionAt(i * 0x2000 + 0x1000)).toBe(-1);
    }
  });

  it('handles an empty memory table', () => {
    const m = new GuestMemory([]);
    expect(m.findRegion(0, 1)).toBe(-1);
    expect(m.uvaToGpa(0, 1)).toBe(-1);
    expectCode(() => m.read(0, new Uint8Array(1)), GuestMemoryErrorCode.UNMAPPED);
  });
});

describe('GuestMemory copy helpers', () => {
  it('writes and reads across two adjacent regions', () => {
    const regions = threeRegions();
    const mem = new GuestMemory(regions);
    const data = Uint8Array.from({ length: 300 }, (_, i) => (i * 7 + 1) & 0xff);
    mem.write(0x10000 - 100, data);
    // 100 bytes at the end of region 1, 200 at the start of region 2.
    const r1 = new Uint8Array(regions[1].buffer, 0x1000 + 0x10000 - 100, 100);
    const r2 = new Uint8Array(regions[2].buffer, 0x40, 200);
    expect(Array.from(r1)).toEqual(Array.from(data.subarray(0, 100)));
    expect(Array.from(r2)).toEqual(Array.from(data.subarray(100)));
    const back = new Uint8Array(300);
    mem.read(0x10000 - 100, back);
    expect(Array.from(back)).toEqual(Array.from(data));
  });

  it('copies small ranges without views and large ones with them', () => {
    const mem = new GuestMemory(threeRegions());
    for (const len of [1, 64, 65, 4096]) {
      const data = Uint8Array.from({ length: len }, (_, i) => (i + len) & 0xff);
      mem.write(0x20010, data);
      const out = new Uint8Array(len);
      mem.read(0x20010, out);
      expect(out).toEqual(data);
    }
  });

  it('is all-or-nothing when part of the range is unmapped', () => {
    const regions = threeRegions();
    const mem = new GuestMemory(regions);
    const tail = 0x18000 - 8; // 8 bytes of region 2, then the gap
    expectCode(() => mem.write(tail, new Uint8Array(16).fill(0xee)), GuestMemoryErrorCode.UNMAPPED);
    expect(Array.from(new Uint8Array(regions[2].buffer, 0x40 + 0x8000 - 8, 8))).toEqual(
      new Array(8).fill(0),
    );
    expectCode(() => mem.read(0x30000, new Uint8Array(1)), GuestMemoryErrorCode.UNMAPPED);
    mem.read(0x30000, new Uint8Array(0)); // nothing to copy: no error
  });

  it('shares buffers with the driver-side GuestRam', () => {
    const ram = new GuestRam([
      { guestPhysAddr: 0x1000, size: 0x1000, mmapOffset: 0x100 },
      { guestPhysAddr: 0x2000, size: 0x1000 },
    ]);
    const mem = ram.toGuestMemory();
    ram.write(0x1ffe, Uint8Array.of(1, 2, 3, 4));
    const out = new Uint8Array(4);
    mem.read(0x1ffe, out);
    expect(Array.from(out)).toEqual([1, 2, 3, 4]);
    expect(mem.uvaToGpa(ram.regions[1].userAddr + 0x10, 4)).toBe(0x2010);
  });
});

describe('GuestMemory validation', () => {
  it('rejects overlapping regions', () => {
    const a = region(0x0, 0x2000, 0, 0);
    const b = region(0x1fff, 0x1000, 0x10000, 0);
    expectCode(() => new GuestMemory([b, a]), GuestMemoryErrorCode.OVERLAP);
    expect(() => new GuestMemory([a, region(0x2000, 0x1000, 0x10000, 0)])).not.toThrow();
  });

  it('rejects bad region fields', () => {
    const base = region(0x0, 0x1000, 0, 0);
    const bad: Partial<MemoryRegion>[] = [
      { size: 0 },
      { size: -1 },
      { guestPhysAddr: 1.5 },
      { userAddr: Number.NaN },
      { mmapOffset: -4 },
      { mmapOffset: 0x100 }, // buffer too small for mmapOffset + size
      { guestPhysAddr: Number.MAX_SAFE_INTEGER - 0x10 },
      { buffer: new ArrayBuffer(0x2000) as unknown as SharedArrayBuffer },
    ];
    for (const fields of bad) {
      expectCode(() => new GuestMemory([{ ...base, ...fields }]), GuestMemoryErrorCode.BAD_REGION);
    }
  });

  it('is immune to later changes of the caller’s region objects', () => {
    const regions = threeRegions();
    const mem = new GuestMemory(regions);
    regions[1].size = 1;
    expect(mem.findRegion(0x0, 0x1000)).toBe(1);
    expect(Object.isFrozen(mem.regions[1])).toBe(true);
  });
});
