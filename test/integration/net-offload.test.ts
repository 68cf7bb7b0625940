/**
 * Checksum and segmentation offloads through the `vhost-rt net` daemon,
 * driven by the project's own front end (real sockets, memfd guest RAM):
 * A and B take every offload, C none, D only GUEST_CSUM (no TSO either way).
 * A frame to an unknown address is flooded, so one frame from A shows at
 * once what each kind of receiver gets: the header passed through (B), the
 * checksum completed / the frame segmented in software (C, D).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ethFrame,
  macBytes,
  NET_DRIVER_FEATURES,
  NET_HDR_BYTES,
  NetDriver,
} from '../frontend/net-driver.js';
import {
  bytePattern,
  GSO_TCPV4,
  GSO_TCPV6,
  NEEDS_CSUM,
  NET_OFFLOAD_FEATURES,
  NetOffloadFeature,
  tcpChecksumsValid,
  tcpFrame,
  vnetHeader,
} from '../frontend/net-packets.js';
import { bitsOf } from '../frontend/vmm.js';
import { type Daemon, daemonStats, startDaemon } from '../support/daemon.js';
import { waitFor } from '../support/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-net-offload-'));
const sock = (p: string) => join(dir, `${p}.sock`);
const MAC = {
  a: macBytes('02:00:00:00:01:0a'),
  unknown: macBytes('02:00:00:00:01:ff'),
};
const MTU_FRAME = 1514;

let daemon: Daemon;
let a: NetDriver;
let b: NetDriver;
let c: NetDriver;
let d: NetDriver;
/** No offloads and only four receive buffers posted at a time: segments arrive over many batches. */
let e: NetDriver;
/** Every offload, but a 16-entry ring of 1530-byte buffers: a 64 KiB frame can never fit whole. */
let f: NetDriver;
/** No offloads, a 2-entry ring of 256-byte buffers: an MTU-sized frame can never fit. */
let g: NetDriver;

async function portStats(port: number): Promise<Record<string, number>> {
  const line = await daemonStats(daemon);
  const part = line.split(' | ').find((p) => p.includes(`[${port}] `)) ?? '';
  return Object.fromEntries([...part.matchAll(/(\w+)=(\d+)/g)].map((m) => [m[1], Number(m[2])]));
}

/** Frames `drv` received since `start`, up to and including a frame equal to `sentinel`. */
async function upTo(drv: NetDriver, start: number, sentinel: Uint8Array) {
  await waitFor(
    () => drv.received.slice(start).some((f) => Buffer.from(sentinel).equals(f.frame)),
    'the sentinel frame',
  );
  const got = drv.received.slice(start);
  return got.slice(
    0,
    got.findIndex((f) => Buffer.from(sentinel).equals(f.frame)),
  );
}

/** Sends `frame` behind `header` from A, then a sentinel; returns what B, C, D received in between. */
async function floodFromA(frame: Uint8Array, header: Uint8Array) {
  const starts = [b, c, d].map((x) => x.received.length);
  expect(await a.send(frame, header)).toBe(0);
  const sentinel = ethFrame('ff:ff:ff:ff:ff:ff', '02:00:00:00:01:0a', 60, starts[0] + 17);
  await a.send(sentinel);
  return Promise.all([b, c, d].map((x, i) => upTo(x, starts[i], sentinel)));
}

const le16 = (h: Uint8Array, o: number) => h[o] | (h[o + 1] << 8);

beforeAll(async () => {
  daemon = await startDaemon(
    ['net', ...['a', 'b', 'c', 'd', 'e', 'f', 'g'].flatMap((p) => ['--socket-path', sock(p)])],
    30_000,
  );
  const all = NET_DRIVER_FEATURES | NET_OFFLOAD_FEATURES;
  a = await NetDriver.create({ socketPath: sock('a'), driverFeatures: all });
  b = await NetDriver.create({ socketPath: sock('b'), driverFeatures: all, rxBuffers: 128 });
  c = await NetDriver.create({ socketPath: sock('c'), rxBuffers: 128 });
  d = await NetDriver.create({
    socketPath: sock('d'),
    driverFeatures: NET_DRIVER_FEATURES | bitsOf([NetOffloadFeature.GUEST_CSUM]),
    rxBuffers: 128,
  });
  e = await NetDriver.create({ socketPath: sock('e'), rxBuffers: 4 });
  f = await NetDriver.create({
    socketPath: sock('f'),
    driverFeatures: all,
    queueSize: 16,
    rxBuffers: 16,
  });
  g = await NetDriver.create({
    socketPath: sock('g'),
    queueSize: 2,
    rxBuffers: 2,
    rxBufferBytes: 256,
  });
}, 120_000);

