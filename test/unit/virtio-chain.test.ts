import { describe, expect, it } from 'vitest';
import {
  type ByteLocation,
  ChainReader,
  ChainWriter,
  type IovecSink,
} from '../../src/virtio/chain.js';
import { DescriptorChain } from '../../src/virtio/descriptor-chain.js';
import { ChainErrorCode } from '../../src/virtio/errors.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/virtio/split-ring.js';
import { SplitVirtqueue } from '../../src/virtio/virtqueue.js';
import { pattern } from '../support/bytes.js';
import { type DriverBuffer, DriverQueue } from '../support/driver-queue.js';
import { GuestRam } from '../support/guest-ram.js';

/** Region 0 ends and region 1 starts here (adjacent, different buffers); region 2 after a gap. */
const BOUNDARY = 0x10000;
const GAP = 0x18000;
const FAR = 0x20000;
const FAR_END = 0x24000;
/** Filler of guest RAM around test buffers: any byte the device must not touch keeps it. */
const GUARD = 0xee;

interface Setup {
  ram: GuestRam;
  drv: DriverQueue;
  q: SplitVirtqueue;
  chain: DescriptorChain;
  bytes: readonly Uint8Array[];
  reader: ChainReader;
  writer: ChainWriter;
}

/** Rings at the start of region 0; everything from 0x4000 up is guard-filled data space. */
function setup(): Setup {
  const ram = new GuestRam([
    { guestPhysAddr: 0, size: BOUNDARY, mmapOffset: 0x1000 },
    { guestPhysAddr: BOUNDARY, size: GAP - BOUNDARY, mmapOffset: 0x40 },
    { guestPhysAddr: FAR, size: FAR_END - FAR },
  ]);
  const drv = new DriverQueue(ram, 64);
  const memory = ram.toGuestMemory();
  const q = new SplitVirtqueue(memory, drv.config());
  ram.write(0x4000, new Uint8Array(GAP - 0x4000).fill(GUARD));
  ram.write(FAR, new Uint8Array(FAR_END - FAR).fill(GUARD));
  const chain = new DescriptorChain(64);
  return {
    ram,
    drv,
    q,
    chain,
    bytes: memory.bytes,
    reader: new ChainReader(),
    writer: new ChainWriter(),
  };
}

/** Publishes `buffers` as one chain, pops it and points the reader and writer at it. */
function popChain(s: Setup, buffers: DriverBuffer[]): DescriptorChain {
  s.drv.addChain(buffers);
  expect(s.q.pop(s.chain)).toBe(true);
  expect(s.chain.error).toBeNull();
  s.reader.reset(s.chain, s.bytes);
  s.writer.reset(s.chain, s.bytes);
  return s.chain;
}

/** Returns the popped chain so its descriptors can be reused. */
function complete(s: Setup): void {
  s.q.pushUsed(s.chain.head, 0);
  expect(s.drv.popUsed()).not.toBeNull();
}

/** Readable buffers at `addrs` (lengths `lens`), filled from `data` in order. */
function readable(s: Setup, addrs: number[], lens: number[], data: Uint8Array): DriverBuffer[] {
  let at = 0;
  return addrs.map((addr, i) => {
    s.ram.write(addr, data.subarray(at, at + lens[i]));
    at += lens[i];
    return { addr, len: lens[i], write: false };
  });
}

function writable(addrs: number[], lens: number[]): DriverBuffer[] {
  return addrs.map((addr, i) => ({ addr, len: lens[i], write: true }));
}

/** The bytes of `buffers`, concatenated, as the driver reads them. */
function gather(s: Setup, buffers: DriverBuffer[]): Uint8Array {
  const out = new Uint8Array(buffers.reduce((n, b) => n + b.len, 0));
  let at = 0;
  for (const b of buffers) {
    out.set(s.ram.read(b.addr, b.len), at);
    at += b.len;
  }
  return out;
}

