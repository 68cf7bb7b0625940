/**
 * Live backup with `method: redirect` (issue 12, src/devices/blk/redirect.ts)
 * through a real daemon: while the front end writes verified blocks and reads
 * them back (multi-block reads that straddle redirected and untouched sectors),
 * the backup equals the disk at its start instant, every read returns the last
 * completed write, the overlay is merged back (BACKUP_MERGED) and removed, and
 * the image then equals the model. A daemon stopped (SIGTERM) or killed after a
 * flush (SIGKILL) mid-backup leaves the overlay; the next start merges it and
 * the image holds every write the front end completed.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkDriver, BlkStatus } from '../frontend/index.js';
import { BLOCK, WriteModel } from '../support/backup-model.js';
import { type Daemon, runCli, startBlkDaemon } from '../support/daemon.js';
import { type Json, QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';
import { writingDisk as sharedWritingDisk } from '../support/writing-disk.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-redirect-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function event(c: QmpClient, from: number, name: RegExp, what: string, timeoutMs = 60_000) {
  return waitFor(
    () => c.messages.slice(from).find((m) => typeof m.event === 'string' && name.test(m.event)),
    what,
    timeoutMs,
  );
}

/** {@link sharedWritingDisk} named `name` in the test directory, on a disk of SIZE. */
function writingDisk(name: string, seed: number) {
  return sharedWritingDisk({ dir, name, seed, size: SIZE, extra: ['--aio', 'linux-aio'] });
}

function startBlk(image: string, name: string, aio = 'linux-aio'): Promise<Daemon> {
  return startBlkDaemon(image, join(dir, `${name}.sock`), join(dir, `${name}.qmp`), ['--aio', aio]);
}

