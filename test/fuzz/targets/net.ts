/**
 * Target `net`: the virtio-net device model (src/devices/net/device.ts) with
 * one queue pair and the control queue, over a fake NetBackendPort.
 *
 * Transmit chains carry a virtio_net_hdr and a frame of any length (around
 * MIN_FRAME and MAX_FRAME, and far past), header flags and gso_type set or
 * not, cut anywhere; receive buffers of every size (smaller than the header,
 * split, straddling regions) meet frames the port holds; control commands
 * carry every class and command with payloads of the wrong size, MAC tables
 * whose counts lie, and no room for the ack. Raw hostile descriptors are
 * mixed in on all three queues.
 *
 * Properties (besides those of device-rig.ts): kick and doorbell never throw;
 * every frame the port gets is a transmitted chain's bytes after its header,
 * of a length the device accepts; no transmit or control chain is left
 * uncompleted; afterwards, on fresh rings, a valid frame is forwarded intact
 * and a frame from the port is delivered with its header (num_buffers 1).
 */
import { MAX_FRAME, NET_HDR_SIZE } from '../../../src/devices/net/config.js';
import { NetDevice } from '../../../src/devices/net/device.js';
import { StatCounters } from '../../../src/locking/index.js';
import type { NetBackendPort } from '../../../src/net/backend-port.js';
import { NET_STAT_NAMES } from '../../../src/net/port-stats.js';
import { ChainReader, type DescriptorChain } from '../../../src/virtio/index.js';
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

const RX = 0;
const TX = 1;
const CTRL = 2;

/**
 * A port that records what it is given and hands out frames the case queued.
 * Frames of a batch get consecutive places in `txBytes` and are read back at
 * endBatch (the device copies them natively once per batch, before it).
 */
class FakePort implements NetBackendPort {
  readonly txBytes = new Uint8Array(1 << 20);
  txOffset = 16;
  readonly rxBytes = new Uint8Array(1 << 20);
  /** Where the peeked frame is: frames of a batch get consecutive places (copied out at its end). */
  rxOffset = 0;
  readonly frameViews: readonly Uint8Array[] = [this.txBytes, this.rxBytes];
  readonly rxView = 1;
  /** Frames travel bare here (the device negotiates no offload in this target). */
  readonly rxHeader = -1;
  readonly maxFrame = 1 << 16;
  readonly stallDrops = 0;
  readonly holds = 0;
  reservations = 0;
  readonly sent: Uint8Array[] = [];
  readonly waiting: Uint8Array[] = [];
  private reserved = -1;
  private readonly committed: number[] = [];
  private inBatch = false;
  refuse = false;

  beginBatch(): void {
    this.inBatch = true;
    this.txOffset = 16;
    this.rxOffset = 0;
  }

  reserve(addresses: Uint8Array, offset: number, length: number): number {
    check(this.inBatch, 'reserve outside a batch');
    check(offset >= 0 && offset + 12 <= addresses.length, 'reserve: addresses out of range');
    check(
      length > 0 && this.txOffset + length <= this.txBytes.length,
      `reserve of ${length} bytes`,
    );
    this.reserved = this.refuse ? -1 : length;
    this.reservations = this.refuse ? 0 : 1;
    return this.reservations;
  }

  reservedView(i: number): number {
    check(i === 0 && this.reserved >= 0, `reservedView(${i})`);
    return 0;
  }

  reservedOffset(i: number): number {
    check(i === 0 && this.reserved >= 0, `reservedOffset(${i})`);
    return this.txOffset;
  }

  commit(): void {
    if (this.reserved < 0) return;
    this.committed.push(this.txOffset, this.reserved);
    this.txOffset += this.reserved;
    this.reserved = -1;
    this.reservations = 0;
  }

  commitWritten(): void {
    this.commit();
  }

  holdDeadline(): number {
    return -1;
  }

  peek(): number {
    check(this.inBatch, 'peek outside a batch');
    const f = this.waiting[0];
    if (f === undefined) return -1;
    if (this.rxOffset + f.length > this.rxBytes.length) return -1; // the rest next batch
    this.rxBytes.set(f, this.rxOffset);
    return f.length;
  }

  release(): void {
    check(this.waiting.length > 0, 'release without a frame');
    this.rxOffset += (this.waiting.shift() as Uint8Array).length;
  }

  endBatch(): void {
    this.inBatch = false;
    const c = this.committed;
    for (let i = 0; i < c.length; i += 2) this.sent.push(this.txBytes.slice(c[i], c[i] + c[i + 1]));
    c.length = 0;
  }
}

type NetOp =
  | { op: 'chain'; c: ChainSpec }
  | { op: 'raw'; r: RawSpec }
  | { op: 'kick'; queue: number }
  | { op: 'frame'; len: number }
  | { op: 'doorbell' };

/** One case: ring shape, port behaviour and moves. */
export interface NetCase {
  queueSize: number;
  eventIdx: boolean;
  refuse: boolean;
  ops: NetOp[];
}

function frame(len: number, dst: number): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (i * 13 + len) & 0xff;
  if (len >= 6) f.set(dst === 0 ? [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] : [2, 0, 0, 0, 0, dst], 0);
  return f;
}

