import { describe, expect, it } from 'vitest';
import { DescriptorChain } from '../../src/virtio/descriptor-chain.js';
import { ChainErrorCode, QueueBrokenError, QueueErrorCode } from '../../src/virtio/errors.js';
import {
  featureBit,
  hasFeature,
  VIRTIO_F_ACCESS_PLATFORM,
  VIRTIO_F_NOTIFY_ON_EMPTY,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
} from '../../src/virtio/features.js';
import {
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  vringNeedEvent,
} from '../../src/virtio/split-ring.js';
import { type SplitQueueConfig, SplitVirtqueue } from '../../src/virtio/virtqueue.js';
import { DriverQueue } from '../support/driver-queue.js';
import { GuestRam } from '../support/guest-ram.js';

const NEXT = VIRTQ_DESC_F_NEXT;
const WRITE = VIRTQ_DESC_F_WRITE;
const INDIRECT = VIRTQ_DESC_F_INDIRECT;
/** Region 0 ends and region 1 starts here; region 2 begins after a gap. */
const BOUNDARY = 0x10000;
const GAP = 0x18000;
const FAR = 0x20000;

interface Setup {
  ram: GuestRam;
  drv: DriverQueue;
  q: SplitVirtqueue;
  chain: DescriptorChain;
}

/** Rings in region 0; regions 0 and 1 adjacent (different buffers), region 2 after a gap. */
function setup(
  options: { size?: number; eventIdx?: boolean; indirect?: boolean; maxSegments?: number } = {},
): Setup {
  const ram = new GuestRam([
    { guestPhysAddr: 0, size: BOUNDARY, mmapOffset: 0x1000 },
    { guestPhysAddr: BOUNDARY, size: GAP - BOUNDARY, mmapOffset: 0x40 },
    { guestPhysAddr: FAR, size: 0x4000 },
  ]);
  const drv = new DriverQueue(ram, options.size ?? 8, { eventIdx: options.eventIdx ?? false });
  const config = drv.config({ indirect: options.indirect ?? true });
  const q = new SplitVirtqueue(ram.toGuestMemory(), config, options.maxSegments);
  return { ram, drv, q, chain: new DescriptorChain(64) };
}

/** The bytes of segment `i` of a popped chain, read through the device's own views. */
function segmentBytes(ram: GuestRam, chain: DescriptorChain, i: number) {
  const r = ram.regions[chain.region[i]];
  return new Uint8Array(r.buffer, chain.offset[i], chain.length[i]);
}

function pattern(len: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: len }, (_, i) => (i * 31 + seed) & 0xff);
}

/** Publishes a raw one-off chain starting at descriptor 0 and pops it. */
function popRaw(s: Setup, descs: { addr: number; len: number; flags: number; next: number }[]) {
  for (const [i, d] of descs.entries()) s.drv.writeDescriptor(i, d);
  s.drv.publish(0);
  expect(s.q.pop(s.chain)).toBe(true);
  return s.chain;
}

function expectBroken(fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(QueueBrokenError);
    expect((error as QueueBrokenError).code).toBe(code);
    return;
  }
  throw new Error(`expected QueueBrokenError ${code}`);
}

