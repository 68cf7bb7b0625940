/**
 * Dirty-page logging for live migration (issue 9), driven by the project's own
 * front end over real sockets as QEMU's vhost_migration_log does: SET_LOG_BASE
 * (a memfd), SET_FEATURES with VHOST_F_LOG_ALL, SET_VRING_ADDR with the LOG
 * flag. The bitmap must hold exactly the pages the device wrote (payload,
 * status byte, used element and used.idx), already when the driver sees the
 * used entry; nothing while logging is off; malformed SET_LOG_BASE refused
 * with a clear error while the daemon keeps serving. GET_VRING_BASE with
 * requests in flight completes all of them first. Net: SEND_RARP moves the
 * guest's MAC address to the announcing port in every other port's table.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import { ProtocolFeature, Request } from '../../src/vhost-user/protocol.js';
import {
  BLK_DRIVER_FEATURES,
  BlkDriver,
  BlkType,
  REQ_HEADER_SIZE,
} from '../frontend/blk-driver.js';
import { ConsoleDriver } from '../frontend/console-driver.js';
import { ethFrame, macBytes, NetDriver } from '../frontend/net-driver.js';
import { bitsOf, FRONTEND_PROTOCOL_FEATURES } from '../frontend/vmm.js';
import { pattern } from '../support/bytes.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { markedPages, pagesOf } from '../support/dirty-pages.js';
import type { PackedDriverQueue } from '../support/packed-driver.js';
import { waitFor } from '../support/wait.js';

const PAGE = 4096;
const MiB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-dirty-'));
const daemons: Daemon[] = [];

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  rmSync(dir, { recursive: true, force: true });
});

function sorted(pages: Iterable<number>): number[] {
  return [...new Set(pages)].sort((x, y) => x - y);
}

describe('blk', () => {
  let daemon: Daemon;
  let drv: BlkDriver;
  const image = join(dir, 'disk.img');
  const socket = join(dir, 'blk.sock');
  const data = pattern(7, 64 * 1024);

  beforeAll(async () => {
    writeFileSync(image, Buffer.alloc(16 * MiB));
    daemon = await startDaemon(['blk', '--socket-path', socket, '--image', image]);
    daemons.push(daemon);
    drv = await BlkDriver.create({ socketPath: socket });
    expect((await drv.write(0, data)).status).toBe(0);
  }, 60_000);

  afterAll(async () => {
    await drv?.close();
  });

  /** Page-aligned guest buffers of `pages` pages, each on pages of its own. */
  function pageBuffer(pages: number): number {
    return drv.allocBuffer(pages * PAGE, PAGE);
  }

  /**
   * Reads `length` bytes at sector 0 into a buffer starting `skew` bytes into
   * its first page; returns the result, the pages the device may write (data,
   * status, used element, used.idx) and the bitmap as it was when the driver
   * took the used entry.
   */
  async function loggedRead(bits: Uint8Array | null, length: number, skew: number) {
    const q = drv.vmm.queues[0];
    const header = pageBuffer(1);
    const buf = pageBuffer(Math.ceil((length + skew) / PAGE));
    const status = pageBuffer(1);
    const h = new Uint8Array(REQ_HEADER_SIZE);
    new DataView(h.buffer).setUint32(0, BlkType.IN, true);
    drv.vmm.ram.write(header, h);
    drv.vmm.ram.write(status, new Uint8Array([0xff]));
    const slot = q.driver.usedIdx & (q.driver.size - 1);
    let seen: Uint8Array | null = null;
    const onUsed = q.onUsed;
    q.onUsed = (used) => {
      // What any reader of used.idx sees: the marks must be there already.
      seen = bits?.slice() ?? null;
      onUsed?.(used);
    };
    try {
      const result = await drv.submitRaw([
        { addr: header, len: REQ_HEADER_SIZE, write: false },
        { addr: buf + skew, len: length, write: true },
        { addr: status, len: 1, write: true },
      ]);
      const usedElem = q.driver.usedRing + 4 + 8 * slot;
      const expected = sorted([
        ...pagesOf(buf + skew, length),
        ...pagesOf(status, 1),
        ...pagesOf(usedElem, 8),
        ...pagesOf(q.driver.usedRing + 2, 2),
      ]);
      const got = drv.vmm.ram.read(buf + skew, length);
      const statusByte = drv.vmm.ram.read(status, 1)[0];
      return { result, expected, seen: seen as Uint8Array | null, got, statusByte, header };
    } finally {
      q.onUsed = onUsed;
      for (const b of [header, buf, status]) drv.freeBuffer(b);
    }
  }

  it('marks exactly the pages a read wrote, before the driver sees the used entry', async () => {
    const bits = await drv.vmm.startDirtyLog();
    bits.fill(0);
    const r = await loggedRead(bits, 3 * PAGE, 100);
    expect(r.statusByte).toBe(0);
    expect(Buffer.from(r.got).equals(Buffer.from(data.subarray(0, 3 * PAGE)))).toBe(true);
    expect(r.seen).not.toBeNull();
    // 3 pages at a skew of 100 touch 4; the header's page (device-readable) is not marked.
    expect(markedPages(r.seen as unknown as Uint8Array)).toEqual(r.expected);
    expect(r.expected).not.toContain(Math.floor(r.header / PAGE));
    expect(markedPages(bits)).toEqual(r.expected);
    await drv.vmm.stopDirtyLog();
  });

  it('marks only the status byte and the used ring for a write', async () => {
    const bits = await drv.vmm.startDirtyLog();
    bits.fill(0);
    const q = drv.vmm.queues[0];
    const slot = q.driver.usedIdx & (q.driver.size - 1);
    expect((await drv.write(64, pattern(3, 8192))).status).toBe(0);
    const marked = markedPages(bits);
    const usedPages = sorted([
      ...pagesOf(q.driver.usedRing + 4 + 8 * slot, 8),
      ...pagesOf(q.driver.usedRing + 2, 2),
    ]);
    for (const p of usedPages) expect(marked).toContain(p);
    // The status byte's page, and nothing else: the payload was only read by the device.
    expect(marked.length - usedPages.length).toBeLessThanOrEqual(1);
    await drv.vmm.stopDirtyLog();
  });

  it('marks nothing once logging is off again', async () => {
    const bits = await drv.vmm.startDirtyLog();
    await drv.vmm.stopDirtyLog();
    bits.fill(0);
    const r = await loggedRead(null, 2 * PAGE, 0);
    expect(r.statusByte).toBe(0);
    expect(markedPages(bits)).toEqual([]);
  });

  it('GET_VRING_BASE with requests in flight completes and publishes all it popped first; the rest resume at the next start, none lost or doubled', async () => {
    const bits = await drv.vmm.startDirtyLog();
    bits.fill(0);
    const q = drv.vmm.queues[0];
    const before = q.driver.usedIdx;
    // 128 KiB O_DIRECT reads: the first completes while most of the others are still in flight.
    const reads = Array.from({ length: 32 }, (_, i) =>
      drv.post({ type: 'read', sector: (i % 16) * 256, length: 32 * PAGE }),
    );
    q.kick();
    await waitFor(() => q.driver.usedIdx !== before, 'a first completion');
    // Stop at once, as QEMU does at the end of a migration. Whatever the device
    // popped is completed and published before the reply (used.idx = base);
    // what it had not popped waits in the avail ring for the next start.
    const [base] = await drv.vmm.stop();
    const popped = (base - before) & 0xffff;
    expect(popped).toBeGreaterThan(0);
    expect(popped).toBeLessThanOrEqual(32);
    expect(q.driver.usedIdx).toBe(base);
    const marked = markedPages(bits).length;
    if (popped > 0) expect(marked).toBeGreaterThan(0);
    // The next start resumes at base: every request completes once, none is lost.
    await drv.vmm.start();
    const results = await Promise.all(reads);
    expect(results.every((r) => r.status === 0)).toBe(true);
    expect(q.driver.usedIdx).toBe((before + 32) & 0xffff);
    expect(drv.violations).toEqual([]);
    await drv.vmm.stopDirtyLog();
    expect((await drv.read(0, PAGE)).status).toBe(0);
  });

  it('refuses a malformed SET_LOG_BASE with a clear error and keeps serving', async () => {
    const vmm = drv.vmm;
    const memfd = native.memfdCreate('bad-log', PAGE);
    const efd = native.eventfd(0);
    try {
      const cases: [number, number, number, RegExp][] = [
        [memfd, 0, 0, /SET_LOG_BASE: log size 0 is not in 1\.\.\d+ bytes \(VHOST_USER_BAD_VALUE\)/],
        [memfd, 2 * PAGE, 0, /log at offset 0 claims 8192 bytes of a 4096-byte file/],
        [memfd, PAGE, PAGE, /log at offset 4096 claims 4096 bytes of a 4096-byte file/],
        [efd, PAGE, 0, /SET_LOG_BASE: log fd.*\(VHOST_USER_BAD_FD\)/],
        [-1, PAGE, 0, /SET_LOG_BASE carries 0 fds, expected 1/],
      ];
      for (const [fd, size, offset, message] of cases) {
        expect(await vmm.setLogBase(fd, size, offset)).toBe(1n);
        await waitFor(() => message.test(daemon.log()), `the daemon's error ${message}`);
      }
    } finally {
      native.close(memfd);
      native.close(efd);
    }
    expect((await drv.read(0, PAGE)).status).toBe(0);
  });
});

