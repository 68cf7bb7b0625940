/**
 * Target `blk`: the virtio-blk device model's request parsing
 * (src/devices/blk/device.ts) over an in-memory IoEngine.
 *
 * Requests are built from their byte stream — header (every type, sectors at
 * and past the capacity), data (whole sectors or not), discard and
 * write-zeroes segments (bad sizes, flags, counts) — and cut into buffers at
 * random places (headers straddling descriptors and memory regions), with a
 * status byte, none, or a long writable tail; raw hostile descriptors are
 * mixed in. The engine completes at once or when the case says, and may fail
 * an operation.
 *
 * Properties (besides those of device-rig.ts): kick never throws; the engine
 * is only asked for iovecs inside guest regions and for file ranges inside
 * the image; a READ only into device-writable buffers (the out-of-region
 * check sees any other write); once every operation completed, nothing is in
 * flight and every popped chain is completed; afterwards, on a fresh ring, a
 * READ returns the image's bytes with status OK.
 */
import { BlkRequestType, BlkStatus, SECTOR_SIZE } from '../../../src/devices/blk/config.js';
import { BlkDevice } from '../../../src/devices/blk/device.js';
import { BLK_STAT_NAMES } from '../../../src/devices/blk/stats.js';
import { type IoCompletion, type IoEngine, IoOp, type IoOpCode } from '../../../src/io/engine.js';
import { StatCounters } from '../../../src/locking/index.js';
import {
  type ChainSpec,
  chainOf,
  type RawSpec,
  Rig,
  rawDescriptor,
  writableParts,
} from '../device-rig.js';
import { check, type FuzzTarget, fromHex, toHex } from '../harness.js';
import type { Prng } from '../prng.js';

const IMAGE = 64 * 1024;
const CAPACITY_SECTORS = IMAGE / SECTOR_SIZE;

/** An engine over a byte array that checks what the device asks of it. */
class CheckingEngine implements IoEngine {
  readonly name = 'sync' as const;
  readonly direct = false;
  readonly alignment = 1;
  readonly image = new Uint8Array(IMAGE);
  inFlight = 0;
  private buffers: Uint8Array[] = [];
  private bounds: { from: number; to: number }[] = [];
  private iovs: number[] = [];
  private ops: number[] = [];
  private done: number[] = [];
  private handler: IoCompletion = () => {};
  private batchDone: () => void = () => {};

  constructor(
    private readonly maxIovs: number,
    private readonly depth: number,
    readonly syncComplete: boolean,
    public failEvery: number,
  ) {
    for (let i = 0; i < IMAGE; i++) this.image[i] = (i * 7 + (i >> 9)) & 0xff;
  }

  get sizeBytes(): number {
    return IMAGE;
  }

  get stagedIovs(): number {
    return this.iovs.length / 3;
  }

  /** Where each region's bytes lie in its buffer (set by the target). */
  setBounds(bounds: { from: number; to: number }[]): void {
    this.bounds = bounds;
  }

  setBuffers(buffers: SharedArrayBuffer[]): void {
    this.buffers = buffers.map((b) => new Uint8Array(b));
  }

  addIov(buffer: number, offset: number, length: number): boolean {
    const b = this.bounds[buffer];
    check(b !== undefined && length > 0, `iovec in buffer ${buffer} of ${length} bytes`);
    check(
      offset >= b.from && offset + length <= b.to,
      `iovec [${offset}, +${length}) outside region ${buffer}`,
    );
    if (this.stagedIovs >= this.maxIovs) return false;
    this.iovs.push(buffer, offset, length);
    return true;
  }

  queueReadWrite(op: IoOpCode, at: number, first: number, count: number, ud: number): boolean {
    check(op === IoOp.READ || op === IoOp.WRITE, `queueReadWrite op ${op}`);
    check(
      first >= 0 && first + count <= this.stagedIovs,
      `iovecs ${first}+${count} of ${this.stagedIovs} staged`,
    );
    if (this.ops.length / 5 + this.inFlight >= this.depth) return false;
    let total = 0;
    for (let i = first; i < first + count; i++) total += this.iovs[3 * i + 2];
    check(
      at >= 0 && at % SECTOR_SIZE === 0 && at + total <= IMAGE,
      `${op === IoOp.READ ? 'read' : 'write'} of ${total} at ${at} outside the image`,
    );
    this.ops.push(op, at, first, count, ud);
    return true;
  }

