/**
 * Image locking as QEMU does it (OFD locks on bytes 100 + permission and
 * 200 + unshared permission): a second vhost-rt writer is refused with one
 * line naming the conflict and its holder; read-only daemons coexist; and
 * vhost-rt, qemu-storage-daemon and qemu-io see one another's locks both ways.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lockImage } from '../../src/io/image-lock.js';
import { native } from '../../src/native.js';
import { runCli, startDaemon } from '../support/daemon.js';
import { storageDaemonArgs } from '../support/qemu.js';
import { QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

let dir: string;
let n = 0;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-lock-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A fresh 4 MiB image and a socket path next to it. */
function fresh(): { image: string; sock: string } {
  n++;
  const image = join(dir, `disk${n}.img`);
  writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
  return { image, sock: join(dir, `s${n}.sock`) };
}

/** Whether some other open file holds a lock on `byte` of `image` (what QEMU's check sees). */
function lockedByte(image: string, byte: number): boolean {
  const fd = openSync(image, 'r');
  try {
    return native.ofdTestLock(fd, 2, byte, 1) !== 0;
  } finally {
    closeSync(fd);
  }
}

/** Waits for `proc` to exit; resolves with its code and stderr. */
function exitOf(proc: ChildProcess): Promise<{ code: number | null; stderr: string }> {
  let stderr = '';
  proc.stderr?.on('data', (d) => {
    stderr += d;
  });
  return new Promise((resolve) => proc.on('exit', (code) => resolve({ code, stderr })));
}

