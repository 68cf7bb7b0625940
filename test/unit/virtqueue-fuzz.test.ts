/**
 * Property tests of the split queue against a hostile guest, driven by a
 * seeded PRNG (reproducible: a failure names its seed). Properties:
 * - pop / pushUsed / pending / needsInterrupt throw nothing but QueueBrokenError
 *   with a QueueErrorCode;
 * - every chain either carries a ChainErrorCode and no segments, or has
 *   segments wholly inside their regions, readable before writable, with
 *   consistent byte counts;
 * - device writes through the segments never reach the guard bytes placed
 *   around every region in its buffer.
 */
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { DescriptorChain } from '../../src/virtio/descriptor-chain.js';
import { ChainErrorCode, QueueBrokenError, QueueErrorCode } from '../../src/virtio/errors.js';
import type { GuestMemory } from '../../src/virtio/guest-memory.js';
import {
  VIRTQ_DESC_F_INDIRECT as INDIRECT,
  VIRTQ_DESC_F_NEXT as NEXT,
  VIRTQ_DESC_F_WRITE as WRITE,
} from '../../src/virtio/split-ring.js';
import { type SplitQueueConfig, SplitVirtqueue } from '../../src/virtio/virtqueue.js';
import { Prng } from '../fuzz/prng.js';
import { DriverQueue, type RawDescriptor } from '../support/driver-queue.js';
import { GuestRam } from '../support/guest-ram.js';

const GUARD = 64;
const GUARD_BYTE = 0xa5;
const BIG = 64 * 1024 * 1024;
/** r0 and r1 adjacent, r2 after a gap, r3 big (lazily allocated) for length overflows. */
const LAYOUT = [
  { guestPhysAddr: 0x0, size: 0x8000 },
  { guestPhysAddr: 0x8000, size: 0x4000 },
  { guestPhysAddr: 0x20000, size: 0x2000 },
  { guestPhysAddr: 0x1000_0000, size: BIG },
];
const QUEUE_SIZE = 16;

/** Guest RAM whose every region sits between guard bytes inside its buffer. */
function guardedRam(): GuestRam {
  const ram = new GuestRam(
    LAYOUT.map((r) => ({
      ...r,
      mmapOffset: GUARD,
      buffer: new SharedArrayBuffer(GUARD + r.size + GUARD),
    })),
  );
  for (const r of ram.regions) {
    new Uint8Array(r.buffer, 0, GUARD).fill(GUARD_BYTE);
    new Uint8Array(r.buffer, GUARD + r.size, GUARD).fill(GUARD_BYTE);
  }
  return ram;
}

function expectGuardsIntact(ram: GuestRam): void {
  for (const r of ram.regions) {
    const before = new Uint8Array(r.buffer, 0, GUARD);
    const after = new Uint8Array(r.buffer, GUARD + r.size, GUARD);
    expect(before.every((b) => b === GUARD_BYTE)).toBe(true);
    expect(after.every((b) => b === GUARD_BYTE)).toBe(true);
  }
}

/** Addresses near every edge of the layout, plus wild ones. */
function interestingAddr(rng: Prng): number {
  const edges = LAYOUT.flatMap((r) => [r.guestPhysAddr, r.guestPhysAddr + r.size]);
  const edge = rng.pick(edges);
  switch (rng.below(6)) {
    case 0:
      return edge;
    case 1:
      return Math.max(0, edge - 1 - rng.below(64));
    case 2:
      return rng.u32() * 2 ** 32 + rng.u32(); // beyond 2^53 most of the time
    case 3:
      return rng.u32();
    default:
      return rng.pick(LAYOUT).guestPhysAddr + rng.below(0x2000);
  }
}

function interestingLen(rng: Prng): number {
  return rng.pick([0, 1, 8, 16, 64, 0x1000, 0x4000, BIG, 0xffff_ffff, rng.u32(), rng.below(512)]);
}