/** Guest RAM outside `buffers` still holds GUARD everywhere in the data space. */
function expectUntouchedOutside(s: Setup, buffers: DriverBuffer[]): void {
  const spaces: [number, number][] = [
    [0x4000, GAP],
    [FAR, FAR_END],
  ];
  for (const [start, end] of spaces) {
    const snapshot = s.ram.read(start, end - start);
    for (const b of buffers) {
      const from = Math.max(b.addr, start);
      const to = Math.min(b.addr + b.len, end);
      if (from < to) snapshot.fill(GUARD, from - start, to - start);
    }
    const stray = snapshot.findIndex((v) => v !== GUARD);
    expect(stray, `byte written at 0x${(start + stray).toString(16)}`).toBe(-1);
  }
}

/** Records iovecs; refuses once `capacity` are staged (an engine's staging table). */
class Sink implements IovecSink {
  iovs: [number, number, number][] = [];
  constructor(public capacity = Number.POSITIVE_INFINITY) {}
  addIov(buffer: number, offset: number, length: number): boolean {
    if (this.iovs.length >= this.capacity) return false;
    this.iovs.push([buffer, offset, length]);
    return true;
  }
  /** The bytes the staged iovecs cover, concatenated. */
  covered(bytes: readonly Uint8Array[]): Uint8Array {
    const parts = this.iovs.map(([r, o, n]) => bytes[r].subarray(o, o + n));
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

/** xorshift32: deterministic trials, reproducible from the seed in the failure message. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

describe('ChainReader', () => {
  it('reads a blk header straddling three descriptors and a region boundary', () => {
    const s = setup();
    const header = new Uint8Array(16);
    const view = new DataView(header.buffer);
    view.setUint32(0, 0xa1b2c3d4, true);
    view.setUint32(4, 0, true);
    view.setUint32(8, 0x89abcdef, true);
    view.setUint32(12, 0x1234, true); // sector 0x1234_89abcdef > 2^32
    // 3 bytes in region 0, 5 bytes crossing into region 1 (two segments), 8 bytes far away.
    const bufs = readable(s, [0x5000, BOUNDARY - 2, FAR + 0x100], [3, 5, 8], header);
    const chain = popChain(s, [...bufs, ...writable([0x6000], [1])]);
    expect(chain.firstWritable).toBe(4);
    const r = s.reader;
    expect(r.length).toBe(16);
    expect(r.readU32()).toBe(0xa1b2c3d4);
    expect(r.skip(4)).toBe(true);
    expect(r.readU64()).toBe(0x1234 * 2 ** 32 + 0x89abcdef);
    expect(r.available).toBe(0);
    expect(r.readU8()).toBe(-1);
    r.seek(2);
    expect(r.readU16()).toBe(0xa1b2);
    r.seek(1);
    expect(r.readU32()).toBe(view.getUint32(1, true));
    expect(r.position).toBe(5);
  });

  it('returns short counts past the end and never throws for the guest', () => {
    const s = setup();
    const data = pattern(1, 20);
    popChain(s, readable(s, [0x5000, 0x5100], [7, 13], data));
    const r = s.reader;
    const out = new Uint8Array(64).fill(0x55);
    expect(r.read(out, 4, 100)).toBe(20);
    expect(out.subarray(4, 24)).toEqual(data);
    expect(out[3]).toBe(0x55);
    expect(out[24]).toBe(0x55);
    expect(r.read(out, 0, 10)).toBe(0);
    r.seek(18);
    expect(r.readU32()).toBe(-1);
    expect(r.position).toBe(18);
    expect(r.readU64()).toBe(-1);
    expect(r.readU16()).toBe(data[18] | (data[19] << 8));
    expect(r.seek(21)).toBe(false);
    expect(r.position).toBe(20);
    expect(r.skip(-20)).toBe(true);
    // Bounded by the output array too.
    expect(r.read(out, 60, 20)).toBe(4);
    expect(out.subarray(60)).toEqual(data.subarray(0, 4));
    expect(r.read(out, 70, 5)).toBe(0);
    expect(() => r.read(out, -1, 5)).toThrow(RangeError);
    expect(() => r.seek(Number.NaN)).toThrow(RangeError);
  });

  it('reads the whole readable part as the concatenation of its buffers, for random splits', () => {
    const s = setup();
    for (let seed = 1; seed <= 300; seed++) {
      const next = rng(seed);
      const count = 1 + next(8);
      const lens = Array.from({ length: count }, () => (next(4) === 0 ? next(3) : 1 + next(300)));
      const addrs: number[] = [];
      // Start below the region boundary so many chains cross it; some buffers live far away.
      let near = BOUNDARY - next(1200);
      let far = FAR + next(64);
      for (const len of lens) {
        const inFar = next(5) === 0;
        addrs.push(inFar ? far : near);
        if (inFar) far += len + next(8);
        else near += len + next(8);
      }
      const total = lens.reduce((a, b) => a + b, 0);
      const data = pattern(seed, total);
      const bufs = readable(s, addrs, lens, data);
      s.drv.addChain([...bufs, { addr: 0x5000, len: 1, write: true }]);
      expect(s.q.pop(s.chain)).toBe(true);
      const r = s.reader.reset(s.chain, s.bytes);
      const out = new Uint8Array(total + 8);
      let got = 0;
      while (r.available > 0) got += r.read(out, got, 1 + next(100));
      expect(Buffer.from(out.subarray(0, total)).equals(Buffer.from(data)), `seed ${seed}`).toBe(
        true,
      );
      expect(got).toBe(total);
      r.seek(0);
      expect(r.read(out, 0, total + 8), `seed ${seed}`).toBe(total);
      complete(s);
    }
  });

  it('iterates pieces without copying and resumes where a consumer stalled', () => {
    const s = setup();
    const data = pattern(2, 300);
    const bufs = readable(s, [0x5000, BOUNDARY - 50, FAR], [40, 160, 100], data);
    popChain(s, bufs);
    const r = s.reader;
    // An output ring that takes at most 70 bytes per drain of its consumer.
    const sent: number[] = [];
    let room = 70;
    let stalls = 0;
    const offer = (b: Uint8Array, off: number, len: number): number => {
      const n = Math.min(len, room);
      for (let i = 0; i < n; i++) sent.push(b[off + i]);
      room -= n;
      return n;
    };
    let pieces = 0;
    while (r.available > 0) {
      const len = r.peekPiece();
      pieces++;
      const n = offer(r.pieceBytes, r.pieceOffset, len);
      r.skip(n);
      if (n < len) {
        stalls++;
        room = 70; // the consumer made room: resume from r.position
      }
    }
    expect(Uint8Array.from(sent)).toEqual(data);
    expect(stalls).toBe(4);
    expect(pieces).toBeGreaterThan(4);
    expect(r.peekPiece()).toBe(0);
    r.seek(35);
    expect(r.peekPiece(100)).toBe(5);
    expect(r.pieceRegion).toBe(0);
    expect(r.peekPiece(3)).toBe(3);
    r.skip(5);
    expect(r.peekPiece()).toBe(50); // the rest of region 0
    r.skip(50);
    expect(r.peekPiece()).toBe(110);
    expect(r.pieceRegion).toBe(1);
  });

  it('stages iovecs for a payload after the header, and retries after a full sink', () => {
    const s = setup();
    const data = pattern(3, 16 + 4096);
    const bufs = readable(s, [0x5000, BOUNDARY - 1000, 0x9000], [10, 2000, 2102], data);
    popChain(s, [...bufs, ...writable([0x6000], [1])]);
    const r = s.reader;
    r.seek(16);
    const full = new Sink(2);
    expect(r.stageIovecs(full, 4096)).toBe(-1);
    expect(r.position).toBe(16);
    const sink = new Sink();
    // 6 bytes into the buffer split at the region boundary, then the last buffer.
    expect(r.stageIovecs(sink, 4096)).toBe(3);
    expect(sink.iovs.map((iov) => iov[2])).toEqual([994, 1000, 2102]);
    expect(sink.covered(s.bytes)).toEqual(data.subarray(16));
    expect(r.available).toBe(0);
    expect(r.stageIovecs(sink, 1)).toBe(-1);
    expect(r.stageIovecs(sink, 0)).toBe(0);
  });

  it('reads nothing from an error chain', () => {
    const s = setup();
    const d = 0x5000;
    s.drv.writeDescriptor(60, {
      addr: d,
      len: 8,
      flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
      next: 61,
    });
    s.drv.writeDescriptor(61, { addr: d + 8, len: 8, flags: 0, next: 0 });
    s.drv.publish(60);
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.chain.error).toBe(ChainErrorCode.READ_AFTER_WRITE);
    const r = s.reader.reset(s.chain, s.bytes);
    const w = s.writer.reset(s.chain, s.bytes);
    const out = new Uint8Array(8);
    for (const part of [r, w]) {
      expect(part.length).toBe(0);
      expect(part.available).toBe(0);
      expect(part.peekPiece()).toBe(0);
      expect(part.stageIovecs(new Sink(), 0)).toBe(0);
      expect(part.stageIovecs(new Sink(), 1)).toBe(-1);
      expect(part.seek(1)).toBe(false);
    }
    expect(r.read(out, 0, 8)).toBe(0);
    expect(r.readU8()).toBe(-1);
    expect(w.write(out, 0, 8)).toBe(0);
    expect(w.fill(0, 8)).toBe(0);
    expect(w.writeU8(1)).toBe(false);
    const at: ByteLocation = { region: 7, offset: 7 };
    expect(w.locate(0, at)).toBe(false);
    expect(at.region).toBe(-1);
    expectUntouchedOutside(s, []);
  });

  it('starts over at position 0 when re-pointed at the next chain', () => {
    const s = setup();
    popChain(s, readable(s, [0x5000], [8], pattern(4, 8)));
    s.reader.skip(5);
    complete(s);
    const data = pattern(5, 6);
    popChain(s, readable(s, [0x7000], [6], data));
    expect(s.reader.position).toBe(0);
    expect(s.reader.available).toBe(6);
    const out = new Uint8Array(6);
    expect(s.reader.read(out, 0, 6)).toBe(6);
    expect(out).toEqual(data);
  });
});

describe('ChainWriter', () => {
  it('writes across descriptors and regions and never outside the writable part', () => {
    const s = setup();
    const header = readable(s, [0x5000], [16], pattern(6, 16));
    const out = writable([0x6000, BOUNDARY - 30, FAR + 8], [5, 100, 20]);
    popChain(s, [...header, ...out]);
    const w = s.writer;
    expect(w.length).toBe(125);
    const data = pattern(7, 200);
    expect(w.write(data, 0, 60)).toBe(60);
    expect(w.write(data, 60, 140)).toBe(65);
    expect(w.write(data, 0, 1)).toBe(0);
    expect(w.writeU8(1)).toBe(false);
    expect(gather(s, out)).toEqual(data.subarray(0, 125));
    // The readable part is never a write target.
    expect(s.ram.read(0x5000, 16)).toEqual(pattern(6, 16));
    expectUntouchedOutside(s, [...header, ...out]);
    // Bounded by the source array as well.
    w.seek(0);
    expect(w.write(data, 190, 50)).toBe(10);
    expect(() => w.write(data, 0, -1)).toThrow(RangeError);
  });

  it('writes a u16 straddling two descriptors (net num_buffers) and locates both bytes', () => {
    const s = setup();
    const out = writable([0x6000, 0x7000], [11, 20]);
    popChain(s, out);
    const w = s.writer;
    const lo: ByteLocation = { region: -1, offset: 0 };
    const hi: ByteLocation = { region: -1, offset: 0 };
    expect(w.locate(10, lo)).toBe(true);
    expect(w.locate(11, hi)).toBe(true);
    expect(w.fill(0, 12)).toBe(12);
    w.seek(10);
    expect(w.writeU16(0x1234)).toBe(true);
    expect(w.position).toBe(12);
    expect(s.ram.read(0x6000 + 10, 1)[0]).toBe(0x34);
    expect(s.ram.read(0x7000, 1)[0]).toBe(0x12);
    expect(s.bytes[lo.region][lo.offset]).toBe(0x34);
    expect(s.bytes[hi.region][hi.offset]).toBe(0x12);
    w.seek(30); // one byte left
    expect(w.writeU16(0xffff)).toBe(false);
    expect(w.writeU32(0xffffffff)).toBe(false);
    expect(w.position).toBe(30);
    expect(s.ram.read(0x7000 + 19, 1)[0]).toBe(GUARD);
    w.seek(0);
    expect(w.writeU32(0xdeadbeef)).toBe(true);
    expect(s.ram.read(0x6000, 4)).toEqual(Uint8Array.of(0xef, 0xbe, 0xad, 0xde));
    expectUntouchedOutside(s, out);
  });

  it('locates the status byte as the last writable byte, wherever the driver put it', () => {
    const s = setup();
    const at: ByteLocation = { region: -1, offset: 0 };
    // Its own descriptor, in the far region.
    popChain(s, [
      ...readable(s, [0x5000], [16], pattern(8, 16)),
      ...writable([0x6000, FAR + 3], [512, 1]),
    ]);
    expect(s.writer.locate(s.writer.length - 1, at)).toBe(true);
    expect(at.region).toBe(2);
    s.bytes[at.region][at.offset] = 0x5a;
    expect(s.ram.read(FAR + 3, 1)[0]).toBe(0x5a);
    expect(s.writer.locate(s.writer.length, at)).toBe(false);
    expect(at.region).toBe(-1);
    expect(s.writer.locate(-1, at)).toBe(false);
    complete(s);
    // Sharing a buffer with the data, which ends exactly at the region boundary.
    popChain(s, writable([0x6000, BOUNDARY - 513], [100, 513]));
    expect(s.writer.locate(612, at)).toBe(true);
    expect(at.region).toBe(0);
    s.bytes[at.region][at.offset] = 0xa5;
    expect(s.ram.read(BOUNDARY - 1, 1)[0]).toBe(0xa5);
  });

  it('stages the data iovecs of a blk READ, leaving the status byte out', () => {
    const s = setup();
    const out = writable([0x6000, BOUNDARY - 100], [300, 213]);
    popChain(s, [...readable(s, [0x5000], [16], pattern(9, 16)), ...out]);
    const w = s.writer;
    const sink = new Sink();
    expect(w.stageIovecs(sink, w.length - 1)).toBe(3);
    expect(sink.iovs).toEqual([
      [0, 0x1000 + 0x6000, 300],
      [0, 0x1000 + BOUNDARY - 100, 100],
      [1, 0x40, 112],
    ]);
    expect(w.available).toBe(1);
    expect(w.writeU8(0)).toBe(true);
  });

  it('pads with fill (blk GET_ID) up to the room left', () => {
    const s = setup();
    const out = writable([0x6000, 0x6100], [7, 9]);
    popChain(s, out);
    const w = s.writer;
    const serial = new TextEncoder().encode('abc');
    expect(w.write(serial, 0, serial.length)).toBe(3);
    expect(w.fill(0, 20 - 3)).toBe(13);
    expect(gather(s, out)).toEqual(Uint8Array.of(97, 98, 99, ...new Array(13).fill(0)));
    expectUntouchedOutside(s, out);
  });

  it('writes random chunks into random splits exactly where the driver expects them', () => {
    const s = setup();
    for (let seed = 1; seed <= 200; seed++) {
      const next = rng(seed * 7919);
      const count = 1 + next(6);
      const lens = Array.from({ length: count }, () => 1 + next(200));
      let cursor = BOUNDARY - next(800);
      const addrs = lens.map((len) => {
        const at = cursor;
        cursor += len + 1 + next(4);
        return at;
      });
      const out = writable(addrs, lens);
      popChain(s, out);
      const total = lens.reduce((a, b) => a + b, 0);
      const data = pattern(seed, total + 50);
      const w = s.writer;
      let done = 0;
      while (w.available > 0) done += w.write(data, done, 1 + next(90));
      expect(w.write(data, done, 10)).toBe(0);
      expect(
        Buffer.from(gather(s, out)).equals(Buffer.from(data.subarray(0, total))),
        `seed ${seed}`,
      ).toBe(true);
      expectUntouchedOutside(s, out);
      for (const b of out) s.ram.write(b.addr, new Uint8Array(b.len).fill(GUARD));
      complete(s);
    }
  });
});
