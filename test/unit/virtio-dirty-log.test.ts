/**
 * The dirty log (src/virtio/dirty-log.ts) on its own and through a Vring: the
 * bit layout (bit p % 8 of byte p / 8 per 4 KiB page), ranges across bitmap
 * bytes, pages beyond the bitmap counted and never written, and a batch
 * marking exactly the returned chains' writable pages (up to the used length,
 * or wholly) plus the used elements (also when they wrap) and used.idx —
 * already when used.idx is published; nothing while a ring holds no log.
 */
import { describe, expect, it } from 'vitest';
import { DescriptorChain } from '../../src/virtio/descriptor-chain.js';
import { DirtyLog, LOG_PAGE_SIZE, logBytesFor } from '../../src/virtio/dirty-log.js';
import { SplitVirtqueue } from '../../src/virtio/virtqueue.js';
import { Vring } from '../../src/virtio/vring.js';
import { DriverQueue } from '../support/driver-queue.js';
import { GuestRam } from '../support/guest-ram.js';

const PAGE = LOG_PAGE_SIZE;

function pages(bits: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < bits.length; i++)
    for (let b = 0; b < 8; b++) if ((bits[i] >> b) & 1) out.push(i * 8 + b);
  return out;
}

function range(first: number, last: number): number[] {
  return Array.from({ length: last - first + 1 }, (_, i) => first + i);
}

describe('DirtyLog.markRange', () => {
  it('sets one bit per 4 KiB page, byte p / 8, bit p % 8, across bitmap bytes', () => {
    const log = new DirtyLog(new SharedArrayBuffer(64), 16, 8, 8);
    log.markRange(3 * PAGE + 5, 1);
    expect(pages(log.bits)).toEqual([3]);
    expect(log.bits[0]).toBe(0b1000);
    log.bits.fill(0);
    // Pages 6..17: the end of byte 0, all of byte 1, the start of byte 2.
    log.markRange(6 * PAGE + 100, 11 * PAGE + 1);
    expect(pages(log.bits)).toEqual(range(6, 17));
    expect([...log.bits.subarray(0, 3)]).toEqual([0xc0, 0xff, 0x03]);
    // The bitmap is the view at the offset of the mapping.
    expect(new Uint8Array(log.bits.buffer)[16]).toBe(0xc0);
  });

  it('counts pages beyond the bitmap and writes nothing there; ignores empty ranges', () => {
    const buffer = new SharedArrayBuffer(4);
    const log = new DirtyLog(buffer, 0, 2, 8);
    log.markRange(15 * PAGE, 2 * PAGE);
    expect(pages(log.bits)).toEqual([15]);
    expect(log.outside).toBe(1);
    expect(new Uint8Array(buffer)[2]).toBe(0);
    log.markRange(0, 0);
    log.markRange(-5, 10);
    expect(pages(log.bits)).toEqual([15]);
    expect(logBytesFor(16 * PAGE)).toBe(2);
  });

  it('refuses a bitmap outside its mapping', () => {
    expect(() => new DirtyLog(new SharedArrayBuffer(8), 4, 8, 8)).toThrow(RangeError);
    expect(() => new DirtyLog(new SharedArrayBuffer(8), 0, 0, 8)).toThrow(RangeError);
  });
});

