/**
 * The virtio-blk device model on its own (no worker, no file): the mock
 * driver queue in guest RAM and an in-memory engine whose staging table,
 * depth and completion timing the test controls. Covers headers, data and
 * status bytes that span descriptors and memory regions, GET_ID padding,
 * the retry when the engine's staging table is full, a queue starved of
 * request slots (kicks off, then back on), and completions that arrive
 * synchronously inside a drain.
 */
import { describe, expect, it } from 'vitest';
import { BlkRequestType, BlkStatus, SECTOR_SIZE } from '../../src/devices/blk/config.js';
import { BlkDevice } from '../../src/devices/blk/device.js';
import { BLK_STAT_NAMES } from '../../src/devices/blk/stats.js';
import { type IoCompletion, type IoEngine, IoOp, type IoOpCode } from '../../src/io/engine.js';
import { StatCounters } from '../../src/locking/index.js';
import { VIRTQ_USED_F_NO_NOTIFY } from '../../src/virtio/split-ring.js';
import { type DriverBuffer, DriverQueue } from '../support/driver-queue.js';
import { embed } from '../support/embedded.js';
import { GuestRam } from '../support/guest-ram.js';

const REGION = 1 << 20;

/**
 * An engine over a byte array. Operations complete when the test calls
 * {@link complete}, or at once inside submit with `syncComplete` (as the
 * sync engine, or any engine handing back a failed submit, does).
 */
class MemEngine implements IoEngine {
  readonly name = 'sync' as const;
  readonly direct = false;
  readonly alignment = 1;
  readonly image: Uint8Array;
  inFlight = 0;
  syncComplete = false;
  submits = 0;
  private buffers: Uint8Array[] = [];
  private iovs: number[] = [];
  private ops: number[] = [];
  private done: number[] = [];
  private handler: IoCompletion = () => {};
  private batchDone: () => void = () => {};

  constructor(
    bytes: number,
    private readonly maxIovs: number,
    private readonly depth: number,
  ) {
    this.image = new Uint8Array(bytes);
  }

  get sizeBytes(): number {
    return this.image.length;
  }

  get stagedIovs(): number {
    return this.iovs.length / 3;
  }

  setBuffers(buffers: SharedArrayBuffer[]): void {
    this.buffers = buffers.map((b) => new Uint8Array(b));
  }

  addIov(buffer: number, offset: number, length: number): boolean {
    if (this.stagedIovs >= this.maxIovs) return false;
    this.iovs.push(buffer, offset, length);
    return true;
  }

  queueReadWrite(op: IoOpCode, at: number, first: number, count: number, ud: number): boolean {
    if (this.ops.length / 5 + this.inFlight >= this.depth) return false;
    this.ops.push(op, at, first, count, ud);
    return true;
  }

  queueSlowOp(_op: IoOpCode, _at: number, _length: number, userData: number): void {
    this.inFlight++;
    this.done.push(userData, 0);
  }

  submit(): void {
    this.submits++;
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
      this.done.push(ud, pos - at);
    }
    this.ops = [];
    this.iovs = [];
    if (this.syncComplete) this.complete();
  }

  /** Delivers every finished operation, then ends the batch once. */
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

interface Setup {
  ram: GuestRam;
  engine: MemEngine;
  driver: DriverQueue;
  device: BlkDevice;
  stats: StatCounters;
  notified: number[];
  warnings: string[];
}