  queueSlowOp(op: IoOpCode, at: number, length: number, userData: number): void {
    check(op === IoOp.FLUSH || op === IoOp.DISCARD || op === IoOp.WRITE_ZEROES, `slow op ${op}`);
    check(
      at >= 0 && length >= 0 && at + length <= IMAGE,
      `slow op ${op} [${at}, +${length}) outside the image`,
    );
    this.inFlight++;
    this.done.push(userData, this.fails() ? -5 : 0);
  }

  submit(): void {
    for (let o = 0; o < this.ops.length; o += 5) {
      const [op, at, first, count, ud] = this.ops.slice(o, o + 5);
      let pos = at;
      for (let i = first; i < first + count; i++) {
        const [b, off, len] = this.iovs.slice(3 * i, 3 * i + 3);
        const guest = this.buffers[b];
        if (op === IoOp.WRITE) this.image.set(guest.subarray(off, off + len), pos);
        else guest.set(this.image.subarray(pos, pos + len), off);
        pos += len;
      }
      this.inFlight++;
      this.done.push(ud, this.fails() ? -5 : pos - at);
    }
    this.ops = [];
    this.iovs = [];
    if (this.syncComplete) this.complete();
  }

  private count = 0;
  private fails(): boolean {
    return this.failEvery > 0 && ++this.count % this.failEvery === 0;
  }

  complete(): number {
    const done = this.done;
    this.done = [];
    for (let i = 0; i < done.length; i += 2) {
      this.inFlight--;
      this.handler(done[i], done[i + 1]);
    }
    if (done.length > 0) this.batchDone();
    return done.length / 2;
  }

  onComplete(handler: IoCompletion, batchDone: () => void): void {
    this.handler = handler;
    this.batchDone = batchDone;
  }

  close(): void {}
}

type BlkOp =
  | { op: 'chain'; c: ChainSpec }
  | { op: 'raw'; r: RawSpec }
  | { op: 'kick' }
  | { op: 'complete' };

/** The engine's shape and the moves of one case. */
export interface BlkCase {
  queueSize: number;
  eventIdx: boolean;
  maxIovs: number;
  depth: number;
  syncComplete: boolean;
  failEvery: number;
  readonly: boolean;
  ops: BlkOp[];
}