describe('Vring.flush with a dirty log', () => {
  /** 1 MiB of guest RAM at gpa 0 (mapped at offset 0x1000), a ring of 4. */
  function setup() {
    const ram = new GuestRam([{ guestPhysAddr: 0, size: 0x100000, mmapOffset: 0x1000 }]);
    const drv = new DriverQueue(ram, 4, { eventIdx: false });
    const memory = ram.toGuestMemory();
    const q = new SplitVirtqueue(memory, drv.config({ indirect: true }));
    const v = new Vring(0, () => {});
    v.start(q);
    v.enabled = true;
    const log = new DirtyLog(
      new SharedArrayBuffer(logBytesFor(0x100000)),
      0,
      logBytesFor(0x100000),
      64,
    );
    log.setMemory(memory);
    const buf = (n: number) => ram.alloc(n * PAGE, PAGE);
    return { ram, drv, q, v, log, buf, chain: new DescriptorChain(64) };
  }

  it('marks the writable part up to the used length, the used element and used.idx, before publishing', () => {
    const s = setup();
    s.v.dirtyLog = s.log;
    s.v.logUsedAddr = s.drv.usedRing;
    const readable = s.buf(1);
    const a = s.buf(3);
    const b = s.buf(2);
    s.drv.addChain([
      { addr: readable, len: 64, write: false },
      { addr: a + 200, len: 2 * PAGE, write: true },
      { addr: b, len: 2 * PAGE, write: true },
    ]);
    expect(s.q.pop(s.chain)).toBe(true);
    // The device wrote 2 pages + 10 bytes from the start of the writable part.
    s.v.addUsed(s.chain.head, 2 * PAGE + 10);
    let seenAtPublish: number[] = [];
    const publish = s.q.publishUsed.bind(s.q);
    s.q.publishUsed = () => {
      seenAtPublish = pages(s.log.bits);
      publish();
    };
    s.v.flush();
    const usedPage = Math.floor(s.drv.usedRing / PAGE);
    const expected = [...range(a / PAGE, a / PAGE + 2), b / PAGE, usedPage].sort((x, y) => x - y);
    expect(seenAtPublish).toEqual([...new Set(expected)]);
    expect(pages(s.log.bits)).not.toContain(readable / PAGE);
  });

  it('marks the whole writable part for a ring whose used length does not say where (blk)', () => {
    const s = setup();
    s.v.dirtyLog = s.log;
    s.v.logsWholeWritablePart = true;
    const data = s.buf(2);
    const status = s.buf(1);
    s.drv.addChain([
      { addr: data, len: 2 * PAGE, write: true },
      { addr: status, len: 1, write: true },
    ]);
    s.q.pop(s.chain);
    s.v.addUsed(s.chain.head, 1); // an I/O error: status only, data maybe partly written
    s.v.flush();
    // No used-ring log address: only the buffers.
    expect(pages(s.log.bits)).toEqual([data / PAGE, data / PAGE + 1, status / PAGE]);
  });

  it('marks used elements that wrap around the ring, and nothing once the log is taken away', () => {
    const s = setup();
    s.v.dirtyLog = s.log;
    s.v.logUsedAddr = 0x80000; // the front end's log address for the used ring
    const buffers = Array.from({ length: 6 }, () => s.buf(1));
    for (let i = 0; i < 3; i++) {
      s.drv.addChain([{ addr: buffers[i], len: 16, write: true }]);
      s.q.pop(s.chain);
      s.v.addUsed(s.chain.head, 16);
      s.v.flush();
      s.drv.popUsed();
    }
    s.log.bits.fill(0);
    // Slots 3, 0 and 1 of a ring of 4: the batch's elements wrap.
    for (let i = 3; i < 6; i++) {
      s.drv.addChain([{ addr: buffers[i], len: 16, write: true }]);
      s.q.pop(s.chain);
      s.v.addUsed(s.chain.head, 16);
    }
    s.v.flush();
    expect(pages(s.log.bits)).toEqual(
      [...buffers.slice(3).map((g) => g / PAGE), 0x80000 / PAGE].sort((x, y) => x - y),
    );
    s.log.bits.fill(0);
    s.v.dirtyLog = null;
    for (let i = 0; i < 3; i++) s.drv.popUsed();
    s.drv.addChain([{ addr: buffers[0], len: 16, write: true }]);
    s.q.pop(s.chain);
    s.v.addUsed(s.chain.head, 16);
    s.v.flush();
    expect(pages(s.log.bits)).toEqual([]);
  });
});