function setup(opts: { slots?: number; maxIovs?: number; depth?: number } = {}): Setup {
  // Two regions back to back: a buffer across 1 MiB becomes two segments.
  const ram = new GuestRam([
    { guestPhysAddr: 0, size: REGION },
    { guestPhysAddr: REGION, size: REGION },
  ]);
  const engine = new MemEngine(1 << 20, opts.maxIovs ?? 1024, opts.depth ?? 256);
  for (let i = 0; i < engine.image.length; i++) engine.image[i] = (i * 31 + (i >> 9)) & 0xff;
  const stats = StatCounters.create(BLK_STAT_NAMES);
  const warnings: string[] = [];
  const device = new BlkDevice({
    engine,
    geometry: {
      imageBytes: engine.sizeBytes,
      blockSize: 512,
      numQueues: 1,
      segMax: 30,
      readonly: false,
    },
    serial: 'unit-serial',
    queueSize: opts.slots ?? 16,
    stats,
    warn: (m) => warnings.push(m),
  });
  const driver = new DriverQueue(ram, 64);
  const embedded = embed(device, ram.toGuestMemory());
  embedded.start(0, driver.config(), 48);
  return { ram, engine, driver, device, stats, notified: embedded.notified, warnings };
}

/** A 16-byte request header. */
function header(type: number, sector: number): Uint8Array {
  const h = new DataView(new ArrayBuffer(16));
  h.setUint32(0, type, true);
  h.setUint32(4, 0xdeadbeef, true); // reserved: ignored
  h.setUint32(8, sector % 2 ** 32, true);
  h.setUint32(12, Math.floor(sector / 2 ** 32), true);
  return new Uint8Array(h.buffer);
}

/** Lays `bytes` out over buffers of the given lengths (guest addresses from `at`). */
function split(s: Setup, lengths: number[], write: boolean, at?: number[]): DriverBuffer[] {
  return lengths.map((len, i) => ({ addr: at?.[i] ?? s.ram.alloc(len, 1), len, write }));
}

function writeAcross(s: Setup, bufs: DriverBuffer[], data: Uint8Array): void {
  let done = 0;
  for (const b of bufs) {
    const n = Math.min(b.len, data.length - done);
    if (n > 0) s.ram.write(b.addr, data.subarray(done, done + n));
    done += n;
  }
}