function interestingFlags(rng: Prng): number {
  const common = [0, NEXT, WRITE, NEXT | WRITE, INDIRECT, INDIRECT | NEXT, INDIRECT | WRITE];
  return rng.chance(0.9) ? rng.pick(common) : rng.below(0x10000);
}

function randomDescriptor(rng: Prng, index: number, entries: number): RawDescriptor {
  const next = rng.chance(0.8) ? index + 1 : rng.below(entries + 3);
  return {
    addr: interestingAddr(rng),
    len: interestingLen(rng),
    flags: interestingFlags(rng),
    next: next & 0xffff,
  };
}

/** Writes an indirect table at a random place in r1 and returns a descriptor pointing at it. */
function randomIndirect(rng: Prng, drv: DriverQueue, table: number): RawDescriptor {
  const entries = 1 + rng.below(8);
  for (let j = 0; j < entries; j++)
    drv.writeDescriptorAt(table + 16 * j, randomDescriptor(rng, j, entries));
  const len = rng.chance(0.8) ? entries * 16 : interestingLen(rng);
  return { addr: rng.chance(0.9) ? table : interestingAddr(rng), len, flags: INDIRECT, next: 0 };
}

/** An indirect chain of 64 MiB writable buffers in r3: overflows u32 past 64 entries. */
function hugeIndirect(rng: Prng, drv: DriverQueue, table: number): RawDescriptor {
  const entries = 60 + rng.below(10);
  for (let j = 0; j < entries; j++) {
    const last = j === entries - 1;
    const d = { addr: 0x1000_0000, len: BIG, flags: WRITE | (last ? 0 : NEXT), next: j + 1 };
    drv.writeDescriptorAt(table + 16 * j, d);
  }
  return { addr: table, len: entries * 16, flags: INDIRECT, next: 0 };
}

const CHAIN_CODES = new Set<string>(Object.values(ChainErrorCode));
const QUEUE_CODES = new Set<string>(Object.values(QueueErrorCode));

/** Checks one popped chain against the properties above; returns its error or 'ok'. */
function checkChain(chain: DescriptorChain, mem: GuestMemory, limit: number): string {
  expect(chain.head).toBeLessThan(QUEUE_SIZE);
  expect(chain.descriptors).toBeGreaterThanOrEqual(1);
  if (chain.error !== null) {
    expect(CHAIN_CODES.has(chain.error)).toBe(true);
    expect([chain.segments, chain.readableBytes, chain.writableBytes]).toEqual([0, 0, 0]);
    return chain.error;
  }
  expect(chain.segments).toBeLessThanOrEqual(limit);
  let readable = 0;
  let writable = 0;
  for (let i = 0; i < chain.segments; i++) {
    const r = mem.regions[chain.region[i]];
    expect(r).toBeDefined();
    expect(chain.length[i]).toBeGreaterThan(0);
    expect(chain.offset[i]).toBeGreaterThanOrEqual(r.mmapOffset);
    expect(chain.offset[i] + chain.length[i]).toBeLessThanOrEqual(r.mmapOffset + r.size);
    expect(chain.writable[i]).toBe(i >= chain.firstWritable ? 1 : 0);
    if (chain.writable[i]) writable += chain.length[i];
    else readable += chain.length[i];
  }
  expect([chain.readableBytes, chain.writableBytes]).toEqual([readable, writable]);
  expect(readable + writable).toBeLessThanOrEqual(0xffff_ffff);
  return 'ok';
}

/** What a device does with a chain: write the first and last byte of each writable segment. */
function deviceWrites(chain: DescriptorChain, mem: GuestMemory): void {
  for (let i = chain.firstWritable; i < chain.segments; i++) {
    const bytes = mem.bytes[chain.region[i]];
    bytes[chain.offset[i]] = 0x11;
    bytes[chain.offset[i] + chain.length[i] - 1] = 0x22;
  }
}

