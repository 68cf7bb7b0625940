/**
 * Virtqueue.peekHeads, on both ring layouts: where the first buffers of the
 * chains not yet popped begin, for the net switch's prefetch. It must only
 * read (a pop afterwards sees the same chains), skip what it cannot place
 * (indirect, unmapped), stop at `max` and at the ring, and stay bounded when
 * the driver lies (avail.idx far ahead, a head out of range, an endless
 * packed chain).
 */
import { describe, expect, it } from 'vitest';
import { DescriptorChain } from '../../src/virtio/descriptor-chain.js';
import { PACKED_DESC_F_NEXT } from '../../src/virtio/packed-ring.js';
import { PackedVirtqueue } from '../../src/virtio/packed-virtqueue.js';
import { SplitVirtqueue, type Virtqueue } from '../../src/virtio/virtqueue.js';
import { type DriverBuffer, DriverQueue } from '../support/driver-queue.js';
import { GuestRam } from '../support/guest-ram.js';
import { PackedDriverQueue } from '../support/packed-driver.js';

/** Region 0 (rings and buffers), region 1 after a gap; the gap is unmapped. */
const GAP = 0x10000;
const FAR = 0x20000;

interface Driver {
  addChain(buffers: DriverBuffer[], options?: { indirect?: boolean }): number;
}

function setup(layout: 'split' | 'packed', size = 8) {
  const ram = new GuestRam([
    { guestPhysAddr: 0, size: GAP, mmapOffset: 0x1000 },
    { guestPhysAddr: FAR, size: 0x4000, mmapOffset: 0x200 },
  ]);
  const memory = ram.toGuestMemory();
  let drv: Driver & { config(o: { indirect: boolean }): never };
  let q: Virtqueue;
  if (layout === 'split') {
    const d = new DriverQueue(ram, size);
    q = new SplitVirtqueue(memory, d.config({ indirect: true }));
    drv = d as never;
  } else {
    const d = new PackedDriverQueue(ram, size);
    q = new PackedVirtqueue(memory, d.config({ indirect: true }));
    drv = d as never;
  }
  /** (region, buffer offset) of `gpa`, as the device's views see it. */
  const at = (gpa: number) => {
    const region = memory.regionAt(gpa);
    return [region, memory.bufferOffset(region, gpa)];
  };
  return { ram, drv, q, at, chain: new DescriptorChain(16) };
}

const buf = (addr: number, len = 64, write = false): DriverBuffer => ({ addr, len, write });

function peek(q: Virtqueue, max: number): number[] {
  const out = new Float64Array(2 * max);
  const n = q.peekHeads(out, max);
  return Array.from(out.subarray(0, 2 * n));
}

describe.each(['split', 'packed'] as const)('%s ring', (layout) => {
  it('names the first buffer of each waiting chain, skipping indirect and unmapped ones', () => {
    const s = setup(layout);
    s.drv.addChain([buf(0x8000, 12), buf(0x8100, 1500)]);
    s.drv.addChain([buf(0x8800)], { indirect: true });
    s.drv.addChain([buf(FAR + 0x100)]);
    s.drv.addChain([buf(GAP + 0x100)]);
    s.drv.addChain([buf(0x9000, 64), buf(0x9100, 64, true)]);
    expect(peek(s.q, 8)).toEqual([...s.at(0x8000), ...s.at(FAR + 0x100), ...s.at(0x9000)]);
    // At most `max` pairs, and only room for what `out` holds.
    expect(peek(s.q, 1)).toEqual(s.at(0x8000));
    expect(s.q.peekHeads(new Float64Array(2), 8)).toBe(1);
  });

  it('only reads: the chains pop as before, and a peek after a pop starts behind it', () => {
    const s = setup(layout);
    s.drv.addChain([buf(0x8000)]);
    s.drv.addChain([buf(0x8200), buf(0x8300)]);
    s.drv.addChain([buf(0x8400)]);
    peek(s.q, 8);
    expect(s.q.pending()).toBeGreaterThan(0);
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.chain.segments).toBe(1);
    expect(peek(s.q, 8)).toEqual([...s.at(0x8200), ...s.at(0x8400)]);
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.chain.segments).toBe(2);
    expect(s.q.pop(s.chain)).toBe(true);
    expect(peek(s.q, 8)).toEqual([]);
    expect(s.q.pop(s.chain)).toBe(false);
  });
});

describe('a lying driver', () => {
  it('split: avail.idx far ahead is bounded by the ring, a head out of range stops the peek', () => {
    const s = setup('split');
    const drv = s.drv as unknown as DriverQueue;
    drv.addChain([buf(0x8000)]);
    drv.addChain([buf(0x8200)]);
    // Ring slot 2 names head 99 (queue size 8); slots past it are never looked at.
    drv.publish(99);
    drv.setAvailIdx(1000);
    expect(peek(s.q, 256)).toEqual([...s.at(0x8000), ...s.at(0x8200)]);
    expect(() => s.q.pending()).toThrow(/ahead/);
  });

  it('packed: a chain whose NEXT never ends is followed for the slots the device does not hold, no more', () => {
    const s = setup('packed');
    const drv = s.drv as unknown as PackedDriverQueue;
    for (let slot = 0; slot < 8; slot++)
      drv.writeSlot(slot, {
        addr: 0x8000 + slot * 0x100,
        len: 64,
        id: 0,
        flags: drv.availBits(1) | PACKED_DESC_F_NEXT,
      });
    expect(peek(s.q, 256)).toEqual(s.at(0x8000));
  });
});