describe('SplitVirtqueue round trips', () => {
  it('pops a direct chain, exposes its segments and returns it through the used ring', () => {
    const s = setup();
    const { ram, drv, q, chain } = s;
    const header = ram.alloc(16);
    const data = ram.alloc(512);
    const status = ram.alloc(1);
    ram.write(header, pattern(16, 1));
    const head = drv.addChain([
      { addr: header, len: 16, write: false },
      { addr: data, len: 512, write: true },
      { addr: status, len: 1, write: true },
    ]);
    expect(q.pending()).toBe(1);
    expect(q.pop(chain)).toBe(true);
    expect(chain.error).toBeNull();
    expect(chain.head).toBe(head);
    expect(chain.segments).toBe(3);
    expect(chain.firstWritable).toBe(1);
    expect(chain.readableBytes).toBe(16);
    expect(chain.writableBytes).toBe(513);
    expect(chain.descriptors).toBe(3);
    expect(Array.from(chain.writable.subarray(0, 3))).toEqual([0, 1, 1]);
    expect(segmentBytes(ram, chain, 0)).toEqual(pattern(16, 1));
    segmentBytes(ram, chain, 1).set(pattern(512, 9));
    segmentBytes(ram, chain, 2)[0] = 0x5a;
    q.pushUsed(chain.head, 513);
    expect(drv.popUsed()).toEqual({ id: head, len: 513 });
    expect(drv.popUsed()).toBeNull();
    expect(ram.read(data, 512)).toEqual(pattern(512, 9));
    expect(ram.read(status, 1)[0]).toBe(0x5a);
    expect(drv.numFree).toBe(8);
    expect(q.pop(chain)).toBe(false);
  });

  it('pops an indirect chain', () => {
    const { ram, drv, q, chain } = setup();
    const a = ram.alloc(100);
    const b = ram.alloc(200);
    const c = ram.alloc(300);
    ram.write(a, pattern(100, 3));
    const head = drv.addChain(
      [
        { addr: a, len: 100, write: false },
        { addr: b, len: 200, write: false },
        { addr: c, len: 300, write: true },
      ],
      { indirect: true },
    );
    expect(drv.numFree).toBe(7);
    expect(q.pop(chain)).toBe(true);
    expect(chain.error).toBeNull();
    expect(chain.segments).toBe(3);
    expect(chain.descriptors).toBe(4);
    expect(chain.readableBytes).toBe(300);
    expect(chain.writableBytes).toBe(300);
    expect(chain.firstWritable).toBe(2);
    expect(segmentBytes(ram, chain, 0)).toEqual(pattern(100, 3));
    q.pushUsed(head, 300);
    expect(drv.popUsed()).toEqual({ id: head, len: 300 });
    expect(drv.numFree).toBe(8);
  });

  it('splits a buffer spanning two adjacent regions into two segments', () => {
    const { ram, drv, q, chain } = setup();
    ram.write(BOUNDARY - 10, pattern(30, 5));
    drv.addChain([{ addr: BOUNDARY - 10, len: 30, write: false }]);
    expect(q.pop(chain)).toBe(true);
    expect(chain.error).toBeNull();
    expect(chain.segments).toBe(2);
    expect(Array.from(chain.region.subarray(0, 2))).toEqual([0, 1]);
    expect(Array.from(chain.offset.subarray(0, 2))).toEqual([0x1000 + BOUNDARY - 10, 0x40]);
    expect(Array.from(chain.length.subarray(0, 2))).toEqual([10, 20]);
    expect(chain.readableBytes).toBe(30);
    const joined = new Uint8Array(30);
    joined.set(segmentBytes(ram, chain, 0), 0);
    joined.set(segmentBytes(ram, chain, 1), 10);
    expect(joined).toEqual(pattern(30, 5));
  });

  it('completes chains out of order and batches used elements', () => {
    const { ram, drv, q, chain } = setup();
    const heads = [0, 1, 2].map((i) =>
      drv.addChain([{ addr: ram.alloc(8), len: 8, write: i > 0 }]),
    );
    const popped: number[] = [];
    while (q.pop(chain)) popped.push(chain.head);
    expect(popped).toEqual(heads);
    q.addUsed(heads[2], 2);
    q.addUsed(heads[0], 0);
    expect(drv.popUsed()).toBeNull(); // not published yet
    q.publishUsed();
    q.pushUsed(heads[1], 1);
    expect([drv.popUsed(), drv.popUsed(), drv.popUsed()]).toEqual([
      { id: heads[2], len: 2 },
      { id: heads[0], len: 0 },
      { id: heads[1], len: 1 },
    ]);
    expect(q.usedIdx).toBe(3);
    expect(q.readUsedIdx()).toBe(3);
  });

  it('skips zero-length descriptors without checking their address', () => {
    const s = setup();
    const buf = s.ram.alloc(4);
    const chain = popRaw(s, [
      { addr: 2 ** 60, len: 0, flags: NEXT, next: 1 },
      { addr: buf, len: 4, flags: WRITE | NEXT, next: 2 },
      { addr: 0xdead_0000, len: 0, flags: WRITE, next: 0 },
    ]);
    expect(chain.error).toBeNull();
    expect(chain.segments).toBe(1);
    expect(chain.firstWritable).toBe(0);
    expect(chain.descriptors).toBe(3);
  });

  it('keeps working after setMemory with a new table over the same buffers', () => {
    const { ram, drv, q, chain } = setup();
    drv.addChain([{ addr: ram.alloc(4), len: 4, write: true }]);
    q.setMemory(ram.toGuestMemory());
    expect(q.pop(chain)).toBe(true);
    expect(chain.error).toBeNull();
  });

  it('wraps the u16 indexes around 65535', () => {
    const { ram, drv, q, chain } = setup({ size: 4 });
    drv.startAt(65533);
    q.lastAvailIdx = 65533;
    q.usedIdx = 65533;
    const buf = ram.alloc(64);
    for (let round = 0; round < 10; round++) {
      const a = drv.addChain([{ addr: buf, len: round + 1, write: true }]);
      const b = drv.addChain([{ addr: buf, len: 64, write: false }], { indirect: true });
      expect(q.pending()).toBe(2);
      expect(q.pop(chain)).toBe(true);
      expect([chain.head, chain.writableBytes]).toEqual([a, round + 1]);
      expect(q.pop(chain)).toBe(true);
      expect([chain.head, chain.readableBytes]).toEqual([b, 64]);
      expect(q.pop(chain)).toBe(false);
      q.pushUsed(b, 0);
      q.pushUsed(a, round);
      expect(drv.popUsed()).toEqual({ id: b, len: 0 });
      expect(drv.popUsed()).toEqual({ id: a, len: round });
    }
    expect(q.lastAvailIdx).toBe((65533 + 20) & 0xffff);
    expect(q.usedIdx).toBe((65533 + 20) & 0xffff);
    expect(drv.usedIdx).toBe(17);
  });

  it('validates SET_VRING_BASE values and used elements', () => {
    const { q } = setup();
    expect(() => {
      q.lastAvailIdx = 65536;
    }).toThrow(RangeError);
    expect(() => q.pushUsed(8, 0)).toThrow(RangeError);
    expect(() => q.pushUsed(0, -1)).toThrow(RangeError);
    expect(() => q.pushUsed(0, 2 ** 32)).toThrow(RangeError);
    expect(() => new DescriptorChain(0)).toThrow(RangeError);
  });
});

