/**
 * Target `console`: the virtio-console device model
 * (src/devices/console/device.ts) with MULTIPORT and two ports, output into
 * 'drop'-policy rings that the case drains after every step.
 *
 * Moves: transmit chains of any length cut anywhere (with writable parts a
 * transmit chain should not have), receive buffers of every size, host input,
 * control messages from the driver with bad ids (ports that do not exist, 2^32
 * - 1), events a driver never sends and values other than 0/1, control
 * receive buffers too small for a PORT_NAME or RESIZE, resize and
 * hot-(un)plug commands, and raw hostile descriptors on every queue.
 *
 * Properties (besides those of device-rig.ts): kick, queueInput and commands
 * never throw (a command may refuse with a RangeError); each port's output
 * is exactly the readable bytes of its transmit chains, in order; no
 * transmit or control-transmit chain is left uncompleted; afterwards, on a
 * fresh ring, port 0 still prints what it is sent.
 */
import { InputBuffer } from '../../../src/chardev/input-buffer.js';
import {
  CONTROL_RX_QUEUE,
  CONTROL_TX_QUEUE,
  ControlEvent,
  rxQueueOf,
  txQueueOf,
} from '../../../src/devices/console/config.js';
import { ConsoleDevice } from '../../../src/devices/console/device.js';
import { CONSOLE_STAT_NAMES } from '../../../src/devices/console/stats.js';
import { SpscByteRing, StatCounters } from '../../../src/locking/index.js';
import { OutputStream, PORT_STAT_NAMES } from '../../../src/logger/index.js';
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

const PORTS = 2;
const RING = 1 << 18;

type ConsoleOp =
  | { op: 'chain'; c: ChainSpec }
  | { op: 'raw'; r: RawSpec }
  | { op: 'kick'; queue: number }
  | { op: 'input'; port: number; len: number }
  | { op: 'resize'; cols: number; rows: number }
  | { op: 'present'; port: number; present: boolean };

/** One case: ring shape and moves. */
export interface ConsoleCase {
  queueSize: number;
  eventIdx: boolean;
  ops: ConsoleOp[];
}

const QUEUES = 2 * (PORTS + 1);

function control(id: number, event: number, value: number): Uint8Array {
  const v = new DataView(new ArrayBuffer(8));
  v.setUint32(0, id, true);
  v.setUint16(4, event, true);
  v.setUint16(6, value, true);
  return new Uint8Array(v.buffer);
}

function randomOp(rng: Prng, c: ConsoleCase): ConsoleOp {
  const port = rng.below(PORTS);
  switch (rng.below(12)) {
    case 0:
    case 1: {
      const data = rng.bytes(rng.pick([0, 1, 5, 64, 1000, rng.below(2000)]));
      return { op: 'chain', c: chainOf(rng, txQueueOf(port), data, rng.chance(0.1) ? [4] : []) };
    }
    case 2:
      return {
        op: 'chain',
        c: chainOf(
          rng,
          rxQueueOf(port),
          new Uint8Array(0),
          writableParts(rng, rng.pick([0, 1, 8, 64, 512])),
        ),
      };
    case 3:
    case 4: {
      const event = rng.pick([
        ControlEvent.DEVICE_READY,
        ControlEvent.PORT_READY,
        ControlEvent.PORT_OPEN,
        ControlEvent.PORT_OPEN,
        ControlEvent.PORT_ADD,
        ControlEvent.RESIZE,
        99,
      ]);
      const id = rng.pick([0, 1, 1, 2, 0xffff_ffff, rng.u32()]);
      let data = control(id, event, rng.pick([0, 1, 1, 2, 0xffff]));
      if (rng.chance(0.1)) data = data.subarray(0, rng.below(8));
      return { op: 'chain', c: chainOf(rng, CONTROL_TX_QUEUE, data, rng.chance(0.05) ? [8] : []) };
    }
    case 5:
      return {
        op: 'chain',
        c: chainOf(
          rng,
          CONTROL_RX_QUEUE,
          new Uint8Array(0),
          writableParts(rng, rng.pick([0, 4, 8, 12, 16, 300])),
        ),
      };
    case 6:
      return { op: 'input', port, len: rng.pick([1, 10, 100, 5000]) };
    case 7:
      return rng.chance(0.5)
        ? { op: 'resize', cols: rng.pick([0, 80, 0xffff, 0x10000]), rows: rng.pick([25, -1]) }
        : { op: 'present', port: rng.pick([0, 1, 2]), present: rng.chance(0.5) };
    case 8:
      return { op: 'raw', r: rawDescriptor(rng, rng.below(QUEUES), c.queueSize) };
    default:
      return { op: 'kick', queue: rng.below(QUEUES) };
  }
}

function freshCase(rng: Prng): ConsoleCase {
  const c: ConsoleCase = { queueSize: rng.pick([4, 16, 64]), eventIdx: rng.chance(0.5), ops: [] };
  // Most cases bring the ports up first, as a Linux driver does.
  if (rng.chance(0.7)) {
    for (const [id, event] of [
      [0, ControlEvent.DEVICE_READY],
      [0, ControlEvent.PORT_READY],
      [1, ControlEvent.PORT_READY],
      [1, ControlEvent.PORT_OPEN],
    ]) {
      c.ops.push({ op: 'chain', c: chainOf(rng, CONTROL_TX_QUEUE, control(id, event, 1), []) });
    }
    c.ops.push({ op: 'kick', queue: CONTROL_TX_QUEUE });
  }
  for (let n = rng.range(1, 24); n > 0; n--) c.ops.push(randomOp(rng, c));
  return c;
}