interface FuzzOptions {
  seed: number;
  iterations: number;
  indirect: boolean;
  eventIdx: boolean;
  maxSegments: number;
}

function fuzz(options: FuzzOptions): Map<string, number> {
  const rng = new Prng(options.seed);
  const ram = guardedRam();
  const mem = ram.toGuestMemory();
  const drv = new DriverQueue(ram, QUEUE_SIZE, { eventIdx: options.eventIdx });
  const tables = ram.alloc(0x1000, 16); // scratch for indirect tables, in r0 next to the rings
  const config: SplitQueueConfig = drv.config({ indirect: options.indirect });
  const chain = new DescriptorChain(options.maxSegments);
  const seen = new Map<string, number>();
  const count = (code: string) => seen.set(code, (seen.get(code) ?? 0) + 1);
  let q = new SplitVirtqueue(mem, config, options.maxSegments);
  for (let it = 0; it < options.iterations; it++) {
    scribble(rng, drv, tables);
    try {
      drive(rng, q, drv, chain, mem, options.maxSegments, count);
    } catch (error) {
      if (!(error instanceof QueueBrokenError) || !QUEUE_CODES.has(error.code)) throw error;
      count(error.code);
      // The device would stop the queue; the front end resets it.
      q = new SplitVirtqueue(mem, config, options.maxSegments);
      const base = rng.below(0x10000);
      drv.startAt(base);
      q.lastAvailIdx = base;
      q.usedIdx = base;
    }
  }
  expectGuardsIntact(ram);
  return seen;
}

/** The hostile guest's move: rewrite descriptors, tables and the avail ring. */
function scribble(rng: Prng, drv: DriverQueue, tables: number): void {
  const n = 1 + rng.below(QUEUE_SIZE);
  for (let i = 0; i < n; i++) {
    const index = rng.below(QUEUE_SIZE);
    let d = randomDescriptor(rng, index, QUEUE_SIZE);
    if (rng.chance(0.15)) d = randomIndirect(rng, drv, tables + 0x100 * rng.below(4));
    else if (rng.chance(0.03)) d = hugeIndirect(rng, drv, tables + 0x400 + 0x400 * rng.below(2));
    drv.writeDescriptor(index, d);
  }
  const heads = 1 + rng.below(4);
  for (let h = 0; h < heads; h++) {
    drv.publish(
      rng.chance(0.01) ? QUEUE_SIZE + rng.below(0x10000 - QUEUE_SIZE) : rng.below(QUEUE_SIZE),
    );
  }
  if (rng.chance(0.01)) drv.setAvailIdx(rng.below(0x10000));
}

/** The device's move: drain, check, complete, maybe toggle notifications. */
function drive(
  rng: Prng,
  q: SplitVirtqueue,
  drv: DriverQueue,
  chain: DescriptorChain,
  mem: GuestMemory,
  limit: number,
  count: (code: string) => void,
): void {
  if (rng.chance(0.2)) q.setNotification(rng.chance(0.5));
  while (q.pop(chain)) {
    count(checkChain(chain, mem, limit));
    deviceWrites(chain, mem);
    q.addUsed(chain.head, chain.error === null ? chain.writableBytes : 0);
  }
  q.publishUsed();
  q.needsInterrupt();
  while (drv.popUsed() !== null);
}

