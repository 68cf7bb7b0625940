/**
 * Proves the project's own vhost-user front end against a real, independent
 * back-end: qemu-storage-daemon's vhost-user-blk export (DESIGN.md's
 * reference backend, plus discard=unmap so discards reach the file). Data
 * goes through the front end's guest RAM and is checked in the image file
 * on disk.
 *
 * The last block drives the connection against a scripted peer on a real
 * socket, for what a well-behaved back-end never does: hang up mid-request,
 * refuse an ack, send a malformed reply, stay silent.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FdWatcher, native, POLL_READABLE } from '../../src/native.js';
import { encodeMessage, encodeU64 } from '../../src/vhost-user/codec.js';
import { HeaderFlag, ProtocolFeature, Request } from '../../src/vhost-user/protocol.js';
import {
  BlkDriver,
  type BlkDriverOptions,
  BlkFeature,
  BlkStatus,
  FrontendConnection,
  FrontendError,
  MessageReader,
  pumpSocket,
  SECTOR_SIZE,
  type WireMessage,
} from '../frontend/index.js';
import { diff, pattern } from '../support/bytes.js';
import { storageDaemonArgs } from '../support/qemu.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;
const IMAGE_BYTES = 64 * MiB;

/** Bytes of the image file as they are on disk. */
async function imageBytes(path: string, offset: number, length: number): Promise<Uint8Array> {
  const file = await open(path, 'r');
  try {
    const out = new Uint8Array(length);
    const { bytesRead } = await file.read(out, 0, length, offset);
    expect(bytesRead).toBe(length);
    return out;
  } finally {
    await file.close();
  }
}

/** qemu-storage-daemon exporting one image; killed in afterAll. */
class Qsd {
  readonly socket: string;
  readonly image: string;
  private child: ChildProcess | undefined;
  private stderr = '';

  constructor(
    readonly dir: string,
    readonly queues: number,
  ) {
    this.socket = join(dir, `qsd-${queues}q.sock`);
    this.image = join(dir, `disk-${queues}q.img`);
  }

  async start(): Promise<void> {
    await writeFile(this.image, '');
    await truncate(this.image, IMAGE_BYTES);
    const args = storageDaemonArgs({ image: this.image, socket: this.socket, queues: this.queues });
    // discard=unmap lets discards punch holes in the file, so their effect is visible.
    args[1] += ',discard=unmap';
    const child = spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    child.stderr?.on('data', (b: Buffer) => {
      this.stderr += b.toString();
    });
    await waitFor(
      () => {
        if (child.exitCode !== null) {
          throw new Error(`qemu-storage-daemon exited without exporting: ${this.stderr}`);
        }
        return existsSync(this.socket);
      },
      () => `qemu-storage-daemon to export ${this.socket}: ${this.stderr}`,
    );
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  }
}

let dir: string;
const daemons: Qsd[] = [];

async function daemon(queues: number): Promise<Qsd> {
  const qsd = new Qsd(dir, queues);
  daemons.push(qsd);
  await qsd.start();
  return qsd;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vhost-rt-fe-qsd-'));
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  await rm(dir, { recursive: true, force: true });
});

/** Runs `body` with a driver, closing it (GET_VRING_BASE, disconnect) afterwards. */
async function withDriver(
  qsd: Qsd,
  options: Omit<BlkDriverOptions, 'socketPath'>,
  body: (d: BlkDriver) => Promise<void>,
): Promise<void> {
  const driver = await BlkDriver.create({ socketPath: qsd.socket, ...options });
  try {
    await body(driver);
    expect(driver.violations).toEqual([]);
  } finally {
    await driver.close();
  }
}

