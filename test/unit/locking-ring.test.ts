import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import type { LockError } from '../../src/locking/errors.js';
import { RING, RING_HEADER_BYTES } from '../../src/locking/layout.js';
import { SpscByteRing } from '../../src/locking/spsc-ring.js';

/** Workers load dist/: fail with the fix when it is older than the sources. */
function assertBuilt(names: string[]): void {
  for (const name of names) {
    const src = fileURLToPath(new URL(`../../src/locking/${name}.ts`, import.meta.url));
    const out = fileURLToPath(new URL(`../../dist/src/locking/${name}.js`, import.meta.url));
    const built = statSync(out, { throwIfNoEntry: false });
    if (built === undefined || built.mtimeMs < statSync(src).mtimeMs) {
      throw new Error(`dist/src/locking/${name}.js is stale: run npx tsc -p tsconfig.json`);
    }
  }
}

const bytes = (...values: number[]) => Uint8Array.from(values);
const seq = (n: number, from = 0) => Uint8Array.from({ length: n }, (_, i) => (from + i) & 0xff);

function drain(ring: SpscByteRing): number[] {
  const out = new Uint8Array(ring.capacity);
  return [...out.subarray(0, ring.read(out))];
}

describe('SpscByteRing basics', () => {
  it('rejects capacities that are not powers of two in range', () => {
    for (const bad of [0, 3, 12, 1.5, -4, 2 ** 31]) {
      expect(() => SpscByteRing.create(bad)).toThrow(RangeError);
    }
    expect(SpscByteRing.create(1).capacity).toBe(1);
  });

  it('lays out a header then the data area', () => {
    const ring = SpscByteRing.create(64);
    expect(ring.buffer.byteLength).toBe(RING_HEADER_BYTES + 64);
  });

  it('is empty at first: read returns 0, everything is writable', () => {
    const ring = SpscByteRing.create(16);
    expect(ring.readable).toBe(0);
    expect(ring.writable).toBe(16);
    expect(ring.read(new Uint8Array(8))).toBe(0);
    expect(ring.highWater).toBe(0);
  });

  it('fills up: write accepts what fits and then 0, writeAll refuses', () => {
    const ring = SpscByteRing.create(16);
    expect(ring.write(seq(10))).toBe(10);
    expect(ring.write(seq(10, 10))).toBe(6); // partial
    expect(ring.readable).toBe(16);
    expect(ring.writable).toBe(0);
    expect(ring.write(bytes(1))).toBe(0);
    expect(ring.writeAll(bytes(1))).toBe(false);
    expect(ring.writeAll(new Uint8Array(0))).toBe(true); // nothing always fits
    expect(drain(ring)).toEqual([...seq(16)]);
  });

  it('writeAll is all or nothing', () => {
    const ring = SpscByteRing.create(16);
    ring.write(seq(10));
    expect(ring.writeAll(seq(7, 100))).toBe(false);
    expect(ring.readable).toBe(10); // nothing of the refused write went in
    expect(ring.writeAll(seq(6, 100))).toBe(true);
    expect(drain(ring)).toEqual([...seq(10), ...seq(6, 100)]);
  });

  it('honours off and len on both sides and checks them', () => {
    const ring = SpscByteRing.create(16);
    expect(ring.write(seq(10), 3, 4)).toBe(4);
    const dst = new Uint8Array(8);
    expect(ring.read(dst, 2, 3)).toBe(3);
    expect([...dst]).toEqual([0, 0, 3, 4, 5, 0, 0, 0]);
    expect(ring.writeAll(seq(4), 2)).toBe(true); // len defaults to the rest
    expect(drain(ring)).toEqual([6, 2, 3]);
    expect(() => ring.write(seq(4), 2, 3)).toThrow(RangeError);
    expect(() => ring.read(dst, -1)).toThrow(RangeError);
    expect(() => ring.writeAll(seq(4), 0.5)).toThrow(RangeError);
  });

  it('wraps around the data area with every split of a copy', () => {
    const ring = SpscByteRing.create(8);
    const written: number[] = [];
    const got: number[] = [];
    const out = new Uint8Array(8);
    let next = 0;
    for (let round = 0; round < 500; round++) {
      const chunk = seq(1 + (round % 7), next);
      const room = ring.writable;
      const accepted = ring.write(chunk);
      expect(accepted).toBe(Math.min(chunk.length, room));
      written.push(...chunk.subarray(0, accepted));
      next += accepted;
      // Read a varying amount, so the fill level and the split points move.
      const n = ring.read(out, 0, 1 + (round % 5));
      got.push(...out.subarray(0, n));
    }
    got.push(...drain(ring));
    expect(got).toEqual(written);
    expect(got.length).toBeGreaterThan(1000);
  });

  it('wraps around with long copies too (the subarray path)', () => {
    const ring = SpscByteRing.create(256);
    const out = new Uint8Array(256);
    for (let round = 0; round < 50; round++) {
      const chunk = seq(200, round * 7);
      expect(ring.write(chunk)).toBe(200);
      expect(ring.read(out)).toBe(200);
      expect([...out.subarray(0, 200)]).toEqual([...chunk]);
    }
  });

  it('handles the free-running u32 indexes wrapping past 2^32', () => {
    const ring = SpscByteRing.create(16);
    const header = new Int32Array(ring.buffer, 0, RING_HEADER_BYTES / 4);
    // Start both indexes 5 bytes short of 2^32 (stored as int32 -5).
    header[RING.HEAD] = -5;
    header[RING.TAIL] = -5;
    expect(ring.readable).toBe(0);
    expect(ring.write(seq(12))).toBe(12);
    expect(header[RING.HEAD]).toBe(7); // wrapped
    expect(ring.readable).toBe(12);
    expect(ring.writable).toBe(4);
    expect(drain(ring)).toEqual([...seq(12)]);
    expect(ring.readable).toBe(0);
  });

  it('tracks the high-water mark of the fill level', () => {
    const ring = SpscByteRing.create(16);
    ring.write(seq(5));
    drain(ring);
    ring.write(seq(3));
    expect(ring.highWater).toBe(5);
    ring.write(seq(12));
    expect(ring.highWater).toBe(15);
    drain(ring);
    expect(ring.highWater).toBe(15);
    ring.write(seq(40));
    expect(ring.highWater).toBe(16);
  });

  it('attach shares the same ring and refuses foreign buffers', () => {
    const ring = SpscByteRing.create(32);
    const other = SpscByteRing.attach(ring.buffer);
    ring.write(bytes(7, 8, 9));
    expect(other.capacity).toBe(32);
    expect(drain(other)).toEqual([7, 8, 9]);
    expect(ring.readable).toBe(0);
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return (e as LockError).code;
      }
    };
    expect(code(() => SpscByteRing.attach(new SharedArrayBuffer(16)))).toBe('SHM_BAD_LAYOUT');
    expect(code(() => SpscByteRing.attach(new SharedArrayBuffer(RING_HEADER_BYTES + 32)))).toBe(
      'SHM_BAD_LAYOUT',
    );
    const wrongSize = new SharedArrayBuffer(RING_HEADER_BYTES + 64);
    new Uint8Array(wrongSize).set(new Uint8Array(ring.buffer, 0, RING_HEADER_BYTES));
    expect(code(() => SpscByteRing.attach(wrongSize))).toBe('SHM_BAD_LAYOUT');
  });
});

