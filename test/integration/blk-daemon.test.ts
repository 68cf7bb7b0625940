/**
 * The `vhost-rt blk` daemon driven by the project's own front end over a real
 * Unix socket: memfd guest RAM, real eventfds, QEMU 7.2's negotiation. Data
 * is checked in the image file on disk; hostile chains and malformed messages
 * must fail cleanly while the daemon keeps serving. The whole suite runs once
 * per I/O engine (`--aio`), and its core once more with the engine variants
 * (SQPOLL, adaptive polling, a pinned thread pool). `nbd` runs it through the nbd engine
 * on a qemu-nbd exporting the same image file.
 */
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import {
  encodeMessage,
  encodeU64,
  encodeVringFd,
  encodeVringState,
} from '../../src/vhost-user/codec.js';
import { HeaderFlag, ProtocolFeature, Request } from '../../src/vhost-user/protocol.js';
import {
  BLK_DRIVER_FEATURES,
  BlkDriver,
  type BlkDriverOptions,
  BlkFeature,
  BlkStatus,
  FrontendConnection,
  SECTOR_SIZE,
  segment,
} from '../frontend/index.js';
import { onDisk, pattern, same } from '../support/bytes.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { type NbdServer, startNbdServer } from '../support/nbd-server.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;
const IMAGE_BYTES = 64 * MiB;
const VIRTQ_DESC_F_WRITE = true;

let dir: string;
const daemons: Daemon[] = [];
const nbdServers: NbdServer[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-blk-'));
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  await Promise.all(nbdServers.map((n) => n.stop()));
  rmSync(dir, { recursive: true, force: true });
});

/**
 * `nbd`: the same suite through the nbd engine, on a qemu-nbd exporting the same image file
 * over a Unix socket (so the on-disk checks read what the server wrote).
 */
const ENGINES = ['linux-aio', 'io_uring', 'threads', 'sync', 'nbd'] as const;

async function serve(
  engine: string,
  name: string,
  extra: string[] = [],
  env: NodeJS.ProcessEnv = {},
): Promise<{ socket: string; image: string; daemon: Daemon }> {
  const image = join(dir, `${engine}-${name}.img`);
  const socket = join(dir, `${engine}-${name}.sock`);
  writeFileSync(image, Buffer.alloc(IMAGE_BYTES));
  let target = image;
  if (engine === 'nbd') {
    const server = await startNbdServer({
      kind: 'qemu-nbd',
      transport: 'unix',
      image,
      socket: join(dir, `${name}.nbd.sock`),
      readonly: extra.includes('--readonly'),
    });
    nbdServers.push(server);
    target = server.uri;
  }
  const daemon = await startDaemon(
    [
      'blk',
      '--socket-path',
      socket,
      '--image',
      target,
      '--serial',
      name,
      '--aio',
      engine,
      ...extra,
    ],
    undefined,
    env,
  );
  daemons.push(daemon);
  return { socket, image, daemon };
}

/** True once the peer of the non-blocking socket `fd` has closed it (end of stream or reset). */
function hungUp(fd: number): boolean {
  try {
    return native.recvMsg(fd, new Uint8Array(256))?.bytes === 0;
  } catch (err) {
    if ((err as { code?: string }).code === 'ECONNRESET') return true;
    throw err;
  }
}

async function withDriver(
  socket: string,
  options: Omit<BlkDriverOptions, 'socketPath'>,
  body: (d: BlkDriver) => Promise<void>,
): Promise<void> {
  const driver = await BlkDriver.create({ socketPath: socket, ...options });
  try {
    await body(driver);
    expect(driver.violations).toEqual([]);
  } finally {
    await driver.close();
  }
}