describe('interrupt suppression (§2.7.10)', () => {
  it('vring_need_event wraps around u16', () => {
    expect(vringNeedEvent(0, 1, 0)).toBe(true);
    expect(vringNeedEvent(1, 1, 0)).toBe(false);
    expect(vringNeedEvent(3, 5, 2)).toBe(true); // stepped over 3
    expect(vringNeedEvent(5, 5, 2)).toBe(false);
    expect(vringNeedEvent(65535, 1, 65534)).toBe(true);
    expect(vringNeedEvent(2, 1, 65534)).toBe(false);
    expect(vringNeedEvent(65533, 1, 65534)).toBe(false); // already behind the old index
  });

  it('honours used_event with EVENT_IDX', () => {
    const { ram, drv, q, chain } = setup({ eventIdx: true });
    const buf = ram.alloc(8);
    const pushOne = () => {
      drv.addChain([{ addr: buf, len: 8, write: true }]);
      expect(q.pop(chain)).toBe(true);
      q.pushUsed(chain.head, 8);
      drv.popUsed();
    };
    expect(q.needsInterrupt()).toBe(false); // nothing published
    drv.setUsedEvent(0);
    pushOne(); // used idx 0 -> 1 steps over 0
    expect(q.needsInterrupt()).toBe(true);
    pushOne(); // 1 -> 2, event still 0
    expect(q.needsInterrupt()).toBe(false);
    drv.setUsedEvent(4);
    pushOne();
    pushOne(); // 2 -> 4 in one batch: 4 not stepped over yet
    expect(q.needsInterrupt()).toBe(false);
    pushOne();
    pushOne(); // 4 -> 6 steps over 4
    expect(q.needsInterrupt()).toBe(true);
    expect(q.needsInterrupt()).toBe(false); // nothing new
  });

  it('honours used_event across the u16 wrap, after a reset of the indexes', () => {
    const { ram, drv, q, chain } = setup({ eventIdx: true });
    drv.startAt(65534);
    q.lastAvailIdx = 65534;
    q.usedIdx = 65534;
    const buf = ram.alloc(8);
    const batch = (n: number) => {
      for (let i = 0; i < n; i++) drv.addChain([{ addr: buf, len: 8, write: true }]);
      while (q.pop(chain)) q.addUsed(chain.head, 0);
      q.publishUsed();
      while (drv.popUsed() !== null);
    };
    drv.setUsedEvent(1000);
    batch(1); // 65534 -> 65535: no history after the reset, so interrupt anyway
    expect(q.needsInterrupt()).toBe(true);
    drv.setUsedEvent(0);
    batch(1); // 65535 -> 0: event 0 not stepped over
    expect(q.needsInterrupt()).toBe(false);
    batch(2); // 0 -> 2 steps over 0
    expect(q.needsInterrupt()).toBe(true);
    drv.setUsedEvent(65535);
    batch(3); // 2 -> 5, event far behind
    expect(q.needsInterrupt()).toBe(false);
  });

  it('honours NO_INTERRUPT without EVENT_IDX', () => {
    const { ram, drv, q, chain } = setup();
    const buf = ram.alloc(8);
    drv.addChain([{ addr: buf, len: 8, write: true }]);
    drv.addChain([{ addr: buf, len: 8, write: true }]);
    drv.setNoInterrupt(true);
    q.pop(chain);
    q.pushUsed(chain.head, 0);
    expect(q.needsInterrupt()).toBe(false);
    drv.setNoInterrupt(false);
    expect(q.needsInterrupt()).toBe(false); // nothing new since
    q.pop(chain);
    q.pushUsed(chain.head, 0);
    expect(q.needsInterrupt()).toBe(true);
    expect(VIRTQ_AVAIL_F_NO_INTERRUPT).toBe(1);
  });

  it('interrupts on an empty ring with NOTIFY_ON_EMPTY despite NO_INTERRUPT', () => {
    const ram = new GuestRam([{ guestPhysAddr: 0, size: 0x10000 }]);
    const drv = new DriverQueue(ram, 4);
    const q = new SplitVirtqueue(ram.toGuestMemory(), drv.config({ notifyOnEmpty: true }));
    const chain = new DescriptorChain(4);
    const buf = ram.alloc(8);
    drv.setNoInterrupt(true);
    drv.addChain([{ addr: buf, len: 8, write: true }]);
    drv.addChain([{ addr: buf, len: 8, write: true }]);
    q.pop(chain);
    q.pushUsed(chain.head, 0);
    expect(q.needsInterrupt()).toBe(false); // one still pending
    q.pop(chain);
    q.pushUsed(chain.head, 0);
    expect(q.needsInterrupt()).toBe(true); // ran empty
  });
});

