/**
 * Target `packed`: the packed virtqueue (src/virtio/packed-virtqueue.ts)
 * with ChainReader / ChainWriter and drainQueue against a hostile driver, in
 * guarded guest RAM (guarded-ram.ts) — the packed twin of `virtqueue`.
 *
 * A case is a list of driver moves — well-formed chains through the packed
 * mock driver (test/support/packed-driver.ts), raw descriptors in any slot
 * with any flags (wrap bits that lie, NEXT runs around the ring), indirect
 * tables, buffer ids out of range or reused, driver event structures with
 * any value — and device drains, whose chains are completed in pop order or
 * reversed (out of order), with the interrupt decision taken after each.
 *
 * Properties: only QueueBrokenError with a queue or packed-queue code
 * escapes (the ring is then reset, as a front end would); a chain either
 * has an error code and no segments, or segments inside their regions,
 * readable before writable, with consistent counts; no guard byte changes,
 * and no byte of guest RAM outside the chains' writable buffers, the
 * descriptor ring and the device area changes; while the driver wrote
 * nothing raw, it sees exactly the completed ids, in completion order.
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
  PACKED_DESC_F_AVAIL as AVAIL,
  EVENT_SUPPRESS_SIZE,
  PACKED_DESC_F_INDIRECT as INDIRECT,
  PACKED_DESC_F_NEXT as NEXT,
  PackedQueueErrorCode,
  packedRingBytes,
  PACKED_DESC_F_USED as USED,
  PACKED_DESC_F_WRITE as WRITE,
} from '../../../src/virtio/packed-ring.js';
import { PackedVirtqueue } from '../../../src/virtio/packed-virtqueue.js';
import type { DriverBuffer } from '../../support/driver-queue.js';
import { type PackedDescriptor, PackedDriverQueue } from '../../support/packed-driver.js';
import { type AllowedRange, GUARD, GuardedRam } from '../guarded-ram.js';
import { check, type FuzzTarget } from '../harness.js';
import type { Prng } from '../prng.js';

const BIG = 64 * 1024 * 1024;
/** r0 and r1 adjacent (buffers cross), r2 after a gap, r3 big (guards only). */
const LAYOUT = [
  { guestPhysAddr: 0x0, size: 0x6000, checked: true },
  { guestPhysAddr: 0x6000, size: 0x2000, checked: true },
  { guestPhysAddr: 0x20000, size: 0x1000, checked: true },
  { guestPhysAddr: 0x1000_0000, size: BIG, checked: false },
];
/** Where the case's indirect tables go: the top of r0 (the rings are at its bottom). */
const TABLES = 0x5000;
/** Bytes a chain's writer writes at most. */
const WRITE_CAP = 0x1_0000;

/** One driver or device move. */
export type PackedOp =
  | { op: 'chain'; buffers: DriverBuffer[]; indirect: boolean }
  | { op: 'slot'; slot: number; d: PackedDescriptor; wrapBits: number }
  | { op: 'table'; slot: number; entries: PackedDescriptor[]; id: number }
  | { op: 'run'; count: number; id: number }
  | { op: 'event'; offWrap: number; flags: number }
  | { op: 'drain'; budget: number; stopAfter: number; notify: boolean; reverse: boolean };

/** The queue's shape and the moves made on it. */
export interface PackedCase {
  size: number;
  eventIdx: boolean;
  indirect: boolean;
  maxSegments: number;
  ops: PackedOp[];
}

let guarded: GuardedRam | null = null;
const CHAIN_CODES = new Set<string>(Object.values(ChainErrorCode));
const QUEUE_CODES = new Set<string>([
  ...Object.values(QueueErrorCode),
  ...Object.values(PackedQueueErrorCode),
]);

// ── generation ──────────────────────────────────────────────────────────────

function interestingAddr(rng: Prng): number {
  const r = rng.pick(LAYOUT);
  const edge = rng.chance(0.5) ? r.guestPhysAddr : r.guestPhysAddr + r.size;
  switch (rng.below(5)) {
    case 0:
      return edge;
    case 1:
      return Math.max(0, edge - 1 - rng.below(64));
    case 2:
      return rng.u32() * 2 ** 32 + rng.u32();
    default:
      return r.guestPhysAddr + rng.below(Math.min(r.size, 0x2000));
  }
}