describe('front end against qemu-storage-daemon, 1 queue', () => {
  let qsd: Qsd;
  beforeAll(async () => {
    qsd = await daemon(1);
  });

  it('negotiates as QEMU 7.2 does and reads the virtio-blk config', async () => {
    await withDriver(qsd, {}, async (d) => {
      const vmm = d.vmm;
      for (const bit of [ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG, ProtocolFeature.MQ]) {
        expect(vmm.hasProtocolFeature(bit)).toBe(true);
      }
      // Never more than the front end asked for, never more than the back-end offered.
      expect(vmm.protocolFeatures & ~vmm.backendProtocolFeatures).toBe(0n);
      expect(vmm.hasProtocolFeature(ProtocolFeature.PAGEFAULT)).toBe(false);
      expect(vmm.hasFeature(BlkFeature.VERSION_1)).toBe(true);
      expect(vmm.maxQueues).toBe(1);
      expect(vmm.backendChannel).toBeDefined();
      expect(d.config.capacity).toBe(BigInt(IMAGE_BYTES / SECTOR_SIZE));
      expect(d.config.blkSize).toBe(512);
      expect(d.config.numQueues).toBe(1);
      expect(d.config.segMax).toBeGreaterThan(2);
    });
  });

  it('writes a pattern, reads it back, flushes, and the bytes are in the image file', async () => {
    await withDriver(qsd, {}, async (d) => {
      const data = pattern(1, 64 * 1024);
      const sector = 2048;
      expect(await d.write(sector, data)).toEqual({ status: BlkStatus.OK, len: 1 });
      const back = await d.read(sector, data.byteLength);
      expect(back.status).toBe(BlkStatus.OK);
      expect(back.len).toBe(data.byteLength + 1);
      expect(diff(back.data, data)).toBe('equal');
      expect((await d.flush()).status).toBe(BlkStatus.OK);
      expect(diff(await imageBytes(qsd.image, sector * SECTOR_SIZE, data.byteLength), data)).toBe(
        'equal',
      );
    });
  });

  it('keeps 32 requests in flight at once and completes them all', async () => {
    await withDriver(qsd, {}, async (d) => {
      const writes = Array.from({ length: 32 }, (_, i) => ({
        type: 'write' as const,
        sector: 4096 + i * 16,
        data: pattern(100 + i, 8 * 1024),
      }));
      const written = await d.submitBatch(writes);
      expect(written.map((r) => r.status)).toEqual(writes.map(() => BlkStatus.OK));
      const reads = writes.map((w) => ({ type: 'read' as const, sector: w.sector, length: 8192 }));
      const read = await d.submitBatch(reads);
      read.forEach((r, i) => {
        expect(r.status).toBe(BlkStatus.OK);
        expect(diff(r.data, writes[i].data)).toBe('equal');
      });
      const disk = await imageBytes(qsd.image, 4096 * SECTOR_SIZE, 32 * 8192);
      expect(diff(disk, Buffer.concat(writes.map((w) => w.data)))).toBe('equal');
      expect(d.pending).toBe(0);
    });
  });

  it('uses indirect tables, 4 KiB segments and EVENT_IDX at depth 100', async () => {
    const options = { indirect: true, segmentBytes: 4096 };
    await withDriver(qsd, options, async (d) => {
      expect(d.vmm.hasFeature(BlkFeature.RING_INDIRECT_DESC)).toBe(true);
      expect(d.vmm.hasFeature(BlkFeature.RING_EVENT_IDX)).toBe(true);
      const writes = Array.from({ length: 100 }, (_, i) => ({
        type: 'write' as const,
        sector: 8192 + i * 24,
        data: pattern(1000 + i, 12 * 1024),
      }));
      expect((await d.submitBatch(writes)).every((r) => r.status === BlkStatus.OK)).toBe(true);
      const reads = await d.submitBatch(
        writes.map((w) => ({ type: 'read' as const, sector: w.sector, length: 12 * 1024 })),
      );
      reads.forEach((r, i) => {
        expect(diff(r.data, writes[i].data)).toBe('equal');
      });
      // EVENT_IDX: fewer interrupts than completions is allowed, none is not.
      expect(d.vmm.queues[0].interrupts).toBeGreaterThan(0);
    });
  });

  it('write-zeroes and discard reach the file when qsd offers them', async () => {
    await withDriver(qsd, {}, async (d) => {
      const sector = 16384;
      const data = pattern(7, 32 * 1024);
      await d.write(sector, data);
      const zeroes = new Uint8Array(8 * SECTOR_SIZE);
      if (d.vmm.hasFeature(BlkFeature.WRITE_ZEROES)) {
        expect((await d.writeZeroes(sector, 8)).status).toBe(BlkStatus.OK);
        expect(diff((await d.read(sector, zeroes.byteLength)).data, zeroes)).toBe('equal');
        expect(
          diff(await imageBytes(qsd.image, sector * SECTOR_SIZE, zeroes.byteLength), zeroes),
        ).toBe('equal');
      }
      if (d.vmm.hasFeature(BlkFeature.DISCARD)) {
        expect((await d.discard(sector + 8, 8)).status).toBe(BlkStatus.OK);
        expect((await d.flush()).status).toBe(BlkStatus.OK);
        const offset = (sector + 8) * SECTOR_SIZE;
        expect(diff(await imageBytes(qsd.image, offset, zeroes.byteLength), zeroes)).toBe('equal');
      }
      // The sectors after both ranges are untouched.
      const rest = await d.read(sector + 16, 16 * SECTOR_SIZE);
      expect(diff(rest.data, data.subarray(16 * SECTOR_SIZE, 32 * SECTOR_SIZE))).toBe('equal');
      expect(
        diff(
          await imageBytes(qsd.image, (sector + 16) * SECTOR_SIZE, 8192),
          data.subarray(16 * SECTOR_SIZE, 16 * SECTOR_SIZE + 8192),
        ),
      ).toBe('equal');
    });
  });

  it('answers GET_ID and reports an I/O past the end as IOERR', async () => {
    await withDriver(qsd, {}, async (d) => {
      const id = await d.getId();
      expect(id.status).toBe(BlkStatus.OK);
      expect(id.id.length).toBeGreaterThan(0);
      const beyond = IMAGE_BYTES / SECTOR_SIZE;
      expect((await d.read(beyond, SECTOR_SIZE)).status).toBe(BlkStatus.IOERR);
    });
  });

  it('stops with GET_VRING_BASE and restarts where it left off', async () => {
    await withDriver(qsd, {}, async (d) => {
      const data = pattern(9, 4096);
      for (let i = 0; i < 5; i++) await d.write(20000 + i * 8, data);
      const bases = await d.vmm.stop();
      expect(bases).toEqual([5]);
      await d.vmm.start();
      const back = await d.read(20000 + 32, 4096);
      expect(diff(back.data, data)).toBe('equal');
      expect(await d.vmm.stop()).toEqual([6]);
      await d.vmm.start();
    });
  });

  it('reconnects after a disconnect and sees what the previous session wrote', async () => {
    const data = pattern(11, 8192);
    await withDriver(qsd, {}, async (d) => {
      await d.write(24000, data);
    });
    await withDriver(qsd, { memory: 'mem-table' }, async (d) => {
      expect(diff((await d.read(24000, 8192)).data, data)).toBe('equal');
    });
  });
});

