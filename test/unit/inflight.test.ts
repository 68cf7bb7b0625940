/**
 * The split-ring inflight region (§"Inflight I/O tracking") as the split
 * virtqueue keeps it: in a real memfd mapping, with the driver side of the
 * ring in guest RAM. The region's bytes are read and written here by offset,
 * independently of src/virtio/inflight.ts, so the layout itself is checked.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import { DescriptorChain } from '../../src/virtio/descriptor-chain.js';
import {
  INFLIGHT_VERSION,
  InflightError,
  InflightErrorCode,
  InflightQueue,
  inflightAreaBytes,
  inflightQueueBytes,
} from '../../src/virtio/inflight.js';
import { SplitVirtqueue } from '../../src/virtio/virtqueue.js';
import { DriverQueue } from '../support/driver-queue.js';
import { GuestRam } from '../support/guest-ram.js';

const SIZE = 8;
const fds: number[] = [];

afterEach(() => {
  for (const fd of fds.splice(0)) native.close(fd);
});

/** A memfd-backed area of `queues` regions, as GET_INFLIGHT_FD hands out. */
function area(queues = 1, queueSize = SIZE): SharedArrayBuffer {
  const bytes = inflightAreaBytes(queues, queueSize);
  const fd = native.memfdCreate('inflight-test', bytes);
  fds.push(fd);
  return native.mmapShared(fd, bytes, 0);
}

/** The region's fields, read by their spec offsets. */
function region(buffer: SharedArrayBuffer, offset = 0) {
  const dv = new DataView(buffer, offset);
  const desc = (i: number) => ({
    inflight: dv.getUint8(16 + 16 * i),
    next: dv.getUint16(16 + 16 * i + 6, true),
    counter: Number(dv.getBigUint64(16 + 16 * i + 8, true)),
  });
  return {
    version: () => dv.getUint16(8, true),
    descNum: () => dv.getUint16(10, true),
    lastBatchHead: () => dv.getUint16(12, true),
    usedIdx: () => dv.getUint16(14, true),
    desc,
    inflightHeads: () =>
      Array.from({ length: dv.getUint16(10, true) }, (_, i) => i).filter(
        (i) => desc(i).inflight === 1,
      ),
    write(fields: {
      version?: number;
      descNum?: number;
      lastBatchHead?: number;
      usedIdx?: number;
    }) {
      if (fields.version !== undefined) dv.setUint16(8, fields.version, true);
      if (fields.descNum !== undefined) dv.setUint16(10, fields.descNum, true);
      if (fields.lastBatchHead !== undefined) dv.setUint16(12, fields.lastBatchHead, true);
      if (fields.usedIdx !== undefined) dv.setUint16(14, fields.usedIdx, true);
    },
    writeDesc(i: number, d: { inflight: number; next?: number; counter: number }) {
      dv.setUint8(16 + 16 * i, d.inflight);
      dv.setUint16(16 + 16 * i + 6, d.next ?? 0, true);
      dv.setBigUint64(16 + 16 * i + 8, BigInt(d.counter), true);
    },
  };
}

function ring(size = SIZE) {
  const ram = new GuestRam([{ guestPhysAddr: 0, size: 0x10000 }]);
  const drv = new DriverQueue(ram, size);
  const q = new SplitVirtqueue(ram.toGuestMemory(), drv.config());
  const usedIdx = ram.u16(drv.usedRing, 2);
  const data = ram.alloc(512 * size, 512);
  /** Publishes a one-descriptor chain and returns its head. */
  const add = (i: number) => drv.addChain([{ addr: data + 512 * i, len: 512, write: true }]);
  return { ram, drv, q, usedIdx, add, chain: new DescriptorChain(16) };
}

function popHeads(q: SplitVirtqueue, chain: DescriptorChain): number[] {
  const heads: number[] = [];
  while (q.pop(chain)) heads.push(chain.head);
  return heads;
}

describe('inflight region layout', () => {
  it('pads each queue region to 64 bytes: 16-byte header, 16 bytes per descriptor', () => {
    expect(inflightQueueBytes(128)).toBe(16 + 16 * 128 + 48);
    expect(inflightQueueBytes(1)).toBe(64);
    expect(inflightAreaBytes(3, 256)).toBe(3 * (16 + 16 * 256 + 48));
  });
});

