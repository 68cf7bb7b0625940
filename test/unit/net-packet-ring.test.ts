import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
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
    const source = `
      const { workerData } = require('node:worker_threads');
      const header = new Int32Array(workerData, 0, 8);
      const cap = header[3];
      const view = new DataView(workerData, 32, cap);
      const data = new Uint8Array(workerData, 32, cap);
      let head = 0;
      for (let n = 0; n < ${count}; n++) {
        const len = 14 + (n % 1500);
        const rec = 4 + ((len + 3) & ~3);
        for (;;) {
          const used = (head - Atomics.load(header, 1)) >>> 0;
          const pos = head & (cap - 1);
          const pad = pos + rec > cap ? cap - pos : 0;
          if (used + pad + rec > cap) continue;
          if (pad) view.setUint32(pos, 0xffffffff, true);
          const at = pad ? 0 : pos;
          for (let i = 0; i < len; i++) data[at + 4 + i] = (n + i) & 0xff;
          view.setUint32(at, len, true);
          head = (head + pad + rec) | 0;
          Atomics.store(header, 0, head);
          break;
        }
      }`;
    const worker = new Worker(source, { eval: true, workerData: r.buffer });
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
