/**
 * Live backup (issue 12) through a real daemon's control socket, with the
 * project's front end writing verified blocks (a sequence number per block)
 * all the while: a full backup equals the disk at its start instant, an
 * incremental one after more writes updates it to the next instant, the
 * changed-block bitmap survives a clean restart and a crash forces a full
 * backup, a target that fills up (a tiny tmpfs) or an NBD target whose
 * server is killed gives BACKUP_FAILED with the reason — and the front end
 * never sees an I/O error.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkDriver } from '../frontend/index.js';
import { BLOCK, WriteModel } from '../support/backup-model.js';
import { type Daemon, startBlkDaemon } from '../support/daemon.js';
import { startNbdServer } from '../support/nbd-server.js';
import { type Json, QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';
import { writingDisk as sharedWritingDisk } from '../support/writing-disk.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-backup-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The first BACKUP_COMPLETED / FAILED / CANCELLED after message `from` (backups may take a while). */
async function backupEnd(c: QmpClient, from: number, timeoutMs = 60_000): Promise<Json> {
  return waitFor(
    () =>
      c.messages
        .slice(from)
        .find(
          (m) =>
            typeof m.event === 'string' && /^BACKUP_(COMPLETED|FAILED|CANCELLED)$/.test(m.event),
        ),
    'the end of the backup',
    timeoutMs,
  );
}

/** Starts a backup inside a model window; returns the window and the reply. */
async function backup(c: QmpClient, model: WriteModel, args: Json) {
  const from = c.messages.length;
  const window = model.openWindow();
  const reply = await c.execute('blockdev-backup', { device: 0, ...args });
  model.closeWindow(window);
  return { window, reply, from };
}

/** {@link sharedWritingDisk} named `name` in the test directory, on a disk of SIZE. */
function writingDisk(name: string, seed: number, opts: { image?: string; extra?: string[] } = {}) {
  return sharedWritingDisk({ dir, name, seed, size: SIZE, ...opts });
}