describe('front end against qemu-storage-daemon, 2 queues and 2 memory regions', () => {
  let qsd: Qsd;
  beforeAll(async () => {
    qsd = await daemon(2);
  });

  // Rings land in region 0; the 8 MiB request heap only fits in region 1,
  // which starts 2 MiB into its memfd at GPA 1 GiB.
  const regions = [{ size: 4 * MiB }, { size: 16 * MiB, mmapOffset: 2 * MiB }];

  for (const memory of ['add-mem-reg', 'mem-table'] as const) {
    it(`moves data on both queues with memory sent by ${memory}`, async () => {
      await withDriver(qsd, { queues: 2, regions, memory }, async (d) => {
        expect(d.vmm.maxQueues).toBe(2);
        expect(d.config.numQueues).toBe(2);
        expect(d.vmm.regions[1].wire.guestPhysAddr).toBe(1024 * MiB);
        const base = memory === 'mem-table' ? 30000 : 40000;
        const a = pattern(base, 16 * 1024);
        const b = pattern(base + 1, 16 * 1024);
        const [wa, wb] = await Promise.all([d.write(base, a, 0), d.write(base + 64, b, 1)]);
        expect([wa.status, wb.status]).toEqual([BlkStatus.OK, BlkStatus.OK]);
        // Read each back through the other queue.
        expect(diff((await d.read(base, a.byteLength, 1)).data, a)).toBe('equal');
        expect(diff((await d.read(base + 64, b.byteLength, 0)).data, b)).toBe('equal');
        expect((await d.flush(1)).status).toBe(BlkStatus.OK);
        expect(diff(await imageBytes(qsd.image, base * SECTOR_SIZE, a.byteLength), a)).toBe(
          'equal',
        );
        expect(diff(await imageBytes(qsd.image, (base + 64) * SECTOR_SIZE, b.byteLength), b)).toBe(
          'equal',
        );
        expect(d.vmm.queues.map((q) => q.interrupts > 0)).toEqual([true, true]);
      });
    });
  }

  it('runs a batch on each queue concurrently', async () => {
    await withDriver(qsd, { queues: 2, regions, indirect: true }, async (d) => {
      const batch = (q: number) =>
        Array.from({ length: 40 }, (_, i) => ({
          type: 'write' as const,
          sector: 50000 + q * 4096 + i * 8,
          data: pattern(q * 100 + i, 4096),
        }));
      const [b0, b1] = [batch(0), batch(1)];
      await Promise.all([d.submitBatch(b0, 0), d.submitBatch(b1, 1)]);
      const reads = (b: typeof b0) =>
        b.map((w) => ({ type: 'read' as const, sector: w.sector, length: 4096 }));
      const [r0, r1] = await Promise.all([
        d.submitBatch(reads(b1), 0),
        d.submitBatch(reads(b0), 1),
      ]);
      r0.forEach((r, i) => {
        expect(diff(r.data, b1[i].data)).toBe('equal');
      });
      r1.forEach((r, i) => {
        expect(diff(r.data, b0[i].data)).toBe('equal');
      });
    });
  });

  it('removes and re-adds a region with REM_MEM_REG / ADD_MEM_REG between stop and start', async () => {
    await withDriver(qsd, { queues: 2, regions, memory: 'add-mem-reg' }, async (d) => {
      const data = pattern(77, 8192);
      expect((await d.write(60000, data, 1)).status).toBe(BlkStatus.OK);
      await d.vmm.stop();
      await d.vmm.remMemReg(d.vmm.regions[1]);
      await d.vmm.addMemReg(d.vmm.regions[1]);
      await d.vmm.start();
      expect(diff((await d.read(60000, 8192, 0)).data, data)).toBe('equal');
    });
  });

  it('works with call fds sent after the kick and acked SET_VRING_ENABLE (QEMU 8.1+)', async () => {
    const options = { queues: 2, callTiming: 'after-kick', ackVringEnable: true } as const;
    await withDriver(qsd, options, async (d) => {
      const data = pattern(78, 4096);
      expect((await d.write(61000, data, 1)).status).toBe(BlkStatus.OK);
      expect(diff((await d.read(61000, 4096, 0)).data, data)).toBe('equal');
    });
  });

  it('refuses more queues than the back-end has', async () => {
    const err = await BlkDriver.create({ socketPath: qsd.socket, queues: 3 }).catch((e) => e);
    expect(err).toBeInstanceOf(FrontendError);
    expect((err as FrontendError).code).toBe('FRONTEND_UNSUPPORTED');
  });
});