describe.each(['linux-aio', 'io_uring'])('blockdev-backup method redirect (%s)', (aio) => {
  it('the target is the start instant, reads see every write, the overlay merges back and goes', async () => {
    const image = join(dir, `${aio}.img`);
    writeFileSync(image, Buffer.alloc(SIZE));
    const daemon = await startBlk(image, aio, aio);
    const c = await QmpClient.connect(join(dir, `${aio}.qmp`));
    const driver = await BlkDriver.create({ socketPath: join(dir, `${aio}.sock`) });
    const model = new WriteModel(SIZE / BLOCK, 5);
    let stop = false;
    // The front end pauses once while the overlay merges (`pause`), then goes on.
    let pause = false;
    const halted = () => stop || pause;
    let writes = model.run(driver, 8, halted);
    let reads = model.runReads(driver, 2, 16, halted);
    try {
      await waitFor(() => model.completed >= 300, 'the first writes');
      const target = join(dir, `${aio}.backup`);
      const from = c.messages.length;
      const window = model.openWindow();
      const reply = await c.execute('blockdev-backup', {
        device: 0,
        target,
        sync: 'full',
        method: 'redirect',
        speed: 16 * MiB,
      });
      model.closeWindow(window);
      expect(reply.return).toMatchObject({ method: 'redirect', 'total-bytes': SIZE });
      expect(existsSync(`${image}.vhost-rt-redirect`)).toBe(true);
      const running = (await c.execute('query-backups', { device: 0 })).return as Json[];
      expect(running[0]).toMatchObject({ status: 'running', method: 'redirect' });
      const readsAtStart = model.verifiedReads;
      const end = await event(c, from, /^BACKUP_(COMPLETED|FAILED|CANCELLED)$/, 'the backup');
      expect(end.event).toBe('BACKUP_COMPLETED');
      // Nothing journaled: no guest write waited for a read of old blocks.
      expect((end.data as Json).journaled).toBe(0);
      expect(model.check(readFileSync(target), window)).toBe('ok');
      // The merge goes at its pace while the front end writes and reads (units it writes
      // meanwhile are copied again), and at the backup's speed once the front end has been
      // quiet a second.
      const merging = model.completed + 500;
      await waitFor(() => model.completed >= merging, 'writes during the merge');
      pause = true;
      await Promise.all([writes, reads]);
      const merged = await event(c, from, /^BACKUP_MERGED$/, 'the merge');
      pause = false;
      writes = model.run(driver, 8, halted);
      reads = model.runReads(driver, 2, 16, halted);
      expect(merged.data).toMatchObject({ merged: true, 'remaining-bytes': 0 });
      expect((merged.data as Json)['merged-bytes'] as number).toBeGreaterThan(0);
      expect(existsSync(`${image}.vhost-rt-redirect`)).toBe(false);
      expect(model.verifiedReads).toBeGreaterThan(readsAtStart);
      const after = (await c.execute('query-backups', { device: 0 })).return as Json[];
      // The default pace while the guest does I/O: the backup's speed (16 MiB/s), at most
      // 4 MiB/s; the backup's speed after a second of quiet, as the front end's pause gave.
      expect(after[0]).toMatchObject({
        status: 'completed',
        method: 'redirect',
        merge: 'done',
        'merge-speed': 4 * MiB,
        'merge-quiet-ms': 1000,
      });
      expect((merged.data as Json)['merge-quiet-bytes']).toBe(after[0]['merge-quiet-bytes']);
      expect(after[0]['merged-bytes']).toBe((merged.data as Json)['merged-bytes']);
      // The device redirects nothing now: another backup may start (and completes), three
      // times with keep-overlay: the merged file stays (its blocks allocated) and the next one
      // reuses it; the second of them prefills it (prefill-overlay), the third reuses that.
      for (const round of [2, 3, 4]) {
        const from2 = c.messages.length;
        const w2 = model.openWindow();
        const r2 = await c.execute('blockdev-backup', {
          device: 0,
          target,
          sync: 'full',
          method: 'redirect',
          // Unpaced merges (0): the pace is not what these rounds look at.
          'merge-speed': 0,
          ...(round === 3
            ? { 'prefill-overlay': true, speed: 64 * MiB }
            : { 'keep-overlay': true }),
        });
        // A prefill pass answers at once; the instant is BACKUP_STARTED, after the pass.
        const prefilling = (r2.return as Json).prefilling === true;
        expect(prefilling, `backup ${round} answered before a pass`).toBe(round === 3);
        await event(c, from2, /^BACKUP_STARTED$/, `backup ${round}'s instant`);
        model.closeWindow(w2);
        expect(r2.return, `backup ${round}`).toMatchObject({ method: 'redirect' });
        const end2 = await event(c, from2, /^BACKUP_(COMPLETED|FAILED|CANCELLED)$/, 'backup 2');
        expect(end2.event).toBe('BACKUP_COMPLETED');
        expect(model.check(readFileSync(target), w2)).toBe('ok');
        await event(c, from2, /^BACKUP_MERGED$/, 'merge 2');
        expect(existsSync(`${image}.vhost-rt-redirect`)).toBe(true);
        if (round >= 3) {
          // Prefilled: every block of the data area allocated, the header says so.
          const overlay = `${image}.vhost-rt-redirect`;
          expect(statSync(overlay).blocks * 512).toBeGreaterThanOrEqual(SIZE);
          expect(readFileSync(overlay).readUInt32LE(48)).toBe(3);
        }
      }
      // Refused by name, each: a redirect-only parameter with another method, a wrong type.
      for (const [args, desc] of [
        [{ 'keep-overlay': true }, /'keep-overlay' needs method redirect, not auto/],
        [
          { method: 'journal', 'prefill-overlay': true },
          /'prefill-overlay' needs method redirect, not journal/,
        ],
        [{ method: 'redirect', 'prefill-overlay': 'yes' }, /prefill-overlay/],
        [
          { method: 'journal', 'merge-speed': MiB },
          /'merge-speed' needs method redirect, not journal/,
        ],
        [{ method: 'redirect', 'merge-speed': -1 }, /'merge-speed' must be >= 0, not -1/],
        [
          { method: 'journal', 'merge-quiet-ms': 10 },
          /'merge-quiet-ms' needs method redirect, not journal/,
        ],
        [
          { method: 'redirect', 'merge-quiet-ms': -1 },
          /'merge-quiet-ms' must be in 0\.\.60000, not -1/,
        ],
        [
          { method: 'redirect', 'merge-quiet-ms': 60_001 },
          /'merge-quiet-ms' must be in 0\.\.60000, not 60001/,
        ],
        [
          { method: 'redirect', 'merge-quiet-ms': 0.5 },
          /Invalid parameter type for 'merge-quiet-ms', expected: integer/,
        ],
      ] as const) {
        const refused = await c.execute('blockdev-backup', { device: 0, target, ...args });
        expect((refused.error as Json).desc).toMatch(desc);
      }
      // The daemon lives on and answers.
      expect((await c.execute('query-backups', { device: 0 })).return).toBeDefined();
    } finally {
      stop = true;
      await Promise.all([writes, reads]);
      await driver.close();
      c.close();
      await daemon.stop();
    }
    expect(model.errors).toEqual([]);
    expect(model.checkLive(readFileSync(image))).toBe('ok');
  });
});