describe('split queue against random hostile chains', () => {
  const runs: FuzzOptions[] = [
    { seed: 0x5eed0001, iterations: 3000, indirect: true, eventIdx: true, maxSegments: 1024 },
    { seed: 0x5eed0002, iterations: 3000, indirect: true, eventIdx: false, maxSegments: 128 },
    { seed: 0x5eed0003, iterations: 2000, indirect: false, eventIdx: true, maxSegments: 8 },
  ];
  for (const run of runs) {
    it(`throws only named errors and stays inside regions (seed ${run.seed.toString(16)})`, () => {
      const seen = fuzz(run);
      expect(seen.get('ok') ?? 0).toBeGreaterThan(100);
      const expected: string[] = [
        ChainErrorCode.DESC_UNMAPPED,
        ChainErrorCode.CHAIN_TOO_LONG,
        ChainErrorCode.BAD_INDIRECT,
        ChainErrorCode.NEXT_OUT_OF_RANGE,
        ChainErrorCode.READ_AFTER_WRITE,
        QueueErrorCode.AVAIL_AHEAD,
        QueueErrorCode.BAD_HEAD,
      ];
      if (run.indirect) expected.push(ChainErrorCode.NESTED_INDIRECT);
      if (run.indirect && run.maxSegments >= 70) expected.push(ChainErrorCode.LEN_OVERFLOW);
      for (const code of expected) expect(seen.get(code) ?? 0, code).toBeGreaterThan(0);
    });
  }
});

/** A worker that rewrites descriptor memory as fast as it can, as a racing guest would. */
const SCRIBBLER = `
const { workerData } = require('node:worker_threads');
const { buffer, ranges, stop } = workerData;
const bytes = new Uint8Array(buffer);
const flag = new Int32Array(stop);
let x = 0x9e3779b9;
while (Atomics.load(flag, 0) === 0) {
  for (const [from, to] of ranges) {
    for (let i = 0; i < 1024; i++) {
      x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
      const at = from + ((x >>> 0) % (to - from));
      // Mostly small values, so flags, next and lengths often look plausible.
      bytes[at] = (x >>> 8) & ((x & 1) === 0 ? 0x0f : 0xff);
    }
  }
}
`;

describe('split queue against a guest racing on its own descriptors', () => {
  it('throws only named errors while another thread rewrites descriptors', async () => {
    const ram = guardedRam();
    const mem = ram.toGuestMemory();
    const drv = new DriverQueue(ram, QUEUE_SIZE, { eventIdx: true });
    const tables = ram.alloc(0x400, 16);
    const stop = new SharedArrayBuffer(4);
    // Buffer offsets of the descriptor table and of the indirect tables (r0, mmapOffset GUARD).
    const ranges = [
      [GUARD + drv.descTable, GUARD + drv.descTable + 16 * QUEUE_SIZE],
      [GUARD + tables, GUARD + tables + 0x400],
    ];
    const worker = new Worker(SCRIBBLER, {
      eval: true,
      workerData: { buffer: ram.regions[0].buffer, ranges, stop },
    });
    await new Promise((resolve) => worker.once('online', resolve));
    const rng = new Prng(0x7ace);
    const chain = new DescriptorChain(256);
    const q = new SplitVirtqueue(mem, drv.config({ indirect: true }), 256);
    let popped = 0;
    let broken: unknown = null;
    const until = Date.now() + 1000;
    try {
      while (Date.now() < until && broken === null) {
        for (let h = 0; h < 4; h++) {
          const head = rng.below(QUEUE_SIZE);
          if (rng.chance(0.5)) {
            const len = 16 * (1 + rng.below(64));
            drv.writeDescriptor(head, { addr: tables, len, flags: INDIRECT, next: 0 });
          }
          drv.publish(head);
        }
        try {
          while (q.pop(chain)) {
            checkChain(chain, mem, 256);
            deviceWrites(chain, mem);
            q.pushUsed(chain.head, 0);
            popped++;
          }
        } catch (err) {
          // A chain may legitimately name the guest's own avail ring as a
          // writable buffer; the device's write then breaks the ring, and the
          // only acceptable outcome is the named ring-level error.
          if (!(err instanceof QueueBrokenError)) throw err;
          broken = err;
        }
        q.needsInterrupt();
        while (drv.popUsed() !== null);
      }
    } finally {
      Atomics.store(new Int32Array(stop), 0, 1);
      await worker.terminate();
    }
    expectGuardsIntact(ram);
    expect(popped).toBeGreaterThan(broken === null ? 1000 : 0);
  });
});