describe('kick suppression', () => {
  it('toggles used.flags NO_NOTIFY without EVENT_IDX', () => {
    const { ram, drv, q } = setup();
    q.setNotification(false);
    expect(drv.usedFlags).toBe(VIRTQ_USED_F_NO_NOTIFY);
    drv.addChain([{ addr: ram.alloc(8), len: 8, write: true }]);
    expect(drv.needsKick()).toBe(false);
    q.setNotification(true);
    expect(drv.usedFlags).toBe(0);
    expect(q.pending()).toBe(1); // published while kicks were off: the device looks again
    drv.addChain([{ addr: ram.alloc(8), len: 8, write: true }]);
    expect(drv.needsKick()).toBe(true);
  });

  it('maintains avail_event with EVENT_IDX', () => {
    const { ram, drv, q, chain } = setup({ eventIdx: true });
    const buf = ram.alloc(8);
    const add = () => drv.addChain([{ addr: buf, len: 8, write: true }]);
    add();
    expect(drv.needsKick()).toBe(true); // avail_event 0, avail idx 0 -> 1
    add();
    expect(drv.needsKick()).toBe(false); // device has not caught up: no new kick
    expect(q.pop(chain) && q.pop(chain)).toBe(true);
    expect(q.pop(chain)).toBe(false); // ran empty: publishes avail_event = 2
    expect(drv.availEvent).toBe(2);
    add();
    expect(drv.needsKick()).toBe(true);
    q.setNotification(false);
    expect(q.pop(chain)).toBe(true);
    expect(q.pop(chain)).toBe(false); // disabled: avail_event stays at 2
    expect(drv.availEvent).toBe(2);
    add();
    expect(drv.needsKick()).toBe(false);
    q.setNotification(true);
    expect(drv.availEvent).toBe(3);
    expect(q.pending()).toBe(1);
    expect(drv.usedFlags).toBe(0); // flags untouched with EVENT_IDX
  });
});

