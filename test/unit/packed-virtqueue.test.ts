/**
 * The packed virtqueue (src/virtio/packed-virtqueue.ts) against the packed
 * mock driver, mirroring virtqueue.test.ts: round trips (direct, indirect,
 * out of order, across many wraps), the vhost-user ring base, rewinds,
 * interrupt and kick suppression, hostile chains (chain-level errors, the
 * chain's slots still skipped) and hostile rings (ids out of range or
 * reused, NEXT loops, lying wrap counters, rings outside memory), and the
 * dirty log of a batch.
 */
import { describe, expect, it } from 'vitest';
import { DescriptorChain } from '../../src/virtio/descriptor-chain.js';
import { DirtyLog, LOG_PAGE_SIZE, logBytesFor } from '../../src/virtio/dirty-log.js';
import { type ChainHandler, DrainResult, DrainStop, drainQueue } from '../../src/virtio/drain.js';
import { ChainErrorCode, QueueBrokenError, QueueErrorCode } from '../../src/virtio/errors.js';
import {
  PACKED_DESC_F_AVAIL,
  PACKED_DESC_F_INDIRECT,
  PACKED_DESC_F_NEXT,
  PACKED_DESC_F_USED,
  PACKED_DESC_F_WRITE,
  PackedQueueErrorCode,
  packedVringBase,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
} from '../../src/virtio/packed-ring.js';
import { PackedVirtqueue } from '../../src/virtio/packed-virtqueue.js';
import { Vring } from '../../src/virtio/vring.js';
import { GuestRam } from '../support/guest-ram.js';
import { PackedDriverQueue } from '../support/packed-driver.js';

const NEXT = PACKED_DESC_F_NEXT;
const WRITE = PACKED_DESC_F_WRITE;
const INDIRECT = PACKED_DESC_F_INDIRECT;
const AVAIL = PACKED_DESC_F_AVAIL;
const BOUNDARY = 0x10000;
const GAP = 0x18000;
const FAR = 0x20000;

interface Setup {
  ram: GuestRam;
  drv: PackedDriverQueue;
  q: PackedVirtqueue;
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
  const drv = new PackedDriverQueue(ram, options.size ?? 8, {
    eventIdx: options.eventIdx ?? false,
  });
  const config = drv.config({ indirect: options.indirect ?? true });
  const q = new PackedVirtqueue(ram.toGuestMemory(), config, options.maxSegments);
  return { ram, drv, q, chain: new DescriptorChain(64) };
}

