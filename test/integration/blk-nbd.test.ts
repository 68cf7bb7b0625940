/**
 * `vhost-rt blk --image nbd://...`: the nbd engine against real NBD servers
 * started here — qemu-nbd serving a raw file and nbdkit's memory plugin, each
 * over TCP on 127.0.0.1 and over a unix socket — driven by the project's own
 * front end over a real vhost-user socket. The verified traffic of every blk
 * back end (test/support/blk-traffic.ts) runs once per server; then the
 * features a server does not offer, a read-only export, a server restarted
 * mid-I/O (no error reaches the front end), a server that stays away past
 * --nbd-timeout-ms (IOERR, then service again once it is back), and URIs that
 * cannot work (the daemon refuses to start, naming the URI).
 */
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BlkDriver,
  type BlkDriverOptions,
  BlkFeature,
  BlkStatus,
  SECTOR_SIZE,
} from '../frontend/index.js';
import { blkVerifiedTraffic } from '../support/blk-traffic.js';
import { onDisk, pattern, same } from '../support/bytes.js';
import { type Daemon, runCli, startDaemon } from '../support/daemon.js';
import { type NbdServer, type NbdServerOptions, startNbdServer } from '../support/nbd-server.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;
const IMAGE_BYTES = 64 * MiB;
/** Multi-segment requests (4 KiB descriptors), indirect tables, 64 in flight. */
const DRIVER: Omit<BlkDriverOptions, 'socketPath'> = {
  indirect: true,
  segmentBytes: 4096,
  queueSize: 128,
};

let dir: string;
const daemons: Daemon[] = [];
const servers: NbdServer[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-nbd-'));
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  await Promise.all(servers.map((s) => s.stop()));
  rmSync(dir, { recursive: true, force: true });
});

let serial = 0;

/** A server of `kind` over `transport` (qemu-nbd on a fresh zeroed image), and its image. */
async function server(
  o: Omit<NbdServerOptions, 'socket' | 'image'>,
): Promise<{ nbd: NbdServer; image: string }> {
  const n = serial++;
  const image = join(dir, `disk${n}.img`);
  writeFileSync(image, Buffer.alloc(IMAGE_BYTES));
  const nbd = await startNbdServer({ ...o, image, socket: join(dir, `nbd${n}.sock`) });
  servers.push(nbd);
  return { nbd, image };
}

async function daemonFor(
  uri: string,
  extra: string[] = [],
): Promise<{ socket: string; daemon: Daemon }> {
  const socket = join(dir, `vhost${serial++}.sock`);
  const daemon = await startDaemon(['blk', '--socket-path', socket, '--image', uri, ...extra]);
  daemons.push(daemon);
  return { socket, daemon };
}

async function withDriver(socket: string, body: (d: BlkDriver) => Promise<void>): Promise<void> {
  const driver = await BlkDriver.create({ socketPath: socket, ...DRIVER });
  try {
    await body(driver);
    expect(driver.violations).toEqual([]);
  } finally {
    await driver.close();
  }
}