describe('blockdev-backup under verified writes', () => {
  const image = () => join(dir, 'disk.img');
  const socket = () => join(dir, 'blk.sock');
  const control = () => join(dir, 'blk.qmp');
  let daemon: Daemon;

  beforeAll(async () => {
    writeFileSync(image(), Buffer.alloc(SIZE));
    daemon = await startBlkDaemon(image(), socket(), control());
  });
  afterAll(async () => {
    await daemon.stop();
  });

  it('a full backup equals the disk at its start instant; an incremental one after more writes, the next instant', async () => {
    const c = await QmpClient.connect(control());
    const driver = await BlkDriver.create({ socketPath: socket() });
    const model = new WriteModel(SIZE / BLOCK);
    // Writes to the first quarter only: the incremental backup then copies at most that.
    model.span = SIZE / BLOCK / 4;
    let stop = false;
    const load = model.run(driver, 8, () => stop);
    try {
      await waitFor(() => model.completed >= 500, 'the first writes');
      const target = join(dir, 'full.img');
      // A tiny journal (4 blocks, the least) and a speed limit: guest writes hit uncopied blocks and fill it.
      const full = await backup(c, model, {
        target,
        sync: 'full',
        speed: 8 * MiB,
        'journal-size': 16 * 1024,
      });
      expect(full.reply.return).toMatchObject({
        sync: 'full',
        'total-bytes': SIZE,
        'start-held-us': expect.any(Number),
      });
      const running = (await c.execute('query-backups', { device: 0 })).return as Json[];
      expect(running[0]).toMatchObject({
        device: 0,
        status: 'running',
        target,
        sync: 'full',
        'read-around': false,
        'max-chunk': 256 * 1024,
      });
      const atStart = model.completed;
      const end = await backupEnd(c, full.from);
      expect(end.event).toBe('BACKUP_COMPLETED');
      const data = end.data as Json;
      expect(data).toMatchObject({ 'copied-bytes': SIZE, 'total-bytes': SIZE, generation: 1 });
      // The guest kept writing, and its writes reached uncopied chunks: old chunks went through the journal.
      expect(model.completed).toBeGreaterThan(atStart);
      expect(data.journaled as number).toBeGreaterThan(0);
      expect(data['journal-full-waits'] as number).toBeGreaterThan(0);
      // Each full-journal episode raised the copier out of SCHED_IDLE (root may: the tests run as root).
      expect(data['copier-boosts'] as number).toBeGreaterThan(0);
      expect(model.check(readFileSync(target), full.window)).toBe('ok');
      expect(c.messages.slice(full.from).some((m) => m.event === 'BACKUP_PROGRESS')).toBe(true);

      // More writes, then an incremental backup into the same target: only the changed chunks.
      const before = model.completed;
      await waitFor(() => model.completed >= before + 500, 'more writes');
      // With read-around: the writes go to a quarter of the disk, so chunks are written again
      // and the rest of a chunk is saved along with its second write. With the copier's I/O
      // at its least (one chunk): reads and journal writes of at most 64 KiB.
      const inc = await backup(c, model, {
        target,
        sync: 'incremental',
        speed: 16 * MiB,
        'read-around': true,
        'max-chunk': 64 * 1024,
      });
      const r = inc.reply.return as Json;
      expect(r.sync).toBe('incremental');
      expect(r['total-bytes'] as number).toBeLessThanOrEqual(SIZE / 4);
      expect(r['total-bytes'] as number).toBeGreaterThan(0);
      const end2 = await backupEnd(c, inc.from);
      expect(end2.event).toBe('BACKUP_COMPLETED');
      expect(model.check(readFileSync(target), inc.window)).toBe('ok');
      const last = (await c.execute('query-backups', { device: 0 })).return as Json[];
      expect(last[0]).toMatchObject({
        status: 'completed',
        sync: 'incremental',
        'read-around': true,
        'max-chunk': 64 * 1024,
      });
    } finally {
      stop = true;
      await load;
      await driver.close();
      c.close();
    }
    expect(model.errors).toEqual([]);
    expect(model.checkLive(readFileSync(image()))).toBe('ok');
  });

  it('a target that fills up (a 4 MiB tmpfs) gives BACKUP_FAILED naming ENOSPC; the writes never fail', async () => {
    const mnt = join(dir, 'small');
    mkdirSync(mnt);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt]);
    const c = await QmpClient.connect(control());
    const driver = await BlkDriver.create({ socketPath: socket() });
    const model = new WriteModel(SIZE / BLOCK, 99);
    let stop = false;
    const load = model.run(driver, 8, () => stop);
    try {
      await waitFor(() => model.completed >= 200, 'the first writes');
      const b = await backup(c, model, { target: join(mnt, 'full.img'), sync: 'full' });
      expect(b.reply.return).toMatchObject({ sync: 'full' });
      const end = await backupEnd(c, b.from);
      expect(end.event).toBe('BACKUP_FAILED');
      expect(end.data).toMatchObject({
        code: 'ERR_BACKUP_TARGET',
        reason: expect.stringMatching(/ENOSPC/),
      });
      const q = (await c.execute('query-backups', { device: 0 })).return as Json[];
      expect(q[0]).toMatchObject({ status: 'failed', error: expect.stringMatching(/ENOSPC/) });
      // The device serves on, and a new backup can start (then is cancelled).
      const before = model.completed;
      await waitFor(() => model.completed >= before + 100, 'writes after the failure');
      const again = await backup(c, model, {
        target: join(dir, 'again.img'),
        sync: 'full',
        speed: MiB,
      });
      expect((await c.execute('backup-cancel', { device: 0 })).return).toEqual({ cancelled: true });
      expect((await backupEnd(c, again.from)).event).toBe('BACKUP_CANCELLED');
    } finally {
      stop = true;
      await load;
      await driver.close();
      c.close();
      execFileSync('umount', [mnt]);
    }
    expect(model.errors).toEqual([]);
  });

  it('an NBD target (qemu-nbd over a unix socket) gets the disk; killed mid-way, BACKUP_FAILED, the writes never fail', async () => {
    const c = await QmpClient.connect(control());
    const driver = await BlkDriver.create({ socketPath: socket() });
    const model = new WriteModel(SIZE / BLOCK, 7);
    model.adopt(readFileSync(image()));
    const exported = join(dir, 'nbd-target.img');
    writeFileSync(exported, Buffer.alloc(SIZE));
    const server = await startNbdServer({
      kind: 'qemu-nbd',
      transport: 'unix',
      image: exported,
      socket: join(dir, 'nbd.sock'),
    });
    let stop = false;
    const load = model.run(driver, 8, () => stop);
    try {
      await waitFor(() => model.completed >= 200, 'the first writes');
      // priority batch, not the default idle: this test is about the NBD target. An idle-class
      // copier gets no CPU at all on a saturated host — measured: 0 bytes in 45 s with one
      // busy nice-0 thread on the daemon's CPU, against 3.3 s with batch — and this test once
      // ran out of its 60 s on a loaded machine that way (issue 12).
      const b = await backup(c, model, {
        target: server.uri,
        sync: 'full',
        speed: 32 * MiB,
        priority: 'batch',
      });
      expect(b.reply.return).toMatchObject({ 'total-bytes': SIZE });
      expect((await backupEnd(c, b.from)).event).toBe('BACKUP_COMPLETED');
      await server.kill();
      expect(model.check(readFileSync(exported), b.window)).toBe('ok');

      // Again, slowly; the server is killed once the copier is on its way.
      await server.start();
      const k = await backup(c, model, {
        target: server.uri,
        sync: 'full',
        speed: 4 * MiB,
        priority: 'batch',
      });
      await waitFor(async () => {
        const q = (await c.execute('query-backups', { device: 0 })).return as Json[];
        return (q[0]['copied-bytes'] as number) > 0;
      }, 'the copier on its way');
      await server.kill();
      const end = await backupEnd(c, k.from);
      expect(end.event).toBe('BACKUP_FAILED');
      expect(end.data).toMatchObject({ code: 'ERR_BACKUP_TARGET' });
    } finally {
      stop = true;
      await load;
      await driver.close();
      c.close();
      await server.stop();
    }
    expect(model.errors).toEqual([]);
  });

  it('the changed-block bitmap survives SIGTERM (incremental after a restart); after SIGKILL the next incremental is a full one', async () => {
    const target = join(dir, 'restart.img');
    let c = await QmpClient.connect(control());
    const full = await c.execute('blockdev-backup', { device: 0, target, sync: 'full' });
    expect(full.return).toBeDefined();
    expect((await backupEnd(c, 0)).event).toBe('BACKUP_COMPLETED');
    c.close();
    await daemon.stop('SIGTERM');
    expect(existsSync(`${image()}.vhost-rt-cbt`)).toBe(true);
    daemon = await startBlkDaemon(image(), socket(), control());
    c = await QmpClient.connect(control());
    const inc = await c.execute('blockdev-backup', { device: 0, target, sync: 'incremental' });
    expect(inc.return).toMatchObject({ sync: 'incremental', 'total-bytes': 0 });
    expect((await backupEnd(c, 0)).event).toBe('BACKUP_COMPLETED');
    c.close();
    await daemon.stop('SIGKILL');
    daemon = await startBlkDaemon(image(), socket(), control());
    c = await QmpClient.connect(control());
    const after = await c.execute('blockdev-backup', { device: 0, target, sync: 'incremental' });
    expect(after.return).toMatchObject({
      sync: 'full',
      'sync-reason': expect.stringMatching(/crash/),
    });
    expect((await backupEnd(c, 0)).event).toBe('BACKUP_COMPLETED');
    c.close();
  });
});