afterAll(async () => {
  for (const drv of [a, b, c, d, e, f, g]) await drv?.close().catch(() => undefined);
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('net offloads', () => {
  it('offers the offloads, and each port negotiates its own', () => {
    expect(a.vmm.features & NET_OFFLOAD_FEATURES).toBe(NET_OFFLOAD_FEATURES);
    expect(c.vmm.features & NET_OFFLOAD_FEATURES).toBe(0n);
    expect(d.vmm.features & NET_OFFLOAD_FEATURES).toBe(bitsOf([NetOffloadFeature.GUEST_CSUM]));
  });

  it('a partial checksum passes through to offload ports and is completed for the others', async () => {
    for (const ipv6 of [false, true]) {
      const t = tcpFrame({ dst: MAC.unknown, src: MAC.a, payload: bytePattern(999, 3), ipv6 });
      const hdr = vnetHeader(NEEDS_CSUM, 0, 0, t.l4, 16);
      const before = await portStats(2);
      const [toB, toC, toD] = await floodFromA(t.frame, hdr);
      // B took GUEST_CSUM: the very header and frame, checksum field still the seed.
      expect(toB).toHaveLength(1);
      expect(Buffer.from(toB[0].frame).equals(Buffer.from(t.frame))).toBe(true);
      expect([...toB[0].header.subarray(0, 10)]).toEqual([...hdr.subarray(0, 10)]);
      expect(tcpChecksumsValid(toB[0].frame, t.l3, t.l4, ipv6)).toBe(false);
      // D took GUEST_CSUM too.
      expect(toD[0].header[0]).toBe(NEEDS_CSUM);
      // C did not: a complete checksum, no request in the header, the rest unchanged.
      expect(toC).toHaveLength(1);
      const got = toC[0];
      expect([...got.header.subarray(0, 10)]).toEqual(new Array(10).fill(0));
      expect(tcpChecksumsValid(got.frame, t.l3, t.l4, ipv6)).toBe(true);
      const other = got.frame.slice();
      other.set(t.frame.subarray(t.l4 + 16, t.l4 + 18), t.l4 + 16);
      expect(Buffer.from(other).equals(Buffer.from(t.frame))).toBe(true);
      const after = await portStats(2);
      expect(after.rxChecksummed - before.rxChecksummed).toBe(1);
    }
  });

  it('a 64 KiB TCP frame passes through whole to a GUEST_TSO port and is segmented for the others', async () => {
    for (const ipv6 of [false, true]) {
      const payload = bytePattern(ipv6 ? 60_000 : 65_535 - 40, 11);
      const t = tcpFrame({
        dst: MAC.unknown,
        src: MAC.a,
        payload,
        ipv6,
        seq: 0xffff0000,
        flags: 0x19,
      });
      const mss = ipv6 ? 1440 : 1460;
      const hdr = vnetHeader(NEEDS_CSUM, ipv6 ? GSO_TCPV6 : GSO_TCPV4, mss, t.l4, 16, t.headers);
      const before = [await portStats(2), await portStats(3)];
      const [toB, toC, toD] = await floodFromA(t.frame, hdr);
      expect(toB).toHaveLength(1);
      expect(Buffer.from(toB[0].frame).equals(Buffer.from(t.frame))).toBe(true);
      expect(toB[0].header[1]).toBe(ipv6 ? GSO_TCPV6 : GSO_TCPV4);
      expect(le16(toB[0].header, 4)).toBe(mss);
      expect(toB[0].buffers).toBeGreaterThan(1);
      const segments = Math.ceil(payload.length / mss);
      for (const [i, segs] of [toC, toD].entries()) {
        expect(segs).toHaveLength(segments);
        const joined = Buffer.concat(segs.map((s) => s.frame.subarray(t.headers)));
        expect(joined.equals(Buffer.from(payload))).toBe(true);
        for (const [k, s] of segs.entries()) {
          expect(s.frame.length).toBeLessThanOrEqual(MTU_FRAME);
          expect([...s.header.subarray(0, 10)]).toEqual(new Array(10).fill(0));
          expect(tcpChecksumsValid(s.frame, t.l3, t.l4, ipv6)).toBe(true);
          const v = new DataView(s.frame.buffer, s.frame.byteOffset);
          expect(v.getUint32(t.l4 + 4)).toBe((0xffff0000 + k * mss) >>> 0);
          // FIN and PSH only on the last segment.
          expect(s.frame[t.l4 + 13]).toBe(k === segs.length - 1 ? 0x19 : 0x10);
          if (!ipv6) expect(v.getUint16(t.l3 + 4)).toBe((0x4242 + k) & 0xffff);
        }
        const after = await portStats(2 + i);
        expect(after.rxSegmented - before[i].rxSegmented).toBe(1);
        expect(after.rxSegments - before[i].rxSegments).toBe(segments);
      }
    }
  });

  it('segments for a receiver with four buffers posted: the frame continues where it stopped', async () => {
    const payload = bytePattern(65_535 - 40, 21);
    const t = tcpFrame({ dst: MAC.unknown, src: MAC.a, payload, seq: 5 });
    // E also got the frames flooded by the tests before: a sentinel says it has them all.
    const drained = ethFrame('ff:ff:ff:ff:ff:ff', '02:00:00:00:01:0a', 61, 3);
    await a.send(drained);
    await upTo(e, 0, drained);
    const start = e.received.length;
    await a.send(t.frame, vnetHeader(NEEDS_CSUM, GSO_TCPV4, 1460, t.l4, 16, t.headers));
    const segments = Math.ceil(payload.length / 1460);
    const got = await e.waitReceived(start + segments);
    const segs = got.slice(start);
    expect(
      Buffer.concat(segs.map((s) => s.frame.subarray(t.headers))).equals(Buffer.from(payload)),
    ).toBe(true);
    for (const [k, s] of segs.entries()) {
      expect(tcpChecksumsValid(s.frame, t.l3, t.l4, false)).toBe(true);
      expect(new DataView(s.frame.buffer, s.frame.byteOffset).getUint32(t.l4 + 4)).toBe(
        5 + k * 1460,
      );
    }
    expect(e.violations).toEqual([]);
  });

  it('a frame larger than all the buffers a receiver ring holds is segmented (GSO) or dropped, never waited for', async () => {
    // F took GUEST_TSO, so the 64 KiB frame would pass through whole, but its
    // 16 buffers hold ~24 KiB: it is cut into segments that fit instead.
    // G's two 256-byte buffers cannot hold an MTU-sized frame: dropped, counted.
    const drained = ethFrame('ff:ff:ff:ff:ff:ff', '02:00:00:00:01:0a', 61, 4);
    await a.send(drained);
    await upTo(f, 0, drained);
    await upTo(g, 0, drained);
    const fStart = f.received.length;
    const gStart = g.received.length;
    const gBefore = await portStats(6);
    const payload = bytePattern(65_535 - 40, 31);
    const t = tcpFrame({ dst: MAC.unknown, src: MAC.a, payload, seq: 9 });
    await a.send(t.frame, vnetHeader(NEEDS_CSUM, GSO_TCPV4, 1460, t.l4, 16, t.headers));
    const big = ethFrame('ff:ff:ff:ff:ff:ff', '02:00:00:00:01:0a', 1500, 5);
    await a.send(big);
    const sentinel = ethFrame('ff:ff:ff:ff:ff:ff', '02:00:00:00:01:0a', 60, 6);
    await a.send(sentinel);
    const segs = await upTo(f, fStart, sentinel);
    // F: the segments, then the 1514-byte broadcast, then the sentinel.
    const tcp = segs.slice(0, -1);
    expect(tcp).toHaveLength(Math.ceil(payload.length / 1460));
    expect(
      Buffer.concat(tcp.map((s) => s.frame.subarray(t.headers))).equals(Buffer.from(payload)),
    ).toBe(true);
    for (const s of tcp) expect(tcpChecksumsValid(s.frame, t.l3, t.l4, false)).toBe(true);
    expect(Buffer.from(segs[segs.length - 1].frame).equals(Buffer.from(big))).toBe(true);
    // G: neither the 64 KiB frame's segments fit nor the 1514-byte frame; the sentinel does.
    const toG = await upTo(g, gStart, sentinel);
    expect(toG.every((x) => x.frame.length + NET_HDR_BYTES <= 512)).toBe(true);
    await waitFor(
      async () => (await portStats(6)).rxDropsBadBuffers - gBefore.rxDropsBadBuffers >= 2,
      'G counts the frames it could never hold',
    );
    expect(f.violations).toEqual([]);
    expect(g.violations).toEqual([]);
  });

  it('drops hostile headers, counts them, and keeps forwarding', async () => {
    const t = tcpFrame({ dst: MAC.unknown, src: MAC.a, payload: bytePattern(3000, 5) });
    const small = tcpFrame({ dst: MAC.unknown, src: MAC.a, payload: bytePattern(100, 6) });
    const before = await Promise.all([0, 1, 2, 3].map(portStats));
    const starts = [b, c, d].map((x) => x.received.length);
    // C negotiated no CSUM, D no HOST_TSO4: each asks for what it did not take.
    expect(await c.send(small.frame, vnetHeader(NEEDS_CSUM, 0, 0, small.l4, 16))).toBe(0);
    expect(await d.send(t.frame, vnetHeader(NEEDS_CSUM, GSO_TCPV4, 1000, t.l4, 16))).toBe(0);
    // A took everything, but: csum_start/offset past the end; a long frame not to segment;
    // a device-only flag; an unknown gso_type; a gso_size below 48.
    const bad = [
      [small.frame, vnetHeader(NEEDS_CSUM, 0, 0, small.frame.length - 1, 16)],
      [small.frame, vnetHeader(NEEDS_CSUM, 0, 0, 0xffff, 0xffff)],
      [t.frame, vnetHeader(NEEDS_CSUM, 0, 0, t.l4, 16)],
      [small.frame, vnetHeader(2, 0, 0, 0, 0)],
      [t.frame, vnetHeader(NEEDS_CSUM, 3, 1000, t.l4, 6)],
      // gso_size 1: would have the switch cut the frame into ~3000 one-byte segments.
      [t.frame, vnetHeader(NEEDS_CSUM, GSO_TCPV4, 1, t.l4, 16)],
    ] as const;
    for (const [f, h] of bad) expect(await a.send(f, h)).toBe(0);
    // Passes A's checks (the header is consistent) but the frame is not TCP over
    // IPv4 as it says (IPv6 EtherType): B takes it as it is, C and D drop it.
    const liar = tcpFrame({
      dst: MAC.unknown,
      src: MAC.a,
      payload: bytePattern(3000, 7),
      ipv6: true,
    });
    await a.send(liar.frame, vnetHeader(NEEDS_CSUM, GSO_TCPV4, 1000, liar.l4, 16));
    const sentinel = ethFrame('ff:ff:ff:ff:ff:ff', '02:00:00:00:01:0a', 64, 99);
    await a.send(sentinel);
    const got = await Promise.all([b, c, d].map((x, i) => upTo(x, starts[i], sentinel)));
    expect(got[0]).toHaveLength(1); // the liar, passed through to a port that takes TCPV4
    expect(got[1]).toHaveLength(0);
    expect(got[2]).toHaveLength(0);
    const after = await Promise.all([0, 1, 2, 3].map(portStats));
    expect(after[0].malformed - before[0].malformed).toBe(bad.length);
    expect(after[2].malformed - before[2].malformed).toBe(1);
    expect(after[3].malformed - before[3].malformed).toBe(1);
    expect(after[2].rxDropsOffload - before[2].rxDropsOffload).toBe(1);
    expect(after[3].rxDropsOffload - before[3].rxDropsOffload).toBe(1);
    // Still forwarding, both ways.
    const ok = tcpFrame({
      dst: MAC.unknown,
      src: macBytes('02:00:00:00:01:0c'),
      payload: bytePattern(50, 8),
    });
    const start = a.received.length;
    await c.send(ok.frame);
    await a.waitReceived(start + 1);
    expect(Buffer.from(a.received[start].frame).equals(Buffer.from(ok.frame))).toBe(true);
    expect(a.received[start].header.subarray(0, NET_HDR_BYTES - 2).every((x) => x === 0)).toBe(
      true,
    );
  });
});