describe('SpscByteRing waiting', () => {
  it('waitReadable resolves at once when data is there, false on timeout', async () => {
    const ring = SpscByteRing.create(16);
    const t0 = performance.now();
    expect(await ring.waitReadable(30)).toBe(false);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(25);
    ring.write(bytes(1));
    expect(await ring.waitReadable(0)).toBe(true);
  });

  it('notifyIfWaiting is a no-op unless the consumer sleeps, then wakes it', async () => {
    const ring = SpscByteRing.create(16);
    expect(ring.notifyIfWaiting()).toBe(false);
    const woken = ring.waitReadable(10_000);
    const header = new Int32Array(ring.buffer, 0, RING_HEADER_BYTES / 4);
    expect(header[RING.CONSUMER_WAITING]).toBe(1);
    ring.write(bytes(1));
    expect(ring.notifyIfWaiting()).toBe(true);
    const t0 = performance.now();
    expect(await woken).toBe(true);
    expect(performance.now() - t0).toBeLessThan(5_000);
    expect(header[RING.CONSUMER_WAITING]).toBe(0);
    expect(ring.notifyIfWaiting()).toBe(false);
  });

  it('refuses a second concurrent waitReadable on one handle', async () => {
    const ring = SpscByteRing.create(16);
    const first = ring.waitReadable(10_000);
    await expect(ring.waitReadable(10)).rejects.toMatchObject({ code: 'RING_ALREADY_WAITING' });
    ring.write(bytes(1));
    ring.notifyIfWaiting();
    expect(await first).toBe(true);
  });

  it('waitWritable wakes when the consumer frees enough space', async () => {
    const ring = SpscByteRing.create(16);
    ring.write(seq(16));
    expect(await ring.waitWritable(1, 20)).toBe(false);
    expect(ring.notifyWriterIfWaiting()).toBe(false);
    const space = ring.waitWritable(8, 10_000);
    ring.read(new Uint8Array(4));
    expect(ring.notifyWriterIfWaiting()).toBe(true); // woken, re-checks: 4 < 8, sleeps again
    ring.read(new Uint8Array(4));
    ring.notifyWriterIfWaiting();
    expect(await space).toBe(true);
    expect(ring.writable).toBe(8);
    await expect(ring.waitWritable(17)).rejects.toThrow(RangeError);
  });

  it('alwaysNotify turns the fast path off', () => {
    const ring = SpscByteRing.create(16, { alwaysNotify: true });
    expect(ring.notifyIfWaiting()).toBe(true);
    expect(ring.notifyWriterIfWaiting()).toBe(true);
  });
});