function mutateCase(rng: Prng, base: ConsoleCase): ConsoleCase {
  const c = { ...base, ops: [...base.ops] };
  for (let s = rng.range(1, 3); s > 0; s--) {
    const i = rng.below(c.ops.length + 1);
    if (rng.chance(0.3) && c.ops.length > 0) c.ops.splice(i, 1);
    else c.ops.splice(i, 0, randomOp(rng, c));
  }
  return c;
}

function execute(c: ConsoleCase): string {
  const rings = Array.from({ length: PORTS }, () => SpscByteRing.create(RING));
  const portStats = rings.map(() => StatCounters.create(PORT_STAT_NAMES));
  const stats = StatCounters.create(CONSOLE_STAT_NAMES);
  const warnings = new Set<string>();
  const device = new ConsoleDevice({
    ports: rings.map((ring, i) => ({
      output: new OutputStream(ring, 'drop', portStats[i]),
      input: new InputBuffer(256),
      stats: portStats[i],
      name: i === 1 ? new TextEncoder().encode('fuzz-port') : null,
    })),
    multiport: true,
    cols: 80,
    rows: 25,
    queueSize: c.queueSize,
    stats,
    warn: (m) => warnings.add(m.split(':')[0]),
  });
  const rig = new Rig(device, c.queueSize, c.eventIdx);
  const reader = new ChainReader();
  const expected: number[][] = rings.map(() => []);
  const got: number[][] = rings.map(() => []);
  for (let p = 0; p < PORTS; p++) {
    rig.queues[txQueueOf(p)].onPop = (chain: DescriptorChain) => {
      const all = new Uint8Array(chain.readableBytes);
      reader.reset(chain, rig.memory.bytes).read(all, 0, all.length);
      for (const b of all) expected[p].push(b);
    };
  }
  const scratch = new Uint8Array(RING);
  const drainRings = () => {
    rings.forEach((ring, p) => {
      const n = ring.read(scratch);
      for (let i = 0; i < n; i++) got[p].push(scratch[i]);
    });
  };
  const step = (what: string, fn: () => void) => {
    rig.begin();
    fn();
    rig.verify(what);
    drainRings();
  };
  const input = new Uint8Array(5000).fill(0x41);
  for (const op of c.ops) {
    if (op.op === 'chain') rig.add(op.c);
    else if (op.op === 'raw') rig.raw(op.r);
    else if (op.op === 'kick') step(`kick ${op.queue}`, () => device.kick(op.queue));
    else if (op.op === 'input') step('input', () => device.queueInput(op.port, input, 0, op.len));
    else step(op.op, () => command(device, op));
  }
  for (let q = 0; q < QUEUES; q++) step(`final kick ${q}`, () => device.kick(q));
  for (const q of [txQueueOf(0), txQueueOf(1), CONTROL_TX_QUEUE]) {
    check(
      rig.vrings[q].broken || rig.queues[q].outstanding === 0,
      `queue ${q}: ${rig.queues[q].outstanding} chains never completed`,
    );
  }
  for (let p = 0; p < PORTS; p++) {
    check(
      Buffer.compare(Buffer.from(got[p]), Buffer.from(expected[p])) === 0,
      `port ${p} printed ${got[p].length} bytes, its transmit chains carried ${expected[p].length}`,
    );
  }
  serveOneWrite(rig, device, rings[0]);
  const counted = Object.entries(stats.snapshot())
    .filter(([, v]) => v > 0)
    .map(([k]) => k);
  return [...counted, ...warnings].sort().join(' ');
}

function command(device: ConsoleDevice, op: ConsoleOp): void {
  try {
    if (op.op === 'resize') device.command({ type: 'resize', cols: op.cols, rows: op.rows });
    else if (op.op === 'present')
      device.command({ type: 'port-present', port: op.port, present: op.present });
  } catch (err) {
    if (!(err instanceof RangeError)) throw err;
  }
}

/** On a fresh transmit ring, port 0 prints what it is sent. */
function serveOneWrite(rig: Rig, device: ConsoleDevice, ring: SpscByteRing): void {
  rig.reap();
  rig.restart(txQueueOf(0));
  const text = new TextEncoder().encode('still alive\n');
  const at = rig.ram.alloc(text.length, 1);
  rig.ram.write(at, text);
  rig.drivers[txQueueOf(0)].addChain([{ addr: at, len: text.length, write: false }]);
  device.kick(txQueueOf(0));
  const out = new Uint8Array(64);
  const n = ring.read(out);
  check(Buffer.compare(out.subarray(0, n), text) === 0, 'port 0 no longer prints what it is sent');
  check(rig.drivers[txQueueOf(0)].popUsed() !== null, 'the transmit chain was not completed');
}

const opJson = (o: ConsoleOp) =>
  o.op === 'chain' ? { ...o, c: { ...o.c, data: toHex(o.c.data) } } : o;

/** The console target. */
export const consoleTarget: FuzzTarget<ConsoleCase> = {
  name: 'console',
  description: 'virtio-console (multiport): hostile transmit/receive chains and control messages',
  generate: (rng, corpus) =>
    corpus.length > 0 && rng.chance(0.5) ? mutateCase(rng, rng.pick(corpus)) : freshCase(rng),
  execute,
  toJson: (c) => ({ ...c, ops: c.ops.map(opJson) }),
  fromJson(json) {
    const j = json as ConsoleCase;
    const op = (o: ConsoleOp): ConsoleOp =>
      o.op === 'chain' ? { ...o, c: { ...o.c, data: fromHex(o.c.data as unknown as string) } } : o;
    return { ...j, ops: j.ops.map(op) };
  },
};