function segmentBytes(ram: GuestRam, chain: DescriptorChain, i: number) {
  const r = ram.regions[chain.region[i]];
  return new Uint8Array(r.buffer, chain.offset[i], chain.length[i]);
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

/** Writes raw descriptors from slot 0 (wrap 1), the first one's flags last. */
function writeRaw(s: Setup, descs: { addr: number; len: number; id: number; flags: number }[]) {
  for (let i = descs.length - 1; i >= 0; i--) {
    s.drv.writeSlot(i, { ...descs[i], flags: descs[i].flags | AVAIL });
  }
}

describe('PackedVirtqueue round trips', () => {
  it('pops a direct chain, exposes its segments and returns it through the ring', () => {
    const s = setup();
    const out = s.ram.alloc(32);
    const inBuf = s.ram.alloc(64);
    s.ram.write(
      out,
      Uint8Array.from({ length: 32 }, (_, i) => i),
    );
    expect(s.q.pending()).toBe(0);
    const id = s.drv.addChain([
      { addr: out, len: 32, write: false },
      { addr: inBuf, len: 64, write: true },
    ]);
    expect(s.q.pending()).toBe(1);
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.chain.error).toBeNull();
    expect(s.chain.head).toBe(id);
    expect(s.chain.segments).toBe(2);
    expect([...s.chain.writable.subarray(0, 2)]).toEqual([0, 1]);
    expect(s.chain.readableBytes).toBe(32);
    expect(s.chain.writableBytes).toBe(64);
    expect(s.chain.firstWritable).toBe(1);
    expect(segmentBytes(s.ram, s.chain, 0)[31]).toBe(31);
    expect(s.q.pop(s.chain)).toBe(false);
    s.q.addUsed(id, 7);
    // Not visible before the batch is published.
    expect(s.drv.popUsed()).toBeNull();
    s.q.publishUsed();
    expect(s.drv.popUsed()).toEqual({ id, len: 7 });
    expect(s.drv.numFree).toBe(8);
    expect(s.q.lastAvailIdx).toBe(1);
    expect(s.q.usedIdx).toBe(1);
  });

  it('pops an indirect chain (one slot), entries readable before writable', () => {
    const s = setup();
    const a = s.ram.alloc(16);
    const b = s.ram.alloc(16);
    const id = s.drv.addChain(
      [
        { addr: a, len: 16, write: false },
        { addr: b, len: 16, write: true },
      ],
      { indirect: true },
    );
    expect(s.drv.numFree).toBe(7);
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.chain.error).toBeNull();
    expect(s.chain.head).toBe(id);
    expect(s.chain.segments).toBe(2);
    expect(s.chain.descriptors).toBe(3);
    s.q.pushUsed(id, 16);
    expect(s.drv.popUsed()).toEqual({ id, len: 16 });
  });

  it('splits a buffer spanning two adjacent regions', () => {
    const s = setup();
    s.drv.addChain([{ addr: BOUNDARY - 8, len: 24, write: true }]);
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.chain.segments).toBe(2);
    expect([s.chain.length[0], s.chain.length[1]]).toEqual([8, 16]);
  });

  it('completes out of order: used elements land in order of completion, slots skip by chain length', () => {
    const s = setup();
    const buf = s.ram.alloc(64);
    const a = s.drv.addChain([
      { addr: buf, len: 8, write: false },
      { addr: buf + 8, len: 8, write: false },
      { addr: buf + 16, len: 8, write: true },
    ]);
    const b = s.drv.addChain([{ addr: buf + 32, len: 8, write: true }]);
    const c = s.drv.addChain([{ addr: buf + 40, len: 8, write: true }]);
    const heads: number[] = [];
    while (s.q.pop(s.chain)) heads.push(s.chain.head);
    expect(heads).toEqual([a, b, c]);
    s.q.addUsed(c, 3);
    s.q.addUsed(a, 1);
    s.q.addUsed(b, 2);
    s.q.publishUsed();
    expect([s.drv.popUsed(), s.drv.popUsed(), s.drv.popUsed(), s.drv.popUsed()]).toEqual([
      { id: c, len: 3 },
      { id: a, len: 1 },
      { id: b, len: 2 },
      null,
    ]);
    expect(s.drv.numFree).toBe(8);
  });

  it('keeps going across many wraps with chains of changing length', () => {
    const s = setup({ size: 4 });
    const buf = s.ram.alloc(64);
    for (let round = 0; round < 200; round++) {
      const n = 1 + (round % 3);
      const bufs = Array.from({ length: n }, (_, i) => ({ addr: buf + i, len: 1, write: i > 0 }));
      const id = s.drv.addChain(bufs, { indirect: round % 5 === 0 });
      expect(s.q.pop(s.chain)).toBe(true);
      expect(s.chain.error).toBeNull();
      expect(s.chain.head).toBe(id);
      expect(s.q.pop(s.chain)).toBe(false);
      s.q.pushUsed(id, round);
      expect(s.drv.popUsed()).toEqual({ id, len: round });
      expect(s.drv.popUsed()).toBeNull();
    }
    // Both sides agree on where they stand.
    expect(s.q.vringBase).toBe(s.drv.vringBase);
  });

  it('hands over positions and wrap counters through the ring base', () => {
    const s = setup({ size: 4 });
    expect(s.q.vringBase).toBe(packedVringBase(0, 1, 0, 1));
    const buf = s.ram.alloc(16);
    for (let i = 0; i < 5; i++) {
      const id = s.drv.addChain([{ addr: buf, len: 4, write: true }]);
      s.q.pop(s.chain);
      s.q.pushUsed(id, 0);
      s.drv.popUsed();
    }
    const base = s.q.vringBase;
    expect(base).toBe(packedVringBase(1, 0, 1, 0));
    // A new device object resumes there (a reconnect, a migration).
    const q2 = new PackedVirtqueue(s.ram.toGuestMemory(), s.drv.config());
    q2.vringBase = base;
    const id = s.drv.addChain([{ addr: buf, len: 4, write: true }]);
    expect(q2.pop(s.chain)).toBe(true);
    expect(s.chain.head).toBe(id);
    // Only the avail half given: used where avail is.
    q2.vringBase = 2 | (1 << 15);
    expect(q2.vringBase).toBe(packedVringBase(2, 1, 2, 1));
    expectBroken(() => {
      q2.vringBase = 4;
    }, PackedQueueErrorCode.BAD_BASE);
    expect(() => {
      q2.vringBase = -1;
    }).toThrow(RangeError);
  });

  it('puts popped buffers back when lastAvailIdx is rewound (the net device un-pops)', () => {
    const s = setup();
    const buf = s.ram.alloc(64);
    const ids = [2, 1, 3].map((n) =>
      s.drv.addChain(Array.from({ length: n }, (_, i) => ({ addr: buf + i, len: 1, write: true }))),
    );
    const start = s.q.lastAvailIdx;
    while (s.q.pop(s.chain));
    expect(s.q.lastAvailIdx).toBe((start + 3) & 0xffff);
    s.q.lastAvailIdx = (s.q.lastAvailIdx - 1) & 0xffff;
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.chain.head).toBe(ids[2]);
    s.q.lastAvailIdx = start;
    const again: number[] = [];
    while (s.q.pop(s.chain)) again.push(s.chain.head);
    expect(again).toEqual(ids);
    // A returned buffer cannot be put back.
    s.q.addUsed(ids[2], 0);
    expect(() => {
      s.q.lastAvailIdx = start;
    }).toThrow(RangeError);
    expect(() => s.q.addUsed(ids[2], 0)).toThrow(RangeError);
  });
});

