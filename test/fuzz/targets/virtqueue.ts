/**
 * Target `virtqueue`: the split virtqueue (src/virtio/virtqueue.ts), the
 * chain reader and writer (chain.ts) and the drain loop (drain.ts) against a
 * hostile driver, in guarded guest RAM (guarded-ram.ts).
 *
 * A case is a list of driver moves — well-formed chains through the mock
 * driver (test/support/driver-queue.ts), raw descriptors with addresses at
 * region edges, lengths up to 4 GiB and any flags, indirect tables, heads
 * published out of range, avail.idx jumps — and device drains. Each drain
 * pops through drainQueue with a random budget and a handler that may stop
 * early; for every chain it reads the whole readable part through a
 * ChainReader (compared with the segments' bytes) and writes the whole
 * writable part through a ChainWriter (read back through the segments), then
 * completes it.
 *
 * Properties: only QueueBrokenError with a queue code escapes (the ring is
 * then reset, as a front end would); a chain either has an error code and no
 * segments, or segments inside their regions, readable before writable, with
 * consistent counts; every popped chain is completed once and the driver
 * sees each completion; no guard byte changes, and no byte of guest RAM
 * outside the chains' writable buffers and the used ring changes.
 */
import { DescriptorChain } from '../../../src/virtio/descriptor-chain.js';
import { ChainErrorCode, QueueBrokenError, QueueErrorCode } from '../../../src/virtio/errors.js';
import type { GuestMemory } from '../../../src/virtio/guest-memory.js';
import {
  type ChainHandler,
  ChainReader,
  ChainWriter,
  DrainResult,
  drainQueue,
} from '../../../src/virtio/index.js';
import {
  VIRTQ_DESC_F_INDIRECT as INDIRECT,
  VIRTQ_DESC_F_NEXT as NEXT,
  usedRingBytes,
  VIRTQ_DESC_F_WRITE as WRITE,
} from '../../../src/virtio/split-ring.js';
import { SplitVirtqueue } from '../../../src/virtio/virtqueue.js';
import { type DriverBuffer, DriverQueue, type RawDescriptor } from '../../support/driver-queue.js';
import { type AllowedRange, GUARD, GuardedRam } from '../guarded-ram.js';
import { check, FuzzFailure, type FuzzTarget } from '../harness.js';
import type { Prng } from '../prng.js';

const BIG = 64 * 1024 * 1024;
/** r0 and r1 adjacent (buffers cross), r2 after a gap, r3 big for 4 GiB chains (guards only). */
const LAYOUT = [
  { guestPhysAddr: 0x0, size: 0x6000, checked: true },
  { guestPhysAddr: 0x6000, size: 0x2000, checked: true },
  { guestPhysAddr: 0x20000, size: 0x1000, checked: true },
  { guestPhysAddr: 0x1000_0000, size: BIG, checked: false },
];
/** Where the case's indirect tables go: the top of r0 (the rings are at its bottom). */
const TABLES = 0x5000;
/** Bytes a chain's writer writes at most (a 4 GiB chain is written at its ends only). */
const WRITE_CAP = 0x1_0000;

/** One driver or device move. */
export type VqOp =
  | { op: 'chain'; buffers: DriverBuffer[]; indirect: boolean }
  | { op: 'desc'; index: number; d: RawDescriptor }
  | { op: 'table'; slot: number; entries: RawDescriptor[] }
  | { op: 'publish'; head: number }
  | { op: 'availIdx'; idx: number }
  | { op: 'drain'; budget: number; stopAfter: number; notify: boolean };

/** The queue's shape and the moves made on it. */
export interface VqCase {
  size: number;
  eventIdx: boolean;
  indirect: boolean;
  maxSegments: number;
  base: number;
  ops: VqOp[];
}

let guarded: GuardedRam | null = null;
const CHAIN_CODES = new Set<string>(Object.values(ChainErrorCode));
const QUEUE_CODES = new Set<string>(Object.values(QueueErrorCode));

// ── generation ──────────────────────────────────────────────────────────────