function readAcross(s: Setup, bufs: DriverBuffer[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let done = 0;
  for (const b of bufs) {
    const n = Math.min(b.len, length - done);
    if (n > 0) out.set(s.ram.read(b.addr, n), done);
    done += n;
  }
  return out;
}

function usedAll(d: DriverQueue): { id: number; len: number }[] {
  const used: { id: number; len: number }[] = [];
  for (let u = d.popUsed(); u !== null; u = d.popUsed()) used.push(u);
  return used;
}

/** A read of `sectors` sectors at `sector`: header + data + status, data buffers of 512 bytes. */
function addRead(s: Setup, sector: number, sectors: number) {
  const hdr = s.ram.alloc(16, 8);
  s.ram.write(hdr, header(BlkRequestType.IN, sector));
  const data = split(s, Array(sectors).fill(SECTOR_SIZE), true);
  const status = s.ram.alloc(1, 1);
  s.ram.write(status, Uint8Array.of(0xee));
  const head = s.driver.addChain([
    { addr: hdr, len: 16, write: false },
    ...data,
    { addr: status, len: 1, write: true },
  ]);
  return { head, data, status, sector, sectors };
}

function expectReadDone(s: Setup, r: ReturnType<typeof addRead>): void {
  const bytes = r.sectors * SECTOR_SIZE;
  const at = r.sector * SECTOR_SIZE;
  expect(readAcross(s, r.data, bytes)).toEqual(s.engine.image.subarray(at, at + bytes));
  expect(s.ram.read(r.status, 1)[0]).toBe(BlkStatus.OK);
}

describe('BlkDevice requests through ChainReader / ChainWriter', () => {
  it('reads header, data and status byte wherever the descriptors split them', () => {
    const s = setup();
    // One header descriptor across the region boundary (two segments), the
    // payload in descriptors of 5, 1000 and 19 bytes.
    const headerParts = split(s, [3, 13], false, [REGION - 3, REGION]);
    writeAcross(s, headerParts, header(BlkRequestType.OUT, 8));
    const payload = new Uint8Array(1024).map((_, i) => (i * 7 + 3) & 0xff);
    const outData = split(s, [5, 1000, 19], false);
    writeAcross(s, outData, payload);
    const outStatus = s.ram.alloc(1, 1);
    s.driver.addChain([
      { addr: REGION - 3, len: 16, write: false },
      ...outData,
      { addr: outStatus, len: 1, write: true },
    ]);
    s.device.kick(0);
    s.engine.complete();
    expect(s.engine.image.subarray(8 * SECTOR_SIZE, 10 * SECTOR_SIZE)).toEqual(payload);
    expect(s.ram.read(outStatus, 1)[0]).toBe(BlkStatus.OK);

    const inHdr = s.ram.alloc(16, 1);
    s.ram.write(inHdr, header(BlkRequestType.IN, 8));
    // 1024 data bytes and the status byte, which shares the last descriptor.
    const inBufs = split(s, [700, 325], true);
    s.driver.addChain([{ addr: inHdr, len: 16, write: false }, ...inBufs]);
    s.device.kick(0);
    s.engine.complete();
    const back = readAcross(s, inBufs, 1025);
    expect(back.subarray(0, 1024)).toEqual(payload);
    expect(back[1024]).toBe(BlkStatus.OK);
    expect(usedAll(s.driver).map((u) => u.len)).toEqual([1, 1025]);
    expect(s.stats.snapshot()).toMatchObject({ requests: 2, bytesWritten: 1024, bytesRead: 1024 });
    expect(s.warnings).toEqual([]);
  });

  it('answers GET_ID NUL-padded to 20 bytes, or truncated to the room there is', () => {
    const s = setup();
    const ids = [24, 9].map((room) => {
      const hdr = s.ram.alloc(16, 8);
      s.ram.write(hdr, header(BlkRequestType.GET_ID, 0));
      const out = s.ram.alloc(room, 1);
      s.ram.write(out, new Uint8Array(room).fill(0xff));
      // The answer and the status byte split 4 + rest.
      s.driver.addChain([
        { addr: hdr, len: 16, write: false },
        { addr: out, len: 4, write: true },
        { addr: out + 4, len: room - 4, write: true },
      ]);
      return { out, room };
    });
    s.device.kick(0);
    const serial = new TextEncoder().encode('unit-serial');
    const full = s.ram.read(ids[0].out, 24);
    expect(full.subarray(0, 11)).toEqual(serial);
    expect(full.subarray(11, 20)).toEqual(new Uint8Array(9));
    // Bytes past the answer are left alone; the status byte is the last one.
    expect(full.subarray(20, 23)).toEqual(Uint8Array.of(0xff, 0xff, 0xff));
    expect(full[23]).toBe(BlkStatus.OK);
    const short = s.ram.read(ids[1].out, 9);
    expect(short.subarray(0, 8)).toEqual(serial.subarray(0, 8));
    expect(short[8]).toBe(BlkStatus.OK);
    expect(usedAll(s.driver).map((u) => u.len)).toEqual([21, 9]);
  });

  it('reads a discard segment that spans descriptors; refuses a short header and no status byte', () => {
    const s = setup();
    const seg = new DataView(new ArrayBuffer(16));
    seg.setUint32(0, 4, true);
    seg.setUint32(8, 2, true);
    const reqBytes = new Uint8Array(32);
    reqBytes.set(header(BlkRequestType.DISCARD, 0));
    reqBytes.set(new Uint8Array(seg.buffer), 16);
    const req = split(s, [10, 11, 11], false);
    writeAcross(s, req, reqBytes);
    const st1 = s.ram.alloc(1, 1);
    s.driver.addChain([...req, { addr: st1, len: 1, write: true }]);
    const shortHdr = s.ram.alloc(8, 8);
    const st2 = s.ram.alloc(1, 1);
    s.ram.write(st2, Uint8Array.of(0xee));
    s.driver.addChain([
      { addr: shortHdr, len: 8, write: false },
      { addr: st2, len: 1, write: true },
    ]);
    const noStatus = s.ram.alloc(16, 8);
    s.ram.write(noStatus, header(BlkRequestType.IN, 0));
    s.driver.addChain([{ addr: noStatus, len: 16, write: false }]);
    s.device.kick(0);
    s.engine.complete();
    expect(s.ram.read(st1, 1)[0]).toBe(BlkStatus.OK);
    expect(s.ram.read(st2, 1)[0]).toBe(BlkStatus.IOERR);
    expect(usedAll(s.driver).map((u) => u.len)).toEqual([1, 0, 1]);
    expect(s.stats.snapshot().badChains).toBe(1);
    expect(s.warnings.join()).toMatch(/VIRTQ_NO_STATUS_BYTE/);
  });

  it('submits and stages again from the same position when the staging table is full', () => {
    const s = setup({ maxIovs: 5 });
    const reads = [0, 4, 8].map((sector) => addRead(s, sector, 3));
    const before = s.engine.submits;
    s.device.kick(0);
    // 3 iovecs each: the second and third requests found the table full.
    expect(s.engine.submits - before).toBe(3);
    s.engine.complete();
    for (const r of reads) expectReadDone(s, r);
    expect(usedAll(s.driver).map((u) => u.len)).toEqual([1537, 1537, 1537]);
  });
});

describe('BlkDevice out of request slots', () => {
  it('leaves chains in the ring with kicks off, and drains them as slots free', () => {
    const s = setup({ slots: 2 });
    const reads = [0, 1, 2, 3, 4].map((i) => addRead(s, i * 2, 1));
    s.device.kick(0);
    expect(s.engine.inFlight).toBe(2);
    expect(s.driver.usedFlags & VIRTQ_USED_F_NO_NOTIFY).toBe(VIRTQ_USED_F_NO_NOTIFY);
    // A kick while every slot is busy changes nothing.
    s.device.kick(0);
    expect(s.engine.inFlight).toBe(2);
    let batches = 0;
    while (s.engine.complete() > 0) batches++;
    expect(batches).toBe(3);
    for (const r of reads) expectReadDone(s, r);
    expect(usedAll(s.driver)).toHaveLength(5);
    expect(s.driver.usedFlags).toBe(0);
    expect(s.stats.snapshot().requests).toBe(5);
  });

  it('turns kicks back on when the last free slot went to the last chain in the ring', () => {
    const s = setup({ slots: 2 });
    const reads = [addRead(s, 0, 1), addRead(s, 2, 1)];
    s.device.kick(0);
    // The drain stopped on the handler: it cannot know the ring is empty.
    expect(s.driver.usedFlags & VIRTQ_USED_F_NO_NOTIFY).toBe(VIRTQ_USED_F_NO_NOTIFY);
    s.engine.complete();
    for (const r of reads) expectReadDone(s, r);
    expect(s.driver.usedFlags).toBe(0);
    // The driver sees kicks on and kicks for the next request.
    const next = addRead(s, 4, 1);
    expect(s.driver.needsKick()).toBe(true);
    s.device.kick(0);
    s.engine.complete();
    expectReadDone(s, next);
  });

  it('does not start a drain inside a drain when completions arrive during submit', () => {
    const s = setup({ slots: 2, maxIovs: 4 });
    const first = [addRead(s, 0, 3), addRead(s, 3, 3)];
    s.device.kick(0);
    const rest = [addRead(s, 6, 3), addRead(s, 9, 3), addRead(s, 12, 3), addRead(s, 15, 3)];
    // From now on the engine completes inside submit: staging the second of
    // the next requests submits the first, whose completion frees a slot
    // while the starved queue is being drained.
    s.engine.syncComplete = true;
    s.engine.complete();
    for (const r of [...first, ...rest]) expectReadDone(s, r);
    expect(usedAll(s.driver)).toHaveLength(6);
    expect(s.driver.usedFlags).toBe(0);
    expect(s.device.requestsInFlight).toBe(0);
  });
});
