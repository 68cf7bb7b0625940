/**
 * Software checksum completion and TCP segmentation (src/net/offload.ts)
 * against checksums computed here, independently: a plain RFC 1071 sum over
 * a pseudo-header built field by field, with the checksum field zeroed.
 */
import { describe, expect, it } from 'vitest';
import {
  checkTxHeader,
  completeChecksum,
  HeaderError,
  MAX_GSO_FRAME,
  Offload,
  TcpSegmenter,
  VNET_F_NEEDS_CSUM,
  VNET_GSO_TCPV4,
  VNET_GSO_TCPV6,
  VNET_GSO_UDP,
} from '../../src/net/offload.js';
import { PacketRing } from '../../src/net/packet-ring.js';

// --- an independent reference ------------------------------------------------

/** RFC 1071, the textbook way: 16-bit big-endian words, end-around carry at each step. */
function refSum(bytes: number[]): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 2) {
    sum += (bytes[i] << 8) + (i + 1 < bytes.length ? bytes[i + 1] : 0);
    sum = (sum & 0xffff) + (sum >> 16);
  }
  return sum;
}

function refChecksum(bytes: number[]): number {
  const c = ~refSum(bytes) & 0xffff;
  return c === 0 ? 0xffff : c;
}

/** The checksum a frame's TCP/UDP header must hold, from its fields (field itself zeroed). */
function refL4Checksum(
  f: Uint8Array,
  l3: number,
  l4: number,
  ipv6: boolean,
  field: number,
): number {
  const seg = [...f.subarray(l4)];
  seg[field] = 0;
  seg[field + 1] = 0;
  const proto = ipv6 ? f[l3 + 6] : f[l3 + 9];
  const len = f.length - l4;
  const pseudo = ipv6
    ? [...f.subarray(l3 + 8, l3 + 40), 0, 0, len >> 8, len & 0xff, 0, 0, 0, proto]
    : [...f.subarray(l3 + 12, l3 + 20), 0, proto, len >> 8, len & 0xff];
  return refChecksum([...pseudo, ...seg]);
}

function refIpChecksum(f: Uint8Array, l3: number): number {
  const h = [...f.subarray(l3, l3 + (f[l3] & 0xf) * 4)];
  h[10] = 0;
  h[11] = 0;
  return refChecksum(h);
}

const be16 = (b: Uint8Array, o: number) => (b[o] << 8) | b[o + 1];
const be32 = (b: Uint8Array, o: number) => ((b[o] << 24) | (b[o + 1] << 16) | be16(b, o + 2)) >>> 0;

/** A deterministic byte pattern. */
function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

interface FrameSpec {
  ipv6?: boolean;
  vlan?: boolean;
  udp?: boolean;
  payload: number;
  tcpOptions?: number;
  flags?: number;
  seq?: number;
}

