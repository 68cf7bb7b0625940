/**
 * The switch's native frame loop (native/net-burst.cc) against the
 * TypeScript per-frame path it accelerates: the same random scenarios —
 * frames of every length, addresses that teach and flood, headers that ask
 * for work, hostile chains (writable transmit buffers, unmapped and
 * cross-region addresses, split headers, indirect tables, heads out of
 * range), receive buffers of every size and shape — run through two
 * three-port switches, one with the loop and one without, and must leave
 * exactly the same used rings, bytes in guest memory, counters and
 * warnings. So the loop accepts only what the TypeScript path accepts, and
 * does with it exactly what that path does.
 */
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { NetDevice } from '../../src/devices/net/device.js';
import { StatCounters } from '../../src/locking/index.js';
import { native } from '../../src/native.js';
import { NET_STAT_NAMES } from '../../src/net/port-stats.js';
import { createSwitchRings, SwitchPort } from '../../src/net/switch-port.js';
import { DriverQueue } from '../support/driver-queue.js';
import { embed } from '../support/embedded.js';
import { GuestRam } from '../support/guest-ram.js';

const HDR = 12;
const PORTS = 3;
const QUEUE = 64;
const REGION = 1 << 20;
const bells: number[] = [];

afterEach(() => {
  for (const fd of bells.splice(0)) native.close(fd);
});

/** One port of a test switch, with its driver's view. */
interface Port {
  dev: NetDevice;
  sp: SwitchPort;
  rx: DriverQueue;
  tx: DriverQueue;
  ram: GuestRam;
  stats: StatCounters;
  warnings: string[];
  /** Buffers of each posted receive chain, by head. */
  rxBuffers: Map<number, { addr: number; len: number }[]>;
  /** What the driver got back: tx used elements; rx used elements with the bytes written. */
  txUsed: string[];
  rxGot: string[];
}

const mac = (p: number) => [2, 0, 0, 0, 0, 0x10 + p];

function makeSwitch(nativeLoop: boolean, holdMs: number): Port[] {
  const rings = createSwitchRings(PORTS, 16384);
  const doorbells = Array.from({ length: PORTS }, () => native.eventfd(0));
  bells.push(...doorbells);
  return Array.from({ length: PORTS }, (_, port) => {
    const sp = new SwitchPort({
      port,
      outRings: rings[port].map((r) => r?.buffer ?? null),
      inRings: rings.map((row) => row[port]?.buffer ?? null),
      doorbells,
      ageingMs: 60_000,
      macCapacity: 64,
      holdMs,
      nativeLoop,
    });
    // Two adjacent regions: a buffer across their boundary is two segments.
    const ram = new GuestRam([
      { guestPhysAddr: 0, size: REGION },
      { guestPhysAddr: REGION, size: REGION },
    ]);
    const rx = new DriverQueue(ram, QUEUE, { eventIdx: true });
    const tx = new DriverQueue(ram, QUEUE, { eventIdx: true });
    const stats = StatCounters.create(NET_STAT_NAMES);
    const warnings: string[] = [];
    const dev = new NetDevice({
      queuePairs: 1,
      mac: Uint8Array.from(mac(port)),
      queueSize: QUEUE,
      port: sp,
      stats,
      warn: (m) => warnings.push(m),
    });
    const embedded = embed(dev, ram.toGuestMemory());
    embedded.start(0, rx.config({ indirect: true }), QUEUE + 16);
    embedded.start(1, tx.config({ indirect: true }), QUEUE + 16);
    return {
      dev,
      sp,
      rx,
      tx,
      ram,
      stats,
      warnings,
      rxBuffers: new Map(),
      txUsed: [],
      rxGot: [],
    };
  });
}

/** A transmitted frame and how its chain is laid out. */
interface TxOp {
  kind: 'tx';
  port: number;
  dst: number; // 0..2 a port, 3 broadcast, 4 multicast, 5 unknown unicast
  src: number; // 0: the port's own, 1..2 another port's, 3 a random one
  length: number;
  header: number; // 0 bare, 1 NEEDS_CSUM, 2 a GSO type, 3 garbage flags
  parts: number;
  shape: number; // 0 plain, 1 indirect, 2 a writable buffer, 3 unmapped, 4 across regions, 5 zero-length part
  seed: number;
}

interface RxOp {
  kind: 'rx';
  port: number;
  count: number;
  size: number;
  parts: number;
  shape: number; // 0 plain, 1 readable first buffer, 2 indirect, 3 unmapped
}

interface RunOp {
  kind: 'run';
}

interface BadHeadOp {
  kind: 'badHead';
  port: number;
}

