/**
 * The NetBackendPort interface as a SwitchPort implements it, in one thread:
 * three ports joined by real packet rings and eventfd doorbells, each driven
 * the way a peer (the virtio-net device, the TAP peer) drives its port.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import type { NetBackendPort } from '../../src/net/backend-port.js';
import type { PacketRing } from '../../src/net/packet-ring.js';
import { createSwitchRings, RX_BURST, SwitchPort } from '../../src/net/switch-port.js';

const BROADCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
const mac = (n: number) => [2, 0, 0, 0, 0, n];
const bells: number[] = [];

interface Switch {
  ports: SwitchPort[];
  rings: (PacketRing | null)[][];
  doorbells: number[];
}

function makeSwitch(n: number, ringBytes = 65536): Switch {
  const rings = createSwitchRings(n, ringBytes);
  const doorbells = Array.from({ length: n }, () => native.eventfd(0));
  bells.push(...doorbells);
  const ports = doorbells.map(
    (_, port) =>
      new SwitchPort({
        port,
        outRings: rings[port].map((r) => r?.buffer ?? null),
        inRings: rings.map((row) => row[port]?.buffer ?? null),
        doorbells,
        ageingMs: 60_000,
        macCapacity: 64,
      }),
  );
  return { ports, rings, doorbells };
}

function frame(dst: number[], src: number[], length: number, seed = 0): Uint8Array {
  const f = new Uint8Array(length);
  f.set(dst, 0);
  f.set(src, 6);
  for (let i = 12; i < length; i++) f[i] = (i + seed) & 0xff;
  return f;
}

/** Sends `f` the way a peer does: reserve, one copy into the first reservation, commit. */
function send(port: NetBackendPort, f: Uint8Array): number {
  port.beginBatch();
  const n = port.reserve(f, 0, f.length);
  if (n > 0) {
    port.txBytes.set(f, port.txOffset);
    port.commit();
  }
  port.endBatch();
  return n;
}

/** Everything waiting for `port`, released. */
function receiveAll(port: NetBackendPort): Uint8Array[] {
  const out: Uint8Array[] = [];
  port.beginBatch();
  for (let len = port.peek(); len >= 0; len = port.peek()) {
    out.push(port.rxBytes.slice(port.rxOffset, port.rxOffset + len));
    port.release();
  }
  port.endBatch();
  return out;
}

afterEach(() => {
  for (const fd of bells.splice(0)) native.close(fd);
});

describe('SwitchPort as a NetBackendPort', () => {
  it('floods a broadcast: one copy in, duplicated to every other port on commit, doorbells rung once', () => {
    const { ports, doorbells } = makeSwitch(3);
    const f = frame(BROADCAST, mac(1), 1500, 1);
    ports[0].beginBatch();
    expect(ports[0].reserve(f, 0, f.length)).toBe(2);
    ports[0].txBytes.set(f, ports[0].txOffset);
    ports[0].commit();
    // Doorbells ring once per batch, at its end, not per frame.
    expect(native.eventfdRead(doorbells[1])).toBe(0);
    ports[0].endBatch();
    expect(native.eventfdRead(doorbells[0])).toBe(0);
    expect(native.eventfdRead(doorbells[1])).toBe(1);
    expect(native.eventfdRead(doorbells[2])).toBe(1);
    expect(receiveAll(ports[1])).toEqual([f]);
    expect(receiveAll(ports[2])).toEqual([f]);
    expect(receiveAll(ports[0])).toEqual([]);
  });

  it('floods an unknown unicast, then sends a learnt address to its port only', () => {
    const { ports } = makeSwitch(3);
    expect(send(ports[0], frame(mac(2), mac(1), 60))).toBe(2); // nobody knows 2 yet
    receiveAll(ports[1]); // port 1 learns: mac 1 is behind port 0
    expect(receiveAll(ports[2])).toHaveLength(1);
    const reply = frame(mac(1), mac(2), 64, 5);
    expect(send(ports[1], reply)).toBe(1);
    expect(receiveAll(ports[0])).toEqual([reply]);
    expect(receiveAll(ports[2])).toEqual([]);
  });

  it('filters a frame for an address behind the sending port itself', () => {
    const { ports } = makeSwitch(2);
    send(ports[0], frame(BROADCAST, mac(1), 60)); // port 0 learns mac 1 is its own
    receiveAll(ports[1]);
    expect(send(ports[0], frame(mac(1), mac(3), 60))).toBe(0);
    expect(receiveAll(ports[1])).toEqual([]);
    ports[0].commit(); // nothing reserved: a no-op
    expect(receiveAll(ports[1])).toEqual([]);
  });

  it('peek returns the same frame until release; one source keeps its order, sources take turns', () => {
    const { ports } = makeSwitch(3);
    const count = RX_BURST + 8;
    for (let i = 0; i < count; i++) send(ports[0], frame(BROADCAST, mac(1), 100 + i));
    for (let i = 0; i < count; i++) send(ports[1], frame(BROADCAST, mac(2), 200 + i));
    const p = ports[2];
    p.beginBatch();
    const first = p.peek();
    expect(p.peek()).toBe(first);
    const lengths: number[] = [];
    for (let len = p.peek(); len >= 0; len = p.peek()) {
      lengths.push(len);
      p.release();
    }
    // Bursts of RX_BURST frames from each source in turn, each source in order.
    const from = (base: number, start: number, n: number) =>
      Array.from({ length: n }, (_, i) => base + start + i);
    expect(lengths).toEqual([
      ...from(100, 0, RX_BURST),
      ...from(200, 0, RX_BURST),
      ...from(100, RX_BURST, 8),
      ...from(200, RX_BURST, 8),
    ]);
    expect(p.peek()).toBe(-1);
    p.release(); // nothing peeked: a no-op
    expect(p.peek()).toBe(-1);
  });

  it('counts a drop in the ring of a full destination and still delivers to the others', () => {
    const { ports, rings } = makeSwitch(3, 4096);
    const f = frame(BROADCAST, mac(1), 1000);
    const taken: number[] = [];
    for (let i = 0; i < 6; i++) {
      taken.push(send(ports[0], f));
      receiveAll(ports[2]); // port 2 keeps up, port 1 never reads
    }
    // A 4096-byte ring holds four 1004-byte records; port 2's ring wraps and goes on.
    expect(taken).toEqual([2, 2, 2, 2, 1, 1]);
    expect(rings[0][1]?.drops).toBe(2);
    expect(rings[0][2]?.drops).toBe(0);
    expect(receiveAll(ports[1])).toHaveLength(4);
    // Drained: port 1 takes frames again (its sender sees the consumer's new TAIL).
    expect(send(ports[0], f)).toBe(2);
    expect(receiveAll(ports[1])).toEqual([f]);
  });

  it('returns 0 when every destination is full', () => {
    const { ports, rings } = makeSwitch(2, 4096);
    const f = frame(BROADCAST, mac(1), 1000);
    const taken = Array.from({ length: 6 }, () => send(ports[0], f));
    expect(taken).toEqual([1, 1, 1, 1, 0, 0]);
    expect(rings[0][1]?.drops).toBe(2);
  });
});