describe('interrupt suppression (driver area)', () => {
  it('honours ENABLE and DISABLE', () => {
    const s = setup();
    const buf = s.ram.alloc(8);
    const once = () => {
      const id = s.drv.addChain([{ addr: buf, len: 8, write: true }]);
      s.q.pop(s.chain);
      s.q.pushUsed(id, 0);
      s.drv.popUsed();
      return s.q.needsInterrupt();
    };
    expect(once()).toBe(true);
    s.drv.setNoInterrupt(true);
    expect(once()).toBe(false);
    s.drv.setNoInterrupt(false);
    expect(once()).toBe(true);
    // Nothing new published: no interrupt.
    expect(s.q.needsInterrupt()).toBe(false);
  });

  it('honours DESC with EVENT_IDX: an interrupt only when the used position passes off_wrap, across wraps', () => {
    const s = setup({ size: 4, eventIdx: true });
    const buf = s.ram.alloc(8);
    const complete = (k: number) => {
      const ids: number[] = [];
      for (let i = 0; i < k; i++) ids.push(s.drv.addChain([{ addr: buf, len: 8, write: true }]));
      for (let i = 0; i < k; i++) s.q.pop(s.chain);
      for (const id of ids) s.q.addUsed(id, 0);
      s.q.publishUsed();
      return s.q.needsInterrupt();
    };
    // First call after a start: no trustworthy history, interrupt.
    s.drv.setUsedEvent(0);
    expect(complete(1)).toBe(true);
    s.drv.popUsed();
    // Ask at slot 1 + 2 = 3 (wrap 1): one element (slot 1) does not reach it.
    s.drv.setDriverEvent(3 | (1 << 15), RING_EVENT_FLAGS_DESC);
    expect(complete(1)).toBe(false);
    expect(complete(2)).toBe(true);
    for (let i = 0; i < 3; i++) s.drv.popUsed();
    // Used now at slot 0, wrap 0. Event at slot 1 wrap 0: two elements cross it.
    s.drv.setDriverEvent(1, RING_EVENT_FLAGS_DESC);
    expect(complete(2)).toBe(true);
    s.drv.popUsed();
    s.drv.popUsed();
    // An event from the previous lap (wrap 1) was passed long ago.
    s.drv.setDriverEvent(3 | (1 << 15), RING_EVENT_FLAGS_DESC);
    expect(complete(1)).toBe(false);
    s.drv.popUsed();
    // A lying off_wrap beyond the ring: interrupt rather than hang the driver.
    s.drv.setDriverEvent(100, RING_EVENT_FLAGS_DESC);
    expect(complete(1)).toBe(true);
  });

  it('interrupts on an empty ring with NOTIFY_ON_EMPTY despite DISABLE', () => {
    const ram = new GuestRam([{ guestPhysAddr: 0, size: 0x10000 }]);
    const drv = new PackedDriverQueue(ram, 4);
    const q = new PackedVirtqueue(ram.toGuestMemory(), drv.config({ notifyOnEmpty: true }));
    const chain = new DescriptorChain(4);
    drv.setNoInterrupt(true);
    const id = drv.addChain([{ addr: ram.alloc(8), len: 8, write: true }]);
    q.pop(chain);
    q.pushUsed(id, 0);
    expect(q.needsInterrupt()).toBe(true);
  });
});