describe('blk with packed rings', () => {
  it("marks exactly the pages a read wrote and the used element's descriptor slot, before the driver sees it", async () => {
    const image = join(dir, 'packed.img');
    const socket = join(dir, 'packed.sock');
    writeFileSync(image, Buffer.alloc(16 * MiB));
    // Packed rings are offered only without inflight tracking.
    daemons.push(
      await startDaemon(['blk', '--socket-path', socket, '--image', image], undefined, {
        VHOST_RT_INFLIGHT: 'off',
      }),
    );
    const drv = await BlkDriver.create({
      socketPath: socket,
      driverFeatures: BLK_DRIVER_FEATURES | (1n << 34n),
    });
    try {
      expect(drv.vmm.hasFeature(34)).toBe(true);
      const q = drv.vmm.queues[0];
      const ring = q.driver as PackedDriverQueue;
      const bits = await drv.vmm.startDirtyLog();
      for (let round = 0; round < 3; round++) {
        bits.fill(0);
        const header = drv.allocBuffer(PAGE, PAGE);
        const buf = drv.allocBuffer(3 * PAGE, PAGE);
        const status = drv.allocBuffer(PAGE, PAGE);
        const h = new Uint8Array(REQ_HEADER_SIZE);
        new DataView(h.buffer).setUint32(0, BlkType.IN, true);
        drv.vmm.ram.write(header, h);
        const slot = ring.usedPosition.slot;
        let seen: number[] = [];
        const onUsed = q.onUsed;
        q.onUsed = (used) => {
          seen = markedPages(bits);
          onUsed?.(used);
        };
        const result = await drv.submitRaw([
          { addr: header, len: REQ_HEADER_SIZE, write: false },
          { addr: buf + 100, len: 2 * PAGE, write: true },
          { addr: status, len: 1, write: true },
        ]);
        q.onUsed = onUsed;
        expect(result.len).toBe(2 * PAGE + 1);
        expect(drv.vmm.ram.read(status, 1)[0]).toBe(0);
        const expected = sorted([
          ...pagesOf(buf + 100, 2 * PAGE),
          ...pagesOf(status, 1),
          ...pagesOf(ring.descTable + 16 * slot, 16),
        ]);
        expect(seen).toEqual(expected);
        expect(markedPages(bits)).toEqual(expected);
        for (const b of [header, buf, status]) drv.freeBuffer(b);
      }
      await drv.vmm.stopDirtyLog();
    } finally {
      await drv.close();
    }
  });
});

