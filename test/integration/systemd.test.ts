/**
 * systemd deployment without systemd: readiness (READY=1 once every socket
 * accepts, MAINPID, STATUS= lines, STOPPING=1 on SIGTERM) on a NOTIFY_SOCKET
 * the test binds itself (a path or the abstract namespace), and socket
 * activation (listening sockets at fds 3.. with LISTEN_FDS / LISTEN_PID /
 * LISTEN_FDNAMES, matched by name or by bound path) or `--socket-fd N`; a
 * front end connects through the inherited socket, whose file the daemon
 * leaves in place on exit.
 */

import { spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import { BlkDriver } from '../frontend/index.js';
import { CLI, runCli } from '../support/daemon.js';
import { NotifySocket, startActivated } from '../support/systemd.js';
import { waitFor } from '../support/wait.js';

let dir: string;
let image: string;
const IMAGE_BYTES = 4 * 1024 * 1024;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-systemd-'));
  image = join(dir, 'disk.img');
  writeFileSync(image, Buffer.alloc(IMAGE_BYTES));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Connects a blk front end to `sock`, writes and reads back one sector. */
async function blkRoundTrip(sock: string): Promise<void> {
  const drv = await BlkDriver.create({ socketPath: sock });
  try {
    expect(drv.capacityBytes).toBe(IMAGE_BYTES);
    const data = new Uint8Array(512).fill(0x5a);
    expect((await drv.write(8, data)).status).toBe(0);
    const back = await drv.read(8, 512);
    expect(back.status).toBe(0);
    expect(back.data?.[0]).toBe(0x5a);
  } finally {
    await drv.close();
  }
}

describe('systemd readiness and socket activation', () => {
  it('socket-activated blk (matched by FileDescriptorName): READY=1 once it accepts, STATUS, STOPPING=1, socket kept', async () => {
    const listening = join(dir, 'activated.sock');
    const listenFd = native.unixListen(listening, 4);
    const notify = new NotifySocket(join(dir, 'notify.sock'));
    const d = startActivated(
      // The configured path is only a name here: the socket systemd made is elsewhere.
      ['blk', '--socket-path', join(dir, 'unit', 'vm0-disk.sock'), '--image', image],
      { fds: [listenFd], listenFds: { names: ['vm0-disk.sock'] }, notifySocket: notify.path },
    );
    native.close(listenFd); // the child holds its copy, as systemd's would
    try {
      const ready = await notify.waitLine('READY=1');
      expect(ready).toContain(`MAINPID=${d.proc.pid}`);
      expect(ready).toMatch(/STATUS=serving 1 device/);
      // READY=1 means the socket accepts: a front end connects at once.
      const n = notify.messages.length;
      await blkRoundTrip(listening);
      await notify.waitMatch(/^STATUS=front end connected on .*vm0-disk\.sock/m, n);
      expect(existsSync(join(dir, 'unit', 'vm0-disk.sock'))).toBe(false);
      const before = notify.messages.length;
      d.proc.kill('SIGTERM');
      const stopping = await notify.waitLine('STOPPING=1', before);
      expect(stopping).toMatch(/STATUS=SIGTERM/);
      expect(await d.exited).toBe(0);
      // The socket belongs to whoever made it (systemd): still there.
      expect(existsSync(listening)).toBe(true);
    } finally {
      d.proc.kill('SIGKILL');
      notify.close();
    }
  });

  it('matches an unnamed inherited socket by its bound path; NOTIFY_SOCKET in the abstract namespace', async () => {
    const sock = join(dir, 'bound.sock');
    const listenFd = native.unixListen(sock, 4);
    const notify = new NotifySocket(`@vhost-rt-test-${process.pid}-${Date.now()}`);
    const d = startActivated(['blk', '--socket-path', sock, '--image', image], {
      fds: [listenFd],
      listenFds: {},
      notifySocket: notify.path,
    });
    native.close(listenFd);
    try {
      await notify.waitLine('READY=1');
      await blkRoundTrip(sock);
      d.proc.kill('SIGTERM');
      await notify.waitLine('STOPPING=1');
      expect(await d.exited).toBe(0);
      expect(existsSync(sock)).toBe(true);
      expect(d.log()).not.toMatch(/matches no socket/);
    } finally {
      d.proc.kill('SIGKILL');
      notify.close();
    }
  });

  it('--socket-fd N serves an inherited listening socket (qemu-storage-daemon addr.type=fd)', async () => {
    const sock = join(dir, 'fd.sock');
    const listenFd = native.unixListen(sock, 4);
    const d = startActivated(['blk', '--socket-fd', '3', '--image', image], { fds: [listenFd] });
    native.close(listenFd);
    try {
      await waitFor(() => /\bready\b/.test(d.log()), 'the ready line');
      expect(d.log()).toContain(`socket ${sock}`);
      await blkRoundTrip(sock);
      d.proc.kill('SIGTERM');
      expect(await d.exited).toBe(0);
      expect(existsSync(sock)).toBe(true);
    } finally {
      d.proc.kill('SIGKILL');
    }
  });

  it('warns about and closes an inherited socket that matches nothing', async () => {
    const sock = join(dir, 'used.sock');
    const extra = join(dir, 'extra.sock');
    const fds = [native.unixListen(sock, 4), native.unixListen(extra, 4)];
    const notify = new NotifySocket(join(dir, 'notify2.sock'));
    const d = startActivated(['blk', '--socket-path', sock, '--image', image], {
      fds,
      listenFds: { names: ['used.sock', 'extra'] },
      notifySocket: notify.path,
    });
    for (const fd of fds) native.close(fd);
    try {
      await notify.waitLine('READY=1');
      expect(d.log()).toMatch(
        /inherited socket fd 4 \(extra\) bound to .*extra\.sock matches no socket/,
      );
      d.proc.kill('SIGTERM');
      expect(await d.exited).toBe(0);
    } finally {
      d.proc.kill('SIGKILL');
      notify.close();
    }
  });

  it("systemd's own systemd-socket-activate starts the daemon on the first connection", async () => {
    // Real systemd code sets LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES here (no PID 1 needed).
    const sock = join(dir, 'on-demand.sock');
    const notify = new NotifySocket(join(dir, 'notify3.sock'));
    const activator = spawn(
      'systemd-socket-activate',
      [
        '-l',
        sock,
        '--fdname=on-demand.sock',
        '-E',
        `NOTIFY_SOCKET=${notify.path}`,
        process.execPath,
        CLI,
        'blk',
        '--socket-path',
        sock,
        '--image',
        image,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let log = '';
    activator.stderr.on('data', (d) => {
      log += d;
    });
    const exited = new Promise<number | null>((resolve) => activator.on('exit', resolve));
    try {
      await waitFor(
        () => log.includes('Listening on'),
        () => `systemd-socket-activate to listen (${log})`,
      );
      // No daemon yet: this connection starts it, waits in the backlog, and is served.
      await blkRoundTrip(sock);
      const ready = await notify.waitLine('READY=1');
      expect(ready).toContain(`MAINPID=${activator.pid}`);
      activator.kill('SIGTERM');
      await notify.waitLine('STOPPING=1');
      expect(await exited).toBe(0);
      expect(log).not.toMatch(/matches no socket/);
    } finally {
      activator.kill('SIGKILL');
      notify.close();
    }
  });

  it('refuses an inherited fd that is not a listening Unix stream socket, in one line', async () => {
    const file = join(dir, 'not-a-socket');
    writeFileSync(file, '');
    const fileFd = openSync(file, 'r');
    const dgram = native.unixDatagramBind(join(dir, 'dgram.sock'));
    mkdirSync(join(dir, 'x'), { recursive: true });
    try {
      const cases: [number, RegExp][] = [
        [fileFd, /--socket-fd 3: fd 3 is not a socket \(ENOTSOCK\)/],
        [dgram, /--socket-fd 3: fd 3 is not a Unix stream socket/],
      ];
      for (const [fd, message] of cases) {
        const d = startActivated(['blk', '--socket-fd', '3', '--image', image], { fds: [fd] });
        expect(await d.exited).toBe(2);
        expect(d.log().trim().split('\n')).toHaveLength(1);
        expect(d.log()).toMatch(message);
      }
      const closed = await runCli(['blk', '--socket-fd', '900', '--image', image]);
      expect(closed.code).toBe(2);
      expect(closed.stderr).toMatch(/--socket-fd 900: fd 900 is not an open descriptor/);
      const both = await runCli([
        'blk',
        '--socket-fd',
        '3',
        '--socket-path',
        'S',
        '--image',
        image,
      ]);
      expect(both.stderr).toMatch(/--socket-path and --socket-fd: give one of them/);
    } finally {
      closeSync(fileFd);
      native.close(dgram);
    }
  });
});