describe('kick suppression (device area)', () => {
  it('writes DISABLE while draining and ENABLE after, and reports a chain that slipped in', () => {
    const s = setup();
    const buf = s.ram.alloc(8);
    s.q.setNotification(false);
    expect(s.drv.deviceFlags).toBe(RING_EVENT_FLAGS_DISABLE);
    s.drv.addChain([{ addr: buf, len: 8, write: true }]);
    expect(s.drv.needsKick()).toBe(false);
    expect(s.q.enableNotification()).toBe(true);
    expect(s.drv.deviceFlags).toBe(RING_EVENT_FLAGS_ENABLE);
    s.q.pop(s.chain);
    expect(s.q.enableNotification()).toBe(false);
    s.drv.addChain([{ addr: buf, len: 8, write: true }]);
    expect(s.drv.needsKick()).toBe(true);
  });
});

describe('hostile chains (chain-level: pop returns the buffer with an error, its slots skipped)', () => {
  function expectChainError(s: Setup, code: string, slots: number) {
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.chain.error).toBe(code);
    expect(s.chain.segments).toBe(0);
    expect(s.chain.readableBytes + s.chain.writableBytes).toBe(0);
    // The ring goes on right after the bad chain's slots.
    const buf = s.ram.alloc(8);
    s.drv.writeSlot(slots, { addr: buf, len: 8, id: 5, flags: WRITE | AVAIL });
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.chain.error).toBeNull();
    expect(s.chain.head).toBe(5);
  }

  it('reports unmapped buffers with VIRTQ_DESC_UNMAPPED', () => {
    const s = setup();
    writeRaw(s, [
      { addr: GAP + 16, len: 8, id: 0, flags: NEXT },
      { addr: 0x100, len: 8, id: 0, flags: WRITE },
    ]);
    expectChainError(s, ChainErrorCode.DESC_UNMAPPED, 2);
    const t = setup();
    writeRaw(t, [{ addr: 2 ** 64 - 4096, len: 8, id: 0, flags: 0 }]);
    expectChainError(t, ChainErrorCode.DESC_UNMAPPED, 1);
  });

  it('refuses a readable descriptor after a writable one (no device write into a readable buffer)', () => {
    const s = setup();
    writeRaw(s, [
      { addr: 0x100, len: 8, id: 0, flags: WRITE | NEXT },
      { addr: 0x200, len: 8, id: 0, flags: NEXT },
      { addr: 0x300, len: 8, id: 0, flags: WRITE },
    ]);
    expectChainError(s, ChainErrorCode.READ_AFTER_WRITE, 3);
  });

  it('refuses chains whose total length overflows u32', () => {
    const s = setup();
    writeRaw(s, [
      { addr: 0, len: 0xffffffff, id: 0, flags: NEXT },
      { addr: 0, len: 2, id: 0, flags: 0 },
    ]);
    expectChainError(s, ChainErrorCode.DESC_UNMAPPED, 2);
    const t = setup();
    writeRaw(t, [
      { addr: 0, len: 0x8000, id: 0, flags: NEXT },
      { addr: 0, len: 0xffffffff - 0x7fff, id: 0, flags: 0 },
    ]);
    expectChainError(t, ChainErrorCode.LEN_OVERFLOW, 2);
  });

  it('refuses nested indirect tables, INDIRECT with NEXT, indirect after direct, and bad table lengths', () => {
    const s = setup();
    const table = s.ram.alloc(32, 16);
    s.drv.writeDescriptorAt(table, { addr: 0x100, len: 8, id: 0, flags: 0 });
    s.drv.writeDescriptorAt(table + 16, { addr: table, len: 16, id: 0, flags: INDIRECT });
    writeRaw(s, [{ addr: table, len: 32, id: 0, flags: INDIRECT }]);
    expectChainError(s, ChainErrorCode.NESTED_INDIRECT, 1);

    const t = setup();
    writeRaw(t, [
      { addr: table, len: 16, id: 0, flags: INDIRECT | NEXT },
      { addr: 0x100, len: 8, id: 0, flags: 0 },
    ]);
    expectChainError(t, ChainErrorCode.BAD_INDIRECT, 2);

    const u = setup();
    writeRaw(u, [
      { addr: 0x100, len: 8, id: 0, flags: NEXT },
      { addr: table, len: 16, id: 0, flags: INDIRECT },
    ]);
    expectChainError(u, ChainErrorCode.BAD_INDIRECT, 2);

    for (const len of [0, 24]) {
      const v = setup();
      writeRaw(v, [{ addr: table, len, id: 0, flags: INDIRECT }]);
      expectChainError(v, ChainErrorCode.BAD_INDIRECT, 1);
    }
    const w = setup();
    writeRaw(w, [{ addr: GAP, len: 16, id: 0, flags: INDIRECT }]);
    expectChainError(w, ChainErrorCode.DESC_UNMAPPED, 1);
  });

  it('refuses indirect descriptors when INDIRECT_DESC was not negotiated', () => {
    const s = setup({ indirect: false });
    const table = s.ram.alloc(16, 16);
    s.drv.writeDescriptorAt(table, { addr: 0x100, len: 8, id: 0, flags: 0 });
    writeRaw(s, [{ addr: table, len: 16, id: 0, flags: INDIRECT }]);
    expectChainError(s, ChainErrorCode.BAD_INDIRECT, 1);
  });

  it('caps segments at maxSegments', () => {
    const s = setup({ maxSegments: 2 });
    writeRaw(s, [
      { addr: 0x100, len: 8, id: 0, flags: NEXT },
      { addr: 0x200, len: 8, id: 0, flags: NEXT },
      { addr: 0x300, len: 8, id: 0, flags: 0 },
    ]);
    expectChainError(s, ChainErrorCode.CHAIN_TOO_LONG, 3);
  });

  it('takes the buffer id from the last descriptor and completes a bad chain with length 0', () => {
    const s = setup();
    writeRaw(s, [
      { addr: GAP, len: 8, id: 1, flags: NEXT },
      { addr: 0x100, len: 8, id: 6, flags: 0 },
    ]);
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.chain.head).toBe(6);
    s.q.pushUsed(6, 0);
    expect(s.drv.slotFlags(0) & (AVAIL | PACKED_DESC_F_USED)).toBe(AVAIL | PACKED_DESC_F_USED);
  });
});

