/**
 * `vhost-rt net` with packed rings (VIRTIO_F_RING_PACKED, issue 13), driven
 * by the project's own front end over real sockets: packed ports and a split
 * port on one switch exchange frames byte for byte, a frame spreads over
 * several packed receive buffers (MRG_RXBUF), and a slow packed receiver
 * gets every frame of a burst larger than its ring — the sender's frames
 * wait in its packed transmit ring (the device puts a chain it cannot
 * forward back, a rewind of the packed ring).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ethFrame, NET_DRIVER_FEATURES, NET_HDR_BYTES, NetDriver } from '../frontend/net-driver.js';
import { type Daemon, daemonStats, startDaemon } from '../support/daemon.js';
import { waitFor } from '../support/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-net-packed-'));
const sock = (p: string) => join(dir, `${p}.sock`);
const MAC = {
  a: '02:00:00:00:0e:0a',
  b: '02:00:00:00:0e:0b',
  c: '02:00:00:00:0e:0c',
  s: '02:00:00:00:0e:05',
};
const BROADCAST = 'ff:ff:ff:ff:ff:ff';
const PACKED = NET_DRIVER_FEATURES | (1n << 34n);

let daemon: Daemon;
let a: NetDriver;
let b: NetDriver;
let c: NetDriver;
let s: NetDriver;

/** Port `port`'s counters (SIGUSR1). */
async function portStats(port: number): Promise<Record<string, number>> {
  const line = await daemonStats(daemon);
  const part = line.split(' | ').find((p) => p.includes(`[${port}] `)) ?? '';
  return Object.fromEntries([...part.matchAll(/(\w+)=(\d+)/g)].map((m) => [m[1], Number(m[2])]));
}

async function announce(from: NetDriver, mac: string, receivers: NetDriver[]): Promise<void> {
  const before = receivers.map((r) => r.received.length);
  await from.send(ethFrame(BROADCAST, mac, 60));
  await Promise.all(receivers.map((r, i) => r.waitReceived(before[i] + 1)));
}

beforeAll(async () => {
  daemon = await startDaemon([
    'net',
    ...['a', 'b', 'c', 's', 'h'].flatMap((p) => ['--socket-path', sock(p)]),
    '--ring-bytes',
    '65536',
  ]);
  a = await NetDriver.create({
    socketPath: sock('a'),
    driverFeatures: PACKED,
    queueSize: 256,
    heapBytes: 16 << 20,
  });
  // B is slow: four receive buffers, each replaced only once it was used.
  b = await NetDriver.create({ socketPath: sock('b'), driverFeatures: PACKED, rxBuffers: 4 });
  // C takes frames in small two-descriptor buffers: anything longer spans several.
  c = await NetDriver.create({
    socketPath: sock('c'),
    driverFeatures: PACKED,
    rxBufferBytes: 256,
    rxSegments: 2,
  });
  // S keeps split rings.
  s = await NetDriver.create({ socketPath: sock('s') });
  await announce(a, MAC.a, [b, c, s]);
  await announce(b, MAC.b, [a, c, s]);
  await announce(c, MAC.c, [a, b, s]);
  await announce(s, MAC.s, [a, b, c]);
}, 120_000);

afterAll(async () => {
  for (const drv of [a, b, c, s]) await drv?.close().catch(() => undefined);
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('vhost-rt net with packed rings', () => {
  it('negotiates packed rings with the ports that ask, split with the one that does not', () => {
    for (const p of [a, b, c]) expect(p.vmm.hasFeature(34)).toBe(true);
    expect(s.vmm.hasFeature(34)).toBe(false);
  });

  it('carries frames of every size between packed and split ports, byte for byte', async () => {
    for (const [from, to, src, dst] of [
      [a, s, MAC.a, MAC.s],
      [s, a, MAC.s, MAC.a],
    ] as const) {
      const start = to.received.length;
      const frames: Uint8Array[] = [];
      for (let len = 60; len <= 1518; len += 37) frames.push(ethFrame(dst, src, len, len));
      for (const f of frames) await from.send(f);
      const got = await to.waitReceived(start + frames.length);
      const mine = got.slice(start);
      expect(mine.map((r) => Buffer.from(r.frame))).toEqual(frames.map((f) => Buffer.from(f)));
    }
    for (const p of [a, s]) expect(p.violations).toEqual([]);
  });

  it('spreads a frame over several packed receive buffers with num_buffers (MRG_RXBUF)', async () => {
    const start = c.received.length;
    const frames = [60, 244, 245, 600, 1518].map((len, i) => ethFrame(MAC.c, MAC.a, len, i));
    for (const [i, f] of frames.entries()) {
      await a.send(f);
      await c.waitReceived(start + i + 1);
    }
    const got = c.received.slice(start);
    for (let i = 0; i < frames.length; i++) {
      expect(Buffer.compare(got[i].frame, Buffer.from(frames[i]))).toBe(0);
      expect(got[i].buffers).toBe(Math.ceil((frames[i].length + NET_HDR_BYTES) / 256));
    }
    expect(c.violations).toEqual([]);
  });

  it('hands back both positions and wrap counters in GET_VRING_BASE, resumes from them, and refuses a base naming a slot past the ring', async () => {
    const h = await NetDriver.create({
      socketPath: sock('h'),
      driverFeatures: PACKED,
      queueSize: 16,
    });
    try {
      // 40 frames through a 16-slot ring: the wrap counters have flipped.
      for (let i = 0; i < 40; i++) await h.send(ethFrame(MAC.a, '02:00:00:00:0e:0f', 60, i));
      const bases = await h.vmm.stop();
      const tx = bases[1];
      // 40 single-slot chains: avail and used both at slot 8 after two laps (wrap 1 again).
      expect(tx & 0xffff).toBe(8 | (1 << 15));
      expect(tx >>> 16).toBe(8 | (1 << 15));
      await h.vmm.start();
      const start = a.received.length;
      await h.send(ethFrame(MAC.a, '02:00:00:00:0e:0f', 61, 99));
      await a.waitReceived(start + 1);
      await h.vmm.stop();
      // A lying base (slot 0x7fff of a 16-slot ring) is refused; the ring keeps the last good one.
      h.vmm.queues[1].base = 0x7fff;
      await h.vmm.start();
      await waitFor(
        () => /packed base 0x7fff names a slot beyond size 16/.test(daemon.log()),
        'the refusal',
      );
      await h.send(ethFrame(MAC.a, '02:00:00:00:0e:0f', 62, 100));
      await a.waitReceived(start + 2);
    } finally {
      await h.close();
    }
  });

  it('a slow packed receiver gets every frame of a burst larger than its ring, in order', async () => {
    const before = await portStats(0);
    const start = b.received.length;
    const frames = Array.from({ length: 200 }, (_, i) => ethFrame(MAC.b, MAC.a, 1500, i));
    const sent = Promise.all(frames.map((f) => a.send(f)));
    await b.waitReceived(start + frames.length, 60_000);
    await sent;
    const got = b.received.slice(start).map((r) => r.frame);
    expect(got.every((f, i) => Buffer.from(frames[i]).equals(f))).toBe(true);
    // A's frames were held in its packed transmit ring (put back), not dropped.
    const after = await portStats(0);
    expect(after.txHolds).toBeGreaterThan(before.txHolds);
    expect(after.txStallDrops).toBe(before.txStallDrops);
    for (const p of [a, b]) expect(p.violations).toEqual([]);
  }, 90_000);
});