type ProducerResult = { sent: number; checksum: number[]; waits: number };
type ConsumerResult = {
  received: number;
  checksum: number[];
  firstMismatch: number;
  sleeps: number;
  extra: number;
};

function run<T>(name: string, data: object): Promise<T> {
  const worker = new Worker(new URL(`../fixtures/${name}.mjs`, import.meta.url), {
    workerData: data,
  });
  return new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => code !== 0 && reject(new Error(`${name} exited ${code}`)));
  });
}

describe('SpscByteRing between two threads', () => {
  const cases = [
    { capacity: 4096, total: 8 << 20, maxChunk: 3000, seed: 0x1234567 },
    { capacity: 64, total: 1 << 20, maxChunk: 100, seed: 0x7654321 },
  ];
  for (const { capacity, total, maxChunk, seed } of cases) {
    it(`moves ${total} bytes in order through a ${capacity}-byte ring`, async () => {
      assertBuilt(['spsc-ring', 'layout', 'errors', 'index']);
      const ring = SpscByteRing.create(capacity);
      const data = { buffer: ring.buffer, total, seed, maxChunk };
      const [producer, consumer] = await Promise.all([
        run<ProducerResult>('ring-producer', data),
        run<ConsumerResult>('ring-consumer', data),
      ]);
      expect(producer.sent).toBe(total);
      expect(consumer.received).toBe(total);
      expect(consumer.firstMismatch).toBe(-1);
      expect(consumer.checksum).toEqual(producer.checksum);
      expect(consumer.extra).toBe(0);
      expect(ring.readable).toBe(0);
      expect(ring.highWater).toBeGreaterThan(0);
      expect(ring.highWater).toBeLessThanOrEqual(capacity);
      // Chunks larger than the ring cannot go in at once: the producer must have waited.
      if (maxChunk > capacity) expect(producer.waits).toBeGreaterThan(0);
    });
  }
});