/** A scripted back-end on a real socket: accepts one front end and answers with `script`. */
class ScriptedPeer {
  readonly path: string;
  readonly received: WireMessage[] = [];
  private readonly listenFd: number;
  private fd = -1;
  private watcher: FdWatcher | undefined;
  private acceptWatcher: FdWatcher;
  private readonly reader = new MessageReader();

  constructor(
    name: string,
    private readonly script: (m: WireMessage, peer: ScriptedPeer) => void,
  ) {
    this.path = join(dir, `${name}.sock`);
    this.listenFd = native.unixListen(this.path, 1);
    this.acceptWatcher = new native.FdWatcher(this.listenFd, () => this.accept());
    this.acceptWatcher.start(POLL_READABLE);
  }

  reply(request: number, payload?: Uint8Array, flags: number = HeaderFlag.REPLY): void {
    native.sendMsg(this.fd, encodeMessage(request, flags, payload), []);
  }

  hangUp(): void {
    this.watcher?.close();
    this.watcher = undefined;
    if (this.fd >= 0) native.close(this.fd);
    this.fd = -1;
  }

  close(): void {
    this.hangUp();
    this.acceptWatcher.close();
    native.close(this.listenFd);
  }

  private accept(): void {
    const fd = native.accept(this.listenFd);
    if (fd < 0) return;
    this.fd = fd;
    this.watcher = new native.FdWatcher(fd, () => {
      const open = pumpSocket(fd, this.reader, (m) => {
        this.received.push(m);
        this.script(m, this);
        return this.fd >= 0;
      });
      if (!open) this.hangUp();
    });
    this.watcher.start(POLL_READABLE);
  }
}

