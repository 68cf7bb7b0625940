/**
 * The sockets the daemon creates, as an operator deploys them: mode and group
 * from --socket-mode / --socket-group on every socket (vhost-user, the UART's
 * chardev socket, input sockets), a second daemon refused on a live socket,
 * a stale socket file replaced.
 */
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import { parseSocketGroup, parseSocketMode } from '../../src/sockets/listen.js';
import { BlkDriver } from '../frontend/index.js';
import { runCli, startDaemon } from '../support/daemon.js';

let dir: string;
let image: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-sockets-'));
  image = join(dir, 'disk.img');
  writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Permission bits and group of the file at `path`. */
function modeAndGroup(path: string): { mode: number; gid: number } {
  const st = statSync(path);
  return { mode: st.mode & 0o777, gid: st.gid };
}

describe('--socket-mode / --socket-group', () => {
  it('parse chmod and chgrp forms and refuse others, naming the flag', () => {
    expect(parseSocketMode('0660')).toBe(0o660);
    expect(parseSocketMode('600')).toBe(0o600);
    expect(() => parseSocketMode('rw-rw----')).toThrow(/--socket-mode rw-rw----/);
    expect(() => parseSocketMode('0999')).toThrow(/octal/);
    const groups = join(dir, 'group');
    writeFileSync(groups, 'root:x:0:\nlibvirt-qemu:x:64055:\n');
    expect(parseSocketGroup('libvirt-qemu', groups)).toBe(64055);
    expect(parseSocketGroup('1234', groups)).toBe(1234);
    expect(() => parseSocketGroup('nosuch', groups)).toThrow(
      /--socket-group nosuch: no such group/,
    );
  });

  it('apply to the vhost-user socket of blk, which still serves', async () => {
    const sock = join(dir, 'blk.sock');
    const d = await startDaemon([
      'blk',
      '--socket-path',
      sock,
      '--image',
      image,
      '--socket-mode',
      '0660',
      '--socket-group',
      'daemon',
    ]);
    try {
      expect(modeAndGroup(sock)).toEqual({ mode: 0o660, gid: parseSocketGroup('daemon') });
      const drv = await BlkDriver.create({ socketPath: sock });
      try {
        expect(drv.capacityBytes).toBe(4 * 1024 * 1024);
      } finally {
        await drv.close();
      }
    } finally {
      await d.stop();
    }
  });

  it('apply to the UART chardev socket and its input socket', async () => {
    const sock = join(dir, 'uart.sock');
    const input = join(dir, 'uart-in.sock');
    const d = await startDaemon([
      'serial',
      '--socket-path',
      sock,
      '--input',
      input,
      '--log',
      `file:${join(dir, 'uart.log')}`,
      '--socket-mode',
      '0600',
      '--socket-group',
      'disk',
    ]);
    try {
      const gid = parseSocketGroup('disk');
      expect(modeAndGroup(sock)).toEqual({ mode: 0o600, gid });
      expect(modeAndGroup(input)).toEqual({ mode: 0o600, gid });
    } finally {
      await d.stop();
    }
  });
});

describe('a socket path', () => {
  it('where a daemon listens is refused to a second daemon, and the first keeps it', async () => {
    const sock = join(dir, 'live.sock');
    const first = await startDaemon(['blk', '--socket-path', sock, '--image', image]);
    try {
      // Its own image: the first daemon's is locked against a second writer (image-lock.ts).
      const other = join(dir, 'other.img');
      writeFileSync(other, Buffer.alloc(1024 * 1024));
      const second = await runCli(['blk', '--socket-path', sock, '--image', other]);
      expect(second.code).toBe(2);
      expect(second.stderr.trim()).toBe(
        `vhost-rt blk: --socket-path ${sock}: another process is listening there (a running daemon?)`,
      );
      const drv = await BlkDriver.create({ socketPath: sock });
      await drv.close();
    } finally {
      await first.stop();
    }
  });

  it('left by a dead daemon (a socket file nobody listens on) is replaced', async () => {
    const sock = join(dir, 'stale.sock');
    native.close(native.unixListen(sock, 1)); // the file stays, nobody listens
    const d = await startDaemon(['blk', '--socket-path', sock, '--image', image]);
    try {
      const drv = await BlkDriver.create({ socketPath: sock });
      await drv.close();
    } finally {
      await d.stop();
    }
  });
});