function interestingLen(rng: Prng): number {
  return rng.pick([0, 1, 8, 16, 32, 0x1000, BIG, 0xffff_ffff, rng.u32(), rng.below(512)]);
}

function interestingFlags(rng: Prng): number {
  const common = [0, NEXT, WRITE, NEXT | WRITE, INDIRECT, INDIRECT | NEXT, INDIRECT | WRITE];
  return rng.chance(0.9) ? rng.pick(common) : rng.below(0x10000) & ~(AVAIL | USED);
}

function rawDescriptor(rng: Prng, size: number): PackedDescriptor {
  return {
    addr: interestingAddr(rng),
    len: interestingLen(rng),
    id: rng.chance(0.9) ? rng.below(size) : rng.below(0x10000),
    flags: interestingFlags(rng),
  };
}

function goodBuffer(rng: Prng, write: boolean): DriverBuffer {
  const len = rng.pick([1, 2, 8, 17, 100, 512, 1500, rng.range(1, 0x800)]);
  const where = rng.below(3);
  const addr =
    where === 0
      ? 0x3000 + rng.below(0x1000)
      : where === 1
        ? 0x6000 - rng.below(Math.min(len, 0x800))
        : 0x20000 + rng.below(0x1000 - Math.min(len, 0xfff));
  return { addr, len, write };
}

function goodChain(rng: Prng, indirect: boolean): PackedOp {
  const readable = rng.below(3);
  const writable = rng.below(3) + (readable === 0 ? 1 : 0);
  const buffers = [
    ...Array.from({ length: readable }, () => goodBuffer(rng, false)),
    ...Array.from({ length: writable }, () => goodBuffer(rng, true)),
  ];
  return { op: 'chain', buffers, indirect: indirect && rng.chance(0.4) };
}

function randomOp(rng: Prng, c: PackedCase): PackedOp {
  const k = rng.below(20);
  if (k < 8) return goodChain(rng, c.indirect);
  if (k < 11)
    return {
      op: 'slot',
      slot: rng.below(c.size),
      d: rawDescriptor(rng, c.size),
      // 0: last lap's bits, 1: this lap's, 2: both set, 3: random.
      wrapBits: rng.below(4),
    };
  if (k < 12) {
    const n = rng.range(1, 8);
    const entries = Array.from({ length: n }, () => rawDescriptor(rng, c.size));
    return { op: 'table', slot: rng.below(4), entries, id: rng.below(c.size + 1) };
  }
  if (k < 13) return { op: 'run', count: rng.range(1, c.size + 2), id: rng.below(c.size) };
  if (k < 14)
    return {
      op: 'event',
      offWrap: rng.chance(0.8) ? rng.below(c.size) | (rng.below(2) << 15) : rng.below(0x10000),
      flags: rng.chance(0.9) ? rng.below(3) : rng.below(0x10000),
    };
  return {
    op: 'drain',
    budget: rng.pick([0, 1, 2, 5]),
    stopAfter: rng.pick([0, 0, 1, 3]),
    notify: rng.chance(0.5),
    reverse: rng.chance(0.5),
  };
}

function freshCase(rng: Prng): PackedCase {
  const c: PackedCase = {
    size: rng.pick([1, 2, 4, 8, 16, 64, 256]),
    eventIdx: rng.chance(0.5),
    indirect: rng.chance(0.7),
    maxSegments: rng.pick([1, 2, 8, 64, 1024]),
    ops: [],
  };
  const moves = rng.range(1, 32);
  for (let i = 0; i < moves; i++) c.ops.push(randomOp(rng, c));
  c.ops.push({ op: 'drain', budget: 0, stopAfter: 0, notify: true, reverse: false });
  return c;
}

function mutateCase(rng: Prng, base: PackedCase): PackedCase {
  const c: PackedCase = { ...base, ops: [...base.ops] };
  const steps = rng.range(1, 4);
  for (let s = 0; s < steps; s++) {
    const i = rng.below(c.ops.length);
    switch (rng.below(4)) {
      case 0:
        c.ops.splice(i, 1);
        break;
      case 1:
        c.ops.splice(i, 0, randomOp(rng, c));
        break;
      case 2:
        c.maxSegments = rng.pick([1, 2, 3, 8, 1024]);
        break;
      default:
        if (c.ops.length > 0) c.ops[i] = randomOp(rng, c);
    }
  }
  c.ops.push({ op: 'drain', budget: 0, stopAfter: 0, notify: true, reverse: false });
  return c;
}