describe('blockdev-backup of a disk on an NBD export', () => {
  it('journals through the nbd engine and copies from the export: the target equals the disk at the start instant', async () => {
    const exported = join(dir, 'nbd-source.img');
    writeFileSync(exported, Buffer.alloc(SIZE));
    const server = await startNbdServer({
      kind: 'qemu-nbd',
      transport: 'unix',
      image: exported,
      socket: join(dir, 'nbd-source.sock'),
      extra: ['--shared=4'],
    });
    const { c, model, close } = await writingDisk('nbd-blk', 3, { image: server.uri });
    try {
      await waitFor(() => model.completed >= 200, 'the first writes');
      const target = join(dir, 'from-nbd.img');
      writeFileSync(target, ''); // an incremental backup updates an existing target
      // No bitmap kept for an NBD image across starts: incremental is done as full, and says so.
      const b = await backup(c, model, { target, sync: 'incremental', speed: 16 * MiB });
      expect(b.reply.return).toMatchObject({ sync: 'full', 'sync-reason': expect.any(String) });
      const end = await backupEnd(c, b.from);
      expect(end.event).toBe('BACKUP_COMPLETED');
      expect((end.data as Json).journaled as number).toBeGreaterThan(0);
      expect(model.check(readFileSync(target), b.window)).toBe('ok');
    } finally {
      await close();
      await server.stop();
    }
    expect(model.errors).toEqual([]);
  });
});