type Op = TxOp | RxOp | RunOp | BadHeadOp;

const LENGTHS = [0, 1, 13, 14, 59, 60, 61, 64, 100, 333, 1000, 1514, 1518, 1519, 1600, 3000];
const RX_SIZES = [8, 11, 12, 13, 30, 64, 100, 500, 1530, 2048];

const txOp: fc.Arbitrary<TxOp> = fc.record({
  kind: fc.constant('tx' as const),
  port: fc.integer({ min: 0, max: PORTS - 1 }),
  dst: fc.integer({ min: 0, max: 5 }),
  src: fc.oneof(
    { weight: 6, arbitrary: fc.constant(0) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 }) },
  ),
  length: fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(60, 64, 100, 1514) },
    { weight: 2, arbitrary: fc.constantFrom(...LENGTHS) },
  ),
  header: fc.oneof(
    { weight: 8, arbitrary: fc.constant(0) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 }) },
  ),
  parts: fc.integer({ min: 1, max: 4 }),
  shape: fc.oneof(
    { weight: 8, arbitrary: fc.constant(0) },
    { weight: 2, arbitrary: fc.integer({ min: 1, max: 5 }) },
  ),
  seed: fc.integer({ min: 0, max: 255 }),
});

const rxOp: fc.Arbitrary<RxOp> = fc.record({
  kind: fc.constant('rx' as const),
  port: fc.integer({ min: 0, max: PORTS - 1 }),
  count: fc.integer({ min: 1, max: 8 }),
  size: fc.oneof(
    { weight: 3, arbitrary: fc.constant(1530) },
    { weight: 2, arbitrary: fc.constantFrom(...RX_SIZES) },
  ),
  parts: fc.integer({ min: 1, max: 3 }),
  shape: fc.oneof(
    { weight: 8, arbitrary: fc.constant(0) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 }) },
  ),
});

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 30, arbitrary: txOp },
  { weight: 15, arbitrary: rxOp },
  { weight: 12, arbitrary: fc.constant({ kind: 'run' as const }) },
  // Rare: it breaks the port's transmit queue for the rest of the run.
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('badHead' as const), port: fc.nat(2) }) },
);

