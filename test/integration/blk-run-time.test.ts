/**
 * Run-time changes of a blk device (issues 9 and 10): the model embedded on a
 * real linux-aio engine (a shrink cutting a request in flight, writethrough
 * with VIRTIO_BLK_F_CONFIG_WCE), then a real daemon over its control socket
 * with the project's front end (block-resize, SIGHUP, device-add/device-del).
 */
import { mkdtempSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BLK_STAT_NAMES,
  BlkDevice,
  BlkStatus,
  createVrings,
  type IoEngine,
  LinuxAioEngine,
  SplitVirtqueue,
  StatCounters,
} from '../../src/index.js';
import { BlkDriver, BlkFeature } from '../frontend/index.js';
import { blkTraffic } from '../support/blk-traffic.js';
import { type Daemon, startBlkDaemon, startDaemon } from '../support/daemon.js';
import { DriverQueue } from '../support/driver-queue.js';
import { GuestRam } from '../support/guest-ram.js';
import { type Json, QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-blk-run-time-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A BlkDevice on a real linux-aio engine over guest RAM, driven as an embedding VMM would. */
function embeddedBlk(image: string) {
  const ram = new GuestRam([{ guestPhysAddr: 0, size: 4 * MiB }]);
  const driver = new DriverQueue(ram, 64);
  const memory = ram.toGuestMemory();
  const real = new LinuxAioEngine({
    path: image,
    readonly: false,
    direct: true,
    depth: 64,
    maxIovs: 1024,
    warn: () => {},
  });
  // The real engine, with its slow operations (flushes) counted on the way through.
  const slowOps: number[] = [];
  const engine: IoEngine = real;
  const queueSlowOp = real.queueSlowOp.bind(real);
  engine.queueSlowOp = (op, offset, length, userData) => {
    slowOps.push(op);
    queueSlowOp(op, offset, length, userData);
  };
  let configChanges = 0;
  let wake: () => void = () => {};
  const stats = StatCounters.create(BLK_STAT_NAMES);
  const device = new BlkDevice({
    engine,
    geometry: {
      imageBytes: real.sizeBytes,
      blockSize: 512,
      numQueues: 1,
      segMax: 62,
      readonly: false,
    },
    serial: 'run-time',
    queueSize: 64,
    stats,
    warn: () => {},
    configChanged: () => configChanges++,
  });
  const vrings = createVrings(1, () => wake());
  device.activate(vrings);
  device.setMemory(memory);
  vrings[0].start(new SplitVirtqueue(memory, driver.config(), 64));
  vrings[0].enabled = true;
  device.kick(0);
  /** Queues one request; `status()` reads its status byte. */
  const request = (type: number, sector: number, data: Uint8Array | number) => {
    const header = ram.alloc(16, 16);
    const len = typeof data === 'number' ? data : data.length;
    const buf = ram.alloc(Math.max(len, 1), 4096);
    const status = ram.alloc(1, 1);
    ram.write(status, new Uint8Array([0xff]));
    const h = new DataView(new ArrayBuffer(16));
    h.setUint32(0, type, true);
    h.setUint32(8, sector, true);
    ram.write(header, new Uint8Array(h.buffer));
    if (typeof data !== 'number') ram.write(buf, data);
    const chain = [{ addr: header, len: 16, write: false }];
    if (len > 0) chain.push({ addr: buf, len, write: typeof data === 'number' });
    chain.push({ addr: status, len: 1, write: true });
    driver.addChain(chain);
    return { status: () => ram.read(status, 1)[0], data: () => ram.read(buf, len) };
  };
  /** Resolves once `n` used entries came back in all. */
  let used = 0;
  const completed = async (n: number) => {
    for (;;) {
      for (let u = driver.popUsed(); u !== null; u = driver.popUsed()) used++;
      if (used >= n) return;
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
    }
  };
  return {
    device,
    request,
    completed,
    slowOps,
    configChanges: () => configChanges,
    stats,
    config: () => {
      const out = new Uint8Array(64);
      device.readConfig(0, out);
      return new DataView(out.buffer);
    },
  };
}

describe('BlkDevice at run time (embedded, linux-aio)', () => {
  it('a shrink fails the request in flight past the new end with IOERR, and later ones at once', async () => {
    const image = join(dir, 'shrink.img');
    writeFileSync(image, Buffer.alloc(8 * MiB));
    const b = embeddedBlk(image);
    const tail = (8 * MiB - 4096) / 512;
    const inFlight = b.request(1, tail, new Uint8Array(4096).fill(7));
    const inside = b.request(0, 0, 4096);
    b.device.kick(0); // submitted now; the completions are read only once this test yields
    const resized = b.device.resize(4 * MiB);
    expect(b.config().getBigUint64(0, true)).toBe(BigInt((4 * MiB) / 512));
    expect(b.configChanges()).toBe(1);
    await resized; // resolves once the request past the end has completed
    await b.completed(2);
    expect(inFlight.status()).toBe(BlkStatus.IOERR);
    expect(inside.status()).toBe(BlkStatus.OK);
    const after = b.request(0, tail, 4096);
    const edge = b.request(0, (4 * MiB - 4096) / 512, 4096);
    b.device.kick(0);
    await b.completed(4);
    expect(after.status()).toBe(BlkStatus.IOERR);
    expect(edge.status()).toBe(BlkStatus.OK);
    await b.device.resize(8 * MiB); // nothing past the end: resolves at once
    expect(b.configChanges()).toBe(2);
    await b.device.close();
  });

  it('offers CONFIG_WCE; writethrough flushes every write before it completes', async () => {
    const image = join(dir, 'wce.img');
    writeFileSync(image, Buffer.alloc(MiB));
    const b = embeddedBlk(image);
    expect(b.device.features & (1n << BigInt(BlkFeature.CONFIG_WCE))).not.toBe(0n);
    expect(b.config().getUint8(32)).toBe(1); // writeback at reset
    b.request(1, 0, new Uint8Array(4096).fill(1));
    b.device.kick(0);
    await b.completed(1);
    expect(b.slowOps).toEqual([]);

    expect(b.device.writeConfig(32, new Uint8Array([0]))).toBe(true);
    expect(b.config().getUint8(32)).toBe(0);
    expect(b.device.isWritethrough).toBe(true);
    const w = b.request(1, 8, new Uint8Array(4096).fill(2));
    b.device.kick(0);
    await b.completed(2);
    expect(w.status()).toBe(BlkStatus.OK);
    expect(b.slowOps).toHaveLength(1); // the flush that followed the write

    // Only the writeback byte is writable, and only with 0 or 1.
    expect(b.device.writeConfig(32, new Uint8Array([2]))).toBe(false);
    expect(b.device.writeConfig(0, new Uint8Array([1]))).toBe(false);
    expect(b.device.writeConfig(32, new Uint8Array([1]))).toBe(true);
    b.request(1, 16, new Uint8Array(4096).fill(3));
    b.device.kick(0);
    await b.completed(3);
    expect(b.slowOps).toHaveLength(1);
    await b.device.close();
  });
});

/** The error of a reply, or undefined when it succeeded. */
function error(reply: Json): { class: string; desc: string } | undefined {
  return reply.error as { class: string; desc: string } | undefined;
}

describe('vhost-rt blk at run time (daemon, control socket)', () => {
  let image: string;
  let socket: string;
  let control: string;
  let daemon: Daemon;

  beforeAll(async () => {
    image = join(dir, 'disk.img');
    socket = join(dir, 'blk.sock');
    control = join(dir, 'blk.qmp');
    writeFileSync(image, Buffer.alloc(4 * MiB));
    daemon = await startBlkDaemon(image, socket, control);
  });
  afterAll(async () => {
    await daemon.stop();
  });

  it('block-resize grows and shrinks the image; the front end is told and sees the new capacity', async () => {
    const c = await QmpClient.connect(control);
    const driver = await BlkDriver.create({ socketPath: socket });
    try {
      const channel = driver.vmm.backendChannel;
      expect(channel).toBeDefined();
      expect(driver.vmm.hasFeature(BlkFeature.CONFIG_WCE)).toBe(true);
      const grown = await c.execute('block-resize', { device: 0, size: 8 * MiB });
      expect(grown.return).toEqual({ size: 8 * MiB, previous: 4 * MiB });
      expect(statSync(image).size).toBe(8 * MiB);
      // The event goes out with (just before) the reply.
      expect(c.messages.find((m) => m.event === 'BLOCK_RESIZED')?.data).toEqual({
        device: 0,
        socket,
        size: 8 * MiB,
        previous: 4 * MiB,
      });
      await waitFor(() => channel?.configChanges === 1, 'CONFIG_CHANGE_MSG after the grow');
      const config = new DataView((await driver.vmm.getConfig(8)).buffer);
      expect(config.getBigUint64(0, true)).toBe(BigInt((8 * MiB) / 512));
      // The new tail serves verified I/O.
      const tail = new Uint8Array(4096).fill(0x5a);
      expect((await driver.write((8 * MiB - 4096) / 512, tail)).status).toBe(BlkStatus.OK);
      const back = await driver.read((8 * MiB - 4096) / 512, 4096);
      expect(back.status).toBe(BlkStatus.OK);
      expect(Buffer.from(back.data ?? []).equals(Buffer.from(tail))).toBe(true);

      const shrunk = await c.execute('block-resize', { device: 0, size: 2 * MiB });
      expect(shrunk.return).toEqual({ size: 2 * MiB, previous: 8 * MiB });
      expect(statSync(image).size).toBe(2 * MiB);
      await waitFor(() => channel?.configChanges === 2, 'CONFIG_CHANGE_MSG after the shrink');
      expect((await driver.read((2 * MiB) / 512, 512)).status).toBe(BlkStatus.IOERR);
      expect(await blkTraffic(driver, 4, 3, { bytes: 4096, slots: 8 })).toBe('ok');

      // Resized from outside: block-resize without a size (or SIGHUP) re-reads it.
      truncateSync(image, 3 * MiB);
      expect((await c.execute('block-resize', { device: 0 })).return).toEqual({
        size: 3 * MiB,
        previous: 2 * MiB,
      });
      truncateSync(image, 5 * MiB);
      daemon.proc.kill('SIGHUP');
      expect((await c.event('BLOCK_RESIZED')).data).toMatchObject({
        size: 5 * MiB,
        previous: 3 * MiB,
      });
      await waitFor(() => channel?.configChanges === 4, 'CONFIG_CHANGE_MSG after SIGHUP');
      expect(await blkTraffic(driver, 2, 5, { bytes: 4096, slots: 8 })).toBe('ok');
      expect(daemon.proc.exitCode).toBeNull();

      // Bad arguments are QMP errors naming the argument.
      expect(error(await c.execute('block-resize', { device: 0, size: 1000 }))?.desc).toMatch(
        /Parameter 'size'/,
      );
      expect(error(await c.execute('block-resize', { device: 3, size: MiB }))?.desc).toMatch(
        /Parameter 'device'/,
      );
      expect(error(await c.execute('block-resize', { size: MiB }))?.desc).toMatch(
        /Parameter 'device' is missing/,
      );
    } finally {
      await driver.close();
      c.close();
    }
  });

  it('device-add serves a new export on its own worker; device-del drains it and leaves the others alone', async () => {
    const c = await QmpClient.connect(control);
    const image2 = join(dir, 'added.img');
    const socket2 = join(dir, 'added.sock');
    const image3 = join(dir, 'spare.img');
    writeFileSync(image2, Buffer.alloc(2 * MiB));
    writeFileSync(image3, Buffer.alloc(MiB));
    const first = await BlkDriver.create({ socketPath: socket });
    try {
      const added = await c.execute('device-add', {
        kind: 'blk',
        'socket-path': socket2,
        image: image2,
        queues: 1,
        serial: 'added',
        cpus: '0',
        'iops-limit': 100000,
      });
      expect(added.return).toEqual({ device: 1, kind: 'blk', socket: socket2 });
      const devices = (await c.execute('query-devices')).return as {
        thread: { tid: number; cpus: number[] };
      }[];
      expect(devices).toHaveLength(2);
      expect(devices[1].thread.tid).not.toBe(devices[0].thread.tid);
      expect(devices[1].thread.cpus).toEqual([0]);
      const second = await BlkDriver.create({ socketPath: socket2 });
      expect((await second.getId()).id).toBe('added');
      expect(await blkTraffic(second, 8, 11, { bytes: 8192, slots: 4 })).toBe('ok');
      expect((await c.event('FRONTEND_CONNECTED')).data).toEqual({ device: 1, socket: socket2 });

      // Bad arguments name the argument; nothing is added.
      const bad = [
        [{ kind: 'scsi', 'socket-path': join(dir, 'x.sock'), image: image2 }, /'kind'/],
        [{ kind: 'blk', 'socket-path': join(dir, 'x.sock') }, /Parameter 'image'/],
        [{ kind: 'blk', 'socket-path': join(dir, 'x.sock'), image: image2, queues: 0 }, /'queues'/],
        [{ kind: 'blk', 'socket-path': socket2, image: image3 }, /Parameter 'socket-path'/],
        [{ kind: 'blk', 'socket-path': join(dir, 'x.sock'), image: join(dir, 'none') }, /image/],
        [{ kind: 'blk', 'socket-path': join(dir, 'x.sock'), image: image2, mac: 'x' }, /'mac'/],
      ] as const;
      for (const [args, desc] of bad)
        expect(error(await c.execute('device-add', args as unknown as Json))?.desc).toMatch(desc);
      expect((await c.execute('query-devices')).return).toHaveLength(2);

      // device-del of the first: its front end is disconnected, its socket removed; the added one serves on.
      let gone = false;
      void first.vmm.conn.closed.then(() => {
        gone = true;
      });
      const del = await c.execute('device-del', { device: 0 });
      expect(del.return).toEqual({ device: 0, kind: 'blk', socket });
      await waitFor(() => gone, 'the first front end to be disconnected');
      expect(() => statSync(socket)).toThrow();
      expect(await blkTraffic(second, 8, 21, { bytes: 4096, slots: 8 })).toBe('ok');
      const left = (await c.execute('query-devices')).return as { socket: string }[];
      expect(left.map((d) => d.socket)).toEqual([socket2]);
      expect(error(await c.execute('device-del', { device: 1 }))?.desc).toMatch(/'device'/);
      await second.close();
    } finally {
      await first.close().catch(() => {});
      c.close();
    }
  });
});

describe('vhost-rt blk shrunk under load (daemon, front end)', () => {
  let image: string;
  let socket: string;
  let control: string;
  let daemon: Daemon;

  beforeAll(async () => {
    image = join(dir, 'load.img');
    socket = join(dir, 'load.sock');
    control = join(dir, 'load.qmp');
    writeFileSync(image, Buffer.alloc(8 * MiB));
    daemon = await startBlkDaemon(image, socket, control);
  });
  afterAll(async () => {
    await daemon.stop();
  });

  it('every write past the new end completes (OK before the cut, IOERR after), the file ends at the new size', async () => {
    const c = await QmpClient.connect(control);
    const driver = await BlkDriver.create({
      socketPath: socket,
      queueSize: 128,
      heapBytes: 8 * MiB,
    });
    const statuses = new Map<number, number>();
    try {
      for (let round = 0; round < 4; round++) {
        expect(
          error(await c.execute('block-resize', { device: 0, size: 8 * MiB })),
        ).toBeUndefined();
        // 40 writes of 64 KiB in the upper half, in flight while the lower half is cut off.
        const writes = Array.from({ length: 40 }, (_, i) => ({
          type: 'write' as const,
          sector: (4 * MiB + (i % 64) * 65536) / 512,
          data: new Uint8Array(65536).fill(round + 1),
        }));
        const [results, shrunk] = await Promise.all([
          driver.submitBatch(writes),
          c.execute('block-resize', { device: 0, size: 4 * MiB }),
        ]);
        expect(shrunk.return).toEqual({ size: 4 * MiB, previous: 8 * MiB });
        for (const r of results) {
          expect([BlkStatus.OK, BlkStatus.IOERR]).toContain(r.status);
          statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        }
        // No write that was in flight re-extended the file after the cut.
        expect(statSync(image).size).toBe(4 * MiB);
        expect((await driver.read((4 * MiB) / 512, 4096)).status).toBe(BlkStatus.IOERR);
      }
      expect(await blkTraffic(driver, 4, 31, { bytes: 4096, slots: 8 })).toBe('ok');
      expect(driver.violations).toEqual([]);
      expect(daemon.proc.exitCode).toBeNull();
    } finally {
      await driver.close();
      c.close();
    }
  });
});

describe('vhost-rt blk --readonly at run time', () => {
  it('refuses to resize a read-only image but re-reads its size', async () => {
    const image = join(dir, 'ro.img');
    const control = join(dir, 'ro.qmp');
    writeFileSync(image, Buffer.alloc(MiB));
    const d = await startDaemon([
      'blk',
      '--socket-path',
      join(dir, 'ro.sock'),
      '--image',
      image,
      '--readonly',
      '--control-socket',
      control,
    ]);
    const c = await QmpClient.connect(control);
    try {
      expect(error(await c.execute('block-resize', { device: 0, size: 2 * MiB }))?.desc).toMatch(
        /read-only/,
      );
      expect(statSync(image).size).toBe(MiB);
      truncateSync(image, 3 * MiB);
      expect((await c.execute('block-resize', { device: 0 })).return).toEqual({
        size: 3 * MiB,
        previous: MiB,
      });
    } finally {
      c.close();
      await d.stop();
    }
  });
});