describe('inflight bookkeeping on a split virtqueue', () => {
  it('initialises a fresh region, marks heads at pop and clears them after used.idx is published', () => {
    const buffer = area();
    const r = region(buffer);
    const { q, add, chain, usedIdx } = ring();
    const found = q.attachInflight(new InflightQueue({ buffer, offset: 0, queueSize: SIZE }));
    expect(found).toEqual({ fresh: true, reconciled: 0, resubmit: 0 });
    expect([r.version(), r.descNum(), r.usedIdx()]).toEqual([INFLIGHT_VERSION, SIZE, 0]);

    const heads = [add(0), add(1), add(2)];
    expect(popHeads(q, chain)).toEqual(heads);
    expect(r.inflightHeads()).toEqual([...heads].sort((a, b) => a - b));
    const counters = heads.map((h) => r.desc(h).counter);
    expect(counters[0]).toBeLessThan(counters[1]);
    expect(counters[1]).toBeLessThan(counters[2]);

    // Out of order: the second and the third complete in one batch.
    q.addUsed(heads[2], 1);
    q.addUsed(heads[1], 1);
    // Written into the batch list, still inflight: the driver cannot see them yet.
    expect(r.lastBatchHead()).toBe(heads[1]);
    expect(r.desc(heads[1]).next).toBe(heads[2]);
    expect(r.inflightHeads()).toHaveLength(3);
    expect(r.usedIdx()).toBe(0);
    q.publishUsed();
    expect(Atomics.load(usedIdx, 1)).toBe(2);
    expect(r.inflightHeads()).toEqual([heads[0]]);
    expect(r.usedIdx()).toBe(2);
  });

  it('after a crash resubmits the heads still inflight in counter order, then resumes at used.idx + inflight', () => {
    const buffer = area();
    const r = region(buffer);
    const { q, add, chain, usedIdx } = ring();
    // The previous back end popped avail slots 0..3 (counters 20, 10, 30, 15: counters,
    // not slots, give the order), completed slots 1 and 3 in one batch, published
    // used.idx = 2 and died before clearing their flags. The driver queued slot 4 since.
    const h = [add(0), add(1), add(2), add(3), add(4)];
    r.write({ version: 1, descNum: SIZE, usedIdx: 0, lastBatchHead: h[3] });
    r.writeDesc(h[0], { inflight: 1, counter: 20 });
    r.writeDesc(h[1], { inflight: 1, counter: 10, next: 0 });
    r.writeDesc(h[2], { inflight: 1, counter: 30 });
    r.writeDesc(h[3], { inflight: 1, counter: 15, next: h[1] });
    Atomics.store(usedIdx, 1, 2);
    // QEMU rewinds the ring to used.idx when the back end vanished (SET_VRING_BASE).
    q.lastAvailIdx = 2;
    q.usedIdx = 2;

    const found = q.attachInflight(new InflightQueue({ buffer, offset: 0, queueSize: SIZE }));
    expect(found).toEqual({ fresh: false, reconciled: 2, resubmit: 2 });
    expect(r.usedIdx()).toBe(2);
    expect(q.lastAvailIdx).toBe(4);
    expect(q.pending()).toBe(3);
    // Resubmissions first (counter 20 before 30), then the new request from slot 4.
    expect(popHeads(q, chain)).toEqual([h[0], h[2], h[4]]);
    // Resubmitted heads keep their counters; the new one counts on from the largest.
    expect([r.desc(h[0]).counter, r.desc(h[2]).counter, r.desc(h[4]).counter]).toEqual([
      20, 30, 31,
    ]);
    expect(r.inflightHeads()).toEqual([h[0], h[2], h[4]].sort((a, b) => a - b));
  });

  it('does not reconcile when used.idx was not published: the batch is resubmitted instead', () => {
    const buffer = area();
    const r = region(buffer);
    const { q, add, chain } = ring();
    const h = [add(0), add(1)];
    r.write({ version: 1, descNum: SIZE, usedIdx: 0, lastBatchHead: h[1] });
    r.writeDesc(h[0], { inflight: 1, counter: 1 });
    r.writeDesc(h[1], { inflight: 1, counter: 2, next: h[0] });
    const found = q.attachInflight(new InflightQueue({ buffer, offset: 0, queueSize: SIZE }));
    expect(found).toEqual({ fresh: false, reconciled: 0, resubmit: 2 });
    expect(popHeads(q, chain)).toEqual(h);
  });

  it('drops marks on heads the ring cannot have and counts on past 2^32', () => {
    const buffer = area(1, 16);
    const r = region(buffer);
    const { q, add, chain } = ring(8);
    const h = add(0);
    r.write({ version: 1, descNum: 16, usedIdx: 0, lastBatchHead: 0 });
    r.writeDesc(h, { inflight: 1, counter: 2 ** 33 + 5 });
    r.writeDesc(12, { inflight: 1, counter: 1 });
    const found = q.attachInflight(new InflightQueue({ buffer, offset: 0, queueSize: 16 }));
    expect(found.resubmit).toBe(1);
    expect(r.inflightHeads()).toEqual([h]);
    expect(popHeads(q, chain)).toEqual([h]);
    const next = add(1);
    expect(popHeads(q, chain)).toEqual([next]);
    expect(r.desc(next).counter).toBe(2 ** 33 + 6);
  });

  it('uses the region of its own queue in a multi-queue area', () => {
    const buffer = area(2);
    const offset = inflightQueueBytes(SIZE);
    const { q, add, chain } = ring();
    q.attachInflight(new InflightQueue({ buffer, offset, queueSize: SIZE }));
    const head = add(0);
    popHeads(q, chain);
    expect(region(buffer, offset).inflightHeads()).toEqual([head]);
    expect(region(buffer, 0).version()).toBe(0);
  });

  it('refuses a region it cannot trust with a coded InflightError', () => {
    const cases: [string, (r: ReturnType<typeof region>) => void, number, number][] = [
      [InflightErrorCode.BAD_VERSION, (r) => r.write({ version: 2, descNum: SIZE }), SIZE, SIZE],
      [InflightErrorCode.BAD_SIZE, (r) => r.write({ version: 1, descNum: 4 }), SIZE, SIZE],
      [
        InflightErrorCode.CORRUPT,
        (r) => r.write({ version: 1, descNum: SIZE, usedIdx: 100 }),
        SIZE,
        SIZE,
      ],
      // The ring is larger than the region the front end announced.
      [InflightErrorCode.BAD_SIZE, () => {}, 4, 16],
    ];
    for (const [code, corrupt, regionSize, ringSize] of cases) {
      const buffer = area(1, regionSize);
      corrupt(region(buffer));
      const { q } = ring(ringSize);
      const attach = () =>
        q.attachInflight(new InflightQueue({ buffer, offset: 0, queueSize: regionSize }));
      expect(attach).toThrow(InflightError);
      expect(attach).toThrow(expect.objectContaining({ code }));
    }
    expect(() => new InflightQueue({ buffer: area(), offset: 8, queueSize: SIZE })).toThrow(
      expect.objectContaining({ code: InflightErrorCode.OUT_OF_RANGE }),
    );
  });
});
