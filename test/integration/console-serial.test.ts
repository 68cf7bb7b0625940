/**
 * `vhost-rt serial` without a guest: a plain socket client plays QEMU's
 * chardev. With 'lossless' and a log FIFO nobody reads, the daemon stops
 * reading the chardev once the ring is full, so the back-pressure reaches
 * the writer (QEMU's UART, and through it the guest) instead of anything
 * being lost; once the FIFO is read, every byte arrives in order. Input
 * from an attach client reaches the chardev, and a reconnecting QEMU is
 * served again.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Daemon, daemonStats, startDaemon } from '../support/daemon.js';
import { waitFor } from '../support/wait.js';

let dir: string;
let daemon: Daemon;
let fifoReader: number;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-serial-'));
  execFileSync('mkfifo', [join(dir, 'out.fifo')]);
  fifoReader = openSync(join(dir, 'out.fifo'), constants.O_RDONLY | constants.O_NONBLOCK);
  daemon = await startDaemon([
    'serial',
    '--socket-path',
    join(dir, 'uart.sock'),
    '--log',
    join(dir, 'out.fifo'),
    '--input',
    join(dir, 'uart.in'),
    '--ring-size',
    '4k',
  ]);
}, 30_000);

afterAll(async () => {
  await daemon?.stop();
  closeSync(fifoReader);
  rmSync(dir, { recursive: true, force: true });
});

function open(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path, () => resolve(s));
    s.once('error', reject);
  });
}

function readFifo(): Buffer {
  const buf = Buffer.alloc(1 << 16);
  const parts: Buffer[] = [];
  for (;;) {
    let n = 0;
    try {
      n = readSync(fifoReader, buf, 0, buf.length, null);
    } catch (err) {
      if ((err as { code?: string }).code === 'EAGAIN') break;
      throw err;
    }
    if (n === 0) break;
    parts.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(parts);
}

describe('vhost-rt serial', () => {
  it('lossless: a stalled sink pushes back on the UART, then every byte arrives in order', async () => {
    const qemu = await open(join(dir, 'uart.sock'));
    let text = '';
    for (let i = 0; i < 40_000; i++) text += `uart line ${String(i).padStart(6, '0')}\n`;
    const data = Buffer.from(text);
    qemu.write(data);
    // The worker counts ringFull when it stops reading the chardev: from then on it reads
    // nothing until the FIFO is read, and ring (4 KiB) + pipe (64 KiB) + socket buffers hold
    // far less than the data, so the rest waits on the writer's side.
    await waitFor(
      async () => Number(/ringFull=(\d+)/.exec(await daemonStats(daemon))?.[1]) > 0,
      'the serial worker to stall on its full ring',
    );
    expect(qemu.writableLength).toBeGreaterThan(0);
    let got = Buffer.alloc(0);
    await waitFor(
      () => {
        got = Buffer.concat([got, readFifo()]);
        return got.length >= data.length;
      },
      `all ${data.length} bytes through the FIFO`,
      20_000,
    );
    expect(got.length).toBe(data.length);
    expect(got.equals(data)).toBe(true);
    const stats = await daemonStats(daemon);
    expect(stats).toMatch(new RegExp(`bytesOut=${data.length} bytesDropped=0`));
    expect(Number(/ringFull=(\d+)/.exec(stats)?.[1])).toBeGreaterThan(0);
    expect(stats).toMatch(/ringHighWater=4096/);
    qemu.destroy();
  }, 40_000);

  it('sends attached input to the chardev, and serves a reconnecting QEMU', async () => {
    for (const round of [1, 2]) {
      const qemu = await open(join(dir, 'uart.sock'));
      let received = '';
      qemu.on('data', (d) => {
        received += d.toString();
      });
      // The worker reads output only from the QEMU it serves: once this connection's
      // output reaches the log, the worker has accepted it (and dropped the one before).
      const hello = `uart connection ${round}\n`;
      qemu.write(hello);
      let logged = '';
      await waitFor(() => {
        logged += readFifo().toString();
        return logged.includes(hello);
      }, hello.trim());
      const keys = `keys ${round}\n`;
      const typist = await open(join(dir, 'uart.in'));
      typist.write(keys);
      await waitFor(() => received.length >= keys.length, `${keys.trim()} at the chardev`, 5000);
      expect(received).toBe(keys);
      typist.destroy();
      qemu.destroy();
    }
  });

  it('writes to standard output by default, and drains the ring before it exits', async () => {
    const sock = join(dir, 'stdout.sock');
    const d = await startDaemon(['serial', '--socket-path', sock]);
    try {
      const qemu = await open(sock);
      qemu.end('to stdout\n');
      await waitFor(() => d.log().includes('to stdout\n'), 'the output on stdout', 5000);
    } finally {
      const { code, log } = await d.stop();
      expect(code).toBe(0);
      expect(log).toContain('to stdout\n');
    }
  });
});
