/**
 * `set-rt` on the control socket of a real daemon: the worker thread that
 * serves a device changes its affinity and policy at run time (checked in
 * /proc as well as in query-devices), bad values are refused naming the
 * argument, a device without a worker of its own says so, and the daemon
 * serves I/O throughout.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkDriver } from '../frontend/index.js';
import { blkTraffic } from '../support/blk-traffic.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { type Json, QmpClient } from '../support/qmp-client.js';

let dir: string;
const daemons: Daemon[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-set-rt-'));
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  rmSync(dir, { recursive: true, force: true });
});

/** The error of a reply, or undefined when it succeeded. */
function error(reply: Json): { class: string; desc: string } | undefined {
  return reply.error as { class: string; desc: string } | undefined;
}

/** What the kernel says of a thread of `pid`. */
function taskStatus(pid: number, tid: number, field: string): string {
  const text = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
  const match = new RegExp(`^${field}:\\s*(.*)$`, 'm').exec(text);
  return match === null ? '' : match[1].trim();
}

type Thread = { tid: number; policy: string; priority: number; cpus: number[] };

describe('set-rt', () => {
  let socket: string;
  let control: string;
  let daemon: Daemon;

  beforeAll(async () => {
    const image = join(dir, 'disk.img');
    socket = join(dir, 'blk.sock');
    control = join(dir, 'blk.qmp');
    writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
    daemon = await startDaemon([
      'blk',
      '--socket-path',
      socket,
      '--image',
      image,
      '--control-socket',
      control,
    ]);
    daemons.push(daemon);
  });

  it('moves the worker thread of a blk device, and refuses bad values naming them', async () => {
    const c = await QmpClient.connect(control);
    const driver = await BlkDriver.create({ socketPath: socket });
    const shape = { bytes: 4096, slots: 8 };
    expect(await blkTraffic(driver, 4, 1, shape)).toBe('ok');

    const pinned = await c.execute('set-rt', { device: 0, cpus: [0] });
    expect(error(pinned)).toBeUndefined();
    const t = pinned.return as Thread;
    expect(t.cpus).toEqual([0]);
    const shown = ((await c.execute('query-devices')).return as { thread: Thread }[])[0].thread;
    expect(shown).toEqual(t);
    const pid = daemon.proc.pid as number;
    expect(taskStatus(pid, t.tid, 'Cpus_allowed_list')).toBe('0');

    const batch = await c.execute('set-rt', { device: 0, policy: 'batch' });
    expect(batch.return).toMatchObject({ tid: t.tid, policy: 'batch', priority: 0, cpus: [0] });
    const after = ((await c.execute('query-devices')).return as { thread: Thread }[])[0].thread;
    expect(after.policy).toBe('batch');

    const bad = await c.execute('set-rt', { device: 0, policy: 'fifo', priority: 120 });
    expect(error(bad)?.class).toBe('GenericError');
    expect(error(bad)?.desc).toMatch(/^Parameter 'priority' is invalid: .*120/);
    const noCpu = await c.execute('set-rt', { device: 0, cpus: [4096] });
    expect(error(noCpu)?.desc).toMatch(/^Parameter 'cpus' is invalid: .*4096 does not exist/);
    expect(error(await c.execute('set-rt', { device: 0, cpus: 'x' }))?.desc).toBe(
      "Invalid parameter type for 'cpus', expected: integer-list",
    );
    expect(error(await c.execute('set-rt', { policy: 'rr' }))?.desc).toBe(
      "Parameter 'device' is missing",
    );
    expect(error(await c.execute('set-rt', { device: 3, policy: 'other' }))?.desc).toMatch(
      /^Parameter 'device' must be 0\.\.0/,
    );

    // Real-time without CAP_SYS_NICE: the kernel's refusal, and the daemon lives on.
    const fifo = await c.execute('set-rt', { device: 0, policy: 'fifo', priority: 10 });
    if (error(fifo) !== undefined) {
      expect(error(fifo)?.class).toBe('GenericError');
      expect(error(fifo)?.desc).toMatch(/^Parameter 'policy' refused: .*kernel refused .*\(E\w+\)/);
    } else {
      expect(fifo.return).toMatchObject({ policy: 'fifo', priority: 10 });
      expect(error(await c.execute('set-rt', { device: 0, policy: 'other' }))).toBeUndefined();
    }

    expect(await blkTraffic(driver, 4, 9, shape)).toBe('ok');
    await driver.close();
    c.close();
  });

  it('serial: not supported for a device with no worker of its own', async () => {
    const uart = join(dir, 'uart.sock');
    const qmp = join(dir, 'uart.qmp');
    const d = await startDaemon([
      'serial',
      '--socket-path',
      uart,
      '--log',
      join(dir, 'uart.log'),
      '--control-socket',
      qmp,
    ]);
    daemons.push(d);
    const c = await QmpClient.connect(qmp);
    const r = await c.execute('set-rt', { device: 0, cpus: [0] });
    expect(error(r)?.class).toBe('GenericError');
    expect(error(r)?.desc).toMatch(/not supported for this device/);
    c.close();
  });
});
