/**
 * The virtio-console device model with chains the spec allows but a simple
 * driver rarely sends: output, input and control messages split over several
 * descriptors and across a memory-region boundary. Covers a 'lossless' stall
 * in the middle of a piece and its resume from the reader's position, what a
 * released held chain counts as dropped, input that wraps in its buffer, and
 * control headers and answers that span descriptors.
 */
import { describe, expect, it } from 'vitest';
import { InputBuffer } from '../../src/chardev/input-buffer.js';
import {
  CONTROL_RX_QUEUE,
  CONTROL_TX_QUEUE,
  ControlEvent,
  consoleQueueCount,
  rxQueueOf,
  txQueueOf,
} from '../../src/devices/console/config.js';
import { ConsoleDevice } from '../../src/devices/console/device.js';
import { CONSOLE_STAT_NAMES } from '../../src/devices/console/stats.js';
import { SpscByteRing, StatCounters } from '../../src/locking/index.js';
import { OutputStream, PORT_STAT_NAMES } from '../../src/logger/index.js';
import { type DriverBuffer, DriverQueue } from '../support/driver-queue.js';
import { embed } from '../support/embedded.js';
import { GuestRam } from '../support/guest-ram.js';
import { waitFor } from '../support/wait.js';

const REGION = 1 << 20;

function setup(ports: number, ringBytes: number) {
  const ram = new GuestRam([
    { guestPhysAddr: 0, size: REGION },
    { guestPhysAddr: REGION, size: REGION },
  ]);
  const memory = ram.toGuestMemory();
  const rings = Array.from({ length: ports }, () => SpscByteRing.create(ringBytes));
  const portStats = rings.map(() => StatCounters.create(PORT_STAT_NAMES));
  const stats = StatCounters.create(CONSOLE_STAT_NAMES);
  const warnings: string[] = [];
  const multiport = ports > 1;
  const device = new ConsoleDevice({
    ports: rings.map((ring, i) => ({
      output: new OutputStream(ring, 'lossless', portStats[i]),
      input: new InputBuffer(16),
      stats: portStats[i],
      name: i === 1 ? new TextEncoder().encode('port-one') : null,
    })),
    multiport,
    cols: 80,
    rows: 25,
    queueSize: 16,
    stats,
    warn: (m) => warnings.push(m),
  });
  const embedded = embed(device, memory);
  const drivers = Array.from({ length: consoleQueueCount(ports, multiport) }, (_, i) => {
    const drv = new DriverQueue(ram, 16, { eventIdx: true });
    embedded.start(i, drv.config(), 64);
    return drv;
  });
  const read = (port = 0) => {
    const buf = new Uint8Array(rings[port].capacity);
    return Buffer.from(buf.subarray(0, rings[port].read(buf))).toString('latin1');
  };
  return { ram, device, drivers, rings, portStats, stats, warnings, read };
}

type Setup = ReturnType<typeof setup>;

/**
 * Buffers of the given lengths; the one at index `crossAt` straddles the
 * region boundary (one such buffer per test: they would overlap).
 */
function buffers(s: Setup, lengths: number[], write: boolean, crossAt = -1): DriverBuffer[] {
  return lengths.map((len, i) => ({
    addr: i === crossAt ? REGION - Math.floor(len / 2) : s.ram.alloc(len, 1),
    len,
    write,
  }));
}

/** Writes `data` over consecutive buffers (byte by byte: a buffer may straddle regions). */
function fill(s: Setup, bufs: DriverBuffer[], data: Uint8Array): void {
  let done = 0;
  for (const b of bufs) {
    for (let i = 0; i < b.len && done < data.length; i++) {
      s.ram.write(b.addr + i, data.subarray(done, done + 1));
      done++;
    }
  }
}