describe('front-end connection against a scripted back-end', () => {
  async function connected(
    name: string,
    script: (m: WireMessage, peer: ScriptedPeer) => void,
    replyTimeoutMs = 2000,
  ) {
    const peer = new ScriptedPeer(name, script);
    const conn = await FrontendConnection.connect(peer.path, { replyTimeoutMs });
    return { peer, conn };
  }

  it('rejects a pending call with FRONTEND_DISCONNECTED when the back-end hangs up', async () => {
    const { peer, conn } = await connected('hangup', (_m, p) => p.hangUp());
    const err = await conn.call(Request.GET_FEATURES).catch((e) => e);
    expect(err).toBeInstanceOf(FrontendError);
    expect(err.code).toBe('FRONTEND_DISCONNECTED');
    expect(err.message).toMatch(/GET_FEATURES awaited a reply/);
    expect((await conn.closed).code).toBe('FRONTEND_DISCONNECTED');
    expect(conn.isOpen).toBe(false);
    expect(() => conn.send(Request.SET_OWNER)).toThrow(FrontendError);
    peer.close();
  });

  it('honours REPLY_ACK: NEED_REPLY only when negotiated, a non-zero ack rejects', async () => {
    const { peer, conn } = await connected('nack', (m, p) => {
      if (m.flags & HeaderFlag.NEED_REPLY) p.reply(m.request, encodeU64(1n));
    });
    await conn.request(Request.SET_VRING_ENABLE, new Uint8Array(8), [], { needReply: true });
    conn.replyAck = true;
    const err = await conn
      .request(Request.SET_MEM_TABLE, new Uint8Array(8), [], { needReply: true })
      .catch((e) => e);
    expect(err.code).toBe('FRONTEND_NACK');
    expect(err.message).toMatch(/SET_MEM_TABLE \(ack 1\)/);
    expect(peer.received.map((m) => m.flags)).toEqual([
      HeaderFlag.VERSION,
      HeaderFlag.VERSION | HeaderFlag.NEED_REPLY,
    ]);
    expect(conn.isOpen).toBe(true);
    conn.close();
    peer.close();
  });

  it('fails the connection on a reply with the wrong request code or flags', async () => {
    const { peer, conn } = await connected('bad-reply', (m, p) => {
      p.reply(m.request + 1, encodeU64(0n));
    });
    const err = await conn.call(Request.GET_FEATURES).catch((e) => e);
    expect(err.code).toBe('FRONTEND_BAD_REPLY');
    expect(err.message).toMatch(/got GET_PROTOCOL_FEATURES|got SET_FEATURES/);
    expect(conn.isOpen).toBe(false);
    peer.close();

    const second = await connected('bad-flags', (m, p) => {
      p.reply(m.request, encodeU64(0n), HeaderFlag.REPLY | HeaderFlag.NEED_REPLY);
    });
    const err2 = await second.conn.call(Request.GET_FEATURES).catch((e) => e);
    expect(err2.code).toBe('FRONTEND_BAD_REPLY');
    expect(err2.message).toMatch(/flags 0xd/);
    second.peer.close();
  });

  it('times out a reply that never comes', async () => {
    const { peer, conn } = await connected('silent', () => {}, 200);
    const err = await conn.call(Request.GET_VRING_BASE, new Uint8Array(8)).catch((e) => e);
    expect(err.code).toBe('FRONTEND_TIMEOUT');
    expect(err.message).toMatch(/GET_VRING_BASE within 200 ms/);
    peer.close();
  });

  it('gives up connecting to a socket nobody serves', async () => {
    const err = await FrontendConnection.connect(join(dir, 'nobody.sock'), {
      connectTimeoutMs: 100,
    }).catch((e) => e);
    expect(err.code).toBe('FRONTEND_DISCONNECTED');
  });
});