describe.each(ENGINES)('--aio %s', (engine) => {
  describe('vhost-rt blk, 1 queue', () => {
    let socket: string;
    let image: string;
    let daemon: Daemon;
    beforeAll(async () => {
      ({ socket, image, daemon } = await serve(engine, 'one', ['--queues', '1']));
    });

    it('negotiates as QEMU 7.2 does and presents a correct config space', async () => {
      await withDriver(socket, {}, async (d) => {
        const vmm = d.vmm;
        for (const bit of [
          ProtocolFeature.MQ,
          ProtocolFeature.REPLY_ACK,
          ProtocolFeature.CONFIG,
          ProtocolFeature.CONFIGURE_MEM_SLOTS,
        ]) {
          expect(vmm.hasProtocolFeature(bit)).toBe(true);
        }
        for (const bit of [
          BlkFeature.VERSION_1,
          BlkFeature.SEG_MAX,
          BlkFeature.BLK_SIZE,
          BlkFeature.FLUSH,
          BlkFeature.DISCARD,
          BlkFeature.WRITE_ZEROES,
          BlkFeature.RING_EVENT_IDX,
          BlkFeature.RING_INDIRECT_DESC,
        ]) {
          expect(vmm.hasFeature(bit), `feature bit ${bit}`).toBe(true);
        }
        expect(vmm.hasFeature(BlkFeature.RO)).toBe(false);
        // Inflight tracking on (the default): packed rings are not offered with it.
        expect(vmm.hasProtocolFeature(ProtocolFeature.INFLIGHT_SHMFD)).toBe(true);
        expect(vmm.backendFeatures & (1n << 34n)).toBe(0n);
        expect(d.config.capacity).toBe(BigInt(IMAGE_BYTES / SECTOR_SIZE));
        expect(d.config.blkSize).toBe(512);
        expect(d.config.numQueues).toBe(1);
        expect(d.config.segMax).toBe(254);
        expect(d.config.maxDiscardSectors).toBeGreaterThan(0);
        expect(d.config.maxDiscardSeg).toBe(1);
        expect(d.config.maxWriteZeroesSeg).toBe(1);
      });
    });

    it('writes, reads back and flushes; the bytes are in the image file', async () => {
      await withDriver(socket, {}, async (d) => {
        const data = pattern(1, 64 * 1024);
        expect(await d.write(2048, data)).toEqual({ status: BlkStatus.OK, len: 1 });
        const back = await d.read(2048, data.length);
        expect(back.status).toBe(BlkStatus.OK);
        expect(back.len).toBe(data.length + 1);
        expect(same(back.data, data)).toBe(true);
        expect((await d.flush()).status).toBe(BlkStatus.OK);
        expect(same(onDisk(image, 2048 * SECTOR_SIZE, data.length), data)).toBe(true);
      });
    });

    it('keeps 64 requests in flight with indirect tables, 4 KiB segments and EVENT_IDX', async () => {
      await withDriver(
        socket,
        { indirect: true, segmentBytes: 4096, queueSize: 128 },
        async (d) => {
          const writes = Array.from({ length: 64 }, (_, i) => ({
            type: 'write' as const,
            sector: 8192 + i * 32,
            data: pattern(100 + i, 16 * 1024),
          }));
          expect((await d.submitBatch(writes)).every((r) => r.status === BlkStatus.OK)).toBe(true);
          const reads = await d.submitBatch(
            writes.map((w) => ({ type: 'read' as const, sector: w.sector, length: 16 * 1024 })),
          );
          for (const [i, r] of reads.entries())
            expect(same(r.data, writes[i].data), `read ${i}`).toBe(true);
          const disk = onDisk(image, 8192 * SECTOR_SIZE, 64 * 16 * 1024);
          expect(same(disk, Buffer.concat(writes.map((w) => w.data)))).toBe(true);
          // One interrupt per batch, not per request.
          expect(d.vmm.queues[0].interrupts).toBeLessThan(128);
        },
      );
    });

    it('discards and writes zeroes, and the file shows it', async () => {
      await withDriver(socket, {}, async (d) => {
        const sector = 16384;
        const data = pattern(7, 32 * 1024);
        await d.write(sector, data);
        const zeroes = new Uint8Array(8 * SECTOR_SIZE);
        expect((await d.writeZeroes(sector, 8)).status).toBe(BlkStatus.OK);
        expect(same(onDisk(image, sector * SECTOR_SIZE, zeroes.length), zeroes)).toBe(true);
        expect((await d.writeZeroes(sector + 8, 8, true)).status).toBe(BlkStatus.OK);
        expect((await d.discard(sector + 16, 8)).status).toBe(BlkStatus.OK);
        expect(
          same(
            onDisk(image, (sector + 8) * SECTOR_SIZE, 2 * zeroes.length),
            new Uint8Array(2 * zeroes.length),
          ),
        ).toBe(true);
        const rest = (await d.read(sector + 24, 8 * SECTOR_SIZE)).data;
        expect(same(rest, data.subarray(24 * SECTOR_SIZE, 32 * SECTOR_SIZE))).toBe(true);
      });
    });

    it('answers GET_ID with --serial, and refuses what it must', async () => {
      await withDriver(socket, {}, async (d) => {
        expect(await d.getId()).toEqual({ status: BlkStatus.OK, id: 'one' });
        const end = IMAGE_BYTES / SECTOR_SIZE;
        expect((await d.read(end, SECTOR_SIZE)).status).toBe(BlkStatus.IOERR);
        expect((await d.write(end - 1, new Uint8Array(1024))).status).toBe(BlkStatus.IOERR);
        expect((await d.discard(end - 4, 8)).status).toBe(BlkStatus.IOERR);
        // A discard with flags set is not something the spec allows.
        const header = d.allocBuffer(32);
        const status = d.allocBuffer(1);
        const ram = d.vmm.ram;
        const h = new DataView(new ArrayBuffer(16));
        h.setUint32(0, 11, true);
        ram.write(header, new Uint8Array(h.buffer));
        ram.write(header + 16, segment(0, 8, 1));
        await d.submitRaw([
          { addr: header, len: 32, write: false },
          { addr: status, len: 1, write: VIRTQ_DESC_F_WRITE },
        ]);
        expect(ram.read(status, 1)[0]).toBe(BlkStatus.UNSUPP);
        // An unknown request type.
        h.setUint32(0, 99, true);
        ram.write(header, new Uint8Array(h.buffer));
        const used = await d.submitRaw([
          { addr: header, len: 16, write: false },
          { addr: status, len: 1, write: true },
        ]);
        expect(used.len).toBe(1);
        expect(ram.read(status, 1)[0]).toBe(BlkStatus.UNSUPP);
      });
    });

    it('serves reads and writes whose buffers O_DIRECT cannot take (misaligned guest memory)', async () => {
      await withDriver(socket, {}, async (d) => {
        const ram = d.vmm.ram;
        const header = d.allocBuffer(16);
        const buf = d.allocBuffer(4096 + 1) + 1;
        const status = d.allocBuffer(1);
        const data = pattern(33, 4096);
        const h = new DataView(new ArrayBuffer(16));
        h.setUint32(0, 1, true);
        h.setUint32(8, 30000, true);
        ram.write(header, new Uint8Array(h.buffer));
        ram.write(buf, data);
        await d.submitRaw([
          { addr: header, len: 16, write: false },
          { addr: buf, len: 4096, write: false },
          { addr: status, len: 1, write: true },
        ]);
        expect(ram.read(status, 1)[0]).toBe(BlkStatus.OK);
        expect(same(onDisk(image, 30000 * SECTOR_SIZE, 4096), data)).toBe(true);
        expect(same((await d.read(30000, 4096)).data, data)).toBe(true);
      });
    });

    it('fails hostile chains one by one and keeps serving', async () => {
      await withDriver(socket, {}, async (d) => {
        const header = d.allocBuffer(16);
        const status = d.allocBuffer(1);
        // Data buffer far outside guest RAM.
        const outside = await d.submitRaw([
          { addr: header, len: 16, write: false },
          { addr: 0x7_0000_0000, len: 4096, write: true },
          { addr: status, len: 1, write: true },
        ]);
        expect(outside.len).toBe(0);
        // No device-writable status byte at all.
        const noStatus = await d.submitRaw([{ addr: header, len: 16, write: false }]);
        expect(noStatus.len).toBe(0);
        // A readable descriptor after a writable one.
        const order = await d.submitRaw([
          { addr: status, len: 1, write: true },
          { addr: header, len: 16, write: false },
        ]);
        expect(order.len).toBe(0);
        const data = pattern(44, 4096);
        expect((await d.write(31000, data)).status).toBe(BlkStatus.OK);
        expect(same((await d.read(31000, 4096)).data, data)).toBe(true);
      });
      expect(daemon.log()).toMatch(/malformed request dropped: VIRTQ_DESC_UNMAPPED/);
    });

    // A local file only: an NBD export's size is the server's, read at connect (an export
    // that comes back another size is refused: test/integration/blk-nbd.test.ts).
    if (engine !== 'nbd')
      it('fails I/O past the end of an image that shrank under it with IOERR, and lives on', async () => {
        const shrinking = await serve(engine, 'shrink');
        truncateSync(shrinking.image, MiB);
        await withDriver(shrinking.socket, {}, async (d) => {
          // Wholly past the new end (a read of 0 bytes), then straddling it (a short read).
          expect((await d.read((2 * MiB) / SECTOR_SIZE, 4096)).status).toBe(BlkStatus.IOERR);
          expect((await d.read(MiB / SECTOR_SIZE - 4, 4096)).status).toBe(BlkStatus.IOERR);
          const data = pattern(55, 4096);
          expect((await d.write(64, data)).status).toBe(BlkStatus.OK);
          expect(same((await d.read(64, 4096)).data, data)).toBe(true);
        });
        await shrinking.daemon.stop();
      });

    it('stops with GET_VRING_BASE and resumes where it left off', async () => {
      await withDriver(socket, {}, async (d) => {
        const data = pattern(9, 4096);
        for (let i = 0; i < 5; i++) await d.write(20000 + i * 8, data);
        expect(await d.vmm.stop()).toEqual([5]);
        await d.vmm.start();
        expect(same((await d.read(20032, 4096)).data, data)).toBe(true);
        expect(await d.vmm.stop()).toEqual([6]);
        await d.vmm.start();
      });
    });

    it('serves a new front end after the previous one went away', async () => {
      const data = pattern(11, 8192);
      await withDriver(socket, {}, async (d) => {
        await d.write(24000, data);
      });
      await withDriver(socket, { memory: 'mem-table' }, async (d) => {
        expect(same((await d.read(24000, 8192)).data, data)).toBe(true);
      });
    });

    it('answers malformed and unknown messages with a clear error and lives on', async () => {
      const conn = await FrontendConnection.connect(socket, { replyTimeoutMs: 5000 });
      try {
        const features = await conn.call(Request.GET_PROTOCOL_FEATURES);
        expect(features.payload.length).toBe(8);
        await conn.request(
          Request.SET_PROTOCOL_FEATURES,
          encodeU64(1n << BigInt(ProtocolFeature.REPLY_ACK)),
        );
        conn.replyAck = true;
        const nack = (p: Promise<void>) =>
          p.then(
            () => 'ack',
            (e: { code?: string }) => e.code,
          );
        // SET_VRING_NUM with a 4-byte payload (8 expected).
        expect(
          await nack(
            conn.request(Request.SET_VRING_NUM, new Uint8Array(4), [], { needReply: true }),
          ),
        ).toBe('FRONTEND_NACK');
        // Ring index out of range.
        expect(
          await nack(
            conn.request(Request.SET_VRING_NUM, encodeVringState({ index: 7, num: 64 }), [], {
              needReply: true,
            }),
          ),
        ).toBe('FRONTEND_NACK');
        // Ring size that is not a power of two.
        expect(
          await nack(
            conn.request(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 100 }), [], {
              needReply: true,
            }),
          ),
        ).toBe('FRONTEND_NACK');
        // SET_VRING_KICK without its fd.
        expect(
          await nack(
            conn.request(Request.SET_VRING_KICK, encodeVringFd(0, false), [], { needReply: true }),
          ),
        ).toBe('FRONTEND_NACK');
        // A request code no spec defines.
        expect(await nack(conn.request(99, undefined, [], { needReply: true }))).toBe(
          'FRONTEND_NACK',
        );
        // Still answering.
        const q = await conn.call(Request.GET_QUEUE_NUM);
        expect(q.payload).toEqual(encodeU64(1n));
      } finally {
        conn.close();
      }
      const log = daemon.log();
      expect(log).toMatch(/SET_VRING_NUM: .*expected 8/i);
      expect(log).toMatch(/vring index 7 is outside/);
      expect(log).toMatch(/SET_VRING_KICK carries 0 fds, expected 1/);
      expect(log).toMatch(/UNKNOWN\(99\)|99/);
      // And a normal front end still works afterwards.
      await withDriver(socket, {}, async (d) => {
        expect((await d.flush()).status).toBe(BlkStatus.OK);
      });
    });

    it('survives a header that claims an impossible size by dropping only that connection', async () => {
      const bad = encodeMessage(Request.GET_FEATURES, HeaderFlag.VERSION);
      new DataView(bad.buffer, bad.byteOffset).setUint32(8, 1 << 30, true);
      const fd = native.unixConnect(socket);
      native.sendMsg(fd, bad, []);
      await waitFor(() => hungUp(fd), 'the daemon to drop the connection');
      native.close(fd);
      await withDriver(socket, {}, async (d) => {
        expect((await d.flush()).status).toBe(BlkStatus.OK);
      });
      // The reason reaches us through the daemon's stderr pipe, maybe after the hang-up.
      await waitFor(() => daemon.log().includes('unusable message header'), 'the logged reason');
      expect(daemon.log()).toMatch(/unusable message header/);
    });
  });

  describe('vhost-rt blk, 2 queues and 2 memory regions', () => {
    let socket: string;
    let image: string;
    beforeAll(async () => {
      ({ socket, image } = await serve(engine, 'two', ['--queues', '2']));
    });
    const regions = [{ size: 4 * MiB }, { size: 16 * MiB, mmapOffset: 2 * MiB }];

    for (const memory of ['add-mem-reg', 'mem-table'] as const) {
      it(`moves data on both queues with memory sent by ${memory}`, async () => {
        await withDriver(socket, { queues: 2, regions, memory }, async (d) => {
          expect(d.vmm.maxQueues).toBe(2);
          expect(d.config.numQueues).toBe(2);
          expect(d.vmm.hasFeature(BlkFeature.MQ)).toBe(true);
          const base = memory === 'mem-table' ? 30000 : 40000;
          const a = pattern(base, 16 * 1024);
          const b = pattern(base + 1, 16 * 1024);
          const [wa, wb] = await Promise.all([d.write(base, a, 0), d.write(base + 64, b, 1)]);
          expect([wa.status, wb.status]).toEqual([BlkStatus.OK, BlkStatus.OK]);
          expect(same((await d.read(base, a.length, 1)).data, a)).toBe(true);
          expect(same((await d.read(base + 64, b.length, 0)).data, b)).toBe(true);
          expect((await d.flush(1)).status).toBe(BlkStatus.OK);
          expect(same(onDisk(image, base * SECTOR_SIZE, a.length), a)).toBe(true);
          expect(same(onDisk(image, (base + 64) * SECTOR_SIZE, b.length), b)).toBe(true);
          expect((await d.writeZeroes(base, 8, false, 1)).status).toBe(BlkStatus.OK);
          expect((await d.discard(base + 64, 8, 0)).status).toBe(BlkStatus.OK);
          expect(same(onDisk(image, base * SECTOR_SIZE, 4096), new Uint8Array(4096))).toBe(true);
          expect(same(onDisk(image, (base + 64) * SECTOR_SIZE, 4096), new Uint8Array(4096))).toBe(
            true,
          );
        });
      });
    }
  });

  describe('vhost-rt blk --readonly', () => {
    let socket: string;
    beforeAll(async () => {
      ({ socket } = await serve(engine, 'ro', ['--readonly']));
    });

    it('offers VIRTIO_BLK_F_RO, reads, and fails every write with IOERR', async () => {
      await withDriver(socket, {}, async (d) => {
        expect(d.vmm.hasFeature(BlkFeature.RO)).toBe(true);
        expect(d.vmm.hasFeature(BlkFeature.DISCARD)).toBe(false);
        expect((await d.read(0, 4096)).status).toBe(BlkStatus.OK);
        expect((await d.write(0, new Uint8Array(4096))).status).toBe(BlkStatus.IOERR);
        expect((await d.writeZeroes(0, 8)).status).toBe(BlkStatus.IOERR);
        expect((await d.discard(0, 8)).status).toBe(BlkStatus.IOERR);
      });
    });
  });
});