describe('a prefill-overlay backup before its instant', () => {
  it('answers at once, shows the pass, refuses another start, stops on backup-cancel; the next one prefills and completes', async () => {
    const { image, c, model, close } = await writingDisk('prefill', 13);
    const overlay = `${image}.vhost-rt-redirect`;
    const target = join(dir, 'prefill.backup');
    const args = { device: 0, target, sync: 'full', method: 'redirect', 'prefill-overlay': true };
    try {
      await waitFor(() => model.completed >= 200, 'the first writes');
      // 32 MiB at 2 MiB/s: a pass of some 16 s, cancelled long before its end.
      const from = c.messages.length;
      const slow = await c.execute('blockdev-backup', { ...args, speed: 2 * MiB });
      expect(slow.return).toEqual({ method: 'redirect', prefilling: true, 'total-bytes': SIZE });
      const progress = await waitFor(async () => {
        const [b] = (await c.execute('query-backups', { device: 0 })).return as Json[];
        return (b['prefill-bytes'] as number) > 0 ? b : undefined;
      }, 'the pass to show progress');
      expect(progress).toMatchObject({ status: 'prefilling', method: 'redirect', target });
      expect(progress['prefill-bytes'] as number).toBeLessThan(SIZE);
      for (const [command, more] of [
        ['blockdev-backup', args],
        ['blockdev-snapshot', { device: 0, target: join(dir, 'prefill.snap') }],
        ['block-resize', { device: 0, size: 2 * SIZE }],
      ] as const) {
        const refused = await c.execute(command, more);
        expect((refused.error as Json).desc, command).toMatch(/prefilling its overlay/);
      }
      expect(statSync(image).size).toBe(SIZE);
      // No disk pass to pause before the instant.
      const early = await c.execute('backup-pause', { device: 0 });
      expect((early.error as Json).desc).toBe(
        'backup-pause failed: no backup of this device is running to pause (its overlay is being prefilled: the disk pass starts after that)',
      );
      expect((await c.execute('backup-cancel', { device: 0 })).return).toEqual({ cancelled: true });
      const end = await event(c, from, /^BACKUP_(COMPLETED|FAILED|CANCELLED)$/, 'the end');
      expect(end.event).toBe('BACKUP_CANCELLED');
      expect(end.data).toMatchObject({ code: 'ERR_BACKUP_CANCELLED', method: 'redirect' });
      expect(c.messages.slice(from).some((m) => m.event === 'BACKUP_STARTED')).toBe(false);
      const [last] = (await c.execute('query-backups', { device: 0 })).return as Json[];
      expect(last).toMatchObject({ status: 'cancelled', code: 'ERR_BACKUP_CANCELLED' });
      // The kept overlay stays, not flagged prefilled (KEEP only): the next pass starts over.
      expect(readFileSync(overlay).readUInt32LE(48)).toBe(1);

      // Again, at a pace that ends: the instant comes after the pass, and the target is it.
      const from2 = c.messages.length;
      const window = model.openWindow();
      const again = await c.execute('blockdev-backup', {
        ...args,
        speed: 64 * MiB,
        'merge-speed': 48 * MiB,
      });
      expect(again.return).toMatchObject({ prefilling: true });
      const started = await event(c, from2, /^BACKUP_STARTED$/, 'the instant after the pass');
      model.closeWindow(window);
      expect(started.data).toMatchObject({ method: 'redirect', 'total-bytes': SIZE });
      const end2 = await event(c, from2, /^BACKUP_(COMPLETED|FAILED|CANCELLED)$/, 'the end');
      expect(end2.event).toBe('BACKUP_COMPLETED');
      expect(model.check(readFileSync(target), window)).toBe('ok');
      await event(c, from2, /^BACKUP_MERGED$/, 'the merge');
      expect(readFileSync(overlay).readUInt32LE(48)).toBe(3);
      const [merged] = (await c.execute('query-backups', { device: 0 })).return as Json[];
      expect(merged).toMatchObject({ status: 'completed', merge: 'done', 'merge-speed': 48 * MiB });
    } finally {
      await close();
    }
    expect(model.errors).toEqual([]);
    expect(model.checkLive(readFileSync(image))).toBe('ok');
  });
});