/** Ethernet (+VLAN) + IPv4/IPv6 + TCP/UDP frame with a pattern payload; checksum fields 0. */
function buildFrame(s: FrameSpec): { frame: Uint8Array; l3: number; l4: number } {
  const l3 = s.vlan ? 18 : 14;
  const ipHdr = s.ipv6 ? 40 : 20;
  const l4 = l3 + ipHdr;
  const l4Hdr = s.udp ? 8 : 20 + (s.tcpOptions ?? 0);
  const f = new Uint8Array(l4 + l4Hdr + s.payload);
  f.set([2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa]);
  let o = 12;
  if (s.vlan) {
    f.set([0x81, 0x00, 0x00, 0x05], 12);
    o = 16;
  }
  f.set(s.ipv6 ? [0x86, 0xdd] : [0x08, 0x00], o);
  const proto = s.udp ? 17 : 6;
  const l4Len = l4Hdr + s.payload;
  if (s.ipv6) {
    f[l3] = 0x60;
    f[l3 + 4] = l4Len >> 8;
    f[l3 + 5] = l4Len & 0xff;
    f[l3 + 6] = proto;
    f[l3 + 7] = 64;
    f.set(pattern(32, 7), l3 + 8);
    f[l3 + 8] = 0xfe;
    f[l3 + 9] = 0x80;
  } else {
    f[l3] = 0x45;
    const tot = ipHdr + l4Len;
    f[l3 + 2] = tot >> 8;
    f[l3 + 3] = tot & 0xff;
    f[l3 + 4] = 0x12;
    f[l3 + 5] = 0x34;
    f[l3 + 6] = 0x40; // DF
    f[l3 + 8] = 64;
    f[l3 + 9] = proto;
    f.set([169, 254, 0, 1, 169, 254, 0, 2], l3 + 12);
    const ipc = refIpChecksum(f, l3);
    f[l3 + 10] = ipc >> 8;
    f[l3 + 11] = ipc & 0xff;
  }
  f.set([0x9c, 0x40, 0x13, 0x88], l4); // ports 40000 -> 5000
  if (s.udp) {
    f[l4 + 4] = l4Len >> 8;
    f[l4 + 5] = l4Len & 0xff;
  } else {
    const seq = s.seq ?? 0xfffff000; // wraps within a 64 KiB frame
    f.set([seq >>> 24, (seq >>> 16) & 0xff, (seq >>> 8) & 0xff, seq & 0xff], l4 + 4);
    f.set([0, 0, 0x10, 0], l4 + 8);
    f[l4 + 12] = ((20 + (s.tcpOptions ?? 0)) / 4) << 4;
    f[l4 + 13] = s.flags ?? 0x18; // ACK PSH
    f[l4 + 14] = 0xff;
    f[l4 + 15] = 0xff;
    for (let i = 0; i < (s.tcpOptions ?? 0); i++) f[l4 + 20 + i] = 1; // NOPs
  }
  f.set(pattern(s.payload, 99), l4 + l4Hdr);
  return { frame: f, l3, l4 };
}

/** Seeds the L4 checksum field with the folded pseudo-header sum, as a Linux sender leaves it (NEEDS_CSUM). */
function seedPartial(f: Uint8Array, l3: number, l4: number, ipv6: boolean, field: number): void {
  const proto = ipv6 ? f[l3 + 6] : f[l3 + 9];
  const len = f.length - l4;
  const pseudo = ipv6
    ? [...f.subarray(l3 + 8, l3 + 40), 0, 0, len >> 8, len & 0xff, 0, 0, 0, proto]
    : [...f.subarray(l3 + 12, l3 + 20), 0, proto, len >> 8, len & 0xff];
  const seed = refSum(pseudo);
  f[l4 + field] = seed >> 8;
  f[l4 + field + 1] = seed & 0xff;
}

function vnetHeader(
  flags: number,
  gso: number,
  gsoSize: number,
  csumStart: number,
  csumOffset: number,
) {
  const h = new Uint8Array(12);
  const v = new DataView(h.buffer);
  h[0] = flags;
  h[1] = gso;
  v.setUint16(4, gsoSize, true);
  v.setUint16(6, csumStart, true);
  v.setUint16(8, csumOffset, true);
  return h;
}

// --- tests ------------------------------------------------------------------

describe('completeChecksum', () => {
  for (const spec of [
    { name: 'TCP/IPv4, 1 byte', payload: 1 },
    { name: 'TCP/IPv4, 1448 bytes', payload: 1448 },
    { name: 'TCP/IPv4 with VLAN, odd', payload: 1001, vlan: true },
    { name: 'TCP/IPv6, 1440 bytes', payload: 1440, ipv6: true },
    { name: 'UDP/IPv4, 333 bytes', payload: 333, udp: true },
    { name: 'UDP/IPv6, 0 bytes', payload: 0, udp: true, ipv6: true },
  ]) {
    it(`${spec.name}: the completed checksum is the reference's`, () => {
      const { frame, l3, l4 } = buildFrame(spec);
      const field = spec.udp ? 6 : 16;
      const want = refL4Checksum(frame, l3, l4, spec.ipv6 === true, field);
      seedPartial(frame, l3, l4, spec.ipv6 === true, field);
      // In a bigger buffer at an offset, as in a ring.
      const buf = new Uint8Array(frame.length + 40);
      buf.set(frame, 20);
      expect(completeChecksum(buf, 20, frame.length, l4, field)).toBe(true);
      expect(be16(buf, 20 + l4 + field)).toBe(want);
      // Nothing else changed.
      const after = buf.slice(20, 20 + frame.length);
      after[l4 + field] = frame[l4 + field];
      after[l4 + field + 1] = frame[l4 + field + 1];
      expect(Buffer.from(after).equals(Buffer.from(frame))).toBe(true);
    });
  }

  it('refuses offsets outside the frame and writes nothing', () => {
    const { frame, l4 } = buildFrame({ payload: 10 });
    const copy = frame.slice();
    expect(completeChecksum(frame, 0, frame.length, l4, frame.length - l4 - 1)).toBe(false);
    expect(completeChecksum(frame, 0, frame.length, 0xffff, 0xffff)).toBe(false);
    expect(Buffer.from(frame).equals(Buffer.from(copy))).toBe(true);
  });
});