describe('hostile chains (chain-level: pop returns the head with an error)', () => {
  it('ends a descriptor loop with VIRTQ_CHAIN_TOO_LONG and goes on', () => {
    const s = setup();
    const buf = s.ram.alloc(8);
    const chain = popRaw(s, [
      { addr: buf, len: 8, flags: NEXT, next: 1 },
      { addr: buf, len: 8, flags: NEXT, next: 0 },
    ]);
    expect(chain.error).toBe(ChainErrorCode.CHAIN_TOO_LONG);
    expect(chain.head).toBe(0);
    expect(chain.segments).toBe(0);
    expect(chain.readableBytes + chain.writableBytes).toBe(0);
    expect(chain.descriptors).toBe(8);
    s.q.pushUsed(chain.head, 0);
    s.drv.writeDescriptor(2, { addr: buf, len: 8, flags: 0, next: 0 });
    s.drv.publish(2);
    expect(s.q.pop(chain)).toBe(true);
    expect(chain.error).toBeNull();
    expect(chain.head).toBe(2);
  });

  it('ends a self-loop with a queue of size 1', () => {
    const s = setup({ size: 1 });
    const chain = popRaw(s, [{ addr: s.ram.alloc(4), len: 4, flags: NEXT, next: 0 }]);
    expect(chain.error).toBe(ChainErrorCode.CHAIN_TOO_LONG);
  });

  it('ends a loop inside an indirect table', () => {
    const s = setup();
    const table = s.ram.alloc(48, 16);
    const buf = s.ram.alloc(8);
    s.drv.writeDescriptorAt(table, { addr: buf, len: 8, flags: NEXT, next: 1 });
    s.drv.writeDescriptorAt(table + 16, { addr: buf, len: 8, flags: NEXT, next: 2 });
    s.drv.writeDescriptorAt(table + 32, { addr: buf, len: 8, flags: NEXT, next: 1 });
    const chain = popRaw(s, [{ addr: table, len: 48, flags: INDIRECT, next: 0 }]);
    expect(chain.error).toBe(ChainErrorCode.CHAIN_TOO_LONG);
  });

  it('caps segments at maxSegments and at the chain capacity', () => {
    const s = setup({ maxSegments: 2 });
    const buf = s.ram.alloc(8);
    const three = [
      { addr: buf, len: 8, flags: NEXT, next: 1 },
      { addr: buf, len: 8, flags: NEXT, next: 2 },
      { addr: buf, len: 8, flags: 0, next: 0 },
    ];
    expect(popRaw(s, three).error).toBe(ChainErrorCode.CHAIN_TOO_LONG);
    const t = setup();
    t.chain = new DescriptorChain(2);
    expect(popRaw(t, three).error).toBe(ChainErrorCode.CHAIN_TOO_LONG);
    // A buffer split at a region boundary counts twice.
    const u = setup();
    u.chain = new DescriptorChain(2);
    const spanning = [
      { addr: buf, len: 8, flags: NEXT, next: 1 },
      { addr: BOUNDARY - 4, len: 8, flags: 0, next: 0 },
    ];
    expect(popRaw(u, spanning).error).toBe(ChainErrorCode.CHAIN_TOO_LONG);
  });

  it('reports unmapped buffers with VIRTQ_DESC_UNMAPPED', () => {
    const cases = [
      { addr: GAP, len: 1 }, // in the gap
      { addr: GAP - 4, len: 8 }, // runs from region 1 into the gap
      { addr: FAR + 0x4000 - 1, len: 2 }, // runs off the last region
      { addr: 0x10_0000_0000, len: 4 }, // far beyond
      { addr: 2 ** 63, len: 4 }, // beyond 2^53
      { addr: 0, len: 0xffff_ffff }, // longer than memory
    ];
    for (const c of cases) {
      const s = setup();
      expect(popRaw(s, [{ ...c, flags: 0, next: 0 }]).error).toBe(ChainErrorCode.DESC_UNMAPPED);
    }
    const s = setup();
    const table = { addr: GAP - 16, len: 32, flags: INDIRECT, next: 0 };
    expect(popRaw(s, [table]).error).toBe(ChainErrorCode.DESC_UNMAPPED);
  });

  it('refuses nested indirect tables', () => {
    const s = setup();
    const outer = s.ram.alloc(16, 16);
    const inner = s.ram.alloc(16, 16);
    s.drv.writeDescriptorAt(inner, { addr: s.ram.alloc(4), len: 4, flags: 0, next: 0 });
    s.drv.writeDescriptorAt(outer, { addr: inner, len: 16, flags: INDIRECT, next: 0 });
    const chain = popRaw(s, [{ addr: outer, len: 16, flags: INDIRECT, next: 0 }]);
    expect(chain.error).toBe(ChainErrorCode.NESTED_INDIRECT);
  });

  it('refuses bad indirect descriptors with VIRTQ_BAD_INDIRECT', () => {
    const lens = [0, 8, 17, 16 * 32769];
    for (const len of lens) {
      const s = setup();
      const table = s.ram.alloc(64, 16);
      const chain = popRaw(s, [{ addr: table, len, flags: INDIRECT, next: 0 }]);
      expect(chain.error).toBe(ChainErrorCode.BAD_INDIRECT);
    }
    const s = setup();
    const table = s.ram.alloc(16, 16);
    s.drv.writeDescriptorAt(table, { addr: s.ram.alloc(4), len: 4, flags: 0, next: 0 });
    const withNext = [
      { addr: table, len: 16, flags: INDIRECT | NEXT, next: 1 },
      { addr: table, len: 16, flags: 0, next: 0 },
    ];
    expect(popRaw(s, withNext).error).toBe(ChainErrorCode.BAD_INDIRECT);
    const t = setup({ indirect: false });
    const plain = [{ addr: table, len: 16, flags: INDIRECT, next: 0 }];
    t.drv.writeDescriptorAt(table, { addr: t.ram.alloc(4), len: 4, flags: 0, next: 0 });
    expect(popRaw(t, plain).error).toBe(ChainErrorCode.BAD_INDIRECT);
  });

  it('accepts an indirect descriptor after direct ones and ignores its WRITE flag', () => {
    const s = setup();
    const table = s.ram.alloc(16, 16);
    const out = s.ram.alloc(4);
    s.drv.writeDescriptorAt(table, { addr: out, len: 4, flags: WRITE, next: 0 });
    const chain = popRaw(s, [
      { addr: s.ram.alloc(4), len: 4, flags: NEXT, next: 1 },
      { addr: table, len: 16, flags: INDIRECT | WRITE, next: 0 },
    ]);
    expect(chain.error).toBeNull();
    expect([chain.readableBytes, chain.writableBytes, chain.segments]).toEqual([4, 4, 2]);
  });

  it('refuses next indexes outside the table', () => {
    const s = setup();
    const buf = s.ram.alloc(4);
    const direct = popRaw(s, [{ addr: buf, len: 4, flags: NEXT, next: 8 }]);
    expect(direct.error).toBe(ChainErrorCode.NEXT_OUT_OF_RANGE);
    const t = setup();
    const table = t.ram.alloc(32, 16);
    t.drv.writeDescriptorAt(table, { addr: buf, len: 4, flags: NEXT, next: 2 });
    const chain = popRaw(t, [{ addr: table, len: 32, flags: INDIRECT, next: 0 }]);
    expect(chain.error).toBe(ChainErrorCode.NEXT_OUT_OF_RANGE);
  });

  it('refuses a readable descriptor after a writable one', () => {
    const s = setup();
    const buf = s.ram.alloc(4);
    const chain = popRaw(s, [
      { addr: buf, len: 4, flags: WRITE | NEXT, next: 1 },
      { addr: buf, len: 4, flags: 0, next: 0 },
    ]);
    expect(chain.error).toBe(ChainErrorCode.READ_AFTER_WRITE);
    const t = setup();
    const table = t.ram.alloc(32, 16);
    t.drv.writeDescriptorAt(table, { addr: buf, len: 0, flags: WRITE | NEXT, next: 1 });
    t.drv.writeDescriptorAt(table + 16, { addr: buf, len: 4, flags: 0, next: 0 });
    const indirect = popRaw(t, [{ addr: table, len: 32, flags: INDIRECT, next: 0 }]);
    expect(indirect.error).toBe(ChainErrorCode.READ_AFTER_WRITE);
  });

  it('refuses chains whose total length overflows u32', () => {
    // 65 descriptors of 64 MiB each, all over one lazily allocated 64 MiB region.
    const big = 64 * 1024 * 1024;
    const ram = new GuestRam([
      { guestPhysAddr: 0, size: 0x10000 },
      { guestPhysAddr: 0x1000_0000, size: big },
    ]);
    const drv = new DriverQueue(ram, 128);
    const q = new SplitVirtqueue(ram.toGuestMemory(), drv.config());
    const chain = new DescriptorChain(128);
    const full = Array.from({ length: 64 }, () => ({ addr: 0x1000_0000, len: big, write: true }));
    const justFits = [{ addr: 0x1000_0000, len: big - 1, write: true }, ...full.slice(1)];
    const head = drv.addChain(justFits);
    expect(q.pop(chain)).toBe(true);
    expect(chain.error).toBeNull();
    expect([chain.segments, chain.writableBytes]).toEqual([64, 2 ** 32 - 1]);
    q.pushUsed(head, 0);
    expect(drv.popUsed()).toEqual({ id: head, len: 0 });
    drv.addChain(full); // exactly 2^32 bytes
    expect(q.pop(chain)).toBe(true);
    expect(chain.error).toBe(ChainErrorCode.LEN_OVERFLOW);
  });
});

