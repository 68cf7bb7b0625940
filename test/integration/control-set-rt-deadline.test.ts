/**
 * Issue 14: SCHED_DEADLINE for a device worker on a running daemon — at start
 * (`--rt-policy deadline --rt-runtime-us ...`) and at run time (`set-rt` with
 * policy 'deadline' and runtimeUs / deadlineUs / periodUs) — checked in /proc
 * (policy 6) when the kernel admits it, or as the errno-naming refusal when it
 * does not; invalid parameters are refused before the worker is asked. The
 * device serves I/O throughout.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkDriver } from '../frontend/index.js';
import { blkTraffic } from '../support/blk-traffic.js';
import { type Daemon, runCli, startDaemon } from '../support/daemon.js';
import { type Json, QmpClient } from '../support/qmp-client.js';

let dir: string;
const daemons: Daemon[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-deadline-'));
  // One image per daemon: a served image is locked (QEMU's lock bytes).
  for (const n of ['a', 'b', 'c'])
    writeFileSync(join(dir, `${n}.img`), Buffer.alloc(4 * 1024 * 1024));
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  rmSync(dir, { recursive: true, force: true });
});

/** The scheduling policy number of thread `tid` of `pid` (field 41 of its stat). */
function policyOf(pid: number, tid: number): number {
  const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[38]);
}

type Thread = { tid: number; policy: string };

describe('--rt-policy deadline on a daemon', () => {
  it('starts a worker under SCHED_DEADLINE, or refuses with the errno named', async () => {
    const args = [
      'blk',
      '--socket-path',
      join(dir, 'a.sock'),
      '--image',
      join(dir, 'a.img'),
      '--rt-policy',
      'deadline',
      '--rt-runtime-us',
      '500',
      '--rt-deadline-us',
      '2000',
      '--rt-period-us',
      '4000',
    ];
    let d: Daemon;
    try {
      d = await startDaemon(args);
    } catch (err) {
      expect(String(err)).toMatch(/the kernel refused sched_setattr \((EPERM|EBUSY|EINVAL)\)/);
      return;
    }
    daemons.push(d);
    expect(d.log()).toContain('policy deadline');
    const tid = Number(/worker tid (\d+)/.exec(d.log())?.[1]);
    expect(policyOf(d.proc.pid as number, tid)).toBe(6);
    const driver = await BlkDriver.create({ socketPath: join(dir, 'a.sock') });
    expect(await blkTraffic(driver, 4, 7, { bytes: 4096, slots: 4 })).toBe('ok');
    await driver.close();
  });

  it('refuses bad parameters before opening anything, naming the flag', async () => {
    const r = await runCli([
      'blk',
      '--socket-path',
      join(dir, 'b.sock'),
      '--image',
      join(dir, 'b.img'),
      '--rt-policy',
      'deadline',
      '--rt-runtime-us',
      '3000',
      '--rt-deadline-us',
      '2000',
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('--rt-runtime-us 3000 exceeds --rt-deadline-us 2000');
  });

  it('set-rt moves a running worker to SCHED_DEADLINE and back', async () => {
    const socket = join(dir, 'c.sock');
    const control = join(dir, 'c.qmp');
    const d = await startDaemon([
      'blk',
      '--socket-path',
      socket,
      '--image',
      join(dir, 'c.img'),
      '--control-socket',
      control,
    ]);
    daemons.push(d);
    const c = await QmpClient.connect(control);
    const bad = await c.execute('set-rt', { device: 0, policy: 'deadline', runtimeUs: 100 });
    expect((bad.error as { desc: string }).desc).toContain('deadlineUs');
    const r = await c.execute('set-rt', {
      device: 0,
      policy: 'deadline',
      runtimeUs: 500,
      deadlineUs: 2000,
      periodUs: 4000,
    });
    const pid = d.proc.pid as number;
    if (r.error !== undefined) {
      expect((r.error as Json).desc).toMatch(/refused.*sched_setattr \((EPERM|EBUSY|EINVAL)\)/);
    } else {
      const t = r.return as Thread;
      expect(t.policy).toBe('deadline');
      expect(policyOf(pid, t.tid)).toBe(6);
      const back = await c.execute('set-rt', { device: 0, policy: 'other' });
      expect((back.return as Thread).policy).toBe('other');
      expect(policyOf(pid, t.tid)).toBe(0);
    }
    const driver = await BlkDriver.create({ socketPath: socket });
    expect(await blkTraffic(driver, 4, 9, { bytes: 4096, slots: 4 })).toBe('ok');
    await driver.close();
    c.close();
  });
});