describe.each(['io_uring', 'threads', 'sync'])('a full backup on the %s engine', (aio) => {
  it('equals the disk at its start instant while the front end writes', async () => {
    const { c, model, close } = await writingDisk(aio, 11, { extra: ['--aio', aio] });
    try {
      await waitFor(() => model.completed >= 200, 'the first writes');
      const target = join(dir, `${aio}.backup`);
      const b = await backup(c, model, {
        target,
        sync: 'full',
        speed: 16 * MiB,
        'journal-size': 1024 * 1024,
      });
      const end = await backupEnd(c, b.from);
      expect(end.event).toBe('BACKUP_COMPLETED');
      expect((end.data as Json).journaled as number).toBeGreaterThan(0);
      expect(model.check(readFileSync(target), b.window)).toBe('ok');
    } finally {
      await close();
    }
    expect(model.errors).toEqual([]);
  });
});

describe('backup-pause and backup-resume', () => {
  it('a paused disk pass reads nothing while the journal drains and the guest writes on; resumed, the target is exact', async () => {
    const { image, c, model, stopWrites, close } = await writingDisk('pause', 9);
    const status = async () =>
      ((await c.execute('query-backups', { device: 0 })).return as Json[])[0];
    const event = (name: string, from: number) =>
      waitFor(() => c.messages.slice(from).find((m) => m.event === name), name);
    try {
      await waitFor(() => model.completed >= 200, 'the first writes');
      const target = join(dir, 'pause.backup');
      // Paced (4 s for the disk) with single-chunk reads: the pause lands mid-pass.
      const b = await backup(c, model, {
        target,
        sync: 'full',
        speed: 8 * MiB,
        'max-chunk': 64 * 1024,
        'journal-size': 16 * 1024,
      });
      await waitFor(async () => ((await status())['copied-bytes'] as number) > 0, 'a first copy');
      const fromPause = c.messages.length;
      expect((await c.execute('backup-pause', { device: 0 })).return).toEqual({ paused: true });
      const paused = await event('BACKUP_PAUSED', fromPause);
      expect(paused.data as Json).toMatchObject({ device: 0, target, 'total-bytes': SIZE });
      const atPause = await status();
      expect(atPause).toMatchObject({ status: 'running', paused: true });
      expect(atPause['copied-bytes'] as number).toBeLessThan(SIZE);
      // Pausing a paused backup changes nothing and is not an error.
      expect((await c.execute('backup-pause', { device: 0 })).return).toEqual({ paused: false });
      // The guest writes on: its first writes to uncopied blocks go through the 4-entry
      // journal, so far more of them than 4 means the paused copier kept draining it.
      const journaledAtPause = atPause.journaled as number;
      await waitFor(
        async () => ((await status()).journaled as number) >= journaledAtPause + 200,
        'the journal drained while paused',
        20_000,
      );
      const later = await status();
      // At most the one read that was in flight when the pause came (one 64 KiB chunk).
      expect(later['copied-bytes'] as number).toBeLessThanOrEqual(
        (atPause['copied-bytes'] as number) + 64 * 1024,
      );
      expect(later.paused).toBe(true);
      // backup-set-speed to 1 byte/s before the resume: the copier, once resumed, copies at
      // most the chunk it is on and then waits (for 64 Ki seconds) on its pace.
      expect((await c.execute('backup-set-speed', { device: 0, speed: 1 })).return).toEqual({
        speed: 1,
      });
      const fromResume = c.messages.length;
      expect((await c.execute('backup-resume', { device: 0 })).return).toEqual({ resumed: true });
      await event('BACKUP_RESUMED', fromResume);
      const atResume = await status();
      expect(atResume).toMatchObject({ paused: false, speed: 1 });
      await waitFor(
        async () => ((await status()).journaled as number) >= (atResume.journaled as number) + 200,
        'more guest writes at 1 byte/s',
        20_000,
      );
      expect((await status())['copied-bytes'] as number).toBeLessThanOrEqual(
        (later['copied-bytes'] as number) + 2 * 64 * 1024,
      );
      const bad = await c.execute('backup-set-speed', { device: 0, speed: -1 });
      expect((bad.error as Json).desc).toBe("Parameter 'speed' must be >= 0, not -1");
      // Unpaced: the copier's wait ends at once, and the rest of the disk (at 1 byte/s, years)
      // is copied now.
      expect((await c.execute('backup-set-speed', { device: 0, speed: 0 })).return).toEqual({
        speed: 0,
      });
      const end = await backupEnd(c, b.from, 30_000);
      expect(end.event).toBe('BACKUP_COMPLETED');
      expect(end.data as Json).toMatchObject({ 'copied-bytes': SIZE });
      expect(model.check(readFileSync(target), b.window)).toBe('ok');
      expect(await status()).toMatchObject({ status: 'completed', paused: false });
      // Nothing runs now: both are refused with the reason, and the daemon serves on.
      for (const [name, what] of [
        ['backup-pause', 'pause'],
        ['backup-resume', 'resume'],
        ['backup-set-speed', 'set its speed'],
      ]) {
        const r = await c.execute(
          name,
          name === 'backup-set-speed' ? { device: 0, speed: 0 } : { device: 0 },
        );
        expect((r.error as Json).desc).toBe(
          `${name} failed: no backup of this device is running to ${what}`,
        );
      }
      const noDevice = await c.execute('backup-pause', {});
      expect((noDevice.error as Json).desc).toMatch(/device/);
      await stopWrites();
    } finally {
      await close();
    }
    expect(model.errors).toEqual([]);
    expect(model.checkLive(readFileSync(image))).toBe('ok');
  });
});

