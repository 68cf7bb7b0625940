import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import {
  CACHE_LINE_BYTES,
  PACKET_RING,
  PACKET_RING_HEADER_BYTES,
} from '../../src/locking/layout.js';
import { PacketRing, PacketRingError } from '../../src/net/packet-ring.js';

function frame(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function push(ring: PacketRing, f: Uint8Array): boolean {
  const at = ring.reserve(f.length);
  if (at < 0) return false;
  ring.data.set(f, at);
  ring.commit(f.length);
  return true;
}

function pop(ring: PacketRing): Uint8Array | null {
  const len = ring.peek();
  if (len < 0) return null;
  const out = ring.data.slice(ring.frameOffset, ring.frameOffset + len);
  ring.release();
  return out;
}

/** Cache line of Int32 header slot `slot`. */
function line(slot: number): number {
  return Math.floor((slot * Int32Array.BYTES_PER_ELEMENT) / CACHE_LINE_BYTES);
}

describe('PacketRing layout (src/locking/layout.ts)', () => {
  it('puts producer-written and consumer-written slots on different cache lines', () => {
    // HEAD and DROPS: producer; TAIL: consumer; MAGIC and CAPACITY: written once at create.
    expect(line(PACKET_RING.HEAD)).toBe(line(PACKET_RING.DROPS));
    expect(line(PACKET_RING.TAIL)).not.toBe(line(PACKET_RING.HEAD));
    expect(line(PACKET_RING.MAGIC)).toBe(line(PACKET_RING.CAPACITY));
    const lines = new Set([
      line(PACKET_RING.MAGIC),
      line(PACKET_RING.HEAD),
      line(PACKET_RING.TAIL),
    ]);
    expect(lines.size).toBe(3);
  });

  it('keeps every slot inside the header and the data area cache-line aligned', () => {
    for (const slot of Object.values(PACKET_RING)) {
      expect((slot + 1) * Int32Array.BYTES_PER_ELEMENT).toBeLessThanOrEqual(
        PACKET_RING_HEADER_BYTES,
      );
    }
    expect(PACKET_RING_HEADER_BYTES % CACHE_LINE_BYTES).toBe(0);
    const r = PacketRing.create(4096);
    expect(r.data.byteOffset).toBe(PACKET_RING_HEADER_BYTES);
    expect(r.buffer.byteLength).toBe(PACKET_RING_HEADER_BYTES + 4096);
  });

  it('writes HEAD and DROPS only on the producer side and TAIL only on the consumer side', () => {
    const producer = PacketRing.create(4096);
    const consumer = PacketRing.attach(producer.buffer);
    const header = new Int32Array(producer.buffer, 0, PACKET_RING_HEADER_BYTES / 4);
    const at = producer.reserve(100);
    producer.data.fill(7, at, at + 100);
    producer.commit(100);
    expect(header[PACKET_RING.HEAD]).toBe(104);
    expect(header[PACKET_RING.TAIL]).toBe(0);
    while (producer.reserve(1000) >= 0) producer.commit(1000);
    expect(header[PACKET_RING.DROPS]).toBe(1);
    const headBefore = header[PACKET_RING.HEAD];
    expect(consumer.peek()).toBe(100);
    consumer.release();
    expect(header[PACKET_RING.TAIL]).toBe(104);
    expect(header[PACKET_RING.HEAD]).toBe(headBefore);
    expect(header[PACKET_RING.DROPS]).toBe(1);
  });
});

describe('PacketRing', () => {
  it('validates its capacity and its shared buffer', () => {
    expect(() => PacketRing.create(1000)).toThrow(RangeError);
    expect(() => PacketRing.create(6000)).toThrow(/power of two/);
    expect(() => PacketRing.attach(new SharedArrayBuffer(64))).toThrow(PacketRingError);
    const r = PacketRing.create(4096);
    expect(PacketRing.attach(r.buffer).capacity).toBe(4096);
  });

  it('keeps frames whole and in order across many wrap-arounds', () => {
    const r = PacketRing.create(4096);
    let received = 0;
    let mismatches = 0;
    const check = (got: Uint8Array | null) => {
      if (got === null || !sameBytes(got, frame(got.length, received))) mismatches++;
      received++;
    };
    for (let round = 0; round < 2000; round++) {
      const len = 14 + ((round * 97) % 1000);
      if (!push(r, frame(len, round))) mismatches++;
      if (round % 3 !== 0) check(pop(r));
      while (r.fill > 1000) check(pop(r));
    }
    while (r.fill > 0) check(pop(r));
    expect(mismatches).toBe(0);
    expect(received).toBe(2000);
    expect(r.drops).toBe(0);
  });

  it('drops (and counts) what does not fit, then accepts again once drained', () => {
    const r = PacketRing.create(8192);
    let accepted = 0;
    while (push(r, frame(1500, accepted))) accepted++;
    expect(accepted).toBe(5); // records of 4 + 1500 bytes
    expect(r.drops).toBe(1);
    expect(r.reserve(r.maxFrame + 1)).toBe(-1);
    expect(r.drops).toBe(2);
    expect(pop(r)).toEqual(frame(1500, 0));
    expect(push(r, frame(1500, 9))).toBe(true);
    for (let i = 1; i < 5; i++) expect(pop(r)).toEqual(frame(1500, i));
    expect(pop(r)).toEqual(frame(1500, 9));
    expect(pop(r)).toBeNull();
  });

  it('refuses a commit without a reservation', () => {
    const r = PacketRing.create(4096);
    expect(() => r.commit(10)).toThrow(PacketRingError);
  });

  it('moves frames intact from a producer thread to a consumer thread', async () => {
    const r = PacketRing.create(8192);
    const count = 5000;
    // A producer written from the layout alone (as another language's would be).
    const source = `
      const { workerData } = require('node:worker_threads');
      const { buffer, slots, headerBytes } = workerData;
      const header = new Int32Array(buffer, 0, headerBytes / 4);
      const cap = header[slots.CAPACITY];
      const view = new DataView(buffer, headerBytes, cap);
      const data = new Uint8Array(buffer, headerBytes, cap);
      let head = 0;
      for (let n = 0; n < ${count}; n++) {
        const len = 14 + (n % 1500);
        const rec = 4 + ((len + 3) & ~3);
        for (;;) {
          const used = (head - Atomics.load(header, slots.TAIL)) >>> 0;
          const pos = head & (cap - 1);
          const pad = pos + rec > cap ? cap - pos : 0;
          if (used + pad + rec > cap) continue;
          if (pad) view.setUint32(pos, 0xffffffff, true);
          const at = pad ? 0 : pos;
          for (let i = 0; i < len; i++) data[at + 4 + i] = (n + i) & 0xff;
          view.setUint32(at, len, true);
          head = (head + pad + rec) | 0;
          Atomics.store(header, slots.HEAD, head);
          break;
        }
      }`;
    const worker = new Worker(source, {
      eval: true,
      workerData: { buffer: r.buffer, slots: PACKET_RING, headerBytes: PACKET_RING_HEADER_BYTES },
    });
    let n = 0;
    let bad = 0;
    while (n < count) {
      const len = r.peek();
      if (len < 0) {
        await new Promise((resolve) => setImmediate(resolve));
        continue;
      }
      if (len !== 14 + (n % 1500)) bad++;
      const base = r.frameOffset;
      for (let i = 0; i < len; i += 97) if (r.data[base + i] !== ((n + i) & 0xff)) bad++;
      r.release();
      n++;
    }
    await worker.terminate();
    expect(bad).toBe(0);
    expect(n).toBe(count);
  }, 30_000);
});