describe("the merge, paced while the guest writes and at the backup's speed once it is quiet", () => {
  it('keeps merge-speed under writes, then merges the rest when the front end stops', async () => {
    const { image, c, model, stopWrites, close } = await writingDisk('quiet', 5);
    const PACE = 64 * 1024;
    try {
      await waitFor(() => model.completed >= 300, 'the first writes');
      const from = c.messages.length;
      const window = model.openWindow();
      const reply = await c.execute('blockdev-backup', {
        device: 0,
        target: join(dir, 'quiet.backup'),
        sync: 'full',
        method: 'redirect',
        speed: 16 * MiB,
        'merge-speed': PACE,
        'merge-quiet-ms': 100,
      });
      model.closeWindow(window);
      expect(reply.error).toBeUndefined();
      await event(c, from, /^BACKUP_COMPLETED$/, 'the backup');
      const mergeFrom = performance.now();
      // The front end writes on for 1000 more requests while the merge goes at 64 KiB/s.
      const more = model.completed + 1000;
      await waitFor(() => model.completed >= more, 'writes during the merge');
      const [during] = (await c.execute('query-backups', { device: 0 })).return as Json[];
      expect(during).toMatchObject({
        merge: 'running',
        'merge-speed': PACE,
        'merge-quiet-ms': 100,
      });
      await stopWrites();
      const pacedFor = performance.now() - mergeFrom;
      // Quiet now: the rest of the overlay goes at the backup's speed, 16 MiB/s (at 64 KiB/s
      // it would take minutes).
      const merged = await event(c, from, /^BACKUP_MERGED$/, 'the merge', 30_000);
      const d = merged.data as Json;
      expect(d).toMatchObject({ merged: true, 'remaining-bytes': 0 });
      const total = d['merged-bytes'] as number;
      const quiet = d['merge-quiet-bytes'] as number;
      expect(total).toBeGreaterThan(MiB);
      expect(quiet).toBeGreaterThan(0);
      // What went paced (while writing) stayed within the pace, plus a copy (1 MiB) and a
      // second of slack.
      expect(total - quiet).toBeLessThanOrEqual((PACE * (pacedFor + 1000)) / 1000 + MiB);
      const [after] = (await c.execute('query-backups', { device: 0 })).return as Json[];
      expect(after).toMatchObject({ merge: 'done', 'merge-quiet-bytes': quiet });
    } finally {
      await close();
    }
    expect(model.errors).toEqual([]);
    expect(model.checkLive(readFileSync(image))).toBe('ok');
  });
});