describe('blockdev-backup with yield-ms (the idle I/O class kept by the copier)', () => {
  it('the disk pass waits while the front end writes, goes on once it stops, and the target is exact', async () => {
    const { c, model, stopWrites, close } = await writingDisk('yield', 5);
    // The front end runs on this process's event loop: a stall of it (a loaded CI machine)
    // is a pause the copier rightly uses, so how far the pass got depends on them.
    const stalls = monitorEventLoopDelay({ resolution: 10 });
    try {
      await waitFor(() => model.completed >= 200, 'the first writes');
      stalls.enable();
      const target = join(dir, 'yield.backup');
      // No speed limit: without yield-ms the 32 MiB would be copied in well under a second.
      const b = await backup(c, model, { target, sync: 'full', 'yield-ms': 50 });
      expect(b.reply.return).toMatchObject({ sync: 'full', 'total-bytes': SIZE });
      const status = async () =>
        ((await c.execute('query-backups', { device: 0 })).return as Json[])[0];
      // The guest never pauses for 50 ms: reads wait, and go only at the longest wait (1 s each).
      await waitFor(
        async () => ((await status())['copier-yields'] as number) >= 2,
        'the copier to yield to the front end',
        20_000,
      );
      const busy = await status();
      stalls.disable();
      expect(busy).toMatchObject({ status: 'running', 'yield-ms': 50 });
      // 128 reads of 256 KiB make the disk; at one forced read a second it is far from done,
      // unless the front end itself stopped for 50 ms or more (then the copier went on, as it
      // should): the bound holds only for a front end that never stalled that long.
      const longestStallMs = stalls.max / 1e6;
      if (longestStallMs < 40) expect(busy['copied-bytes'] as number).toBeLessThan(SIZE / 2);
      else
        console.warn(
          `yield-ms test: the front end's event loop stalled ${longestStallMs.toFixed(0)} ms; copied ${busy['copied-bytes']} bytes meanwhile, not bounded`,
        );
      // How many reads went at the longest wait depends on whether the front end ever paused.
      expect(typeof busy['copier-forced-reads']).toBe('number');
      // The front end stops: the guest is quiet, the rest goes at once.
      await stopWrites();
      const end = await backupEnd(c, b.from, 30_000);
      expect(end.event).toBe('BACKUP_COMPLETED');
      expect(end.data as Json).toMatchObject({ 'copied-bytes': SIZE });
      expect(model.check(readFileSync(target), b.window)).toBe('ok');
    } finally {
      stalls.disable();
      await close();
    }
    expect(model.errors).toEqual([]);
  });

  it('refuses a yield-ms outside 0..1000 or not an integer, a max-chunk not whole chunks up to 1 MiB, naming the parameter, and serves on', async () => {
    const image = join(dir, 'yield-bad.img');
    writeFileSync(image, Buffer.alloc(MiB));
    const control = join(dir, 'yield-bad.qmp');
    const daemon = await startBlkDaemon(image, join(dir, 'yield-bad.sock'), control);
    const c = await QmpClient.connect(control);
    try {
      for (const bad of [-1, 1001]) {
        const r = await c.execute('blockdev-backup', {
          device: 0,
          target: join(dir, 'yield-bad.backup'),
          'yield-ms': bad,
        });
        expect((r.error as Json).desc).toMatch(/Parameter 'yield-ms' must be in 0\.\.1000/);
      }
      for (const bad of ['soon', 2.5]) {
        const r = await c.execute('blockdev-backup', {
          device: 0,
          target: join(dir, 'yield-bad.backup'),
          'yield-ms': bad,
        });
        expect((r.error as Json).desc).toBe(
          "Invalid parameter type for 'yield-ms', expected: integer",
        );
      }
      const notBool = await c.execute('blockdev-backup', {
        device: 0,
        target: join(dir, 'yield-bad.backup'),
        'read-around': 'yes',
      });
      expect((notBool.error as Json).desc).toBe(
        "Invalid parameter type for 'read-around', expected: boolean",
      );
      // max-chunk: whole chunks (64 KiB) up to 1 MiB.
      for (const bad of [0, 4096, 100_000, 2 * MiB]) {
        const r = await c.execute('blockdev-backup', {
          device: 0,
          target: join(dir, 'yield-bad.backup'),
          'max-chunk': bad,
        });
        expect((r.error as Json).desc).toBe(
          `blockdev-backup: Parameter 'max-chunk' must be a multiple of 65536 in 65536..1048576, not ${bad}`,
        );
      }
      const none = (await c.execute('query-backups', { device: 0 })).return as Json[];
      expect(none).toEqual([]);
    } finally {
      c.close();
      await daemon.stop();
    }
  });
});