function header(type: number, sector: number, reserved = 0): Uint8Array {
  const h = new DataView(new ArrayBuffer(16));
  h.setUint32(0, type, true);
  h.setUint32(4, reserved, true);
  h.setUint32(8, sector % 2 ** 32, true);
  h.setUint32(12, Math.floor(sector / 2 ** 32) % 2 ** 32, true);
  return new Uint8Array(h.buffer);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function sector(rng: Prng): number {
  return rng.pick([
    0,
    1,
    7,
    CAPACITY_SECTORS - 8,
    CAPACITY_SECTORS - 1,
    CAPACITY_SECTORS,
    CAPACITY_SECTORS + 1,
    2 ** 32,
    2 ** 53 / 512,
    2 ** 63 / 512,
    rng.below(CAPACITY_SECTORS),
  ]);
}

function segment(rng: Prng): Uint8Array {
  const s = new DataView(new ArrayBuffer(16));
  const at = sector(rng);
  s.setUint32(0, at % 2 ** 32, true);
  s.setUint32(4, Math.floor(at / 2 ** 32) % 2 ** 32, true);
  s.setUint32(8, rng.pick([0, 1, 8, CAPACITY_SECTORS, 2 ** 21, 2 ** 21 + 1, 0xffff_ffff]), true);
  s.setUint32(12, rng.pick([0, 0, 1, 2, 0xffff_ffff]), true);
  return new Uint8Array(s.buffer);
}

function request(rng: Prng, queueSize: number): BlkOp {
  if (rng.chance(0.12)) return { op: 'raw', r: rawDescriptor(rng, 0, queueSize) };
  const type = rng.pick([
    BlkRequestType.IN,
    BlkRequestType.IN,
    BlkRequestType.OUT,
    BlkRequestType.OUT,
    BlkRequestType.FLUSH,
    BlkRequestType.GET_ID,
    BlkRequestType.DISCARD,
    BlkRequestType.WRITE_ZEROES,
    rng.below(32),
    rng.u32(),
  ]);
  const dataLen = rng.pick([0, 512, 1024, 4096, 511, 513, 1, rng.below(3000)]);
  let readable = header(type, sector(rng), rng.chance(0.9) ? 0 : rng.u32());
  let writable = 1;
  if (type === BlkRequestType.OUT) readable = concat(readable, rng.bytes(dataLen));
  else if (type === BlkRequestType.IN) writable = dataLen + 1;
  else if (type === BlkRequestType.GET_ID) writable = rng.pick([21, 1, 2, 20, 64]);
  else if (type === BlkRequestType.DISCARD || type === BlkRequestType.WRITE_ZEROES) {
    const n = rng.pick([1, 1, 1, 2, 0]);
    readable = concat(readable, ...Array.from({ length: n }, () => segment(rng)));
    if (rng.chance(0.1)) readable = readable.subarray(0, readable.length - rng.range(1, 15));
  }
  // Hostile shapes: a short header, no status byte, a writable part far too long.
  if (rng.chance(0.08)) readable = readable.subarray(0, rng.below(16));
  if (rng.chance(0.05)) writable = 0;
  if (rng.chance(0.05)) writable += rng.pick([1, 511, 0x4000]);
  return { op: 'chain', c: chainOf(rng, 0, readable, writableParts(rng, writable)) };
}

function freshCase(rng: Prng): BlkCase {
  const c: BlkCase = {
    queueSize: rng.pick([4, 16, 64]),
    eventIdx: rng.chance(0.5),
    maxIovs: rng.pick([1, 2, 4, 64, 1024]),
    // At least one op per request slot, as the daemon sizes it (blk/open.ts: queues x queue
    // size): with less, BlkDevice retries a refused op forever (see bench/results/fuzz.md).
    depth: 0,
    syncComplete: rng.chance(0.4),
    failEvery: rng.pick([0, 0, 0, 3, 7]),
    readonly: rng.chance(0.1),
    ops: [],
  };
  c.depth = rng.pick([c.queueSize, 2 * c.queueSize, 256]);
  const n = rng.range(1, 20);
  for (let i = 0; i < n; i++) {
    c.ops.push(
      rng.chance(0.75)
        ? request(rng, c.queueSize)
        : rng.chance(0.6)
          ? { op: 'kick' }
          : { op: 'complete' },
    );
  }
  return c;
}

function mutateCase(rng: Prng, base: BlkCase): BlkCase {
  const c = { ...base, ops: [...base.ops] };
  for (let s = rng.range(1, 3); s > 0; s--) {
    const i = rng.below(c.ops.length + 1);
    const k = rng.below(4);
    if (k === 0 && c.ops.length > 0) c.ops.splice(i, 1);
    else if (k === 1) c.ops.splice(i, 0, request(rng, c.queueSize));
    else if (k === 2) c.ops.splice(i, 0, rng.chance(0.5) ? { op: 'kick' } : { op: 'complete' });
    else c.maxIovs = rng.pick([1, 2, 3, 1024]);
  }
  return c;
}

function execute(c: BlkCase): string {
  const engine = new CheckingEngine(c.maxIovs, c.depth, c.syncComplete, c.failEvery);
  const stats = StatCounters.create(BLK_STAT_NAMES);
  const warnings = new Set<string>();
  const device = new BlkDevice({
    engine,
    geometry: { imageBytes: IMAGE, blockSize: 512, numQueues: 1, segMax: 30, readonly: c.readonly },
    serial: 'fuzz-serial',
    queueSize: c.queueSize,
    stats,
    warn: (m) => warnings.add(m.split(':')[0]),
  });
  const rig = new Rig(device, c.queueSize, c.eventIdx);
  engine.setBounds(
    rig.memory.regions.map((r) => ({ from: r.mmapOffset, to: r.mmapOffset + r.size })),
  );
  const step = (what: string, fn: () => void) => {
    rig.begin();
    fn();
    rig.verify(what);
  };
  for (const op of c.ops) {
    if (op.op === 'chain') rig.add(op.c);
    else if (op.op === 'raw') rig.raw(op.r);
    else if (op.op === 'kick') step('kick', () => device.kick(0));
    else step('completions', () => engine.complete());
  }
  step('final kick', () => device.kick(0));
  for (let i = 0; i < 64 && (engine.inFlight > 0 || device.requestsInFlight > 0); i++) {
    step('completions', () => engine.complete());
    step('kick', () => device.kick(0));
  }
  check(device.requestsInFlight === 0, `${device.requestsInFlight} requests still in flight`);
  const broken = rig.vrings[0].broken;
  check(
    broken || rig.queues[0].outstanding === 0,
    `${rig.queues[0].outstanding} popped chains never completed`,
  );
  rig.reap();
  rig.restart(0);
  engine.failEvery = 0;
  serveOneRead(rig, device, engine);
  const snapshot = stats.snapshot();
  const counted = Object.entries(snapshot)
    .filter(([, v]) => v > 0)
    .map(([k]) => k);
  return [...counted, ...warnings, broken ? 'broken' : ''].sort().join(' ');
}

/** On a fresh ring: READ of sector 8, 1 KiB, must return the image's bytes and status OK. */
function serveOneRead(rig: Rig, device: BlkDevice, engine: CheckingEngine): void {
  const drv = rig.drivers[0];
  const h = rig.ram.alloc(16, 8);
  const data = rig.ram.alloc(1024, 8);
  const status = rig.ram.alloc(1, 1);
  rig.ram.write(h, header(BlkRequestType.IN, 8));
  rig.ram.write(status, Uint8Array.of(0xee));
  drv.addChain([
    { addr: h, len: 16, write: false },
    { addr: data, len: 1024, write: true },
    { addr: status, len: 1, write: true },
  ]);
  device.kick(0);
  for (let i = 0; i < 4 && engine.inFlight > 0; i++) engine.complete();
  const used = drv.popUsed();
  check(
    used !== null && used.len === 1025,
    `the device no longer serves a valid READ (used ${JSON.stringify(used)})`,
  );
  const result = rig.ram.read(status, 1)[0];
  check(result === BlkStatus.OK, `a valid READ ended with status ${result}`);
  const got = rig.ram.read(data, 1024);
  check(
    Buffer.compare(got, engine.image.subarray(8 * 512, 8 * 512 + 1024)) === 0,
    'a valid READ returned other bytes',
  );
}

/** The blk target. */
export const blkTarget: FuzzTarget<BlkCase> = {
  name: 'blk',
  description:
    'virtio-blk request parsing: hostile headers, data, discard segments, status bytes; in-memory engine',
  generate: (rng, corpus) =>
    corpus.length > 0 && rng.chance(0.5) ? mutateCase(rng, rng.pick(corpus)) : freshCase(rng),
  execute,
  toJson: (c) => ({
    ...c,
    ops: c.ops.map((o) => (o.op === 'chain' ? { ...o, c: { ...o.c, data: toHex(o.c.data) } } : o)),
  }),
  fromJson(json) {
    const j = json as BlkCase;
    return {
      ...j,
      ops: j.ops.map((o) =>
        o.op === 'chain'
          ? { ...o, c: { ...o.c, data: fromHex(o.c.data as unknown as string) } }
          : o,
      ),
    };
  },
};