function collect(s: Setup, bufs: DriverBuffer[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let done = 0;
  for (const b of bufs) {
    for (let i = 0; i < b.len && done < length; i++) out[done++] = s.ram.read(b.addr + i, 1)[0];
  }
  return out;
}

function control(id: number, event: number, value: number): Uint8Array {
  const v = new DataView(new ArrayBuffer(8));
  v.setUint32(0, id, true);
  v.setUint16(4, event, true);
  v.setUint16(6, value, true);
  return new Uint8Array(v.buffer);
}

describe('ConsoleDevice transmitq over split chains', () => {
  it('stalls inside a piece, resumes from there, and counts a released rest as dropped', async () => {
    const s = setup(1, 16);
    const text = 'abcde' + 'fghijklmnopq' + 'rstuvwxyz';
    const chain = buffers(s, [5, 12, 9], false, 1);
    fill(s, chain, Buffer.from(text, 'latin1'));
    s.drivers[txQueueOf(0)].addChain(chain);
    s.device.kick(txQueueOf(0));
    // 16 bytes fit: the held chain stopped 11 bytes into its second buffer.
    expect(s.read()).toBe(text.slice(0, 16));
    expect(s.drivers[txQueueOf(0)].popUsed()).toBeNull();
    s.rings[0].notifyWriterIfWaiting();
    await waitFor(() => s.rings[0].readable > 0, 'the held chain to resume');
    expect(s.read()).toBe(text.slice(16));
    expect(s.drivers[txQueueOf(0)].popUsed()).toEqual({ id: expect.any(Number), len: 0 });

    // Stall again, then stop the queue: what the chain still held is dropped.
    const second = buffers(s, [20, 6], false);
    fill(s, second, new Uint8Array(26).fill(0x41));
    s.drivers[txQueueOf(0)].addChain(second);
    s.device.kick(txQueueOf(0));
    expect(s.read()).toBe('A'.repeat(16));
    await s.device.quiesce(txQueueOf(0));
    expect(s.drivers[txQueueOf(0)].popUsed()?.len).toBe(0);
    expect(s.portStats[0].snapshot()).toMatchObject({ bytesDropped: 10, transmits: 1 });
    await s.device.close();
  });
});

describe('ConsoleDevice receiveq over split chains', () => {
  it('delivers input that wraps in its buffer into descriptors across regions', () => {
    const s = setup(1, 64);
    const rx = s.drivers[rxQueueOf(0)];
    expect(s.device.queueInput(0, Buffer.from('0123456789'), 0, 10)).toBe(10);
    rx.addChain(buffers(s, [10], true));
    s.device.kick(rxQueueOf(0));
    expect(rx.popUsed()?.len).toBe(10);
    // 12 bytes from offset 10 of a 16-byte buffer: 6 contiguous, then 6 wrapped.
    expect(s.device.queueInput(0, Buffer.from('ABCDEFGHIJKL'), 0, 12)).toBe(12);
    const chain = buffers(s, [3, 5, 10], true, 1);
    rx.addChain(chain);
    s.device.kick(rxQueueOf(0));
    expect(rx.popUsed()?.len).toBe(12);
    expect(Buffer.from(collect(s, chain, 12)).toString()).toBe('ABCDEFGHIJKL');
    expect(s.portStats[0].snapshot()).toMatchObject({ bytesIn: 22, receives: 2 });
  });
});

describe('ConsoleDevice control queues over split chains', () => {
  it('reads a control header split over descriptors and writes answers across them', () => {
    const s = setup(2, 64);
    const ctlRx = s.drivers[CONTROL_RX_QUEUE];
    const answers = Array.from({ length: 5 }, () => {
      const chain = buffers(s, [3, 5, 12], true);
      ctlRx.addChain(chain);
      return chain;
    });
    s.device.kick(CONTROL_RX_QUEUE);
    // Only one buffer can straddle the region boundary: the first header's.
    const send = (msg: Uint8Array, cross: boolean) => {
      const chain = buffers(s, [3, 5], false, cross ? 1 : -1);
      fill(s, chain, msg);
      s.drivers[CONTROL_TX_QUEUE].addChain(chain);
      s.device.kick(CONTROL_TX_QUEUE);
    };
    send(control(0, ControlEvent.DEVICE_READY, 1), true);
    send(control(1, ControlEvent.PORT_READY, 1), false);
    const lens = Array.from({ length: 4 }, () => ctlRx.popUsed()?.len);
    // PORT_ADD 0, PORT_ADD 1, then PORT_NAME "port-one" and PORT_OPEN for port 1.
    expect(lens).toEqual([8, 8, 16, 8]);
    expect(collect(s, answers[0], 8)).toEqual(control(0, ControlEvent.PORT_ADD, 0));
    expect(collect(s, answers[1], 8)).toEqual(control(1, ControlEvent.PORT_ADD, 0));
    const name = collect(s, answers[2], 16);
    expect(name.subarray(0, 8)).toEqual(control(1, ControlEvent.PORT_NAME, 0));
    expect(Buffer.from(name.subarray(8)).toString()).toBe('port-one');
    expect(collect(s, answers[3], 8)).toEqual(control(1, ControlEvent.PORT_OPEN, 1));
    expect(s.drivers[CONTROL_TX_QUEUE].popUsed()?.len).toBe(0);
    expect(s.stats.snapshot()).toMatchObject({ controlIn: 2, controlOut: 4, badControl: 0 });
    expect(s.warnings).toEqual([]);
  });
});