describe('backup-pause, backup-resume and backup-set-speed during the merge', () => {
  it('a paused merge copies nothing while the guest writes on, refuses a new backup, and merges once resumed', async () => {
    const { image, c, model, stopWrites, close } = await writingDisk('mpause', 13);
    const status = async () =>
      ((await c.execute('query-backups', { device: 0 })).return as Json[])[0];
    try {
      await waitFor(() => model.completed >= 300, 'the first writes');
      const from = c.messages.length;
      const window = model.openWindow();
      const reply = await c.execute('blockdev-backup', {
        device: 0,
        target: join(dir, 'mpause.backup'),
        sync: 'full',
        method: 'redirect',
        // 64 KiB/s under writes, never the quiet pace: the merge is still running when paused.
        'merge-speed': 64 * 1024,
        'merge-quiet-ms': 0,
      });
      model.closeWindow(window);
      expect(reply.error).toBeUndefined();
      await event(c, from, /^BACKUP_COMPLETED$/, 'the backup');
      await waitFor(() => model.completed >= 1000, 'writes into the overlay');
      const pauseFrom = c.messages.length;
      expect((await c.execute('backup-pause', { device: 0 })).return).toEqual({ paused: true });
      const paused = (await event(c, pauseFrom, /^BACKUP_PAUSED$/, 'BACKUP_PAUSED')).data as Json;
      expect(paused).toMatchObject({ device: 0, phase: 'merge' });
      expect(paused['remaining-bytes'] as number).toBeGreaterThan(0);
      expect((await c.execute('backup-pause', { device: 0 })).return).toEqual({ paused: false });
      const whilePaused = await status();
      expect(whilePaused).toMatchObject({ merge: 'running', paused: true });
      // query-backups asks the device how far the merge is.
      expect(whilePaused['merge-remaining-bytes'] as number).toBeGreaterThan(0);
      expect(whilePaused['merge-copied-bytes'] as number).toBeGreaterThanOrEqual(
        paused['merge-copied-bytes'] as number,
      );
      // Unpaced from here on: a merge that ignored the pause would now copy the rest of the
      // overlay (32 MiB at most) in well under the time the next 1000 writes take.
      expect((await c.execute('backup-set-speed', { device: 0, speed: 0 })).return).toEqual({
        'merge-speed': 0,
      });
      const more = model.completed + 1000;
      await waitFor(() => model.completed >= more, 'writes while the merge is paused');
      // No other backup while the overlay is there; the refusal says it is paused.
      const refused = await c.execute('blockdev-backup', {
        device: 0,
        target: join(dir, 'mpause2.backup'),
        sync: 'full',
      });
      expect((refused.error as Json).desc).toMatch(/merged back .*paused: backup-resume goes on/);
      const resumeFrom = c.messages.length;
      expect((await c.execute('backup-resume', { device: 0 })).return).toEqual({ resumed: true });
      const resumed = (await event(c, resumeFrom, /^BACKUP_RESUMED$/, 'BACKUP_RESUMED'))
        .data as Json;
      expect(resumed).toMatchObject({ phase: 'merge' });
      // At most the one copy in flight when the pause came (1 MiB) was made while paused.
      expect(resumed['merge-copied-bytes'] as number).toBeLessThanOrEqual(
        (paused['merge-copied-bytes'] as number) + MiB,
      );
      expect(c.messages.slice(from).some((m) => m.event === 'BACKUP_MERGED')).toBe(false);
      await stopWrites();
      const merged = (await event(c, from, /^BACKUP_MERGED$/, 'the merge', 30_000)).data as Json;
      expect(merged).toMatchObject({ merged: true, 'remaining-bytes': 0 });
      expect(await status()).toMatchObject({
        merge: 'done',
        paused: false,
        'merge-speed': 0,
        'merge-remaining-bytes': 0,
      });
      expect(existsSync(`${image}.vhost-rt-redirect`)).toBe(false);
      // Nothing runs now: pause is refused again, with the reason.
      const none = await c.execute('backup-pause', { device: 0 });
      expect((none.error as Json).desc).toBe(
        'backup-pause failed: no backup of this device is running to pause',
      );
    } finally {
      await close();
    }
    expect(model.errors).toEqual([]);
    expect(model.checkLive(readFileSync(image))).toBe('ok');
  });
});