describe('blk with two queues', () => {
  it("marks each ring's used element at that ring's log address", async () => {
    const image = join(dir, 'mq.img');
    const socket = join(dir, 'mq.sock');
    writeFileSync(image, Buffer.alloc(4 * MiB));
    const daemon = await startDaemon([
      'blk',
      '--socket-path',
      socket,
      '--image',
      image,
      '--queues',
      '2',
    ]);
    daemons.push(daemon);
    const drv = await BlkDriver.create({ socketPath: socket, queues: 2 });
    try {
      const bits = await drv.vmm.startDirtyLog();
      for (const qi of [0, 1]) {
        bits.fill(0);
        const q = drv.vmm.queues[qi];
        const slot = q.driver.usedIdx & (q.driver.size - 1);
        expect((await drv.read(8, PAGE, qi)).status).toBe(0);
        const marked = markedPages(bits);
        for (const p of pagesOf(q.driver.usedRing + 4 + 8 * slot, 8)) expect(marked).toContain(p);
        const other = drv.vmm.queues[1 - qi].driver.usedRing;
        // The other ring's used ring was not written (unless it shares a page).
        if (Math.floor(other / PAGE) !== Math.floor(q.driver.usedRing / PAGE))
          expect(marked).not.toContain(Math.floor((other + 2) / PAGE));
      }
      await drv.vmm.stopDirtyLog();
    } finally {
      await drv.close();
    }
  });
});