describe('TcpSegmenter', () => {
  /** Segments `frame` (copying each segment out before the next, as the device does). */
  function segment(frame: Uint8Array, hdr: Uint8Array): Uint8Array[] {
    const buf = new Uint8Array(frame.length + 64);
    buf.set(frame, 32);
    const seg = new TcpSegmenter();
    const n = seg.begin(buf, 3, 32, frame.length, hdr, 0);
    expect(n).toBeGreaterThan(0);
    const out: Uint8Array[] = [];
    for (let k = 0; k < n; k++) {
      const at = seg.writeSegment(buf, 32, k);
      out.push(buf.slice(at, at + seg.segmentLength(k)));
    }
    return out;
  }

  for (const spec of [
    { name: 'IPv4, 64 KiB, mss 1448', payload: 65535 - 40, mss: 1448 },
    {
      name: 'IPv4 with VLAN and TCP options, mss 1000, FIN',
      payload: 9000,
      mss: 1000,
      vlan: true,
      tcpOptions: 12,
      flags: 0x99,
    },
    { name: 'IPv6, 60000 bytes, mss 1440', payload: 60000, mss: 1440, ipv6: true },
    { name: 'IPv4, shorter than one mss', payload: 700, mss: 1448 },
    { name: 'IPv4, mss smaller than the headers', payload: 500, mss: 24 },
  ]) {
    it(`${spec.name}: every segment is a correct TCP frame`, () => {
      const ipv6 = spec.ipv6 === true;
      const { frame, l3, l4 } = buildFrame(spec);
      seedPartial(frame, l3, l4, ipv6, 16);
      const headers = l4 + 20 + (spec.tcpOptions ?? 0);
      const hdr = vnetHeader(
        VNET_F_NEEDS_CSUM,
        ipv6 ? VNET_GSO_TCPV6 : VNET_GSO_TCPV4,
        spec.mss,
        l4,
        16,
      );
      const segs = segment(frame, hdr);
      const payload = frame.subarray(headers);
      expect(segs.length).toBe(Math.max(1, Math.ceil(payload.length / spec.mss)));
      const joined: number[] = [];
      segs.forEach((s, k) => {
        const data = s.subarray(headers);
        expect(data.length).toBe(Math.min(spec.mss, payload.length - k * spec.mss));
        joined.push(...data);
        // Addresses, ports and everything in front of the IP header unchanged.
        expect(Buffer.from(s.subarray(0, l3)).equals(Buffer.from(frame.subarray(0, l3)))).toBe(
          true,
        );
        if (ipv6) expect(be16(s, l3 + 4)).toBe(s.length - l4);
        else {
          expect(be16(s, l3 + 2)).toBe(s.length - l3);
          expect(be16(s, l3 + 4)).toBe((0x1234 + k) & 0xffff);
          expect(be16(s, l3 + 10)).toBe(refIpChecksum(s, l3));
        }
        expect(be32(s, l4 + 4)).toBe((be32(frame, l4 + 4) + k * spec.mss) >>> 0);
        const flags = frame[l4 + 13];
        const last = k === segs.length - 1;
        let want = flags;
        if (!last) want &= ~0x09;
        if (k > 0) want &= ~0x80;
        expect(s[l4 + 13]).toBe(want);
        expect(be16(s, l4 + 16)).toBe(refL4Checksum(s, l3, l4, ipv6, 16));
      });
      expect(Buffer.from(joined).equals(Buffer.from(payload))).toBe(true);
    });
  }

  it('refuses frames that are not what the header says', () => {
    const seg = new TcpSegmenter();
    const v4 = buildFrame({ payload: 3000 });
    const v6 = buildFrame({ payload: 3000, ipv6: true });
    const udp = buildFrame({ payload: 3000, udp: true });
    const cases: [Uint8Array, Uint8Array][] = [
      [v4.frame, vnetHeader(1, VNET_GSO_TCPV6, 1448, v4.l4, 16)], // IPv4 frame, TCPV6 asked
      [v6.frame, vnetHeader(1, VNET_GSO_TCPV4, 1448, v6.l4, 16)],
      [v4.frame, vnetHeader(1, VNET_GSO_TCPV4, 1448, v4.l4 + 4, 16)], // csum_start not at TCP
      [v4.frame, vnetHeader(1, VNET_GSO_TCPV4, 0, v4.l4, 16)], // mss 0
      [udp.frame, vnetHeader(1, VNET_GSO_TCPV4, 1448, udp.l4, 6)], // UDP
      [v4.frame.subarray(0, 40), vnetHeader(1, VNET_GSO_TCPV4, 1448, v4.l4, 16)], // truncated
      [v4.frame, vnetHeader(1, VNET_GSO_UDP, 1448, v4.l4, 16)],
    ];
    for (const [f, h] of cases) {
      const copy = f.slice();
      expect(seg.begin(f, 0, 0, f.length, h, 0)).toBe(-1);
      expect(Buffer.from(f).equals(Buffer.from(copy))).toBe(true);
    }
    // A TCP data offset pointing past the frame.
    const bad = buildFrame({ payload: 0 });
    bad.frame[bad.l4 + 12] = 0xf0;
    expect(
      seg.begin(bad.frame, 0, 0, bad.frame.length, vnetHeader(1, 1, 1448, bad.l4, 16), 0),
    ).toBe(-1);
  });
});