function txChain(rng: Prng): ChainSpec {
  const len = rng.pick([0, 1, 13, 14, 15, 60, 64, 1500, 1514, 1518, 1519, 2000, rng.below(1600)]);
  const hdr = new Uint8Array(NET_HDR_SIZE);
  if (rng.chance(0.1)) hdr[0] = rng.pick([1, 2, 0xff]);
  if (rng.chance(0.1)) hdr[1] = rng.pick([1, 3, 4, 0x80]);
  let data = new Uint8Array(NET_HDR_SIZE + len);
  data.set(hdr);
  data.set(frame(len, rng.below(3)), NET_HDR_SIZE);
  if (rng.chance(0.05)) data = data.subarray(0, rng.below(NET_HDR_SIZE + 1));
  const writable = rng.chance(0.1) ? [rng.pick([1, 64])] : [];
  return chainOf(rng, TX, data, writable);
}

function rxChain(rng: Prng): ChainSpec {
  const len = rng.pick([0, 1, 11, 12, 13, 60, 100, 1526, 1530, 4096, rng.below(2000)]);
  const readable = rng.chance(0.05) ? rng.bytes(rng.range(1, 16)) : new Uint8Array(0);
  return chainOf(rng, RX, readable, writableParts(rng, len));
}

function ctrlChain(rng: Prng): ChainSpec {
  const cls = rng.pick([0, 1, 3, 4, 2, 5, 0xff]);
  const cmd = rng.pick([0, 1, 2, 0xff]);
  let payload: Uint8Array;
  if (cls === 1 && cmd === 0) {
    const uni = rng.pick([0, 1, 2, 64, 65, 0xffff_ffff]);
    const multi = rng.pick([0, 1, 3, 64, 100]);
    const real = Math.min(uni, 4) + Math.min(multi, 4);
    payload = new Uint8Array(8 + 6 * real + rng.pick([0, 0, 1, -1]));
    const dv = new DataView(payload.buffer);
    dv.setUint32(0, uni, true);
    if (4 + 6 * Math.min(uni, 4) + 4 <= payload.length)
      dv.setUint32(4 + 6 * Math.min(uni, 4), multi, true);
  } else {
    payload = rng.bytes(rng.pick([0, 1, 2, 6, 7, 1024, 1025, rng.below(40)]));
  }
  const data = new Uint8Array(2 + payload.length);
  data[0] = cls;
  data[1] = cmd;
  data.set(payload, 2);
  const ack = rng.chance(0.9) ? [1] : rng.chance(0.5) ? [] : [0, 2];
  return chainOf(rng, CTRL, rng.chance(0.05) ? data.subarray(0, 1) : data, ack);
}

function randomOp(rng: Prng, c: NetCase): NetOp {
  const k = rng.below(20);
  if (k < 5) return { op: 'chain', c: txChain(rng) };
  if (k < 9) return { op: 'chain', c: rxChain(rng) };
  if (k < 11) return { op: 'chain', c: ctrlChain(rng) };
  if (k < 12) return { op: 'raw', r: rawDescriptor(rng, rng.below(3), c.queueSize) };
  if (k < 14)
    return { op: 'frame', len: rng.pick([14, 60, 1514, 1518, 3000, rng.range(14, 1600)]) };
  if (k < 15) return { op: 'doorbell' };
  return { op: 'kick', queue: rng.below(3) };
}

function freshCase(rng: Prng): NetCase {
  const c: NetCase = {
    queueSize: rng.pick([4, 16, 64]),
    eventIdx: rng.chance(0.5),
    refuse: rng.chance(0.1),
    ops: [],
  };
  for (let n = rng.range(1, 24); n > 0; n--) c.ops.push(randomOp(rng, c));
  return c;
}

function mutateCase(rng: Prng, base: NetCase): NetCase {
  const c = { ...base, ops: [...base.ops] };
  for (let s = rng.range(1, 3); s > 0; s--) {
    const i = rng.below(c.ops.length + 1);
    if (rng.chance(0.3) && c.ops.length > 0) c.ops.splice(i, 1);
    else c.ops.splice(i, 0, randomOp(rng, c));
  }
  return c;
}