describe('a daemon stopped with its merge paused', () => {
  it('SIGTERM leaves the overlay in place; the next start merges it and the image holds every write', async () => {
    const disk = await writingDisk('mstop', 17);
    const { image, c, driver, model, stopWrites } = disk;
    try {
      await waitFor(() => model.completed >= 200, 'the first writes');
      const from = c.messages.length;
      await c.execute('blockdev-backup', {
        device: 0,
        target: join(dir, 'mstop.backup'),
        sync: 'full',
        method: 'redirect',
        'merge-speed': 64 * 1024,
        'merge-quiet-ms': 0,
      });
      await event(c, from, /^BACKUP_COMPLETED$/, 'the backup');
      const more = model.completed + 500;
      await waitFor(() => model.completed >= more, 'writes during the merge');
      expect((await c.execute('backup-pause', { device: 0 })).return).toEqual({ paused: true });
      await stopWrites();
      expect((await driver.flush()).status).toBe(BlkStatus.OK);
    } finally {
      await disk.closeClients();
    }
    await disk.daemon.stop('SIGTERM');
    // Paused, the merge made no copy after the writes stopped: the overlay is still there.
    expect(existsSync(`${image}.vhost-rt-redirect`)).toBe(true);
    expect(model.checkLive(readFileSync(image))).not.toBe('ok');
    const daemon = await startBlk(image, 'mstop');
    try {
      expect(existsSync(`${image}.vhost-rt-redirect`)).toBe(false);
      expect(daemon.log()).toMatch(/merged \d+ bytes \(\d+ runs\) left in/);
      expect(model.checkLive(readFileSync(image))).toBe('ok');
    } finally {
      await daemon.stop();
    }
    expect(model.errors).toEqual([]);
  });
});

describe('a daemon stopped while a prefill pass runs', () => {
  it('SIGTERM stops the pass, and the daemon exits 0 without waiting for it', async () => {
    const image = join(dir, 'prefill-stop.img');
    writeFileSync(image, Buffer.alloc(SIZE));
    const daemon = await startBlk(image, 'prefill-stop');
    const c = await QmpClient.connect(join(dir, 'prefill-stop.qmp'));
    try {
      // 32 MiB at 256 KiB/s: a pass of 128 s, far longer than the wait for the exit below.
      const r = await c.execute('blockdev-backup', {
        device: 0,
        target: join(dir, 'prefill-stop.backup'),
        sync: 'full',
        method: 'redirect',
        'prefill-overlay': true,
        speed: 256 * 1024,
      });
      expect(r.return).toMatchObject({ prefilling: true });
      await waitFor(async () => {
        const [b] = (await c.execute('query-backups', { device: 0 })).return as Json[];
        return (b['prefill-bytes'] as number) > 0;
      }, 'the pass to start');
    } finally {
      c.close();
    }
    let exit: { code: number | null; log: string } | undefined;
    void daemon.stop('SIGTERM').then((e) => {
      exit = e;
    });
    const { code, log } = await waitFor(() => exit, 'the daemon to exit', 15_000);
    expect(code).toBe(0);
    expect(log).toMatch(/cancelled while the overlay was being prefilled/);
  });
});

describe('a redirect backup interrupted by the daemon stopping', () => {
  it.each(['SIGTERM', 'SIGKILL'] as const)(
    'after %s the next start merges the overlay: every completed write is in the image',
    async (signal) => {
      const name = `stop-${signal}`;
      const disk = await writingDisk(name, 9);
      const { image, c, driver, model, stopWrites } = disk;
      try {
        await waitFor(() => model.completed >= 200, 'the first writes');
        const from = c.messages.length;
        // Slow enough to be running still when the daemon goes.
        await c.execute('blockdev-backup', {
          device: 0,
          target: join(dir, `${name}.backup`),
          sync: 'full',
          method: 'redirect',
          speed: 1 * MiB,
        });
        const before = model.completed;
        await waitFor(() => model.completed >= before + 500, 'writes into the overlay');
        // The overlay covers the disk as it was: a resize is refused before the file changes.
        const grow = await c.execute('block-resize', { device: 0, size: 2 * SIZE });
        expect((grow.error as Json).desc).toMatch(/a backup of this device is running/);
        expect(statSync(image).size).toBe(SIZE);
        expect(c.messages.slice(from).some((m) => m.event === 'BACKUP_COMPLETED')).toBe(false);
        await stopWrites();
        // A crash keeps only what was flushed: the front end flushes, as a guest's fsync does.
        expect((await driver.flush()).status).toBe(BlkStatus.OK);
      } finally {
        await disk.closeClients();
      }
      await disk.daemon.stop(signal);
      // SIGTERM cancels the backup first, and the merge it starts may finish before the device
      // closes (it stops after its current step otherwise); a crash always leaves the overlay.
      const left = existsSync(`${image}.vhost-rt-redirect`);
      if (signal === 'SIGKILL') expect(left).toBe(true);
      // Not merged: the image alone lacks the writes since the backup's start.
      if (left) expect(model.checkLive(readFileSync(image))).not.toBe('ok');
      const daemon = await startBlk(image, name);
      try {
        expect(existsSync(`${image}.vhost-rt-redirect`)).toBe(false);
        if (left) expect(daemon.log()).toMatch(/merged \d+ bytes \(\d+ runs\) left in/);
        expect(model.checkLive(readFileSync(image))).toBe('ok');
        // And the device serves what it merged.
        const d2 = await BlkDriver.create({ socketPath: join(dir, `${name}.sock`) });
        const reads = model.runReads(d2, 2, 16, () => model.verifiedReads >= 50);
        await reads;
        await d2.close();
      } finally {
        await daemon.stop();
      }
      expect(model.errors).toEqual([]);
    },
  );
});