describe('checkTxHeader', () => {
  const all = Offload.CSUM | Offload.TSO4 | Offload.TSO6;
  it('accepts what was negotiated', () => {
    expect(checkTxHeader(vnetHeader(0, 0, 0, 0, 0), 0, 60, 0, 1518)).toBe(HeaderError.OK);
    expect(checkTxHeader(vnetHeader(1, 0, 0, 34, 16), 0, 60, Offload.CSUM, 1518)).toBe(
      HeaderError.OK,
    );
    expect(checkTxHeader(vnetHeader(1, 1, 1448, 34, 16), 0, 65000, all, 1518)).toBe(HeaderError.OK);
    expect(checkTxHeader(vnetHeader(1, 4, 1440, 54, 16), 0, 65000, all, 1518)).toBe(HeaderError.OK);
  });
  it('refuses what was not, and offsets outside the frame', () => {
    const cases: [Uint8Array, number, number, number][] = [
      [vnetHeader(1, 0, 0, 34, 16), 60, 0, HeaderError.CSUM_NOT_NEGOTIATED],
      [vnetHeader(2, 0, 0, 0, 0), 60, all, HeaderError.FLAGS],
      [vnetHeader(1, 0, 0, 50, 16), 60, all, HeaderError.CSUM_RANGE],
      [vnetHeader(1, 0, 0, 0xffff, 0xffff), 60, all, HeaderError.CSUM_RANGE],
      [vnetHeader(1, 1, 1448, 34, 16), 9000, Offload.CSUM, HeaderError.GSO_NOT_NEGOTIATED],
      [
        vnetHeader(1, 4, 1448, 54, 16),
        9000,
        Offload.CSUM | Offload.TSO4,
        HeaderError.GSO_NOT_NEGOTIATED,
      ],
      [vnetHeader(1, 3, 1448, 34, 6), 9000, all, HeaderError.GSO_TYPE],
      [vnetHeader(1, 0x81, 1448, 34, 16), 9000, all, HeaderError.GSO_TYPE],
      [vnetHeader(0, 1, 1448, 34, 16), 9000, all, HeaderError.GSO_FIELDS],
      [vnetHeader(1, 1, 0, 34, 16), 9000, all, HeaderError.GSO_FIELDS],
      [vnetHeader(1, 1, 1, 34, 16), 9000, all, HeaderError.GSO_FIELDS],
      [vnetHeader(1, 1, 47, 34, 16), 9000, all, HeaderError.GSO_FIELDS],
      [vnetHeader(1, 1, 48, 34, 16), 9000, all, HeaderError.OK],
      [vnetHeader(1, 0, 0, 34, 16), 9000, all, HeaderError.TOO_LONG],
    ];
    for (const [h, len, allowed, code] of cases)
      expect(checkTxHeader(h, 0, len, allowed, 1518)).toBe(code);
  });
});