function execute(c: NetCase): string {
  const port = new FakePort();
  port.refuse = c.refuse;
  const stats = StatCounters.create(NET_STAT_NAMES);
  const warnings = new Set<string>();
  const device = new NetDevice({
    queuePairs: 1,
    mac: Uint8Array.of(2, 0, 0, 0, 0, 1),
    queueSize: c.queueSize,
    port,
    stats,
    warn: (m) => warnings.add(m.split(':')[0]),
  });
  const rig = new Rig(device, c.queueSize, c.eventIdx);
  // What each accepted transmit chain carried after its header, in order. A
  // chain whose buffers overlap the rig's rings (a hostile descriptor at
  // guest address 0) is compared by length only: the device copies a batch's
  // frames once, at its end, and meanwhile writes used elements there itself.
  const expected: (Uint8Array | number)[] = [];
  const reader = new ChainReader();
  rig.queues[TX].onPop = (chain: DescriptorChain) => {
    const body = chain.readableBytes - NET_HDR_SIZE;
    if (body < 14 || body > MAX_FRAME) return;
    const all = new Uint8Array(chain.readableBytes);
    reader.reset(chain, rig.memory.bytes).read(all, 0, all.length);
    if (all[0] !== 0 || all[1] !== 0) return;
    expected.push(overlapsRings(rig, chain) ? body : all.subarray(NET_HDR_SIZE));
  };
  const step = (what: string, fn: () => void) => {
    rig.begin();
    fn();
    rig.verify(what);
  };
  for (const op of c.ops) {
    if (op.op === 'chain') rig.add(op.c);
    else if (op.op === 'raw') rig.raw(op.r);
    else if (op.op === 'frame') port.waiting.push(frame(op.len, 1));
    else if (op.op === 'doorbell') step('doorbell', () => device.doorbell());
    else step(`kick ${op.queue}`, () => device.kick(op.queue));
  }
  for (const q of [TX, CTRL, RX]) step(`final kick ${q}`, () => device.kick(q));
  for (const q of [TX, CTRL]) {
    check(
      rig.vrings[q].broken || rig.queues[q].outstanding === 0,
      `queue ${q}: ${rig.queues[q].outstanding} chains never completed`,
    );
  }
  if (!c.refuse) {
    check(
      port.sent.length === expected.length,
      `${expected.length} frames transmitted, the port got ${port.sent.length}`,
    );
    port.sent.forEach((f, i) => {
      const e = expected[i];
      const same = typeof e === 'number' ? f.length === e : Buffer.compare(f, e) === 0;
      check(same, `frame ${i} reached the port changed`);
    });
  }
  serveOneFrame(rig, device, port);
  const counted = Object.entries(stats.snapshot())
    .filter(([, v]) => v > 0)
    .map(([k]) => k);
  return [...counted, ...warnings].sort().join(' ');
}

/** Guest-physical end of the rig's ring area (its buffers start there: device-rig.ts R0_BUFFERS). */
const RING_AREA_END = 0x6000;

/** Whether a readable segment of `chain` lies (partly) in the rig's ring area. */
function overlapsRings(rig: Rig, chain: DescriptorChain): boolean {
  for (let s = 0; s < chain.firstWritable; s++) {
    const r = rig.memory.regions[chain.region[s]];
    const gpa = r.guestPhysAddr + chain.offset[s] - r.mmapOffset;
    if (gpa < RING_AREA_END) return true;
  }
  return false;
}

/** On fresh rings: a valid frame out, a frame in. */
function serveOneFrame(rig: Rig, device: NetDevice, port: FakePort): void {
  rig.reap();
  rig.restart(RX);
  rig.restart(TX);
  port.refuse = false;
  port.waiting.length = 0;
  port.sent.length = 0;
  const out = frame(60, 0);
  const buf = rig.ram.alloc(NET_HDR_SIZE + 60, 2);
  rig.ram.write(buf, new Uint8Array(NET_HDR_SIZE));
  rig.ram.write(buf + NET_HDR_SIZE, out);
  rig.drivers[TX].addChain([{ addr: buf, len: NET_HDR_SIZE + 60, write: false }]);
  device.kick(TX);
  check(
    port.sent.length === 1 && Buffer.compare(port.sent[0], out) === 0,
    'a valid frame was not forwarded',
  );
  const rx = rig.ram.alloc(1526, 2);
  rig.drivers[RX].addChain([{ addr: rx, len: 1526, write: true }]);
  // Broadcast: the case may have left a receive filter and another primary MAC behind.
  const incoming = frame(100, 0);
  port.waiting.push(incoming);
  device.doorbell();
  const used = rig.drivers[RX].popUsed();
  check(
    used !== null && used.len === NET_HDR_SIZE + 100,
    `a frame was not delivered (${JSON.stringify(used)})`,
  );
  const got = rig.ram.read(rx, NET_HDR_SIZE + 100);
  check(got[10] === 1 && got[11] === 0, 'num_buffers is not 1');
  check(Buffer.compare(got.subarray(NET_HDR_SIZE), incoming) === 0, 'a delivered frame changed');
}

const chainJson = (o: NetOp) =>
  o.op === 'chain' ? { ...o, c: { ...o.c, data: toHex(o.c.data) } } : o;

/** The net target. */
export const netTarget: FuzzTarget<NetCase> = {
  name: 'net',
  description:
    'virtio-net: hostile transmit frames, receive buffers and control commands over a fake port',
  generate: (rng, corpus) =>
    corpus.length > 0 && rng.chance(0.5) ? mutateCase(rng, rng.pick(corpus)) : freshCase(rng),
  execute,
  toJson: (c) => ({ ...c, ops: c.ops.map(chainJson) }),
  fromJson(json) {
    const j = json as NetCase;
    const op = (o: NetOp): NetOp =>
      o.op === 'chain' ? { ...o, c: { ...o.c, data: fromHex(o.c.data as unknown as string) } } : o;
    return { ...j, ops: j.ops.map(op) };
  },
};