describe.each([
  { kind: 'qemu-nbd', transport: 'unix' },
  { kind: 'qemu-nbd', transport: 'tcp' },
  { kind: 'nbdkit', transport: 'unix' },
  { kind: 'nbdkit', transport: 'tcp' },
] as const)('--image on $kind over $transport', ({ kind, transport }) => {
  let socket: string;
  let daemon: Daemon;
  let image: string;
  let nbd: NbdServer;
  beforeAll(async () => {
    ({ nbd, image } = await server({ kind, transport }));
    ({ socket, daemon } = await daemonFor(nbd.uri));
  });

  it('picks the nbd engine, reads the export size and offers what the server does', async () => {
    expect(daemon.log()).toMatch(/ready: .*\(67108864 bytes, nbd,/);
    await withDriver(socket, async (d) => {
      expect(d.config.capacity).toBe(BigInt(IMAGE_BYTES / SECTOR_SIZE));
      for (const bit of [BlkFeature.FLUSH, BlkFeature.DISCARD, BlkFeature.WRITE_ZEROES])
        expect(d.vmm.hasFeature(bit), `feature bit ${bit}`).toBe(true);
      expect(d.vmm.hasFeature(BlkFeature.RO)).toBe(false);
    });
  });

  it('carries the verified read / write / flush / write-zeroes / discard traffic', async () => {
    const backing =
      kind === 'qemu-nbd' ? (offset: number, n: number) => onDisk(image, offset, n) : undefined;
    await withDriver(socket, async (d) => {
      expect(await blkVerifiedTraffic(d, 8192, backing)).toBe('ok');
      // One request at a time, as a QD1 guest.
      for (let i = 0; i < 20; i++) {
        const data = pattern(700 + i, 4096);
        expect((await d.write(60000 + i * 8, data)).status).toBe(BlkStatus.OK);
        expect(same((await d.read(60000 + i * 8, 4096)).data, data)).toBe(true);
      }
      // Past the end of the export: the device refuses it before the server sees it.
      expect((await d.read(IMAGE_BYTES / SECTOR_SIZE, 4096)).status).toBe(BlkStatus.IOERR);
    });
  });
});

describe('--image nbd+unix://... --poll-us 200 (replies reaped while polling)', () => {
  it('carries the verified traffic', async () => {
    const { nbd } = await server({ kind: 'nbdkit', transport: 'unix' });
    const { socket } = await daemonFor(nbd.uri, ['--poll-us', '200']);
    await withDriver(socket, async (d) => {
      expect(await blkVerifiedTraffic(d, 4096)).toBe('ok');
    });
  });
});

describe('an export with fewer features', () => {
  it('a read-only export makes a read-only device (with a warning)', async () => {
    const { nbd } = await server({ kind: 'nbdkit', transport: 'unix', readonly: true });
    const { socket, daemon } = await daemonFor(nbd.uri);
    expect(daemon.log()).toMatch(/exports it read-only/);
    await withDriver(socket, async (d) => {
      expect(d.vmm.hasFeature(BlkFeature.RO)).toBe(true);
      expect(d.vmm.hasFeature(BlkFeature.DISCARD)).toBe(false);
      expect(d.vmm.hasFeature(BlkFeature.WRITE_ZEROES)).toBe(false);
      expect((await d.read(0, 4096)).status).toBe(BlkStatus.OK);
      expect((await d.write(0, new Uint8Array(4096))).status).toBe(BlkStatus.IOERR);
    });
  });

  it('a server without write-zeroes: not offered; discards go out as NBD TRIM', async () => {
    // nbdkit's nozero filter takes NBD_CMD_WRITE_ZEROES away (trim stays).
    const { nbd } = await server({ kind: 'nbdkit', transport: 'tcp', extra: ['--filter=nozero'] });
    const { socket } = await daemonFor(nbd.uri);
    await withDriver(socket, async (d) => {
      expect(d.vmm.hasFeature(BlkFeature.WRITE_ZEROES)).toBe(false);
      expect(d.vmm.hasFeature(BlkFeature.DISCARD)).toBe(true);
      const data = pattern(3, 8192);
      expect((await d.write(64, data)).status).toBe(BlkStatus.OK);
      expect(same((await d.read(64, 8192)).data, data)).toBe(true);
      expect((await d.discard(64, 16)).status).toBe(BlkStatus.OK);
    });
  });
});

describe('a server with FUA but no flush, trim or write-zeroes (nbdkit eval)', () => {
  it('offers none of them, and every write goes out with FUA (a write-through disk)', async () => {
    const file = join(dir, 'eval.img');
    const log = join(dir, 'eval.log');
    writeFileSync(file, Buffer.alloc(IMAGE_BYTES));
    writeFileSync(log, '');
    const nbd = await startNbdServer({
      kind: 'nbdkit',
      transport: 'unix',
      socket: join(dir, 'eval.sock'),
      // nbdkit emulates write-zeroes with writes unless the nozero filter takes it away.
      extra: ['--filter=nozero'],
      plugin: [
        'eval',
        `get_size=echo ${IMAGE_BYTES}`,
        `pread=dd if=${file} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none`,
        `pwrite=echo "pwrite $3 $4 $5" >> ${log}; dd of=${file} seek=$4 conv=notrunc oflag=seek_bytes status=none`,
        'can_fua=echo native',
      ],
    });
    servers.push(nbd);
    const { socket } = await daemonFor(nbd.uri);
    await withDriver(socket, async (d) => {
      for (const bit of [
        BlkFeature.FLUSH,
        BlkFeature.CONFIG_WCE,
        BlkFeature.DISCARD,
        BlkFeature.WRITE_ZEROES,
      ])
        expect(d.vmm.hasFeature(bit), `feature bit ${bit}`).toBe(false);
      const data = pattern(21, 4096);
      expect((await d.write(16, data)).status).toBe(BlkStatus.OK);
      expect(same((await d.read(16, 4096)).data, data)).toBe(true);
      expect(same(onDisk(file, 16 * SECTOR_SIZE, 4096), data)).toBe(true);
    });
    expect(readFileSync(log, 'utf8')).toMatch(/^pwrite 4096 8192 fua$/m);
  });
});

describe('the NBD server goes away', () => {
  it('restarted mid-I/O: requests in flight and issued meanwhile complete without error', async () => {
    const { nbd, image } = await server({ kind: 'qemu-nbd', transport: 'unix' });
    const { socket, daemon } = await daemonFor(nbd.uri, ['--nbd-timeout-ms', '20000']);
    await withDriver(socket, async (d) => {
      const writes = (seed: number, at: number) =>
        Array.from({ length: 32 }, (_, i) => ({
          type: 'write' as const,
          sector: at + i * 32,
          data: pattern(seed + i, 16 * 1024),
        }));
      const first = writes(1000, 4096);
      // The server dies with these in flight (or some of them answered: either way none may fail).
      const inFlight = d.submitBatch(first);
      await nbd.kill();
      await waitFor(() => daemon.log().includes('NBD connection lost'), 'the daemon to notice');
      // Issued while there is no server: held.
      const second = writes(2000, 8192);
      const held = d.submitBatch(second);
      await nbd.start();
      const results = [...(await inFlight), ...(await held)];
      expect(results.map((r) => r.status)).toEqual(results.map(() => BlkStatus.OK));
      for (const w of [...first, ...second]) {
        expect(same((await d.read(w.sector, w.data.length)).data, w.data)).toBe(true);
        expect(same(onDisk(image, w.sector * SECTOR_SIZE, w.data.length), w.data)).toBe(true);
      }
    });
    await waitFor(
      () => /NBD connection back after \d+ ms; resubmitting \d+ command/.test(daemon.log()),
      'the reconnect to be logged',
    );
  });

  it('past --nbd-timeout-ms: held requests fail with IOERR, and service resumes once it is back', async () => {
    const { nbd } = await server({ kind: 'qemu-nbd', transport: 'tcp' });
    const { socket, daemon } = await daemonFor(nbd.uri, ['--nbd-timeout-ms', '300']);
    await withDriver(socket, async (d) => {
      const data = pattern(5, 4096);
      expect((await d.write(128, data)).status).toBe(BlkStatus.OK);
      await nbd.kill();
      await waitFor(() => daemon.log().includes('NBD connection lost'), 'the daemon to notice');
      expect((await d.read(128, 4096)).status).toBe(BlkStatus.IOERR);
      // The log line travels through the logger thread: it may come after the reply.
      await waitFor(
        () => /unreachable for 300 ms; failing 1 held command/.test(daemon.log()),
        'the timeout warning',
      );
      // Failing fast until it is back.
      expect((await d.flush()).status).toBe(BlkStatus.IOERR);
      const before = daemon.log().length;
      await nbd.start();
      await waitFor(
        () => daemon.log().slice(before).includes('NBD connection back'),
        'the daemon to reconnect',
      );
      expect(same((await d.read(128, 4096)).data, data)).toBe(true);
    });
  });
});

describe('the NBD server comes back with another export', () => {
  it('is not used: held requests fail after the timeout, with a warning naming the sizes', async () => {
    const { nbd, image } = await server({ kind: 'qemu-nbd', transport: 'unix' });
    const { socket, daemon } = await daemonFor(nbd.uri, ['--nbd-timeout-ms', '500']);
    await withDriver(socket, async (d) => {
      expect((await d.write(8, pattern(8, 4096))).status).toBe(BlkStatus.OK);
      await nbd.kill();
      truncateSync(image, IMAGE_BYTES / 2);
      await nbd.start();
      expect((await d.read(8, 4096)).status).toBe(BlkStatus.IOERR);
      await waitFor(
        () => /came back with another export \(33554432 bytes; was 67108864\)/.test(daemon.log()),
        'the warning about the changed export',
      );
    });
  });
});

describe('URIs that cannot work', () => {
  const cases = [
    {
      image: 'nbd://127.0.0.1:1/disk',
      says: /nbd:\/\/127\.0\.0\.1:1\/disk: cannot connect \(ECONNREFUSED/,
    },
    {
      image: 'nbd+unix:///disk?socket=/nonexistent/nbd.sock',
      says: /nbd\+unix:\/\/\/disk\?socket=\/nonexistent\/nbd\.sock: cannot connect \(ENOENT/,
    },
    {
      image: 'nbd+unix:///disk',
      says: /nbd\+unix:\/\/\/disk: not a usable NBD URI \(missing \?socket=PATH\)/,
    },
    {
      image: 'nbdx://host/disk',
      says: /nbdx:\/\/host\/disk: not a usable NBD URI \(scheme must be/,
    },
    { image: 'nbd://:10809/disk', says: /not a usable NBD URI/ },
  ];
  it.each(cases)('--image $image: the daemon exits non-zero naming it', async ({ image, says }) => {
    const r = await runCli(['blk', '--socket-path', join(dir, 'never.sock'), '--image', image]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(says);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('an NBD URI with a file engine, or --aio nbd with a file, is refused', async () => {
    const a = await runCli([
      'blk',
      '--socket-path',
      'x',
      '--image',
      'nbd://h/e',
      '--aio',
      'io_uring',
    ]);
    expect(a.code).toBe(2);
    expect(a.stderr).toMatch(/an NBD URI needs --aio nbd \(not io_uring\)/);
    const b = await runCli(['blk', '--socket-path', 'x', '--image', '/tmp/x.img', '--aio', 'nbd']);
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/--aio nbd needs an NBD URI/);
    const c = await runCli([
      'blk',
      '--socket-path',
      'x',
      '--image',
      '/tmp/x.img',
      '--nbd-timeout-ms',
      '5',
    ]);
    expect(c.code).toBe(2);
    expect(c.stderr).toMatch(/--nbd-timeout-ms: only applies to --aio nbd/);
  });
});