describe('guest addresses above 2^32 (a virtio-user front end passes its own virtual addresses)', () => {
  it('translates buffers there, across two adjacent regions, and refuses one past them', () => {
    // Two adjacent regions at a typical x86-64 user address, the rings in a low one.
    const high = 0x7f3a_1234_0000;
    const ram = new GuestRam([
      { guestPhysAddr: 0, size: 0x10000 },
      { guestPhysAddr: high, size: 0x4000, mmapOffset: 0x1000 },
      { guestPhysAddr: high + 0x4000, size: 0x4000 },
    ]);
    const drv = new DriverQueue(ram, 8);
    const q = new SplitVirtqueue(ram.toGuestMemory(), drv.config());
    const chain = new DescriptorChain(8);
    drv.addChain([
      { addr: high + 0x10, len: 0x20 },
      { addr: high + 0x3ff0, len: 0x30, write: true }, // crosses into the next region
    ]);
    expect(q.pop(chain)).toBe(true);
    expect(chain.error).toBeNull();
    expect(chain.segments).toBe(3);
    expect([chain.region[0], chain.offset[0], chain.length[0]]).toEqual([1, 0x1010, 0x20]);
    expect([chain.region[1], chain.offset[1], chain.length[1]]).toEqual([1, 0x4ff0, 0x10]);
    expect([chain.region[2], chain.offset[2], chain.length[2]]).toEqual([2, 0, 0x20]);
    expect([chain.readableBytes, chain.writableBytes]).toEqual([0x20, 0x30]);
    drv.addChain([{ addr: high + 0x7ff0, len: 0x20 }]); // runs off the last region
    expect(q.pop(chain)).toBe(true);
    expect(chain.error).toBe(ChainErrorCode.DESC_UNMAPPED);
  });
});

