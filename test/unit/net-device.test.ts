/**
 * The virtio-net device model in one thread, against the mock driver queues
 * (test/support/driver-queue.ts) and two switch ports joined by real packet
 * rings and eventfd doorbells: the chain-level cases a front end over a
 * socket cannot easily stage.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { NetDevice } from '../../src/devices/net/device.js';
import { StatCounters } from '../../src/locking/index.js';
import { native } from '../../src/native.js';
import type { NetBackendPort } from '../../src/net/backend-port.js';
import { NET_STAT_NAMES, NetStat } from '../../src/net/port-stats.js';
import { createSwitchRings, SwitchPort } from '../../src/net/switch-port.js';
import { VIRTQ_DESC_F_NEXT } from '../../src/virtio/split-ring.js';
import { DriverQueue } from '../support/driver-queue.js';
import { type EmbeddedDevice, embed } from '../support/embedded.js';
import { GuestRam } from '../support/guest-ram.js';

const HDR = 12;
const bells: number[] = [];

interface Port {
  dev: NetDevice;
  rx: DriverQueue;
  tx: DriverQueue;
  ram: GuestRam;
  stats: StatCounters;
  interrupts: number[];
  embedded: EmbeddedDevice;
}

function makeSwitch(): Port[] {
  const rings = createSwitchRings(2, 65536);
  const doorbells = [native.eventfd(0), native.eventfd(0)];
  bells.push(...doorbells);
  return [0, 1].map((port) => {
    const sp = new SwitchPort({
      port,
      outRings: rings[port].map((r) => r?.buffer ?? null),
      inRings: rings.map((row) => row[port]?.buffer ?? null),
      doorbells,
      ageingMs: 60_000,
      macCapacity: 64,
    });
    const ram = new GuestRam([{ guestPhysAddr: 0, size: 1 << 20 }]);
    const memory = ram.toGuestMemory();
    const rx = new DriverQueue(ram, 16, { eventIdx: true });
    const tx = new DriverQueue(ram, 16, { eventIdx: true });
    const stats = StatCounters.create(NET_STAT_NAMES);
    const dev = new NetDevice({
      queuePairs: 1,
      mac: Uint8Array.from([2, 0, 0, 0, 0, 0x10 + port]),
      queueSize: 16,
      port: sp,
      stats,
      warn: () => {},
    });
    const embedded = embed(dev, memory);
    embedded.start(0, rx.config({ indirect: true }), 32);
    embedded.start(1, tx.config({ indirect: true }), 32);
    return { dev, rx, tx, ram, stats, interrupts: embedded.notified, embedded };
  });
}

function packet(length: number): Uint8Array {
  const p = new Uint8Array(HDR + length);
  p.fill(0xff, HDR, HDR + 6); // broadcast
  p.set([2, 0, 0, 0, 0, 1], HDR + 6);
  for (let i = HDR + 12; i < p.length; i++) p[i] = i & 0xff;
  return p;
}

/** Puts `p` in guest RAM split into `parts` descriptors and queues it for transmission. */
function transmit(port: Port, p: Uint8Array, parts: number, indirect = false): number {
  const gpa = port.ram.alloc(p.length, 16);
  port.ram.write(gpa, p);
  const step = Math.ceil(p.length / parts);
  const buffers = [];
  for (let off = 0; off < p.length; off += step) {
    buffers.push({ addr: gpa + off, len: Math.min(step, p.length - off), write: false });
  }
  const head = port.tx.addChain(buffers, { indirect });
  port.dev.kick(1);
  return head;
}

function postRx(port: Port, size: number): number {
  const gpa = port.ram.alloc(size, 16);
  port.rx.addChain([{ addr: gpa, len: size, write: true }]);
  return gpa;
}

afterEach(() => {
  for (const fd of bells.splice(0)) native.close(fd);
});