describe('hostile rings (ring-level: QueueBrokenError)', () => {
  it('throws VIRTQ_PACKED_RING_OVERRUN for a NEXT loop around the whole ring', () => {
    const s = setup({ size: 4 });
    for (let i = 3; i >= 0; i--)
      s.drv.writeSlot(i, { addr: 0x100, len: 8, id: 0, flags: NEXT | AVAIL });
    expectBroken(() => s.q.pop(s.chain), PackedQueueErrorCode.RING_OVERRUN);
    // A size-1 ring whose only descriptor says NEXT.
    const t = setup({ size: 1 });
    t.drv.writeSlot(0, { addr: 0x100, len: 8, id: 0, flags: NEXT | AVAIL });
    expectBroken(() => t.q.pop(t.chain), PackedQueueErrorCode.RING_OVERRUN);
  });

  it('throws VIRTQ_PACKED_RING_OVERRUN when the driver makes more slots available than it got back', () => {
    const s = setup({ size: 4 });
    const buf = s.ram.alloc(8);
    for (let i = 0; i < 4; i++) s.drv.addChain([{ addr: buf, len: 8, write: true }]);
    while (s.q.pop(s.chain));
    // The driver lies: slot 0 of the next lap (wrap 0) marked available while all 4 are held.
    s.drv.writeSlot(0, { addr: buf, len: 8, id: 0, flags: s.drv.availBits(0) });
    expectBroken(() => s.q.pop(s.chain), PackedQueueErrorCode.RING_OVERRUN);
  });

  it('throws VIRTQ_PACKED_BAD_ID for an id >= size and VIRTQ_PACKED_ID_IN_USE for a held id', () => {
    const s = setup();
    writeRaw(s, [{ addr: 0x100, len: 8, id: 8, flags: 0 }]);
    expectBroken(() => s.q.pop(s.chain), PackedQueueErrorCode.BAD_ID);
    const t = setup();
    writeRaw(t, [
      { addr: 0x100, len: 8, id: 3, flags: 0 },
      { addr: 0x100, len: 8, id: 3, flags: 0 },
    ]);
    expect(t.q.pop(t.chain)).toBe(true);
    expectBroken(() => t.q.pop(t.chain), PackedQueueErrorCode.ID_IN_USE);
  });

  it("does not take slots whose wrap bits lie: AVAIL equal to USED, or last lap's bits", () => {
    const s = setup({ size: 4 });
    // AVAIL and USED both set (looks used under wrap 1).
    s.drv.writeSlot(0, { addr: 0x100, len: 8, id: 0, flags: AVAIL | PACKED_DESC_F_USED });
    expect(s.q.pop(s.chain)).toBe(false);
    expect(s.q.pending()).toBe(0);
    // Neither set: the bits of wrap 0, not this lap's.
    s.drv.writeSlot(0, { addr: 0x100, len: 8, id: 0, flags: 0 });
    expect(s.q.pop(s.chain)).toBe(false);
    // Proper wrap-1 bits: available.
    s.drv.writeSlot(0, { addr: 0x100, len: 8, id: 0, flags: AVAIL });
    expect(s.q.pop(s.chain)).toBe(true);
  });

  it('refuses unmapped or misaligned areas and bad sizes, in the constructor and in setMemory', () => {
    const s = setup();
    const mem = s.ram.toGuestMemory();
    const base = s.drv.config();
    for (const fields of [
      { descTable: GAP },
      { availRing: GAP },
      { usedRing: GAP },
      { descTable: BOUNDARY - 64 },
    ]) {
      expectBroken(
        () => new PackedVirtqueue(mem, { ...base, ...fields }),
        QueueErrorCode.RING_UNMAPPED,
      );
    }
    for (const fields of [
      { descTable: base.descTable + 8 },
      { availRing: base.availRing + 2 },
      { usedRing: base.usedRing + 2 },
    ]) {
      expectBroken(
        () => new PackedVirtqueue(mem, { ...base, ...fields }),
        QueueErrorCode.RING_MISALIGNED,
      );
    }
    for (const size of [0, 3, 65536]) {
      expectBroken(() => new PackedVirtqueue(mem, { ...base, size }), QueueErrorCode.BAD_SIZE);
    }
    const other = new GuestRam([{ guestPhysAddr: FAR, size: 0x4000 }]);
    expectBroken(() => s.q.setMemory(other.toGuestMemory()), QueueErrorCode.RING_UNMAPPED);
    // The old views still work after a refused table.
    s.drv.addChain([{ addr: 0x100, len: 8, write: true }]);
    expect(s.q.pop(s.chain)).toBe(true);
  });
});

