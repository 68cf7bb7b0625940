/**
 * End to end (issue 14): `ionice` in a real QEMU TCG guest reaches the host's
 * disk. The guest's Linux puts each request's I/O priority in the virtio-blk
 * header (req_get_ioprio()); `vhost-rt blk --ioprio rt:0` (clamp, the default)
 * counts the classes it saw (query-stats on the control socket) and submits
 * with them, which the host kernel's block_rq_issue tracepoint shows when
 * tracefs is available here.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { ensureGuestImage, runGuest } from '../support/qemu.js';
import { type Json, QmpClient } from '../support/qmp-client.js';

const MiB = 1024 * 1024;
const TRACING = '/sys/kernel/tracing';
const FORMAT = `${TRACING}/events/block/block_rq_issue/format`;
/** rt:2 as ioprio_set(2) encodes it. */
const RT2 = (1 << 13) | 2;

function traceable(): boolean {
  if (!existsSync(FORMAT)) {
    try {
      execFileSync('mount', ['-t', 'tracefs', 'nodev', TRACING], { stdio: 'ignore' });
    } catch {
      return false;
    }
  }
  return existsSync(FORMAT) && readFileSync(FORMAT, 'utf8').includes('ioprio');
}

describe('ionice in a QEMU guest', () => {
  let dir: string;
  let socket: string;
  let control: string;
  let daemon: Daemon;
  const instance = join(TRACING, 'instances', `vhost-rt-guest-ioprio-${process.pid}`);
  const tracing = traceable();

  beforeAll(async () => {
    ensureGuestImage();
    dir = mkdtempSync(join(tmpdir(), 'vhost-rt-e2e-ioprio-'));
    const image = join(dir, 'disk.img');
    socket = join(dir, 'blk.sock');
    control = join(dir, 'blk.qmp');
    // Real blocks (no holes) and nothing dirty: the guest's O_DIRECT reads reach the host disk.
    writeFileSync(image, randomBytes(16 * MiB));
    const fd = openSync(image, 'r+');
    fsyncSync(fd);
    closeSync(fd);
    daemon = await startDaemon([
      'blk',
      '--socket-path',
      socket,
      '--image',
      image,
      '--ioprio',
      'rt:0',
      '--control-socket',
      control,
    ]);
    if (tracing) {
      mkdirSync(instance);
      const ev = join(instance, 'events/block/block_rq_issue');
      writeFileSync(join(ev, 'filter'), `ioprio == ${RT2}`);
      writeFileSync(join(ev, 'enable'), '1');
      writeFileSync(join(instance, 'tracing_on'), '1');
    }
  });

  afterAll(async () => {
    await daemon?.stop();
    if (tracing && existsSync(instance)) {
      writeFileSync(join(instance, 'tracing_on'), '0');
      rmdirSync(instance);
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('the device sees class RT for `ionice -c1 dd`, idle for `ionice -c3`, and the host disk gets rt:2', async () => {
    const q = await QmpClient.connect(control);
    const stats = async () =>
      ((await q.execute('query-stats', { device: 0 })).return as { stats: Json }[])[0]
        .stats as Record<string, number>;
    const before = await stats();
    const result = await runGuest({
      script: `
wait_dev /dev/vda
ionice -c1 -n2 dd if=/dev/vda of=/dev/null bs=4096 count=64 iflag=direct 2>/dev/null && echo RT_DONE
ionice -c3 dd if=/dev/vda of=/dev/null bs=4096 count=32 skip=1024 iflag=direct 2>/dev/null && echo IDLE_DONE
`,
      blk: [{ socket, queues: 1 }],
      cpus: 1,
      timeoutMs: 120_000,
    });
    expect(result.exitCode, result.output).toBe(0);
    expect(result.output).toContain('RT_DONE');
    expect(result.output).toContain('IDLE_DONE');
    const after = await stats();
    expect(after.ioprioRt - before.ioprioRt).toBeGreaterThanOrEqual(64);
    expect(after.ioprioIdle - before.ioprioIdle).toBeGreaterThanOrEqual(32);
    if (tracing) {
      const lines = readFileSync(join(instance, 'trace'), 'utf8')
        .split('\n')
        .filter((l) => l.includes('block_rq_issue:'));
      expect(lines.length).toBeGreaterThan(0);
      for (const l of lines) expect(l).toContain(' rt,0,2 ');
    }
    q.close();
  });
});
