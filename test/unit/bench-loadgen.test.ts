import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkLoadOptions,
  guestBytesFor,
  readProcCpu,
  runLoad,
} from '../../bench/loadgen/generator.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { guestFileEntries } from '../support/qemu.js';

describe('load generator against the vhost-rt daemon (real socket, eventfds, memfd RAM)', () => {
  let dir: string;
  let daemon: Daemon;
  let socket: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vhost-rt-loadgen-'));
    socket = join(dir, 'blk.sock');
    const image = join(dir, 'disk.img');
    await writeFile(image, Buffer.alloc(8 * 1024 * 1024, 0x5a));
    daemon = await startDaemon(['blk', '--socket-path', socket, '--image', image]);
  });

  afterAll(async () => {
    await daemon?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('keeps iodepth requests in flight and charges the back end its CPU time', async () => {
    const pid = daemon.proc.pid as number;
    const r = await runLoad({
      socketPath: socket,
      backendPid: pid,
      rw: 'randrw',
      bs: 4096,
      iodepth: 4,
      runtimeSec: 0.3,
      rampSec: 0.1,
    });
    expect(r.errors).toBe(0);
    expect(r.ios).toBeGreaterThan(0);
    expect(r.bytes).toBe(r.ios * 4096);
    expect(r.latency.count).toBe(r.ios);
    expect(r.latency.p50Us).toBeLessThanOrEqual(r.latency.p999Us);
    expect(r.latency.p999Us).toBeLessThanOrEqual(r.latency.maxUs);
    expect(r.backendCpuUsPerIo).not.toBeNull();
    expect(r.generatorCpuUsPerIo).toBeGreaterThan(0);
  });

  it('reconnects for a second run (sequential 64 KiB reads over a sub-range)', async () => {
    const r = await runLoad({
      socketPath: socket,
      rw: 'read',
      bs: 65536,
      iodepth: 2,
      runtimeSec: 0.2,
      offset: 65536,
      size: 1024 * 1024,
    });
    expect(r.errors).toBe(0);
    expect(r.ios).toBeGreaterThan(0);
    expect(r.backendCpuUsPerIo).toBeNull();
  });

  it('rejects a range beyond the device with a coded error', async () => {
    const run = runLoad({
      socketPath: socket,
      rw: 'read',
      bs: 4096,
      iodepth: 1,
      runtimeSec: 0.1,
      offset: 16 * 1024 * 1024,
    });
    await expect(run).rejects.toMatchObject({ code: 'LOADGEN_RANGE' });
  });
});

describe('load generator options and helpers', () => {
  it('names the option at fault', () => {
    const base = { socketPath: 's', rw: 'read' as const, bs: 4096, iodepth: 1, runtimeSec: 1 };
    expect(() => checkLoadOptions({ ...base, bs: 1000 })).toThrow(/bs/);
    expect(() => checkLoadOptions({ ...base, iodepth: 0 })).toThrow(/iodepth/);
    expect(() => checkLoadOptions({ ...base, runtimeSec: 0 })).toThrow(/runtime/);
    expect(() => checkLoadOptions(base)).not.toThrow();
  });

  it('sizes guest RAM for every slot buffer', () => {
    const bytes = guestBytesFor({
      socketPath: 's',
      rw: 'read',
      bs: 1 << 20,
      iodepth: 32,
      runtimeSec: 1,
    });
    expect(bytes).toBeGreaterThan(32 * (1 << 20));
    expect(bytes % (2 << 20)).toBe(0);
  });

  it('reads this process CPU time from /proc', () => {
    const t = readProcCpu(process.pid);
    expect(t.userSec + t.systemSec).toBeGreaterThan(0);
  });

  it('puts guest files after their parent directories', async () => {
    const entries = await guestFileEntries([
      { source: '/etc/hostname', path: '/opt/x/etc/name', mode: 0o644 },
    ]);
    expect(entries.map((e) => [e.name, e.mode.toString(8)])).toEqual([
      ['opt', '40755'],
      ['opt/x', '40755'],
      ['opt/x/etc', '40755'],
      ['opt/x/etc/name', '100644'],
    ]);
  });
});