describe('blockdev-backup method redirect refused', () => {
  it('on an engine without local files (null), naming the method and the engine; the device serves on', async () => {
    const image = join(dir, 'null.img');
    writeFileSync(image, Buffer.alloc(SIZE));
    const daemon = await startBlk(image, 'null', 'null');
    const c = await QmpClient.connect(join(dir, 'null.qmp'));
    try {
      const r = await c.execute('blockdev-backup', {
        device: 0,
        target: join(dir, 'null.backup'),
        method: 'redirect',
      });
      expect(r.error).toMatchObject({
        desc: expect.stringMatching(
          /method redirect needs a local image file; this device uses the null engine/,
        ),
      });
      expect(existsSync(`${image}.vhost-rt-redirect`)).toBe(false);
      const q = await c.execute('query-backups', { device: 0 });
      expect(q.return).toEqual([]);
    } finally {
      c.close();
      await daemon.stop();
    }
  });
});

describe('a broken or pending overlay at start', () => {
  it('refuses one that is not an overlay, naming it, and leaves image and file alone', async () => {
    const image = join(dir, 'garbage.img');
    writeFileSync(image, Buffer.alloc(SIZE, 0x33));
    writeFileSync(`${image}.vhost-rt-redirect`, Buffer.alloc(8192, 0x5a));
    const r = await runCli(['blk', '--socket-path', join(dir, 'garbage.sock'), '--image', image]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/vhost-rt-redirect: not a vhost-rt overlay/);
    expect(readFileSync(image).equals(Buffer.alloc(SIZE, 0x33))).toBe(true);
    expect(readFileSync(`${image}.vhost-rt-redirect`).length).toBe(8192);
  });

  it('refuses a read-only open while redirected writes are not merged, naming the overlay', async () => {
    const image = join(dir, 'pending.img');
    writeFileSync(image, Buffer.alloc(SIZE));
    const name = 'pending';
    const daemon = await startBlk(image, name);
    const c = await QmpClient.connect(join(dir, `${name}.qmp`));
    const driver = await BlkDriver.create({ socketPath: join(dir, `${name}.sock`) });
    try {
      await c.execute('blockdev-backup', {
        device: 0,
        target: join(dir, `${name}.backup`),
        method: 'redirect',
        speed: 1 * MiB,
      });
      expect((await driver.write(0, Buffer.alloc(4096, 0x44))).status).toBe(BlkStatus.OK);
      expect((await driver.flush()).status).toBe(BlkStatus.OK);
    } finally {
      await driver.close();
      c.close();
    }
    await daemon.stop('SIGKILL');
    const r = await runCli([
      'blk',
      '--socket-path',
      join(dir, 'pending-ro.sock'),
      '--image',
      image,
      '--readonly',
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/holds writes of a redirect backup not merged yet/);
    // A writable open then merges it and serves the write.
    const again = await startBlk(image, name);
    await again.stop();
    expect(readFileSync(image).subarray(0, 4096).equals(Buffer.alloc(4096, 0x44))).toBe(true);
  });
});