describe('blk without LOG_SHMFD', () => {
  it('refuses SET_LOG_BASE', async () => {
    const image = join(dir, 'plain.img');
    const socket = join(dir, 'plain.sock');
    writeFileSync(image, Buffer.alloc(MiB));
    const daemon = await startDaemon(['blk', '--socket-path', socket, '--image', image]);
    daemons.push(daemon);
    const protocolFeatures = FRONTEND_PROTOCOL_FEATURES & ~bitsOf([ProtocolFeature.LOG_SHMFD]);
    const drv = await BlkDriver.create({ socketPath: socket, protocolFeatures });
    try {
      expect(drv.vmm.hasProtocolFeature(ProtocolFeature.LOG_SHMFD)).toBe(false);
      const memfd = native.memfdCreate('log', PAGE);
      // Without LOG_SHMFD the request has no reply of its own: ask for an ack.
      const ack = drv.vmm.conn.request(Request.SET_LOG_BASE, new Uint8Array(16), [memfd], {
        needReply: true,
      });
      await expect(ack).rejects.toThrow();
      native.close(memfd);
      await waitFor(
        () => daemon.log().includes('SET_LOG_BASE without LOG_SHMFD negotiated'),
        'the refusal',
      );
    } finally {
      await drv.close();
    }
  });
});