describe('dirty log of a packed batch', () => {
  const PAGE = LOG_PAGE_SIZE;
  function pages(bits: Uint8Array): number[] {
    const out: number[] = [];
    for (let i = 0; i < bits.length; i++)
      for (let b = 0; b < 8; b++) if ((bits[i] >> b) & 1) out.push(i * 8 + b);
    return out;
  }

  it('marks the writable part up to the used length (direct and indirect) and the ring slots, before the flags', () => {
    const ram = new GuestRam([{ guestPhysAddr: 0, size: 0x100000, mmapOffset: 0x1000 }]);
    const drv = new PackedDriverQueue(ram, 4);
    const memory = ram.toGuestMemory();
    const q = new PackedVirtqueue(memory, drv.config({ indirect: true }));
    const v = new Vring(0, () => {});
    v.start(q);
    v.enabled = true;
    const log = new DirtyLog(
      new SharedArrayBuffer(logBytesFor(0x100000)),
      0,
      logBytesFor(0x100000),
      64,
    );
    log.setMemory(memory);
    v.dirtyLog = log;
    v.logUsedAddr = drv.usedRing;
    const buf = (n: number) => ram.alloc(n * PAGE, PAGE);
    const readable = buf(1);
    const a = buf(3);
    const b = buf(2);
    const c = buf(2);
    const chain = new DescriptorChain(64);
    const direct = drv.addChain([
      { addr: readable, len: 64, write: false },
      { addr: a + 200, len: 2 * PAGE, write: true },
      { addr: b, len: 2 * PAGE, write: true },
    ]);
    const indirect = drv.addChain(
      [
        { addr: readable, len: 64, write: false },
        { addr: c, len: 2 * PAGE, write: true },
      ],
      { indirect: true },
    );
    q.pop(chain);
    q.pop(chain);
    // The indirect buffer completes first: its used element overwrites the direct chain's first slot.
    v.addUsed(indirect, 10);
    v.addUsed(direct, 2 * PAGE + 10);
    let seenAtPublish: number[] = [];
    const publish = q.publishUsed.bind(q);
    q.publishUsed = () => {
      seenAtPublish = pages(log.bits);
      expect(drv.popUsed()).toBeNull();
      publish();
    };
    v.flush();
    const ringPage = Math.floor(drv.descTable / PAGE);
    const expected = new Set([a / PAGE, a / PAGE + 1, a / PAGE + 2, b / PAGE, c / PAGE, ringPage]);
    expect(seenAtPublish).toEqual([...expected].sort((x, y) => x - y));
    expect(seenAtPublish).not.toContain(readable / PAGE);
    expect(drv.popUsed()).toEqual({ id: indirect, len: 10 });
    // The stop marks the device area.
    log.bits.fill(0);
    v.stop();
    expect(pages(log.bits)).toEqual([Math.floor(drv.usedRing / PAGE)]);
  });
});

