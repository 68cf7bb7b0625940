/**
 * Issue 14 on a real daemon driven by the project's front end over real
 * sockets: per-device token buckets (--bps-limit, --iops-limit, set at run
 * time with block-set-io-throttle) hold requests back without failing them,
 * and what completed over the measured interval stays under limit × elapsed
 * + burst + one request (counts, never a wall-clock threshold: a loaded
 * machine only makes the interval longer and the bound looser); and the
 * ioprio class of the guest's request header is counted per class.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkDriver, type BlkRequest, BlkStatus } from '../frontend/index.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { type Json, QmpClient } from '../support/qmp-client.js';

let dir: string;
const daemons: Daemon[] = [];
let n = 0;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-qos-'));
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  rmSync(dir, { recursive: true, force: true });
});

/** A daemon serving a fresh 16 MiB image with `extra` flags, its socket and control socket. */
async function daemon(extra: string[]): Promise<{ socket: string; qmp: QmpClient }> {
  const i = n++;
  const image = join(dir, `disk${i}.img`);
  const socket = join(dir, `blk${i}.sock`);
  const control = join(dir, `blk${i}.qmp`);
  writeFileSync(image, Buffer.alloc(16 * 1024 * 1024));
  const d = await startDaemon([
    'blk',
    '--socket-path',
    socket,
    '--image',
    image,
    '--control-socket',
    control,
    ...extra,
  ]);
  daemons.push(d);
  return { socket, qmp: await QmpClient.connect(control) };
}

async function stats(c: QmpClient): Promise<Record<string, number>> {
  return ((await c.execute('query-stats', { device: 0 })).return as { stats: Json }[])[0]
    .stats as Record<string, number>;
}

/**
 * Keeps `depth` requests in flight until `count` completed; returns the
 * milliseconds from the first submit to the last completion.
 */
async function drive(
  d: BlkDriver,
  count: number,
  depth: number,
  make: (i: number) => BlkRequest,
): Promise<number> {
  const start = performance.now();
  let next = 0;
  const lane = async () => {
    while (next < count) {
      const r = await d.submit(make(next++));
      expect(r.status).toBe(BlkStatus.OK);
    }
  };
  await Promise.all(Array.from({ length: depth }, lane));
  return performance.now() - start;
}

const KiB = 1024;

describe('token buckets', () => {
  it('--bps-limit: writes wait, none fails, bytes stay under limit × elapsed + burst', async () => {
    const limit = 2048 * KiB;
    const burst = 256 * KiB;
    const { socket, qmp } = await daemon([
      '--aio',
      'null',
      '--bps-limit',
      String(limit),
      '--bps-burst',
      String(burst),
    ]);
    const d = await BlkDriver.create({ socketPath: socket });
    const size = 64 * KiB;
    const count = 64; // 4 MiB: about twice the limit's second
    const data = new Uint8Array(size);
    const ms = await drive(d, count, 4, (i) => ({ type: 'write', sector: (i % 64) * 128, data }));
    const s = await stats(qmp);
    expect(s.bytesWritten).toBe(count * size);
    expect(s.bytesWritten).toBeLessThanOrEqual((limit * ms) / 1000 + burst + size);
    expect(s.throttledRequests).toBeGreaterThan(0);
    expect(s.throttledUs).toBeGreaterThan(0);
    await d.close();
  });

  it('--iops-read-limit holds reads, not writes', async () => {
    const { socket, qmp } = await daemon(['--iops-read-limit', '100', '--iops-burst', '4']);
    const d = await BlkDriver.create({ socketPath: socket });
    const writesMs = await drive(d, 8, 4, (i) => ({
      type: 'write',
      sector: i * 8,
      data: new Uint8Array(4096),
    }));
    expect(writesMs).toBeGreaterThan(0);
    const before = await stats(qmp);
    expect(before.throttledRequests).toBe(0);
    const count = 60;
    const ms = await drive(d, count, 8, (i) => ({
      type: 'read',
      sector: (i % 16) * 8,
      length: 4096,
    }));
    const s = await stats(qmp);
    expect(count).toBeLessThanOrEqual((100 * ms) / 1000 + 4 + 1);
    expect(s.throttledRequests).toBeGreaterThan(0);
    await d.close();
  });

  it('block-set-io-throttle sets, reports and removes limits at run time', async () => {
    const { socket, qmp } = await daemon(['--aio', 'null']);
    const d = await BlkDriver.create({ socketPath: socket });
    const read = (i: number): BlkRequest => ({ type: 'read', sector: (i % 16) * 8, length: 4096 });
    await drive(d, 16, 4, read);
    expect((await stats(qmp)).throttledRequests).toBe(0);

    const set = await qmp.execute('block-set-io-throttle', { device: 0, iops: 200, iops_max: 2 });
    expect(set.return).toEqual({ iops: 200, iopsBurst: 2 });
    const count = 40;
    const ms = await drive(d, count, 4, read);
    const s = await stats(qmp);
    expect(count).toBeLessThanOrEqual((200 * ms) / 1000 + 2 + 1);
    expect(s.throttledRequests).toBeGreaterThan(0);

    const off = await qmp.execute('block-set-io-throttle', { device: 0 });
    expect(off.return).toEqual({});
    await drive(d, 16, 4, read);

    const bad = await qmp.execute('block-set-io-throttle', { device: 0, bps: -1 });
    expect((bad.error as { class: string }).class).toBe('GenericError');
    const burstAlone = await qmp.execute('block-set-io-throttle', { device: 0, bps_max: 4096 });
    expect((burstAlone.error as { desc: string }).desc).toContain('--bps-burst');
    await d.close();
  });

  it('refuses bad limits on the command line, naming the flag', async () => {
    const { runCli } = await import('../support/daemon.js');
    const r = await runCli([
      'blk',
      '--socket-path',
      join(dir, 'x.sock'),
      '--image',
      join(dir, 'none'),
      '--iops-limit',
      '-3',
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('--iops-limit');
    const both = await runCli([
      'blk',
      '--socket-path',
      join(dir, 'y.sock'),
      '--image',
      join(dir, 'none'),
      '--aio',
      'null',
      '--engine',
      'sync',
    ]);
    expect(both.stderr).toContain('--aio and --engine are the same option');
  });
});

describe('guest I/O priority', () => {
  it('counts the class of each request header and serves them all', async () => {
    const { socket, qmp } = await daemon(['--ioprio', 'rt:2', '--guest-ioprio', 'clamp']);
    const d = await BlkDriver.create({ socketPath: socket });
    const RT = (1 << 13) | 0;
    const BE = (2 << 13) | 4;
    const IDLE = 3 << 13;
    const results = await d.submitBatch([
      { type: 'read', sector: 0, length: 4096, ioprio: IDLE },
      { type: 'read', sector: 8, length: 4096, ioprio: BE },
      { type: 'read', sector: 16, length: 4096, ioprio: RT },
      { type: 'read', sector: 24, length: 4096, ioprio: RT },
      { type: 'write', sector: 32, data: new Uint8Array(4096), ioprio: 7 << 13 },
      { type: 'read', sector: 40, length: 4096 },
    ]);
    for (const r of results) expect(r.status).toBe(BlkStatus.OK);
    const s = await stats(qmp);
    expect([s.ioprioRt, s.ioprioBe, s.ioprioIdle, s.ioprioNone]).toEqual([2, 1, 1, 2]);
    await d.close();
  });
});