describe('PacketRing records with a virtio_net_hdr', () => {
  it('carries the header in front of the frame only for the frames that have one', () => {
    const ring = PacketRing.create(1 << 20);
    const bare = ring.reserve(60);
    ring.data.fill(1, bare, bare + 60);
    ring.commit(60);
    const big = MAX_GSO_FRAME;
    const at = ring.reserve(12 + big);
    expect(at).toBeGreaterThanOrEqual(0);
    ring.data.fill(7, at, at + 12);
    ring.data.fill(9, at + 12, at + 12 + big);
    ring.commitDeferred(big, true);
    ring.publish();
    expect(ring.peek()).toBe(60);
    expect(ring.headerOffset).toBe(-1);
    expect(ring.data[ring.frameOffset]).toBe(1);
    ring.release();
    expect(ring.peek()).toBe(big);
    expect(ring.headerOffset).toBeGreaterThanOrEqual(0);
    expect(ring.frameOffset).toBe(ring.headerOffset + 12);
    expect(ring.data[ring.headerOffset]).toBe(7);
    expect(ring.data[ring.frameOffset + big - 1]).toBe(9);
    ring.release();
    expect(ring.peek()).toBe(-1);
    expect(ring.fill).toBe(0);
  });
});

describe('hostile frames and headers (randomised)', () => {
  /** xorshift32: deterministic, so a failure reproduces. */
  function rng(seed: number) {
    let x = seed >>> 0 || 1;
    return (n: number) => {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      return x % n;
    };
  }

  it('never writes outside the frame, never throws, and keeps the rest of the buffer', () => {
    const rand = rng(0x13);
    const seg = new TcpSegmenter();
    const PAD = 256;
    let segmented = 0;
    let refused = 0;
    for (let n = 0; n < 3000; n++) {
      // Mostly well-formed TCP frames with some fields broken, sometimes pure noise.
      const base =
        rand(4) === 0
          ? { frame: pattern(rand(3000), n), l4: rand(80) }
          : buildFrame({ payload: rand(9000), ipv6: rand(2) === 1, vlan: rand(4) === 0 });
      const f = base.frame;
      for (let k = rand(4); k > 0 && f.length > 0; k--) f[rand(f.length)] = rand(256);
      const length = rand(8) === 0 ? rand(f.length + 1) : f.length;
      const hdr = vnetHeader(
        rand(3),
        [0, 1, 3, 4, 0x81, rand(256)][rand(6)],
        [0, 1, 7, 536, 1448, 65535, rand(70000)][rand(7)],
        [base.l4, base.l4 + 1, rand(70000), length][rand(4)],
        [16, 6, rand(70000)][rand(3)],
      );
      const buf = new Uint8Array(PAD + f.length + PAD).fill(0xa5);
      buf.set(f.subarray(0, length), PAD);
      if (rand(2) === 0) {
        completeChecksum(buf, PAD, length, hdr[6] | (hdr[7] << 8), hdr[8] | (hdr[9] << 8));
      } else {
        const count = seg.begin(buf, 0, PAD, length, hdr, 0);
        if (count < 0) refused++;
        else {
          segmented++;
          expect(count).toBeGreaterThan(0);
          for (let k = 0; k < count; k++) {
            const at = seg.writeSegment(buf, PAD, k);
            if (at < PAD || at + seg.segmentLength(k) > PAD + length)
              expect.fail(`case ${n}: segment ${k} outside the frame`);
          }
        }
      }
      let outside = 0;
      for (let i = 0; i < PAD; i++)
        if (buf[i] !== 0xa5 || buf[PAD + length + i] !== 0xa5) outside++;
      expect(outside, `case ${n}: bytes written outside the frame`).toBe(0);
    }
    // Both outcomes happened: the cases reached the segmentation code and its refusals.
    expect(segmented).toBeGreaterThan(20);
    expect(refused).toBeGreaterThan(500);
  });
});