function interestingAddr(rng: Prng): number {
  const r = rng.pick(LAYOUT);
  const edge = rng.chance(0.5) ? r.guestPhysAddr : r.guestPhysAddr + r.size;
  switch (rng.below(6)) {
    case 0:
      return edge;
    case 1:
      return Math.max(0, edge - 1 - rng.below(64));
    case 2:
      return rng.u32() * 2 ** 32 + rng.u32();
    case 3:
      return rng.u32();
    default:
      return r.guestPhysAddr + rng.below(Math.min(r.size, 0x2000));
  }
}

function interestingLen(rng: Prng): number {
  return rng.pick([
    0,
    1,
    2,
    8,
    16,
    64,
    0x1000,
    0x2000,
    BIG,
    0xffff_ffff,
    rng.u32(),
    rng.below(512),
  ]);
}

function interestingFlags(rng: Prng): number {
  const common = [0, NEXT, WRITE, NEXT | WRITE, INDIRECT, INDIRECT | NEXT, INDIRECT | WRITE];
  return rng.chance(0.9) ? rng.pick(common) : rng.below(0x10000);
}

function rawDescriptor(rng: Prng, index: number, entries: number): RawDescriptor {
  const next = rng.chance(0.8) ? index + 1 : rng.below(entries + 3);
  return {
    addr: interestingAddr(rng),
    len: interestingLen(rng),
    flags: interestingFlags(rng),
    next: next & 0xffff,
  };
}

/** A buffer inside r0's free part, r1 or r2, or straddling the r0/r1 boundary. */
function goodBuffer(rng: Prng, write: boolean): DriverBuffer {
  const len = rng.pick([1, 2, 3, 8, 16, 17, 100, 512, 1500, rng.range(1, 0x800)]);
  const where = rng.below(4);
  const addr =
    where === 0
      ? 0x3000 + rng.below(0x2000 - Math.min(len, 0x2000))
      : where === 1
        ? 0x6000 - rng.below(Math.min(len, 0x800))
        : where === 2
          ? 0x6000 + rng.below(0x2000 - Math.min(len, 0x1fff))
          : 0x20000 + rng.below(0x1000 - Math.min(len, 0xfff));
  return { addr, len, write };
}

function goodChain(rng: Prng, indirect: boolean): VqOp {
  const readable = rng.below(4);
  const writable = rng.below(4) + (readable === 0 ? 1 : 0);
  const buffers = [
    ...Array.from({ length: readable }, () => goodBuffer(rng, false)),
    ...Array.from({ length: writable }, () => goodBuffer(rng, true)),
  ];
  if (rng.chance(0.05))
    buffers.push({ addr: 0x1000_0000, len: rng.pick([BIG, 0x1_0000]), write: true });
  return { op: 'chain', buffers, indirect: indirect && rng.chance(0.4) };
}

function freshCase(rng: Prng): VqCase {
  const c: VqCase = {
    size: rng.pick([1, 2, 4, 8, 16, 16, 64, 256]),
    eventIdx: rng.chance(0.5),
    indirect: rng.chance(0.7),
    maxSegments: rng.pick([1, 2, 8, 64, 128, 1024]),
    base: rng.chance(0.5) ? 0 : rng.below(0x10000),
    ops: [],
  };
  const moves = rng.range(1, 24);
  for (let i = 0; i < moves; i++) c.ops.push(randomOp(rng, c));
  c.ops.push({ op: 'drain', budget: 0, stopAfter: 0, notify: true });
  return c;
}

function randomOp(rng: Prng, c: VqCase): VqOp {
  const k = rng.below(20);
  if (k < 6) return goodChain(rng, c.indirect);
  if (k < 10)
    return {
      op: 'desc',
      index: rng.below(c.size),
      d: rawDescriptor(rng, rng.below(c.size), c.size),
    };
  if (k < 11) {
    const n = rng.range(1, 8);
    const entries = Array.from({ length: n }, (_, j) => rawDescriptor(rng, j, n));
    return { op: 'table', slot: rng.below(4), entries };
  }
  if (k < 12) {
    // 60+ entries of 64 MiB: more than 4 GiB in one chain.
    const n = rng.range(60, 70);
    const entries = Array.from({ length: n }, (_, j) => ({
      addr: 0x1000_0000,
      len: BIG,
      flags: WRITE | (j === n - 1 ? 0 : NEXT),
      next: j + 1,
    }));
    return { op: 'table', slot: 4, entries };
  }
  if (k < 16)
    return { op: 'publish', head: rng.chance(0.97) ? rng.below(c.size) : rng.below(0x10000) };
  if (k < 17)
    return {
      op: 'availIdx',
      idx: rng.chance(0.5) ? (c.base + rng.below(2 * c.size + 2)) & 0xffff : rng.below(0x10000),
    };
  return {
    op: 'drain',
    budget: rng.pick([0, 1, 2, 5]),
    stopAfter: rng.pick([0, 0, 1, 3]),
    notify: rng.chance(0.5),
  };
}