// ── execution ───────────────────────────────────────────────────────────────

function checkChain(chain: DescriptorChain, mem: GuestMemory, c: PackedCase): string {
  check(chain.head < c.size, `popped id ${chain.head} >= size ${c.size}`);
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
    const off = chain.offset[i];
    const len = chain.length[i];
    check(
      r !== undefined && len > 0 && off >= r.mmapOffset && off + len <= r.mmapOffset + r.size,
      `segment ${i} [${off}, +${len}) outside region ${chain.region[i]}`,
    );
    check(chain.writable[i] === (i >= chain.firstWritable ? 1 : 0), `segment ${i} out of order`);
    if (chain.writable[i]) writable += len;
    else readable += len;
  }
  check(readable === chain.readableBytes && writable === chain.writableBytes, 'byte counts');
  return 'ok';
}

const PATTERN = Uint8Array.from({ length: WRITE_CAP + 256 }, (_, i) => i & 0xff);
const SCRATCH = new Uint8Array(WRITE_CAP);

class Device implements ChainHandler {
  readonly reader = new ChainReader();
  readonly writer = new ChainWriter();
  allowed: AllowedRange[] = [];
  popped: { id: number; len: number }[] = [];
  outcomes = new Set<string>();
  stopAfter = 0;
  handled = 0;

  constructor(
    readonly mem: GuestMemory,
    readonly c: PackedCase,
  ) {}

  handleChain(chain: DescriptorChain): boolean {
    this.handled++;
    const outcome = checkChain(chain, this.mem, this.c);
    this.outcomes.add(outcome);
    let written = 0;
    if (outcome === 'ok') {
      const r = this.reader.reset(chain, this.mem.bytes);
      const n = Math.min(r.length, WRITE_CAP);
      check(r.read(SCRATCH, 0, n) === n, 'reader returned fewer bytes than the chain holds');
      for (let s = chain.firstWritable; s < chain.segments; s++)
        this.allowed.push({
          region: chain.region[s],
          offset: chain.offset[s],
          length: chain.length[s],
        });
      const w = this.writer.reset(chain, this.mem.bytes);
      written = Math.min(w.length, WRITE_CAP);
      check(w.write(PATTERN, chain.head & 0xff, written) === written, 'writer wrote fewer bytes');
    }
    this.popped.push({ id: chain.head, len: written });
    return this.stopAfter === 0 || this.handled % this.stopAfter !== 0;
  }
}

/** Applies a driver move; returns true when it wrote the ring raw (the driver's books no longer hold). */
function applyDriverOp(op: PackedOp, drv: PackedDriverQueue, c: PackedCase): boolean {
  const { slot: at, wrap } = drv.availPosition;
  switch (op.op) {
    case 'chain':
      if (drv.numFree >= (op.indirect ? 1 : op.buffers.length))
        try {
          drv.addChain(op.buffers, { indirect: op.indirect && c.indirect });
        } catch (err) {
          // No free id left (ids held by raw chains): the driver just waits.
          if (!(err instanceof RangeError)) throw err;
        }
      return false;
    case 'slot': {
      const bits = [drv.availBits(wrap ^ 1), drv.availBits(wrap), AVAIL | USED, op.d.flags][
        op.wrapBits
      ];
      drv.writeSlot(op.slot % c.size, {
        ...op.d,
        flags: (op.d.flags & ~(AVAIL | USED)) | (bits & (AVAIL | USED)),
      });
      return true;
    }
    case 'table': {
      const gpa = TABLES + 0x100 * op.slot;
      for (const [j, d] of op.entries.entries()) drv.writeDescriptorAt(gpa + 16 * j, d);
      drv.writeSlot(at, {
        addr: gpa,
        len: 16 * op.entries.length,
        id: op.id,
        flags: INDIRECT | drv.availBits(wrap),
      });
      return true;
    }
    case 'run':
      // `count` slots from the driver's position made available with NEXT on all but the last.
      for (let k = op.count - 1; k >= 0; k--) {
        const slot = (at + k) % c.size;
        const w = at + k >= c.size ? wrap ^ 1 : wrap;
        const last = k === op.count - 1;
        drv.writeSlot(slot, {
          addr: 0x3000 + 8 * k,
          len: 8,
          id: op.id,
          flags: (last ? WRITE : NEXT) | drv.availBits(w),
        });
      }
      return true;
    case 'event':
      drv.setDriverEvent(op.offWrap, op.flags);
      return false;
    case 'drain':
      return false;
  }
}