describe('hostile rings (ring-level: QueueBrokenError)', () => {
  it('throws VIRTQ_AVAIL_AHEAD when avail.idx runs ahead or goes back', () => {
    const s = setup();
    s.drv.setAvailIdx(9);
    expectBroken(() => s.q.pending(), QueueErrorCode.AVAIL_AHEAD);
    expectBroken(() => s.q.pop(s.chain), QueueErrorCode.AVAIL_AHEAD);
    s.drv.setAvailIdx(8); // exactly a full ring is fine
    expect(s.q.pending()).toBe(8);
    const t = setup();
    t.q.lastAvailIdx = 5;
    t.drv.setAvailIdx(4);
    expectBroken(() => t.q.pop(t.chain), QueueErrorCode.AVAIL_AHEAD);
  });

  it('throws VIRTQ_BAD_HEAD for a head index >= size', () => {
    for (const head of [8, 0xffff]) {
      const s = setup();
      s.drv.publish(head);
      expectBroken(() => s.q.pop(s.chain), QueueErrorCode.BAD_HEAD);
    }
  });

  it('refuses unmapped rings in the constructor and in setMemory', () => {
    const s = setup();
    const mem = s.ram.toGuestMemory();
    const base: SplitQueueConfig = s.drv.config();
    const unmapped: Partial<SplitQueueConfig>[] = [
      { descTable: GAP },
      { availRing: 2 ** 60 },
      { usedRing: GAP - 16 }, // starts mapped, runs into the gap
      { descTable: BOUNDARY - 64 }, // crosses from region 0 into region 1: not one region
      { usedRing: Number.NaN },
    ];
    for (const fields of unmapped) {
      expectBroken(
        () => new SplitVirtqueue(mem, { ...base, ...fields }),
        QueueErrorCode.RING_UNMAPPED,
      );
    }
    const other = new GuestRam([{ guestPhysAddr: FAR, size: 0x4000 }]).toGuestMemory();
    expectBroken(() => s.q.setMemory(other), QueueErrorCode.RING_UNMAPPED);
    // The queue kept its old, valid mapping.
    s.drv.addChain([{ addr: s.ram.alloc(4), len: 4, write: false }]);
    expect(s.q.pop(s.chain)).toBe(true);
  });

  it('refuses misaligned rings and bad sizes', () => {
    const s = setup();
    const mem = s.ram.toGuestMemory();
    const base = s.drv.config();
    const misaligned: Partial<SplitQueueConfig>[] = [
      { descTable: base.descTable + 8 },
      { availRing: base.availRing + 1 },
      { usedRing: base.usedRing + 2 },
    ];
    for (const fields of misaligned) {
      expectBroken(
        () => new SplitVirtqueue(mem, { ...base, ...fields }),
        QueueErrorCode.RING_MISALIGNED,
      );
    }
    for (const size of [0, 3, 65536, 1.5]) {
      expectBroken(() => new SplitVirtqueue(mem, { ...base, size }), QueueErrorCode.BAD_SIZE);
    }
  });

  it('refuses a ring aligned in guest space but misaligned in its mapping', () => {
    const ram = new GuestRam([{ guestPhysAddr: 0, size: 0x10000, mmapOffset: 1 }]);
    const q = {
      size: 4,
      descTable: 0x0,
      availRing: 0x100,
      usedRing: 0x200,
      eventIdx: false,
      indirect: false,
    };
    expectBroken(() => new SplitVirtqueue(ram.toGuestMemory(), q), QueueErrorCode.RING_MISALIGNED);
  });
});

describe('feature bits', () => {
  it('names the reserved bits and tests u64 feature words', () => {
    expect([
      VIRTIO_F_NOTIFY_ON_EMPTY,
      VIRTIO_RING_F_INDIRECT_DESC,
      VIRTIO_RING_F_EVENT_IDX,
      VIRTIO_F_VERSION_1,
      VIRTIO_F_ACCESS_PLATFORM,
      VIRTIO_F_RING_PACKED,
    ]).toEqual([24, 28, 29, 32, 33, 34]);
    const features = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_RING_F_EVENT_IDX);
    expect(features).toBe(0x1_2000_0000n);
    expect(hasFeature(features, VIRTIO_F_VERSION_1)).toBe(true);
    expect(hasFeature(features, VIRTIO_RING_F_EVENT_IDX)).toBe(true);
    expect(hasFeature(features, VIRTIO_RING_F_INDIRECT_DESC)).toBe(false);
    expect(hasFeature(1n << 63n, 63)).toBe(true);
    expect(() => featureBit(64)).toThrow(RangeError);
    expect(() => featureBit(-1)).toThrow(RangeError);
  });
});
