/**
 * The `vhost-rt net` daemon driven by the project's own vhost-user front end
 * (real sockets, memfd guest RAM, eventfds): four ports of one switch, each a
 * {@link NetDriver}. Port D never posts a receive buffer.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ethFrame, macBytes, NET_HDR_BYTES, NetDriver } from '../frontend/net-driver.js';
import { type Daemon, daemonStats, startDaemon } from '../support/daemon.js';
import { waitFor } from '../support/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-net-'));
const sock = (p: string) => join(dir, `${p}.sock`);
const MAC = { a: '02:00:00:00:00:0a', b: '02:00:00:00:00:0b', c: '02:00:00:00:00:0c' };
const BROADCAST = 'ff:ff:ff:ff:ff:ff';
const AGEING_MS = 1500;
const MAX_FRAME = 1518;

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

/**
 * Proves that nothing more reached `port` than it had received before: sends
 * `sentinel` from `from` to it, waits for the sentinel, and returns what came
 * in since `start` (the sentinel last). Anything a frame sent earlier would have
 * delivered to `port` was committed to its rings before the sentinel was sent.
 */
async function upToSentinel(from: NetDriver, port: NetDriver, start: number, sentinel: Uint8Array) {
  await from.send(sentinel);
  await waitFor(
    () => port.received.slice(start).some((f) => Buffer.from(sentinel).equals(f.frame)),
    'the sentinel frame',
  );
  return port.received.slice(start);
}

/** Sends `frames` from `from` in batches, waiting until `to` has received them all. */
async function pump(from: NetDriver, to: NetDriver, frames: Uint8Array[], batch = 16) {
  const start = to.received.length;
  for (let i = 0; i < frames.length; i += batch) {
    await Promise.all(frames.slice(i, i + batch).map((f) => from.send(f)));
    await to.waitReceived(start + Math.min(i + batch, frames.length));
  }
  return to.received.slice(start, start + frames.length);
}

beforeAll(async () => {
  daemon = await startDaemon([
    'net',
    ...['a', 'b', 'c', 'd', 'e'].flatMap((p) => ['--socket-path', sock(p)]),
    '--ring-bytes',
    '65536',
    '--ageing-ms',
    String(AGEING_MS),
  ]);
  a = await NetDriver.create({ socketPath: sock('a') });
  b = await NetDriver.create({ socketPath: sock('b') });
  // C takes frames in small two-descriptor buffers: anything longer spans several (MRG_RXBUF).
  c = await NetDriver.create({ socketPath: sock('c'), rxBufferBytes: 256, rxSegments: 2 });
  d = await NetDriver.create({ socketPath: sock('d'), rxBuffers: 0 });
}, 120_000);

