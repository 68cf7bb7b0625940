/**
 * Backpressure and multiqueue of `vhost-rt net` (issue 13), driven by the
 * project's own vhost-user front end over real sockets: a slow receiver gets
 * every frame of a unicast burst larger than its ring (the sender's frames
 * wait in its transmit ring); a receiver that posts no buffers does not stall
 * traffic between other ports (the sender gives up on it once it has made no
 * progress for --hold-ms, counted); a port with two receive queues gets
 * frames on both, spread by flow.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ethFrame, NetDriver } from '../frontend/net-driver.js';
import { type Daemon, daemonStats, startDaemon } from '../support/daemon.js';
import { waitFor } from '../support/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-net-bp-'));
const sock = (p: string) => join(dir, `${p}.sock`);
const MAC = {
  a: '02:00:00:00:0d:0a',
  b: '02:00:00:00:0d:0b',
  c: '02:00:00:00:0d:0c',
  d: '02:00:00:00:0d:0d',
};
const BROADCAST = 'ff:ff:ff:ff:ff:ff';
/** A 64 KiB ring holds 43 records of 1500-byte frames. */
const RING_BYTES = 65536;

let daemon: Daemon;
let a: NetDriver;
let b: NetDriver;
let c: NetDriver;
let d: NetDriver;

/** Asks the daemon for its counters (SIGUSR1) and returns port `port`'s. */
async function portStats(port: number): Promise<Record<string, number>> {
  const line = await daemonStats(daemon);
  const part = line.split(' | ').find((p) => p.includes(`[${port}] `)) ?? '';
  return Object.fromEntries([...part.matchAll(/(\w+)=(\d+)/g)].map((m) => [m[1], Number(m[2])]));
}

/** `from` broadcasts once, so every other port learns its address. */
async function announce(from: NetDriver, mac: string, receivers: NetDriver[]): Promise<void> {
  const before = receivers.map((r) => r.received.length);
  await from.send(ethFrame(BROADCAST, mac, 60));
  await Promise.all(receivers.map((r, i) => r.waitReceived(before[i] + 1)));
}

beforeAll(async () => {
  daemon = await startDaemon([
    'net',
    ...['a', 'b', 'c', 'd'].flatMap((p) => ['--socket-path', sock(p)]),
    '--ring-bytes',
    String(RING_BYTES),
    // A port that makes no progress for 2 s is given up on (a slow one never is).
    '--hold-ms',
    '2000',
  ]);
  a = await NetDriver.create({ socketPath: sock('a'), queueSize: 256, heapBytes: 16 << 20 });
  // B is slow: four receive buffers, each replaced only once it was used.
  b = await NetDriver.create({ socketPath: sock('b'), rxBuffers: 4 });
  c = await NetDriver.create({ socketPath: sock('c') });
  // D never posts a receive buffer.
  d = await NetDriver.create({ socketPath: sock('d'), rxBuffers: 0 });
  await announce(b, MAC.b, [a, c]);
  await announce(c, MAC.c, [a, b]);
  await announce(a, MAC.a, [b, c]);
  await d.send(ethFrame(BROADCAST, MAC.d, 60));
  await waitFor(() => a.received.length >= 3, "D's broadcast at A");
}, 120_000);

afterAll(async () => {
  for (const drv of [a, b, c, d]) await drv?.close().catch(() => undefined);
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('backpressure', () => {
  it('a slow receiver gets every frame of a unicast burst larger than its ring, in order', async () => {
    const before = await portStats(0);
    const ringDropsBefore = (await portStats(1)).ringDrops;
    const start = b.received.length;
    // 200 frames of 1500 bytes: ~300 KB for a 64 KiB ring, all sent at once.
    const frames = Array.from({ length: 200 }, (_, i) => ethFrame(MAC.b, MAC.a, 1500, i));
    const sent = Promise.all(frames.map((f) => a.send(f)));
    await b.waitReceived(start + frames.length, 60_000);
    await sent;
    const got = b.received.slice(start).map((r) => r.frame);
    expect(got.every((f, i) => Buffer.from(frames[i]).equals(f))).toBe(true);
    const after = await portStats(0);
    expect(after.txHolds).toBeGreaterThan(before.txHolds);
    expect(after.txStallDrops).toBe(before.txStallDrops);
    expect((await portStats(1)).ringDrops).toBe(ringDropsBefore);
  }, 90_000);

  it('a receiver that posts no buffers does not stall traffic between the others', async () => {
    // A fills D's ring and is held; B and C go on meanwhile, and A's frames to
    // C get through once A gives up on D (no progress for --hold-ms), counted.
    const toD = Array.from({ length: 100 }, (_, i) => ethFrame(MAC.d, MAC.a, 1500, i));
    const toC = Array.from({ length: 50 }, (_, i) => ethFrame(MAC.c, MAC.a, 200, i));
    const cStart = c.received.length;
    const sent = Promise.all([...toD, ...toC].map((f) => a.send(f)));
    const fromB = Array.from({ length: 50 }, (_, i) => ethFrame(MAC.c, MAC.b, 300, i));
    await Promise.all(fromB.map((f) => b.send(f)));
    await c.waitReceived(cStart + fromB.length + toC.length, 60_000);
    await sent;
    const got = c.received.slice(cStart).map((r) => Buffer.from(r.frame));
    for (const f of [...fromB, ...toC]) expect(got.some((g) => g.equals(f))).toBe(true);
    const aStats = await portStats(0);
    expect(aStats.txStallDrops).toBeGreaterThan(0);
    expect((await portStats(3)).ringDrops).toBeGreaterThan(0);
    expect(d.received).toHaveLength(0);
  }, 90_000);
});

describe('multiqueue', () => {
  it('spreads frames to a port with two receive queues over both, by flow', async () => {
    const mq = await startDaemon([
      'net',
      '--socket-path',
      sock('mq0'),
      '--socket-path',
      sock('mq1'),
      '--queues',
      '2',
    ]);
    const x = await NetDriver.create({ socketPath: sock('mq0'), pairs: 2 });
    const y = await NetDriver.create({ socketPath: sock('mq1'), pairs: 2, rxPairs: 2 });
    try {
      // 32 flows: frames from 32 source addresses.
      const frames = Array.from({ length: 32 }, (_, i) =>
        ethFrame(MAC.b, `02:00:00:00:0e:${(0x10 + i).toString(16)}`, 100, i),
      );
      for (const f of frames) await x.send(f);
      const got = await y.waitReceived(frames.length);
      const queues = new Set(got.map((r) => r.queue));
      expect([...queues].sort()).toEqual([0, 2]);
      // One flow stays on one queue.
      const again = y.received.length;
      for (let i = 0; i < 4; i++) await x.send(frames[0]);
      const repeat = await y.waitReceived(again + 4);
      const first = got.find((r) => Buffer.from(frames[0]).equals(r.frame))?.queue;
      expect(repeat.slice(again).every((r) => r.queue === first)).toBe(true);
    } finally {
      await x.close();
      await y.close();
      await mq.stop();
    }
  }, 60_000);
});