function destination(o: TxOp): number[] {
  if (o.dst < PORTS) return mac(o.dst);
  if (o.dst === 3) return [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
  if (o.dst === 4) return [0x01, 0x00, 0x5e, 0, 0, 1];
  return [2, 0, 0, 0, 0x99, 0x99];
}

function source(o: TxOp): number[] {
  if (o.src === 0) return mac(o.port);
  if (o.src < PORTS) return mac((o.port + o.src) % PORTS);
  return [2, 0, 0, 0, 0x77, o.seed];
}

/** The bytes of `o`'s chain: virtio_net_hdr, then the frame. */
function txBytes(o: TxOp): Uint8Array {
  const p = new Uint8Array(HDR + o.length);
  if (o.header === 1) p.set([1, 0, 0, 0, 0, 0, 14 + 20, 0, 16, 0]);
  else if (o.header === 2) p.set([1, 1, 54, 0, 0xa8, 5, 34, 0, 16, 0]);
  else if (o.header === 3) p[0] = 0x80;
  const addrs = [...destination(o), ...source(o)];
  for (let i = 0; i < Math.min(12, o.length); i++) p[HDR + i] = addrs[i];
  for (let i = HDR + 12; i < p.length; i++) p[i] = (i * 7 + o.seed) & 0xff;
  return p;
}

function applyTx(port: Port, o: TxOp): void {
  const p = txBytes(o);
  if (port.tx.numFree < o.parts + 1) return;
  let gpa: number;
  if (o.shape === 4) {
    // Across the boundary of the two regions.
    gpa = REGION - Math.min(p.length, 40);
  } else gpa = port.ram.alloc(Math.max(p.length, 1), 16);
  if (p.length > 0) port.ram.write(gpa, p);
  const step = Math.max(1, Math.ceil(p.length / o.parts));
  const buffers = [];
  for (let off = 0; off < p.length; off += step)
    buffers.push({ addr: gpa + off, len: Math.min(step, p.length - off), write: false });
  if (buffers.length === 0) buffers.push({ addr: gpa, len: 0, write: false });
  if (o.shape === 2) buffers.push({ addr: gpa, len: 16, write: true });
  if (o.shape === 3) buffers[buffers.length - 1].addr = 0x40_0000_0000;
  if (o.shape === 5) buffers.splice(1, 0, { addr: 0x50_0000_0000, len: 0, write: false });
  port.tx.addChain(buffers, { indirect: o.shape === 1 });
}

function applyRx(port: Port, o: RxOp): void {
  for (let k = 0; k < o.count; k++) {
    if (port.rx.numFree < o.parts + 1) return;
    const buffers = [];
    for (let i = 0; i < o.parts; i++) {
      const len = Math.max(1, Math.floor(o.size / o.parts));
      buffers.push({ addr: port.ram.alloc(len, 16), len, write: true });
    }
    if (o.shape === 1) buffers.unshift({ addr: port.ram.alloc(16, 16), len: 16, write: false });
    if (o.shape === 3) buffers[0].addr = 0x40_0000_0000;
    const head = port.rx.addChain(buffers, { indirect: o.shape === 2 });
    port.rxBuffers.set(
      head,
      buffers.filter((b) => b.write),
    );
  }
}

/** Everything the drivers can see: used elements and the bytes the device wrote. */
function collect(ports: Port[]): void {
  for (const port of ports) {
    for (let u = port.tx.popUsed(); u !== null; u = port.tx.popUsed())
      port.txUsed.push(`${u.id}:${u.len}`);
    for (let u = port.rx.popUsed(); u !== null; u = port.rx.popUsed()) {
      let left = u.len;
      const parts: string[] = [];
      for (const b of port.rxBuffers.get(u.id) ?? []) {
        const n = Math.min(left, b.len);
        if (n <= 0) break;
        if (b.addr < 2 * REGION) parts.push(Buffer.from(port.ram.read(b.addr, n)).toString('hex'));
        left -= n;
      }
      port.rxGot.push(`${u.id}:${u.len}:${parts.join('|')}`);
    }
  }
}

function run(ports: Port[]): void {
  for (let round = 0; round < 3; round++) {
    for (const port of ports) port.dev.kick(1);
    for (const port of ports) port.dev.doorbell();
    for (const port of ports) port.dev.kick(0);
  }
  collect(ports);
}

function apply(ports: Port[], o: Op): void {
  if (o.kind === 'tx') applyTx(ports[o.port], o);
  else if (o.kind === 'rx') applyRx(ports[o.port], o);
  else if (o.kind === 'badHead') {
    // A head beyond the queue: the ring is broken, by either path alike.
    ports[o.port].tx.publish(QUEUE + 5);
  } else run(ports);
}

/** What both switches must agree on. */
function observed(ports: Port[]) {
  return ports.map((p) => ({
    tx: p.txUsed,
    rx: p.rxGot,
    stats: Object.fromEntries(NET_STAT_NAMES.map((n, i) => [n, p.stats.get(i)])),
    warnings: p.warnings,
    drops: p.sp.stallDrops,
  }));
}

describe('the native frame loop', () => {
  it('leaves exactly what the TypeScript path leaves, for random and hostile traffic', () => {
    fc.assert(
      fc.property(
        fc.array(op, { minLength: 10, maxLength: 80, size: 'max' }),
        fc.boolean(),
        (ops, hold) => {
          const holdMs = hold ? 60_000 : 0;
          const withLoop = makeSwitch(true, holdMs);
          const without = makeSwitch(false, holdMs);
          try {
            for (const o of [...ops, { kind: 'run' as const }]) {
              apply(withLoop, o);
              apply(without, o);
            }
            expect(observed(withLoop)).toEqual(observed(without));
          } finally {
            for (const p of [...withLoop, ...without]) void p.dev.close();
            for (const fd of bells.splice(0)) native.close(fd);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('moves most bare frames natively: a batch of 32 frames takes no per-frame TypeScript', () => {
    const ports = makeSwitch(true, 0);
    const [a, b] = ports;
    applyRx(b, { kind: 'rx', port: 1, count: 40, size: 1530, parts: 1, shape: 0 });
    // The first frame teaches the switch (a TypeScript turn per batch); the rest are native.
    for (let i = 0; i < 32; i++)
      applyTx(a, {
        kind: 'tx',
        port: 0,
        dst: 1,
        src: 0,
        length: 60 + i,
        header: 0,
        parts: 1,
        shape: 0,
        seed: i,
      });
    const seen: number[] = [];
    const burst = a.sp.burst;
    if (burst === undefined) throw new Error('no native loop');
    const tx = burst.tx;
    burst.tx = (ctl) => {
      const status = tx(ctl);
      seen.push(ctl[24]);
      return status;
    };
    run(ports);
    expect(seen.reduce((x, y) => x + y, 0)).toBe(32);
    expect(b.rxGot).toHaveLength(32);
    expect(b.rxGot[31]).toContain(`:${HDR + 91}:`);
  });
});
