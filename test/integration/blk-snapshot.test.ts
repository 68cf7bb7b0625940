/**
 * blockdev-snapshot (issue 12) under verified writes from the project's
 * front end: on a loop-mounted XFS image the image is cloned by reflink
 * (FICLONE) at an instant with no write in flight; on ext4 (no reflink) the
 * command falls back to a full live backup. Either way the copy equals the
 * disk at the instant, block by block, and the front end sees no error.
 * blockdev-backup's clone method (a reflink clone at the instant, read by the
 * copier) is checked the same way, full and incremental, and its refusal on ext4;
 * `auto` journals instead of cloning an image of too many extents.
 */
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AUTO_CLONE_MAX_EXTENTS, extentCount } from '../../src/worker/backup.js';
import { BlkDriver } from '../frontend/index.js';
import { BLOCK, WriteModel } from '../support/backup-model.js';
import { type Daemon, startBlkDaemon } from '../support/daemon.js';
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

/**
 * Serves `image` (created zeroed, SIZE bytes, unless `create` is false) on one queue with a
 * control socket named after `name`.
 */
async function serve(image: string, name: string, create = true) {
  const socket = join(dir, `${name}.sock`);
  const control = join(dir, `${name}.qmp`);
  if (create) writeFileSync(image, Buffer.alloc(SIZE));
  const daemon: Daemon = await startBlkDaemon(image, socket, control);
  return { daemon, c: await QmpClient.connect(control), socket };
}

/** One command of {@link underWrites}: `blockdev-snapshot` or `blockdev-backup` to `target`. */
interface Step {
  command: 'blockdev-snapshot' | 'blockdev-backup';
  /** Arguments besides device and target. */
  args?: Record<string, Json>;
}

/**
 * Serves `image` (created zeroed) and writes verified blocks at depth 8; runs
 * each step in turn, waits for its backup (unless it was a snapshot's clone)
 * and for more writes; returns each step's reply, its target checked against
 * the front end's model at the step's instant, and the control events.
 */
async function underWrites(where: string, name: string, steps: Step[]) {
  const image = join(where, `${name}.img`);
  const { daemon, c, socket } = await serve(image, name);
  const driver = await BlkDriver.create({ socketPath: socket });
  const model = new WriteModel(SIZE / BLOCK, 5);
  let stop = false;
  const load = model.run(driver, 8, () => stop);
  const results: { reply: Json; check: string; event: Json | null }[] = [];
  try {
    await waitFor(() => model.completed >= 300, 'the first writes');
    const target = join(where, `${name}.copy`);
    for (const step of steps) {
      const from = c.messages.length;
      const window = model.openWindow();
      const r = await c.execute(step.command, { device: 0, target, ...step.args });
      model.closeWindow(window);
      expect(r, JSON.stringify(r)).toHaveProperty('return');
      const reply = r.return as Json;
      const at = model.completed;
      let event: Json | null = null;
      if (reply.method !== 'reflink') {
        event = await waitFor(
          () =>
            c.messages.slice(from).find((m) => /^BACKUP_(COMPLETED|FAILED)$/.test(String(m.event))),
          'the backup',
          60_000,
        );
        expect(event.event, JSON.stringify(event)).toBe('BACKUP_COMPLETED');
      }
      results.push({ reply, check: model.check(readFileSync(target), window), event });
      await waitFor(() => model.completed >= at + 100, 'writes after the copy');
    }
    return { results, model, image, c };
  } finally {
    stop = true;
    await load;
    await driver.close();
    c.close();
    await daemon.stop();
  }
}