function mutateCase(rng: Prng, base: VqCase): VqCase {
  const c: VqCase = { ...base, ops: [...base.ops] };
  const steps = rng.range(1, 4);
  for (let s = 0; s < steps; s++) {
    const i = rng.below(c.ops.length);
    switch (rng.below(5)) {
      case 0:
        c.ops.splice(i, 1);
        break;
      case 1:
        c.ops.splice(i, 0, randomOp(rng, c));
        break;
      case 2:
        if (c.ops.length > 0) c.ops.splice(rng.below(c.ops.length), 0, c.ops[i]);
        break;
      case 3:
        c.maxSegments = rng.pick([1, 2, 3, 8, 1024]);
        break;
      default:
        if (c.ops.length > 0) c.ops[i] = randomOp(rng, c);
    }
  }
  c.ops.push({ op: 'drain', budget: 0, stopAfter: 0, notify: true });
  return c;
}

// ── execution ───────────────────────────────────────────────────────────────

/** Checks one chain's shape; returns its error code or 'ok'. */
function checkChain(chain: DescriptorChain, mem: GuestMemory, c: VqCase): string {
  check(chain.head < c.size, `popped head ${chain.head} >= size ${c.size}`);
  check(chain.descriptors >= 1, 'a chain of no descriptors');
  if (chain.error !== null) {
    check(CHAIN_CODES.has(chain.error), `unknown chain error ${chain.error}`);
    check(
      chain.segments === 0 && chain.readableBytes === 0 && chain.writableBytes === 0,
      'a failed chain kept segments',
    );
    return chain.error;
  }
  check(chain.segments <= c.maxSegments, `${chain.segments} segments, limit ${c.maxSegments}`);
  let readable = 0;
  let writable = 0;
  for (let i = 0; i < chain.segments; i++) {
    const r = mem.regions[chain.region[i]];
    check(r !== undefined, `segment ${i} in region ${chain.region[i]}`);
    const off = chain.offset[i];
    const len = chain.length[i];
    check(
      len > 0 && off >= r.mmapOffset && off + len <= r.mmapOffset + r.size,
      `segment ${i} [${off}, +${len}) outside region ${chain.region[i]}`,
    );
    check(chain.writable[i] === (i >= chain.firstWritable ? 1 : 0), `segment ${i} out of order`);
    if (chain.writable[i]) writable += len;
    else readable += len;
  }
  check(
    readable === chain.readableBytes && writable === chain.writableBytes,
    'byte counts differ from the segments',
  );
  check(readable + writable <= 0xffff_ffff, 'chain longer than u32');
  return 'ok';
}

/** Whether any two segments of [first, end) share a byte (a guest may alias its buffers). */
function overlapping(chain: DescriptorChain, first: number, end: number): boolean {
  const order = Array.from({ length: end - first }, (_, i) => first + i);
  order.sort((a, b) => chain.region[a] - chain.region[b] || chain.offset[a] - chain.offset[b]);
  for (let i = 1; i < order.length; i++) {
    const a = order[i - 1];
    const b = order[i];
    if (
      chain.region[a] === chain.region[b] &&
      chain.offset[a] + chain.length[a] > chain.offset[b]
    ) {
      return true;
    }
  }
  return false;
}

const SCRATCH = new Uint8Array(WRITE_CAP);
/** What writers write: byte i is i & 0xff, read from an offset that differs per chain. */
const PATTERN = Uint8Array.from({ length: WRITE_CAP + 256 }, (_, i) => i & 0xff);

