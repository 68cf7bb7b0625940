/**
 * blockdev-snapshot (issue 12) under verified writes from the project's
 * front end: on a loop-mounted XFS image the image is cloned by reflink
 * (FICLONE) at an instant with no write in flight; on ext4 (no reflink) the
 * command falls back to a full live backup. Either way the copy equals the
 * disk at the instant, block by block, and the front end sees no error.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkDriver } from '../frontend/index.js';
import { BLOCK, WriteModel } from '../support/backup-model.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { type Json, QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
let dir: string;
let xfs: string | null = null;

/** mkfs.xfs is there (Debian xfsprogs, scripts/setup.sh). */
function haveMkfsXfs(): boolean {
  try {
    execFileSync('mkfs.xfs', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-snapshot-'));
  if (!haveMkfsXfs()) return;
  const backing = join(dir, 'xfs.img');
  writeFileSync(backing, '');
  truncateSync(backing, 512 * MiB);
  execFileSync('mkfs.xfs', ['-q', '-m', 'reflink=1', backing]);
  xfs = join(dir, 'xfs');
  mkdirSync(xfs);
  execFileSync('mount', ['-o', 'loop', backing, xfs]);
});
afterAll(() => {
  if (xfs !== null) execFileSync('umount', [xfs]);
  rmSync(dir, { recursive: true, force: true });
});

/** Serves `image` (created zeroed), writes verified blocks, takes a snapshot to `target`. */
async function snapshotUnderWrites(where: string, name: string) {
  const image = join(where, `${name}.img`);
  const socket = join(dir, `${name}.sock`);
  const control = join(dir, `${name}.qmp`);
  writeFileSync(image, Buffer.alloc(SIZE));
  const daemon: Daemon = await startDaemon([
    'blk',
    '--socket-path',
    socket,
    '--image',
    image,
    '--queues',
    '1',
    '--control-socket',
    control,
  ]);
  const c = await QmpClient.connect(control);
  const driver = await BlkDriver.create({ socketPath: socket });
  const model = new WriteModel(SIZE / BLOCK, 5);
  let stop = false;
  const load = model.run(driver, 8, () => stop);
  try {
    await waitFor(() => model.completed >= 300, 'the first writes');
    const target = join(where, `${name}.snap`);
    const from = c.messages.length;
    const window = model.openWindow();
    const reply = (await c.execute('blockdev-snapshot', { device: 0, target })).return as Json;
    model.closeWindow(window);
    const at = model.completed;
    if (reply.method === 'backup')
      expect(
        (
          await waitFor(
            () =>
              c.messages
                .slice(from)
                .find((m) => /^BACKUP_(COMPLETED|FAILED)$/.test(String(m.event))),
            'the backup',
            60_000,
          )
        ).event,
      ).toBe('BACKUP_COMPLETED');
    await waitFor(() => model.completed >= at + 100, 'writes after the snapshot');
    return { reply, check: model.check(readFileSync(target), window), model };
  } finally {
    stop = true;
    await load;
    await driver.close();
    c.close();
    await daemon.stop();
  }
}

describe('blockdev-snapshot', () => {
  it('on XFS: a reflink clone (FICLONE) equal to the disk at the instant', async (ctx) => {
    if (xfs === null) ctx.skip();
    const r = await snapshotUnderWrites(xfs as string, 'xfs');
    expect(r.reply).toMatchObject({ method: 'reflink' });
    expect(r.check).toBe('ok');
    expect(r.model.errors).toEqual([]);
  });

  it('on ext4 (no reflink): falls back to a full live backup, equal to the disk at the instant', async () => {
    const r = await snapshotUnderWrites(dir, 'ext4');
    expect(r.reply).toMatchObject({
      method: 'backup',
      reason: expect.stringMatching(/FICLONE refused/),
      sync: 'full',
    });
    expect(r.check).toBe('ok');
    expect(r.model.errors).toEqual([]);
  });
});