function execute(c: PackedCase): string {
  guarded ??= new GuardedRam(LAYOUT);
  const g = guarded;
  g.clear(0xc3);
  const ram = g.ram();
  const mem = ram.toGuestMemory();
  const drv = new PackedDriverQueue(ram, c.size, { eventIdx: c.eventIdx });
  const config = drv.config({ indirect: c.indirect });
  const ringRange: AllowedRange = {
    region: 0,
    offset: GUARD + drv.descTable,
    length: packedRingBytes(c.size),
  };
  const deviceRange: AllowedRange = {
    region: 0,
    offset: GUARD + drv.usedRing,
    length: EVENT_SUPPRESS_SIZE,
  };
  let q = new PackedVirtqueue(mem, config, c.maxSegments);
  drv.startAt(0);
  let tampered = false;
  const chain = new DescriptorChain(Math.min(c.maxSegments, 65536));
  const result = new DrainResult();
  const outcomes = new Set<string>();
  for (const op of c.ops) {
    if (op.op !== 'drain') {
      if (applyDriverOp(op, drv, c)) tampered = true;
      continue;
    }
    g.snapshot();
    const dev = new Device(mem, c);
    dev.stopAfter = op.stopAfter;
    let broken = false;
    try {
      q.setNotification(op.notify);
      drainQueue(q, chain, dev, op.budget === 0 ? Number.POSITIVE_INFINITY : op.budget, result);
    } catch (err) {
      if (!(err instanceof QueueBrokenError)) throw err;
      check(QUEUE_CODES.has(err.code), `unknown queue error ${err.code}`);
      outcomes.add(err.code);
      broken = true;
    }
    const order = op.reverse ? [...dev.popped].reverse() : dev.popped;
    for (const u of order) q.addUsed(u.id, u.len);
    q.publishUsed();
    outcomes.add(`irq:${q.needsInterrupt()}`);
    g.verify([...dev.allowed, ringRange, deviceRange], `drain of ${dev.handled} chains`);
    for (const o of dev.outcomes) outcomes.add(o);
    const aliased = dev.allowed.some((a) => overlaps(a, ringRange));
    if (!tampered && !aliased) checkCompletions(drv, order);
    if (broken || tampered || aliased) {
      // The device stops a broken ring; the front end resets it (and a tampered one).
      drv.startAt(0);
      q = new PackedVirtqueue(mem, config, c.maxSegments);
      tampered = false;
    }
  }
  g.checkGuards('end of case');
  return [...outcomes].sort().join(' ');
}

function overlaps(a: AllowedRange, b: AllowedRange): boolean {
  return a.region === b.region && a.offset < b.offset + b.length && b.offset < a.offset + a.length;
}

/** The driver must find exactly the completed ids, in completion order. */
function checkCompletions(drv: PackedDriverQueue, completed: { id: number; len: number }[]): void {
  for (const done of completed) {
    const used = drv.popUsed();
    check(
      used !== null && used.id === done.id && used.len === done.len,
      () => `ring has ${JSON.stringify(used)}, the device completed ${JSON.stringify(done)}`,
    );
  }
  check(drv.popUsed() === null, 'a used element nobody completed');
}

/** The packed virtqueue target. */
export const packedVirtqueueTarget: FuzzTarget<PackedCase> = {
  name: 'packed',
  description:
    'packed virtqueue + ChainReader/ChainWriter + drainQueue against hostile rings in guarded RAM',
  generate(rng, corpus) {
    if (corpus.length > 0 && rng.chance(0.5)) return mutateCase(rng, rng.pick(corpus));
    return freshCase(rng);
  },
  execute,
  toJson: (c) => c,
  fromJson: (json) => json as PackedCase,
};