/** {@link underWrites} with one `blockdev-snapshot`. */
async function snapshotUnderWrites(where: string, name: string) {
  const r = await underWrites(where, name, [{ command: 'blockdev-snapshot' }]);
  return { reply: r.results[0].reply, check: r.results[0].check, model: r.model };
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

describe('blockdev-backup from a reflink clone', () => {
  it('on XFS: full then incremental backups read a clone taken at the instant; the guest writes never wait for a journal', async (ctx) => {
    if (xfs === null) ctx.skip();
    const r = await underWrites(xfs as string, 'clone', [
      { command: 'blockdev-backup', args: { sync: 'full' } },
      { command: 'blockdev-backup', args: { sync: 'incremental', method: 'clone' } },
    ]);
    const [full, incremental] = r.results;
    expect(full.reply).toMatchObject({ method: 'clone', sync: 'full' });
    expect(incremental.reply).toMatchObject({ method: 'clone', sync: 'incremental' });
    for (const step of r.results) {
      expect(step.check).toBe('ok');
      // Nothing went through the copy-before-write journal.
      expect(step.event).toMatchObject({ data: { method: 'clone', journaled: 0 } });
    }
    // The incremental updated the full backup in place to the disk at its own instant (the
    // check above): every chunk changed in between was copied from the second clone.
    expect(r.model.errors).toEqual([]);
    // The clone is gone once the backup ended.
    expect(existsSync(`${r.image}.vhost-rt-backup-clone`)).toBe(false);
  });

  it("on ext4: 'auto' falls back to the journal and says why; 'clone' is refused with the reason", async () => {
    const r = await underWrites(dir, 'noclone', [{ command: 'blockdev-backup' }]);
    expect(r.results[0].reply).toMatchObject({
      method: 'journal',
      'method-reason': expect.stringMatching(/FICLONE refused \(EOPNOTSUPP|EXDEV|ENOTSUP/),
    });
    expect(r.results[0].check).toBe('ok');
    expect(r.model.errors).toEqual([]);
    // Refused outright when the clone is asked for; the device goes on (a journal backup after it).
    const image = join(dir, 'refuse.img');
    const { daemon, c } = await serve(image, 'refuse');
    try {
      const target = join(dir, 'refuse.copy');
      const bad = await c.execute('blockdev-backup', { device: 0, target, method: 'magic' });
      expect(String((bad.error as Json | undefined)?.desc)).toMatch(
        /Parameter 'method' must be one of auto, clone, journal, redirect, not magic/,
      );
      const refused = await c.execute('blockdev-backup', { device: 0, target, method: 'clone' });
      expect(String((refused.error as Json | undefined)?.desc)).toMatch(/FICLONE refused/);
      expect(existsSync(`${image}.vhost-rt-backup-clone`)).toBe(false);
      const ok = await c.execute('blockdev-backup', { device: 0, target, method: 'journal' });
      expect(ok.return).toMatchObject({ method: 'journal' });
      await waitFor(() => c.messages.find((m) => m.event === 'BACKUP_COMPLETED'), 'the backup');
    } finally {
      c.close();
      await daemon.stop();
    }
  });
});

/** A file of `blocks` 4 KiB blocks in which every other one is written (ext4: one extent each). */
function fragmentedImage(path: string, blocks: number): void {
  writeFileSync(path, '');
  truncateSync(path, blocks * 4096);
  const fd = openSync(path, 'r+');
  try {
    const block = Buffer.alloc(4096, 0xa5);
    for (let b = 0; b < blocks; b += 2) writeSync(fd, block, 0, 4096, b * 4096);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

describe("blockdev-backup 'auto' and the clone's hold", () => {
  it('extentCount counts the extents FIEMAP maps, off the main thread', async () => {
    const path = join(dir, 'extents.img');
    fragmentedImage(path, 20);
    const fd = openSync(path, 'r');
    try {
      expect(await extentCount(fd)).toBe(10);
    } finally {
      closeSync(fd);
    }
    // Native errors carry errno's name as their code.
    await expect(extentCount(-1)).rejects.toMatchObject({ code: 'EBADF', syscall: 'ioctl' });
  });

  it(`on XFS: 'auto' journals an image of more than ${AUTO_CLONE_MAX_EXTENTS} extents and says why; 'clone' still clones it`, async (ctx) => {
    if (xfs === null) ctx.skip();
    const image = join(xfs as string, 'fragmented.img');
    // Every other block written. XFS may map two written blocks as one extent, so write
    // enough for more extents than auto clones whatever it does, and count them.
    fragmentedImage(image, 4 * (AUTO_CLONE_MAX_EXTENTS + 1));
    const fd = openSync(image, 'r');
    const extents = await extentCount(fd);
    closeSync(fd);
    expect(extents).toBeGreaterThan(AUTO_CLONE_MAX_EXTENTS);
    const { daemon, c } = await serve(image, 'fragmented', false);
    try {
      const target = join(xfs as string, 'fragmented.copy');
      const auto = await c.execute('blockdev-backup', { device: 0, target });
      expect(auto.return).toMatchObject({
        method: 'journal',
        'method-reason': `the image has ${extents} extents, more than auto clones (${AUTO_CLONE_MAX_EXTENTS}): the clone would hold the writes too long`,
      });
      const done = (n: number) => () =>
        c.messages.filter((m) => m.event === 'BACKUP_COMPLETED').length >= n;
      await waitFor(done(1), 'the journal backup');
      expect(readFileSync(target).equals(readFileSync(image))).toBe(true);
      const clone = await c.execute('blockdev-backup', { device: 0, target, method: 'clone' });
      expect(clone.return).toMatchObject({ method: 'clone' });
      await waitFor(done(2), 'the clone backup');
      expect(readFileSync(target).equals(readFileSync(image))).toBe(true);
    } finally {
      c.close();
      await daemon.stop();
    }
  });
});