describe('NetDevice', () => {
  it('forwards an indirect, multi-descriptor frame and delivers it with its header', () => {
    const [a, b] = makeSwitch();
    const buf = postRx(b, 1530);
    const p = packet(300);
    transmit(a, p, 4, true);
    expect(a.tx.popUsed()).toEqual({ id: expect.any(Number), len: 0 });
    b.dev.doorbell();
    const used = b.rx.popUsed();
    expect(used?.len).toBe(HDR + 300);
    const got = b.ram.read(buf, HDR + 300);
    expect(got[10] | (got[11] << 8)).toBe(1); // num_buffers
    expect(got.subarray(HDR)).toEqual(p.subarray(HDR));
    expect(b.interrupts).toEqual([0]);
    expect(a.stats.get(NetStat.txPackets)).toBe(1);
  });

  it('completes a looping chain with length 0 and counts it malformed', () => {
    const [a] = makeSwitch();
    // Descriptor 0 chains to itself: the walk must stop, not spin.
    a.tx.writeDescriptor(0, { addr: 0x1000, len: 64, flags: VIRTQ_DESC_F_NEXT, next: 0 });
    a.tx.publish(0);
    a.dev.kick(1);
    expect(a.tx.popUsed()).toEqual({ id: 0, len: 0 });
    expect(a.stats.get(NetStat.malformed)).toBe(1);
  });

  it('returns a receive buffer too small for the header empty and drops the frame, counted', () => {
    const [a, b] = makeSwitch();
    postRx(b, 8);
    transmit(a, packet(100), 1);
    b.dev.doorbell();
    expect(b.rx.popUsed()?.len).toBe(0);
    expect(b.stats.get(NetStat.rxDropsBadBuffers)).toBe(1);
    // The next frame goes to the next (good) buffer.
    const buf = postRx(b, 1530);
    transmit(a, packet(100), 1);
    b.dev.kick(0);
    expect(b.rx.popUsed()?.len).toBe(HDR + 100);
    expect(b.ram.read(buf + HDR, 100)).toEqual(packet(100).subarray(HDR));
  });

  it('keeps a frame in the ring until receive buffers arrive, then delivers it', () => {
    const [a, b] = makeSwitch();
    transmit(a, packet(200), 1);
    b.dev.doorbell();
    expect(b.rx.popUsed()).toBeNull();
    postRx(b, 100);
    b.dev.kick(0); // 100 bytes are not enough: the frame still waits, nothing is used
    expect(b.rx.popUsed()).toBeNull();
    postRx(b, 100);
    postRx(b, 100);
    b.dev.kick(0);
    const lens = [b.rx.popUsed()?.len, b.rx.popUsed()?.len, b.rx.popUsed()?.len];
    expect(lens).toEqual([100, 100, 12]);
    expect(b.stats.get(NetStat.rxPackets)).toBe(1);
  });

  it('talks only to its NetBackendPort: one reservation per frame, a copy per destination, one batch per kick', async () => {
    /**
     * A port with no switch behind it: records what is sent (read back at
     * endBatch, after the device's batched copies), hands out what `waiting` holds.
     */
    class FakePort implements NetBackendPort {
      txBytes = new Uint8Array(4096);
      txOffset = 100;
      rxBytes = new Uint8Array(4096);
      rxOffset = 0;
      readonly frameViews = [this.txBytes, this.rxBytes];
      readonly rxView = 1;
      readonly rxHeader = -1;
      readonly maxFrame = 1024;
      readonly stallDrops = 0;
      readonly holds = 0;
      reservations = 0;
      readonly sent: Uint8Array[] = [];
      readonly waiting: Uint8Array[] = [];
      readonly calls: string[] = [];
      private length = 0;
      private committed = 0;
      beginBatch(): void {
        this.calls.push('begin');
      }
      reserve(addresses: Uint8Array, offset: number, length: number): number {
        this.calls.push(`reserve ${addresses.subarray(offset, offset + 12).join(',')} ${length}`);
        this.length = length;
        this.reservations = 3; // as for a flood to three ports
        return 3;
      }
      reservedView(): number {
        return 0;
      }
      reservedOffset(i: number): number {
        return this.txOffset + i * 1024;
      }
      commit(): void {
        this.calls.push('commit');
      }
      commitWritten(): void {
        this.calls.push('commitWritten');
        this.committed = this.reservations;
      }
      holdDeadline(): number {
        return -1;
      }
      peek(): number {
        const f = this.waiting[0];
        if (f === undefined) return -1;
        this.rxBytes.set(f, 0);
        return f.length;
      }
      release(): void {
        this.calls.push('release');
        this.waiting.shift();
      }
      endBatch(): void {
        this.calls.push('end');
        for (let i = 0; i < this.committed; i++) {
          const at = this.reservedOffset(i);
          this.sent.push(this.txBytes.slice(at, at + this.length));
        }
        this.committed = 0;
      }
    }
    const ram = new GuestRam([{ guestPhysAddr: 0, size: 1 << 20 }]);
    const memory = ram.toGuestMemory();
    const rx = new DriverQueue(ram, 16, { eventIdx: true });
    const tx = new DriverQueue(ram, 16, { eventIdx: true });
    const port = new FakePort();
    const dev = new NetDevice({
      queuePairs: 1,
      mac: Uint8Array.from([2, 0, 0, 0, 0, 0x20]),
      queueSize: 16,
      port,
      stats: StatCounters.create(NET_STAT_NAMES),
      warn: () => {},
    });
    const embedded = embed(dev, memory);
    embedded.start(0, rx.config({}), 32);
    embedded.start(1, tx.config({}), 32);
    const p = packet(200);
    const gpa = ram.alloc(p.length, 16);
    ram.write(gpa, p);
    tx.addChain([
      { addr: gpa, len: 20, write: false },
      { addr: gpa + 20, len: p.length - 20, write: false },
    ]);
    port.calls.length = 0;
    dev.kick(1);
    expect(port.calls).toEqual([
      `begin`,
      `reserve ${p.subarray(HDR, HDR + 12).join(',')} 200`,
      'commitWritten',
      'end',
    ]);
    // Every destination got the frame, in place when endBatch publishes it.
    expect(port.sent).toEqual([p.subarray(HDR), p.subarray(HDR), p.subarray(HDR)]);
    // Receive: the frame the port holds goes into the posted buffer, then is released.
    const incoming = packet(90).subarray(HDR);
    port.waiting.push(incoming);
    const buf = ram.alloc(1530, 16);
    rx.addChain([{ addr: buf, len: 1530, write: true }]);
    port.calls.length = 0;
    dev.doorbell();
    expect(rx.popUsed()?.len).toBe(HDR + 90);
    expect(ram.read(buf + HDR, 90)).toEqual(incoming);
    expect(port.calls).toEqual(['begin', 'release', 'end']);
    await dev.close();
  });

  it('stops a queue and reports where it stopped', async () => {
    const [a] = makeSwitch();
    transmit(a, packet(60), 1);
    transmit(a, packet(60), 1);
    await a.dev.quiesce(1);
    expect(a.embedded.vrings[1].stop()).toBe(2);
    await a.dev.close();
  });
});