class Device implements ChainHandler {
  readonly reader = new ChainReader();
  readonly writer = new ChainWriter();
  readonly scratch = SCRATCH;
  readonly pattern = PATTERN;
  allowed: AllowedRange[] = [];
  completed: number[] = [];
  outcomes = new Set<string>();
  stopAfter = 0;
  handled = 0;

  constructor(
    readonly q: SplitVirtqueue,
    readonly mem: GuestMemory,
    readonly c: VqCase,
  ) {}

  handleChain(chain: DescriptorChain): boolean {
    this.handled++;
    const outcome = checkChain(chain, this.mem, this.c);
    this.outcomes.add(outcome);
    const written = outcome === 'ok' ? this.readAndWrite(chain) : 0;
    this.q.addUsed(chain.head, written);
    this.completed.push(chain.head);
    return this.stopAfter === 0 || this.handled % this.stopAfter !== 0;
  }

  /** Reads the readable part and checks it; writes the writable part and checks it; returns bytes written. */
  private readAndWrite(chain: DescriptorChain): number {
    const r = this.reader.reset(chain, this.mem.bytes);
    const n = Math.min(r.length, WRITE_CAP);
    check(r.read(this.scratch, 0, n) === n, 'reader returned fewer bytes than the chain holds');
    let pos = 0;
    for (let seg = 0; seg < chain.firstWritable && pos < n; seg++) {
      const bytes = this.mem.bytes[chain.region[seg]];
      const at = chain.offset[seg];
      for (let k = 0; k < chain.length[seg] && pos < n; k++, pos++) {
        if (this.scratch[pos] !== bytes[at + k]) {
          throw new FuzzFailure('crash', `reader byte ${pos} differs from its segment`);
        }
      }
    }
    check(r.read(this.scratch, 0, 1) === (r.length > n ? 1 : 0), 'reader read past the end');
    if (r.length >= 8 && r.seek(r.length - 8))
      check(r.readU64() >= 0 && r.readU8() === -1, 'readU64 at the end');
    for (let s = chain.firstWritable; s < chain.segments; s++) {
      this.allowed.push({
        region: chain.region[s],
        offset: chain.offset[s],
        length: chain.length[s],
      });
    }
    return this.write(chain);
  }

  private write(chain: DescriptorChain): number {
    const w = this.writer.reset(chain, this.mem.bytes);
    const total = w.length;
    const n = Math.min(total, WRITE_CAP);
    const seed = (chain.head * 31 + 7) & 0xff;
    check(w.write(this.pattern, seed, n) === n, 'writer wrote fewer bytes than the chain holds');
    if (total >= n + 4) {
      // A huge chain: its last bytes too, through seek and the field writers.
      w.seek(total - 4);
      check(w.writeU16(0x1234) && w.writeU8(0x56) && w.writeU8(0x78), 'field writes at the end');
      check(!w.writeU8(0), 'writer wrote past the end');
    } else if (total === n) {
      check(!w.writeU8(0) && w.write(this.pattern, 0, 1) === 0, 'writer wrote past the end');
    }
    // Read back through the segments, unless writable buffers alias each other.
    if (!overlapping(chain, chain.firstWritable, chain.segments)) {
      let pos = 0;
      for (let seg = chain.firstWritable; seg < chain.segments && pos < n; seg++) {
        const bytes = this.mem.bytes[chain.region[seg]];
        const at = chain.offset[seg];
        for (let k = 0; k < chain.length[seg] && pos < n; k++, pos++) {
          if (bytes[at + k] !== this.pattern[seed + pos]) {
            throw new FuzzFailure('crash', `writable byte ${pos} is not what the writer wrote`);
          }
        }
      }
    }
    return total;
  }
}

function applyDriverOp(op: VqOp, drv: DriverQueue, c: VqCase): void {
  switch (op.op) {
    case 'chain':
      if (drv.numFree >= (op.indirect ? 1 : op.buffers.length))
        drv.addChain(op.buffers, { indirect: op.indirect && c.indirect });
      return;
    case 'desc':
      drv.writeDescriptor(op.index % c.size, op.d);
      return;
    case 'table':
      op.entries.forEach((d, j) => {
        drv.writeDescriptorAt(TABLES + 0x100 * op.slot + 16 * j, d);
      });
      drv.writeDescriptor(drv.availIdx % c.size, {
        addr: TABLES + 0x100 * op.slot,
        len: 16 * op.entries.length,
        flags: INDIRECT,
        next: 0,
      });
      drv.publish(drv.availIdx % c.size);
      return;
    case 'publish':
      drv.publish(op.head);
      return;
    case 'availIdx':
      drv.setAvailIdx(op.idx);
      return;
  }
}