describe('image locking between vhost-rt daemons', () => {
  it('refuses a second writer in one line naming the holder, and frees the image on exit', async () => {
    const { image, sock } = fresh();
    const first = await startDaemon(['blk', '--socket-path', sock, '--image', image]);
    try {
      expect(lockedByte(image, 101)).toBe(true); // holds write
      expect(lockedByte(image, 201)).toBe(true); // shares it with nobody
      const second = await runCli(['blk', '--socket-path', `${sock}2`, '--image', image]);
      expect(second.code).toBe(2);
      expect(second.stderr.trim().split('\n')).toHaveLength(1);
      expect(second.stderr).toContain(`image ${image} is locked for writing by another process (`);
      expect(second.stderr).toContain(`pid ${first.proc.pid}) (QEMU-style lock byte 101)`);
      const readonly = await runCli([
        'blk',
        '--socket-path',
        `${sock}3`,
        '--image',
        image,
        '--readonly',
      ]);
      expect(readonly.stderr).toMatch(/is locked for writing .*lock byte 101/);
    } finally {
      expect((await first.stop()).code).toBe(0);
    }
    expect(lockedByte(image, 101)).toBe(false);
    const again = await startDaemon(['blk', '--socket-path', sock, '--image', image]);
    await again.stop();
  });

  it('lets two --share-rw writers share an image (a migration on one host), and refuses a plain writer beside them', async () => {
    const { image, sock } = fresh();
    const source = await startDaemon([
      'blk',
      '--socket-path',
      sock,
      '--image',
      image,
      '--share-rw',
    ]);
    try {
      expect(lockedByte(image, 101)).toBe(true); // holds write
      expect(lockedByte(image, 201)).toBe(false); // and shares it
      const destination = await startDaemon([
        'blk',
        '--socket-path',
        `${sock}2`,
        '--image',
        image,
        '--share-rw',
      ]);
      try {
        // A writer that shares write with nobody conflicts with the writers already there.
        const plain = await runCli(['blk', '--socket-path', `${sock}3`, '--image', image]);
        expect(plain.code).toBe(2);
        expect(plain.stderr).toMatch(/is locked for writing by another process .*lock byte 101/);
      } finally {
        expect((await destination.stop()).code).toBe(0);
      }
    } finally {
      expect((await source.stop()).code).toBe(0);
    }
    expect(lockedByte(image, 101)).toBe(false);
  });

  it('lets read-only daemons share an image, and refuses a writer beside them', async () => {
    const { image, sock } = fresh();
    const a = await startDaemon([
      'blk',
      '--socket-path',
      `${sock}a`,
      '--image',
      image,
      '--readonly',
    ]);
    const b = await startDaemon([
      'blk',
      '--socket-path',
      `${sock}b`,
      '--image',
      image,
      '--readonly',
    ]);
    try {
      expect(lockedByte(image, 101)).toBe(false);
      const writer = await runCli(['blk', '--socket-path', `${sock}w`, '--image', image]);
      expect(writer.code).toBe(2);
      expect(writer.stderr).toMatch(
        /image .* is locked against other writers by another process \(.*pid \d+\) \(QEMU-style lock byte 201\)/,
      );
    } finally {
      // Both are stopped even if one does not stop in time (its stop rejects).
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  it('refuses two devices of one process on one image, naming the process itself', async () => {
    const { image, sock } = fresh();
    const r = await runCli([
      'blk',
      '--device',
      `socket-path=${sock}a,image=${image}`,
      '--device',
      `socket-path=${sock}b,image=${image}`,
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      /is locked .* by another device of this process \(QEMU-style lock byte/,
    );
  });

  it('locks an export added at run time (device-add) and releases it on device-del', async () => {
    const { image, sock } = fresh();
    const other = fresh();
    const control = join(dir, `control${n}.sock`);
    const holder = await startDaemon(['blk', '--socket-path', other.sock, '--image', other.image]);
    const d = await startDaemon([
      'blk',
      '--socket-path',
      sock,
      '--image',
      image,
      '--control-socket',
      control,
    ]);
    const c = await QmpClient.connect(control);
    try {
      const taken = await c.execute('device-add', {
        kind: 'blk',
        'socket-path': `${sock}-added`,
        image: other.image,
      });
      expect((taken.error as { desc: string }).desc).toMatch(
        new RegExp(
          `image ${other.image} is locked for writing by another process \\(.*pid ${holder.proc.pid}\\)`,
        ),
      );
      const same = await c.execute('device-add', {
        kind: 'blk',
        'socket-path': `${sock}-same`,
        image,
      });
      expect((same.error as { desc: string }).desc).toMatch(/by another device of this process/);
      await holder.stop();
      const added = await c.execute('device-add', {
        kind: 'blk',
        'socket-path': `${sock}-added`,
        image: other.image,
      });
      expect(added.error).toBeUndefined();
      expect(lockedByte(other.image, 101)).toBe(true);
      expect((await c.execute('device-del', { device: 1 })).error).toBeUndefined();
      expect(lockedByte(other.image, 101)).toBe(false);
    } finally {
      c.close();
      // Both are stopped even if one does not stop in time (its stop rejects): a daemon left
      // running outlives the test run.
      await Promise.all([d.stop(), holder.stop()]);
    }
  });

  it('gives an unheld lock for an NBD URI (the server locks its export)', () => {
    const lock = lockImage('nbd+unix:///?socket=/nowhere', { readonly: false });
    expect(lock.held).toBe(false);
    lock.release();
  });
});

describe('image locking between vhost-rt and QEMU', () => {
  it('qemu-storage-daemon and qemu-io cannot write an image vhost-rt serves; qemu-img info reads it', async () => {
    const { image, sock } = fresh();
    const d = await startDaemon(['blk', '--socket-path', sock, '--image', image]);
    try {
      const qsd = spawn(
        'qemu-storage-daemon',
        storageDaemonArgs({ image, socket: join(dir, `qsd${n}.sock`), queues: 1 }),
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      const q = await exitOf(qsd);
      expect(q.code).not.toBe(0);
      expect(q.stderr).toMatch(/Failed to get "write" lock/);
      const io = spawnSync('qemu-io', ['-f', 'raw', '-c', 'write 0 512', image], {
        encoding: 'utf8',
      });
      expect(io.status).not.toBe(0);
      expect(`${io.stdout}${io.stderr}`).toMatch(/Failed to get "write" lock/);
      // Readers are not writers: as beside a running QEMU, info works (with -U too).
      for (const args of [
        ['info', '-f', 'raw', image],
        ['info', '-U', '-f', 'raw', image],
      ]) {
        const info = spawnSync('qemu-img', args, { encoding: 'utf8' });
        expect(info.status, info.stderr).toBe(0);
        expect(info.stdout).toContain('virtual size: 4 MiB');
      }
    } finally {
      await d.stop();
    }
  });

  it('vhost-rt refuses an image that qemu-storage-daemon or qemu-io holds, naming them', async () => {
    const { image, sock } = fresh();
    const qsd = spawn(
      'qemu-storage-daemon',
      storageDaemonArgs({ image, socket: join(dir, `qsd${n}.sock`), queues: 1 }),
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const qsdExit = exitOf(qsd);
    try {
      await waitFor(() => lockedByte(image, 101), 'qemu-storage-daemon to lock the image');
      const r = await runCli(['blk', '--socket-path', sock, '--image', image]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(
        new RegExp(
          `locked for writing by another process \\(qemu-storage-daemon, pid ${qsd.pid}\\) \\(QEMU-style lock byte 101\\)`,
        ),
      );
    } finally {
      qsd.kill('SIGTERM');
      await qsdExit;
    }
    // qemu-io with the image open (it waits for commands on stdin).
    const io = spawn('qemu-io', ['-f', 'raw', image], { stdio: ['pipe', 'ignore', 'ignore'] });
    const ioExit = exitOf(io);
    try {
      await waitFor(() => lockedByte(image, 101), 'qemu-io to lock the image');
      const r = await runCli(['blk', '--socket-path', sock, '--image', image, '--readonly']);
      expect(r.stderr).toMatch(/locked for writing by another process \(qemu-io, pid \d+\)/);
    } finally {
      io.stdin?.end('quit\n');
      await ioExit;
    }
    const d = await startDaemon(['blk', '--socket-path', sock, '--image', image]);
    await d.stop();
  });
});
