/**
 * The virtio-console device model on its own (no worker, no socket): the
 * mock driver queues in guest RAM, a real SpscByteRing per port. Covers the
 * 'lossless' stall and resume inside a chain, interrupts per batch, input
 * held until the guest posts buffers, and a guest that breaks one ring.
 */
import { describe, expect, it } from 'vitest';
import { InputBuffer } from '../../src/chardev/input-buffer.js';
import { consoleQueueCount, rxQueueOf, txQueueOf } from '../../src/devices/console/config.js';
import { ConsoleDevice } from '../../src/devices/console/device.js';
import { CONSOLE_STAT_NAMES } from '../../src/devices/console/stats.js';
import { SpscByteRing, StatCounters } from '../../src/locking/index.js';
import { OutputStream, PORT_STAT_NAMES, type RingPolicy } from '../../src/logger/index.js';
import { DriverQueue } from '../support/driver-queue.js';
import { embed } from '../support/embedded.js';
import { GuestRam } from '../support/guest-ram.js';
import { waitFor } from '../support/wait.js';

function setup(policy: RingPolicy, ringBytes: number, inputBytes = 256) {
  const ram = new GuestRam([{ guestPhysAddr: 0, size: 1 << 20 }]);
  const memory = ram.toGuestMemory();
  const ring = SpscByteRing.create(ringBytes);
  const portStats = StatCounters.create(PORT_STAT_NAMES);
  const stats = StatCounters.create(CONSOLE_STAT_NAMES);
  const warnings: string[] = [];
  const device = new ConsoleDevice({
    ports: [
      {
        output: new OutputStream(ring, policy, portStats),
        input: new InputBuffer(inputBytes),
        stats: portStats,
        name: null,
      },
    ],
    multiport: false,
    cols: 80,
    rows: 25,
    queueSize: 16,
    stats,
    warn: (m) => warnings.push(m),
  });
  const embedded = embed(device, memory);
  const notified = embedded.notified;
  const drivers = Array.from({ length: consoleQueueCount(1, false) }, (_, i) => {
    const drv = new DriverQueue(ram, 16, { eventIdx: true });
    embedded.start(i, drv.config({ indirect: true }), 64);
    return drv;
  });
  const put = (text: string) => {
    const gpa = ram.alloc(text.length, 8);
    ram.write(gpa, Buffer.from(text, 'latin1'));
    return drivers[txQueueOf(0)].addChain([{ addr: gpa, len: text.length, write: false }]);
  };
  const read = () => {
    const buf = new Uint8Array(ring.capacity);
    return Buffer.from(buf.subarray(0, ring.read(buf))).toString('latin1');
  };
  return { ram, device, drivers, ring, portStats, stats, notified, warnings, put, read };
}

describe('ConsoleDevice transmitq', () => {
  it('completes a batch with one interrupt and puts the bytes in the ring, in order', () => {
    const s = setup('lossless', 1024);
    s.put('one\n');
    s.put('two\n');
    s.put('three\n');
    s.device.kick(txQueueOf(0));
    expect(s.read()).toBe('one\ntwo\nthree\n');
    expect(s.notified).toEqual([txQueueOf(0)]);
    const used = [1, 2, 3].map(() => s.drivers[1].popUsed());
    expect(used.map((u) => u?.len)).toEqual([0, 0, 0]);
    expect(s.portStats.snapshot().transmits).toBe(3);
  });

  it('lossless: stops consuming at a full ring mid-chain and resumes where it stopped', async () => {
    const s = setup('lossless', 16);
    s.put('0123456789');
    s.put('abcdefghij');
    s.device.kick(txQueueOf(0));
    // 16 bytes fit: the first chain completed, the second is held after 6 bytes.
    expect(s.drivers[1].popUsed()).not.toBeNull();
    expect(s.drivers[1].popUsed()).toBeNull();
    expect(s.portStats.snapshot().ringFull).toBe(1);
    expect(s.read()).toBe('0123456789abcdef');
    s.ring.notifyWriterIfWaiting();
    // The device resumes on its own loop turn, and writes the held chain's rest in one go.
    await waitFor(() => s.ring.readable > 0, 'the held chain to resume');
    expect(s.read()).toBe('ghij');
    expect(s.drivers[1].popUsed()).not.toBeNull();
    expect(s.portStats.snapshot().bytesOut).toBe(20);
  });

  it('drop: completes everything at once and counts what the ring could not take', () => {
    const s = setup('drop', 16);
    s.put('0123456789');
    s.put('abcdefghij');
    s.device.kick(txQueueOf(0));
    expect(s.drivers[1].popUsed()).not.toBeNull();
    expect(s.drivers[1].popUsed()).not.toBeNull();
    expect(s.portStats.snapshot().bytesDropped).toBe(4);
  });

  it('a guest that breaks its transmit ring stops that queue only', () => {
    const s = setup('lossless', 1024);
    s.drivers[1].setAvailIdx(40); // 40 heads "available" on a 16-entry ring
    s.device.kick(txQueueOf(0));
    expect(s.stats.snapshot().brokenQueues).toBe(1);
    expect(s.warnings.join()).toMatch(/queue 1 stopped/);
    expect(s.device.queueInput(0, Buffer.from('still'), 0, 5)).toBe(5);
  });
});

describe('ConsoleDevice receiveq', () => {
  it('holds input until buffers are posted, refuses what the buffer cannot hold', () => {
    const s = setup('lossless', 1024, 8);
    expect(s.device.queueInput(0, Buffer.from('0123456789'), 0, 10)).toBe(8);
    const gpa = s.ram.alloc(4, 8);
    const gpa2 = s.ram.alloc(16, 8);
    s.drivers[rxQueueOf(0)].addChain([{ addr: gpa, len: 4, write: true }]);
    s.drivers[rxQueueOf(0)].addChain([{ addr: gpa2, len: 16, write: true }]);
    s.device.kick(rxQueueOf(0));
    expect(s.drivers[0].popUsed()?.len).toBe(4);
    expect(s.drivers[0].popUsed()?.len).toBe(4);
    expect(Buffer.from(s.ram.read(gpa, 4)).toString()).toBe('0123');
    expect(Buffer.from(s.ram.read(gpa2, 4)).toString()).toBe('4567');
    expect(s.portStats.snapshot().bytesIn).toBe(8);
  });
});

describe('InputBuffer', () => {
  it('wraps around and reports contiguous runs', () => {
    const b = new InputBuffer(8);
    expect(b.push(Buffer.from('abcdef'), 0, 6)).toBe(6);
    b.consume(5);
    expect(b.push(Buffer.from('ghijklmn'), 0, 8)).toBe(7);
    expect(b.length).toBe(8);
    expect(b.contiguousStart).toBe(5);
    expect(b.contiguousLength).toBe(3);
    b.consume(3);
    expect(
      Buffer.from(
        b.bytes.subarray(b.contiguousStart, b.contiguousStart + b.contiguousLength),
      ).toString(),
    ).toBe('ijklm');
    expect(b.clear()).toBe(5);
  });
});