afterAll(async () => {
  for (const drv of [a, b, c, d]) await drv?.close().catch(() => undefined);
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('vhost-rt net switch', () => {
  it('floods a broadcast to every other port, never back to the sender', async () => {
    const frame = ethFrame(BROADCAST, MAC.b, 60);
    const [atA] = await pump(b, a, [frame]);
    const [atC] = await c.waitReceived(1);
    expect(atA.frame).toEqual(Buffer.from(frame));
    expect(atC.frame).toEqual(Buffer.from(frame));
    expect(atA.header.subarray(0, 10)).toEqual(new Uint8Array(10));
    // C learnt B from the broadcast: its unicast to B is the sentinel, and B got nothing before it.
    const atB = await upToSentinel(c, b, 0, ethFrame(MAC.b, MAC.c, 60, 0x51));
    expect(atB).toHaveLength(1);
  });

  it('learns addresses: a unicast reply goes to its port only', async () => {
    const cBefore = c.received.length;
    // A answers B (learnt from B's broadcast); B answers A, learnt from that reply.
    await pump(a, b, [ethFrame(MAC.b, MAC.a, 100, 1)]);
    await pump(b, a, [ethFrame(MAC.a, MAC.b, 100, 2)]);
    // B learnt C from the first test's sentinel: its unicast to C is the sentinel here.
    const atC = await upToSentinel(b, c, cBefore, ethFrame(MAC.c, MAC.b, 60, 0x52));
    expect(atC).toHaveLength(1);
  });

  it('carries every frame size from 60 bytes to the maximum, byte for byte', async () => {
    const frames: Uint8Array[] = [];
    for (let len = 60; len <= MAX_FRAME; len++) frames.push(ethFrame(MAC.b, MAC.a, len, len));
    const got = await pump(a, b, frames, 32);
    expect(got).toHaveLength(frames.length);
    for (let i = 0; i < frames.length; i++) {
      expect(got[i].buffers).toBe(1);
      expect(Buffer.compare(got[i].frame, Buffer.from(frames[i]))).toBe(0);
    }
  }, 60_000);

  it('spreads a frame over several receive buffers with num_buffers (MRG_RXBUF)', async () => {
    const frames = [60, 244, 245, 600, MAX_FRAME].map((len, i) => ethFrame(MAC.c, MAC.a, len, i));
    const got = await pump(a, c, frames, 1);
    for (let i = 0; i < frames.length; i++) {
      expect(Buffer.compare(got[i].frame, Buffer.from(frames[i]))).toBe(0);
      expect(got[i].buffers).toBe(Math.ceil((frames[i].length + NET_HDR_BYTES) / 256));
    }
    expect(c.violations).toEqual([]);
  });

  it('forgets an address after the ageing time and floods again', async () => {
    await pump(c, a, [ethFrame(MAC.a, MAC.c, 64, 9)]); // A learns C
    // Earlier tests flooded frames to B too: once a sentinel has followed them, B is settled.
    await upToSentinel(a, b, b.received.length, ethFrame(MAC.b, MAC.a, 64, 0x54));
    const bBefore = b.received.length;
    await pump(a, c, [ethFrame(MAC.c, MAC.a, 64, 10)]);
    // A's sentinel to B takes the ring a flooded copy of frame 10 would have taken.
    const atB = await upToSentinel(a, b, bBefore, ethFrame(MAC.b, MAC.a, 64, 0x53));
    expect(atB).toHaveLength(1); // known: C only
    // Not a synchronisation: letting the ageing time pass is what this test is about.
    await sleep(AGEING_MS + 200);
    await pump(a, c, [ethFrame(MAC.c, MAC.a, 64, 11)]);
    await b.waitReceived(bBefore + 2); // aged out: flooded to B too (after the sentinel)
  });

  it('drops malformed frames, counts them, and keeps forwarding', async () => {
    const before = (await portStats(0)).malformed ?? 0;
    const csum = new Uint8Array(NET_HDR_BYTES);
    csum[0] = 1; // NEEDS_CSUM, not negotiated
    await a.send(ethFrame(MAC.b, MAC.a, 100), csum);
    await a.send(new Uint8Array(5)); // shorter than an Ethernet header
    await a.send(ethFrame(MAC.b, MAC.a, MAX_FRAME + 1)); // larger than the maximum
    const gso = new Uint8Array(NET_HDR_BYTES);
    gso[1] = 1; // GSO_TCPV4, not negotiated
    await a.send(ethFrame(MAC.b, MAC.a, 100), gso, 3);
    const [ok] = await pump(a, b, [ethFrame(MAC.b, MAC.a, 61, 5)]);
    expect(ok.frame.length).toBe(61);
    expect((await portStats(0)).malformed).toBe(before + 4);
  });

  it('a port posting no receive buffers drops its own frames, counted; the others are unaffected', async () => {
    // Broadcasts reach D's ring too, which nobody drains into D's guest: it fills and drops.
    const frames = Array.from({ length: 200 }, (_, i) => ethFrame(BROADCAST, MAC.a, 1500, i));
    const got = await pump(a, b, frames, 8);
    expect(got).toHaveLength(200);
    const stats = await portStats(3);
    expect(stats.ringDrops).toBeGreaterThan(0);
    expect(stats.rxPackets).toBe(0);
    // Once D posts buffers it gets what its ring held (a full ring of frames, not more).
    d.postRxBuffers(64);
    await d.waitReceived(1);
    expect((await portStats(1)).ringDrops).toBe(0);
  }, 60_000);
});

describe('the control queue', () => {
  it('sets the receive mode and MAC table; the port then filters what it receives', async () => {
    const e = await NetDriver.create({ socketPath: sock('e'), ctrl: true });
    try {
      const OK = 0;
      expect(await e.command(0, 0, Uint8Array.of(0))).toBe(OK); // RX_PROMISC off
      expect(await e.command(0, 1, Uint8Array.of(0))).toBe(OK); // RX_ALLMULTI off
      const mine = macBytes('02:00:00:00:00:0e');
      const group = macBytes('01:00:5e:00:00:fb');
      const table = Uint8Array.from([1, 0, 0, 0, ...mine, 1, 0, 0, 0, ...group]);
      expect(await e.command(1, 0, table)).toBe(OK); // MAC_TABLE_SET
      expect(await e.command(1, 0, table.subarray(0, 9))).toBe(1); // truncated: ERR
      expect(await e.command(3, 0, new Uint8Array(0))).toBe(OK); // ANNOUNCE_ACK
      expect(await e.command(9, 0, new Uint8Array(0))).toBe(1); // unknown class
      const frames = [
        ethFrame('02:00:00:00:00:0e', MAC.a, 70, 1), // in the table
        ethFrame('02:00:00:00:00:99', MAC.a, 71, 2), // someone else's: filtered
        ethFrame('01:00:5e:00:00:fb', MAC.a, 72, 3), // listed multicast
        ethFrame('01:00:5e:00:00:01', MAC.a, 73, 4), // other multicast: filtered
        ethFrame(BROADCAST, MAC.a, 74, 5),
      ];
      for (const f of frames) await a.send(f);
      const got = await e.waitReceived(3);
      // A frame in the table, sent after the filtered ones on the same ring, is the sentinel.
      await upToSentinel(a, e, 0, ethFrame('02:00:00:00:00:0e', MAC.a, 76, 7));
      expect(e.received.map((f) => f.frame.length)).toEqual([70, 72, 74, 76]);
      expect(got).toHaveLength(3);
      expect((await portStats(4)).rxFiltered).toBe(2);
      expect(await e.command(0, 0, Uint8Array.of(1))).toBe(OK); // promiscuous again
      await a.send(ethFrame('02:00:00:00:00:99', MAC.a, 75, 6));
      expect((await e.waitReceived(5))[4].frame.length).toBe(75);
      expect(e.violations).toEqual([]);
    } finally {
      await e.close();
    }
  });
});

describe('vhost-rt net with several queue pairs', () => {
  it('offers MQ, answers GET_QUEUE_NUM, and forwards from every transmit queue', async () => {
    const mqDaemon = await startDaemon([
      'net',
      '--socket-path',
      sock('mq0'),
      '--socket-path',
      sock('mq1'),
      '--queues',
      '2',
    ]);
    const x = await NetDriver.create({ socketPath: sock('mq0'), pairs: 2 });
    const y = await NetDriver.create({ socketPath: sock('mq1'), pairs: 2 });
    try {
      expect(x.vmm.maxQueues).toBe(5); // two pairs and the control queue
      expect(x.vmm.hasFeature(22)).toBe(true); // VIRTIO_NET_F_MQ
      await x.send(ethFrame(BROADCAST, MAC.a, 80, 1), undefined, 1, 0);
      await x.send(ethFrame(MAC.b, MAC.a, 90, 2), undefined, 1, 1);
      const got = await y.waitReceived(2);
      expect(got.map((f) => f.frame.length).sort()).toEqual([80, 90]);
    } finally {
      await x.close();
      await y.close();
      await mqDaemon.stop();
    }
  });
});