describe.each(
  [
    { engine: 'io_uring', extra: ['--uring-sqpoll'] },
    { engine: 'linux-aio', extra: ['--poll-us', '200'] },
    { engine: 'io_uring', extra: ['--poll-us', '200'] },
    { engine: 'threads', extra: ['--aio-threads', '2', '--aio-threads-policy', 'batch'] },
    // Packed rings (VIRTIO_F_RING_PACKED): offered only without inflight tracking.
    { engine: 'linux-aio', extra: [], packed: true },
    { engine: 'io_uring', extra: ['--poll-us', '200'], packed: true },
  ].map((v) => ({
    packed: false,
    ...v,
    flags: v.extra.join(' ') + (v.packed ? ' packed ring' : ''),
  })),
)('--aio $engine $flags', ({ engine, extra, packed }) => {
  let socket: string;
  let image: string;
  beforeAll(async () => {
    const name = `v${extra.join('')}${packed ? 'p' : ''}`;
    // Packed rings are offered only with inflight tracking off.
    ({ socket, image } = await serve(
      engine,
      name,
      extra,
      packed ? { VHOST_RT_INFLIGHT: 'off' } : {},
    ));
  });
  const driverFeatures = packed ? BLK_DRIVER_FEATURES | (1n << 34n) : BLK_DRIVER_FEATURES;

  it('moves data, flushes, discards and keeps 64 requests in flight', async () => {
    const options = { indirect: true, segmentBytes: 4096, queueSize: 128, driverFeatures };
    await withDriver(socket, options, async (d) => {
      expect(d.vmm.hasFeature(34)).toBe(packed);
      if (packed) expect(d.vmm.hasProtocolFeature(ProtocolFeature.INFLIGHT_SHMFD)).toBe(false);
      const writes = Array.from({ length: 64 }, (_, i) => ({
        type: 'write' as const,
        sector: 8192 + i * 32,
        data: pattern(300 + i, 16 * 1024),
      }));
      expect((await d.submitBatch(writes)).every((r) => r.status === BlkStatus.OK)).toBe(true);
      const reads = await d.submitBatch(
        writes.map((w) => ({ type: 'read' as const, sector: w.sector, length: 16 * 1024 })),
      );
      for (const [i, r] of reads.entries())
        expect(same(r.data, writes[i].data), `read ${i}`).toBe(true);
      expect((await d.flush()).status).toBe(BlkStatus.OK);
      expect((await d.writeZeroes(8192, 8)).status).toBe(BlkStatus.OK);
      expect((await d.discard(8192 + 8, 8)).status).toBe(BlkStatus.OK);
      expect(same(onDisk(image, 8192 * SECTOR_SIZE, 8192), new Uint8Array(8192))).toBe(true);
      // One request at a time, as a QD1 guest: each must complete without a lost kick.
      const kicksBefore = d.vmm.queues[0].kicks;
      for (let i = 0; i < 50; i++) {
        const data = pattern(900 + i, 4096);
        expect((await d.write(60000 + i * 8, data)).status).toBe(BlkStatus.OK);
        expect(same((await d.read(60000 + i * 8, 4096)).data, data)).toBe(true);
      }
      // While the device polls it asks for no kicks: some of the 100 requests went without.
      if (extra.includes('--poll-us'))
        expect(d.vmm.queues[0].kicks - kicksBefore).toBeLessThan(100);
      // Stopped (GET_VRING_BASE) and started again where it left off.
      const [base] = await d.vmm.stop();
      await d.vmm.start();
      expect(same((await d.read(60000, 4096)).data, pattern(900, 4096))).toBe(true);
      expect((await d.vmm.stop())[0]).not.toBe(base);
      await d.vmm.start();
    });
  });
});