function execute(c: VqCase): string {
  guarded ??= new GuardedRam(LAYOUT);
  const g = guarded;
  g.clear(0xc3);
  const ram = g.ram();
  const mem = ram.toGuestMemory();
  const drv = new DriverQueue(ram, c.size, { eventIdx: c.eventIdx });
  // Each entry of the big table is in r0's table area: let it be (slot 4 spans 0x5400..).
  const config = drv.config({ indirect: c.indirect });
  const usedRange: AllowedRange = {
    region: 0,
    offset: GUARD + drv.usedRing,
    length: usedRingBytes(c.size, true),
  };
  let q = new SplitVirtqueue(mem, config, c.maxSegments);
  const start = (base: number) => {
    drv.startAt(base);
    q.lastAvailIdx = base;
    q.usedIdx = base;
  };
  start(c.base);
  const chain = new DescriptorChain(Math.min(c.maxSegments, 65536));
  const result = new DrainResult();
  const outcomes = new Set<string>();
  for (const op of c.ops) {
    if (op.op !== 'drain') {
      applyDriverOp(op, drv, c);
      continue;
    }
    g.snapshot();
    const dev = new Device(q, mem, c);
    dev.stopAfter = op.stopAfter;
    q.setNotification(op.notify);
    try {
      drainQueue(q, chain, dev, op.budget === 0 ? Number.POSITIVE_INFINITY : op.budget, result);
      check(
        result.popped === dev.handled,
        `drainQueue popped ${result.popped}, handed ${dev.handled}`,
      );
      q.publishUsed();
      q.needsInterrupt();
    } catch (err) {
      if (!(err instanceof QueueBrokenError)) throw err;
      check(QUEUE_CODES.has(err.code), `unknown queue error ${err.code}`);
      outcomes.add(err.code);
      q.publishUsed();
    }
    g.verify([...dev.allowed, usedRange], `drain of ${dev.handled} chains`);
    for (const o of dev.outcomes) outcomes.add(o);
    if (dev.allowed.some((a) => overlaps(a, usedRange))) {
      // The guest had the device write over its own used ring: nothing to compare.
      for (let i = 0; i < 0x10000 && drv.popUsed() !== null; i++);
    } else {
      checkCompletions(drv, dev.completed);
    }
    if ([...outcomes].some((o) => QUEUE_CODES.has(o))) {
      // The device stops a broken ring; the front end resets it.
      q = new SplitVirtqueue(mem, config, c.maxSegments);
      start((drv.availIdx + 1) & 0xffff);
    }
  }
  g.checkGuards('end of case');
  return [...outcomes].sort().join(' ');
}

function overlaps(a: AllowedRange, b: AllowedRange): boolean {
  return a.region === b.region && a.offset < b.offset + b.length && b.offset < a.offset + a.length;
}

/** The driver must find exactly the completed heads in the used ring, in order. */
function checkCompletions(drv: DriverQueue, completed: number[]): void {
  for (const head of completed) {
    const used = drv.popUsed();
    check(
      used !== null && used.id === head,
      () => `used ring has ${JSON.stringify(used)}, the device completed ${head}`,
    );
  }
  check(drv.popUsed() === null, 'a used element nobody completed');
}

/** The virtqueue target. */
export const virtqueueTarget: FuzzTarget<VqCase> = {
  name: 'virtqueue',
  description:
    'split virtqueue + ChainReader/ChainWriter + drainQueue against hostile rings in guarded RAM',
  generate(rng, corpus) {
    if (corpus.length > 0 && rng.chance(0.5)) return mutateCase(rng, rng.pick(corpus));
    return freshCase(rng);
  },
  execute,
  toJson: (c) => c,
  fromJson: (json) => json as VqCase,
};