describe('drainQueue over a packed ring', () => {
  /** A packed queue whose "kicks back on" first lets the driver publish a chain (the race). */
  class RacyPackedQueue extends PackedVirtqueue {
    beforeEnable: (() => void) | null = null;

    override setNotification(enabled: boolean): void {
      const race = this.beforeEnable;
      if (enabled && race !== null) {
        this.beforeEnable = null;
        race();
      }
      super.setNotification(enabled);
    }
  }

  it('pops a chain published between the last empty pop and kicks back on, then sleeps with kicks on', () => {
    const ram = new GuestRam([{ guestPhysAddr: 0, size: 0x10000 }]);
    const drv = new PackedDriverQueue(ram, 8);
    const q = new RacyPackedQueue(ram.toGuestMemory(), drv.config());
    const chain = new DescriptorChain(8);
    const buf = ram.alloc(8);
    const heads: number[] = [];
    const handler: ChainHandler = {
      handleChain: (c) => {
        heads.push(c.head);
        q.addUsed(c.head, 0);
        return true;
      },
    };
    const first = drv.addChain([{ addr: buf, len: 8, write: true }]);
    let late = -1;
    q.beforeEnable = () => {
      late = drv.addChain([{ addr: buf, len: 8, write: true }]);
    };
    const result = new DrainResult();
    expect(drainQueue(q, chain, handler, Number.POSITIVE_INFINITY, result)).toBe(DrainStop.EMPTY);
    expect(heads).toEqual([first, late]);
    expect(drv.deviceFlags).toBe(RING_EVENT_FLAGS_ENABLE);
    q.publishUsed();
    expect([drv.popUsed()?.id, drv.popUsed()?.id]).toEqual([first, late]);
  });

  it('stops at the budget with kicks still off', () => {
    const ram = new GuestRam([{ guestPhysAddr: 0, size: 0x10000 }]);
    const drv = new PackedDriverQueue(ram, 8);
    const q = new PackedVirtqueue(ram.toGuestMemory(), drv.config());
    const buf = ram.alloc(8);
    for (let i = 0; i < 3; i++) drv.addChain([{ addr: buf, len: 8, write: true }]);
    const handler: ChainHandler = {
      handleChain: (c) => {
        q.addUsed(c.head, 0);
        return true;
      },
    };
    const result = new DrainResult();
    expect(drainQueue(q, new DescriptorChain(8), handler, 2, result)).toBe(DrainStop.BUDGET);
    expect(result.popped).toBe(2);
    expect(drv.deviceFlags).toBe(RING_EVENT_FLAGS_DISABLE);
  });
});