describe('net receive', () => {
  it('marks the pages a received frame was written to (up to its used length), not the rest of the buffer', async () => {
    const sock = (p: string) => join(dir, `rx-${p}.sock`);
    const daemon = await startDaemon([
      'net',
      '--socket-path',
      sock('a'),
      '--socket-path',
      sock('b'),
    ]);
    daemons.push(daemon);
    // Receive buffers of 3 pages: a 100-byte frame fills part of the first one or two.
    const a = await NetDriver.create({
      socketPath: sock('a'),
      rxBuffers: 4,
      rxBufferBytes: 3 * PAGE,
    });
    const b = await NetDriver.create({ socketPath: sock('b') });
    try {
      const bits = await a.vmm.startDirtyLog();
      bits.fill(0);
      const rxq = a.rxq;
      let seen: Uint8Array | null = null;
      let used = { id: -1, len: 0, slot: -1, addr: -1 };
      const onUsed = rxq.onUsed;
      rxq.onUsed = (u) => {
        seen = bits.slice();
        const slot = (rxq.driver.usedIdx - 1) & (rxq.driver.size - 1);
        const desc = new DataView(a.vmm.ram.read(rxq.driver.descTable + 16 * u.id, 16).buffer);
        used = { id: u.id, len: u.len, slot, addr: desc.getUint32(0, true) };
        onUsed?.(u);
      };
      await b.send(ethFrame('ff:ff:ff:ff:ff:ff', '02:00:00:00:00:0b', 100, 5));
      await a.waitReceived(1);
      rxq.onUsed = onUsed;
      expect(used.len).toBe(12 + 100);
      const expected = sorted([
        ...pagesOf(used.addr, used.len),
        ...pagesOf(rxq.driver.usedRing + 4 + 8 * used.slot, 8),
        ...pagesOf(rxq.driver.usedRing + 2, 2),
      ]);
      expect(markedPages(seen as unknown as Uint8Array)).toEqual(expected);
      // The rest of the 3-page buffer was not written, so not marked.
      expect(markedPages(seen as unknown as Uint8Array)).not.toContain(
        Math.floor((used.addr + 3 * PAGE - 1) / PAGE),
      );
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('console input', () => {
  it('marks the pages console input was written to, up to its used length', async () => {
    const socket = join(dir, 'con.sock');
    const input = join(dir, 'con.in');
    const daemon = await startDaemon([
      'console',
      '--socket-path',
      socket,
      '--log',
      join(dir, 'con.log'),
      '--input',
      input,
    ]);
    daemons.push(daemon);
    const d = await ConsoleDriver.create({ socketPath: socket, ports: 1, rxBufferBytes: 3 * PAGE });
    try {
      const bits = await d.vmm.startDirtyLog();
      bits.fill(0);
      const rxq = d.rxQueue(0);
      let seen: Uint8Array | null = null;
      let used = { len: 0, slot: -1, addr: -1 };
      const onUsed = rxq.onUsed;
      rxq.onUsed = (u) => {
        seen ??= bits.slice();
        if (used.slot < 0) {
          const slot = (rxq.driver.usedIdx - 1) & (rxq.driver.size - 1);
          const desc = new DataView(d.vmm.ram.read(rxq.driver.descTable + 16 * u.id, 16).buffer);
          used = { len: u.len, slot, addr: desc.getUint32(0, true) };
        }
        onUsed?.(u);
      };
      const typist = createConnection(input);
      typist.end('typed into the guest\n');
      await waitFor(() => d.text(0) === 'typed into the guest\n', 'the input in the guest');
      rxq.onUsed = onUsed;
      expect(used.len).toBe(21);
      const expected = sorted([
        ...pagesOf(used.addr, used.len),
        ...pagesOf(rxq.driver.usedRing + 4 + 8 * used.slot, 8),
        ...pagesOf(rxq.driver.usedRing + 2, 2),
      ]);
      expect(markedPages(seen as unknown as Uint8Array)).toEqual(expected);
    } finally {
      await d.close();
    }
  });
});

describe('net SEND_RARP', () => {
  it("moves the announced MAC to the announcing port in the other ports' tables", async () => {
    const sock = (p: string) => join(dir, `net-${p}.sock`);
    const daemon = await startDaemon([
      'net',
      ...['a', 'b', 'c'].flatMap((p) => ['--socket-path', sock(p)]),
    ]);
    daemons.push(daemon);
    const protocolFeatures = FRONTEND_PROTOCOL_FEATURES | bitsOf([ProtocolFeature.RARP]);
    const a = await NetDriver.create({ socketPath: sock('a'), protocolFeatures });
    const b = await NetDriver.create({ socketPath: sock('b'), protocolFeatures });
    const c = await NetDriver.create({ socketPath: sock('c'), protocolFeatures });
    try {
      expect(a.vmm.hasProtocolFeature(ProtocolFeature.RARP)).toBe(true);
      const guest = '52:54:00:12:34:56';
      const peer = '02:00:00:00:00:0b';
      // The guest lives behind C: B learns it from a frame C sends.
      await c.send(ethFrame(peer, guest, 100, 1));
      await b.waitReceived(1);
      await b.send(ethFrame(guest, peer, 100, 2));
      await c.waitReceived(1);
      const aBefore = a.received.length;
      // The guest migrates to A: its new front end asks the switch to announce it.
      const mac = new Uint8Array(8);
      mac.set(macBytes(guest));
      await a.vmm.conn.request(Request.SEND_RARP, mac, [], { needReply: true });
      const [announce] = (await b.waitReceived(2)).slice(1);
      expect(Buffer.from(announce.frame.subarray(0, 14)).toString('hex')).toBe(
        `ffffffffffff${guest.replaceAll(':', '')}8035`,
      );
      expect(announce.frame.length).toBe(60);
      await c.waitReceived(2); // C hears the broadcast too
      // B's unicast to the guest now goes to A, not to C.
      const cBefore = c.received.length;
      await b.send(ethFrame(guest, peer, 100, 3));
      await a.waitReceived(aBefore + 1);
      expect(Buffer.from(a.received[aBefore].frame.subarray(0, 6)).toString('hex')).toBe(
        guest.replaceAll(':', ''),
      );
      // A broadcast from B after it: C gets it after anything B sent it before (one ring, in order).
      await b.send(ethFrame('ff:ff:ff:ff:ff:ff', peer, 100, 4));
      await c.waitReceived(cBefore + 1);
      expect(c.received.length).toBe(cBefore + 1);
      expect(Buffer.from(c.received[cBefore].frame.subarray(0, 6)).toString('hex')).toBe(
        'ffffffffffff',
      );
    } finally {
      for (const d of [a, b, c]) await d.close();
    }
  });
});
