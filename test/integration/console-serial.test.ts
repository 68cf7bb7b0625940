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
import { type Daemon, startDaemon } from '../support/daemon.js';

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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('vhost-rt serial', () => {
  it('lossless: a stalled sink pushes back on the UART, then every byte arrives in order', async () => {
    const qemu = await open(join(dir, 'uart.sock'));
    let text = '';
    for (let i = 0; i < 40_000; i++) text += `uart line ${String(i).padStart(6, '0')}\n`;
    const data = Buffer.from(text);
    qemu.write(data);
    await sleep(1000);
    // Ring (4 KiB) and pipe (64 KiB) are full: the rest waits on the writer's side.
    expect(qemu.writableLength).toBeGreaterThan(0);
    let got = Buffer.alloc(0);
    const deadline = Date.now() + 20_000;
    while (got.length < data.length && Date.now() < deadline) {
      got = Buffer.concat([got, readFifo()]);
      await sleep(5);
    }
    expect(got.length).toBe(data.length);
    expect(got.equals(data)).toBe(true);
    const before = daemon.log().length;
    daemon.proc.kill('SIGUSR1');
    const until = Date.now() + 5000;
    while (!daemon.log().slice(before).includes('stats:') && Date.now() < until) await sleep(10);
    const stats = daemon.log().slice(before);
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
      await sleep(100);
      const typist = await open(join(dir, 'uart.in'));
      typist.write(`keys ${round}\n`);
      const deadline = Date.now() + 5000;
      while (received !== `keys ${round}\n` && Date.now() < deadline) await sleep(10);
      expect(received).toBe(`keys ${round}\n`);
      typist.destroy();
      qemu.destroy();
      await sleep(100);
    }
  });

  it('writes to standard output by default, and drains the ring before it exits', async () => {
    const sock = join(dir, 'stdout.sock');
    const d = await startDaemon(['serial', '--socket-path', sock]);
    try {
      const qemu = await open(sock);
      qemu.end('to stdout\n');
      const deadline = Date.now() + 5000;
      while (!d.log().includes('to stdout\n') && Date.now() < deadline) await sleep(10);
    } finally {
      const { code, log } = await d.stop();
      expect(code).toBe(0);
      expect(log).toContain('to stdout\n');
    }
  });
});
