/**
 * What a test driver needs to speak virtio-net offloads (virtio 1.x §5.1.6.2)
 * the way a Linux guest does: the offload feature bits, TCP/IPv4 and
 * TCP/IPv6 frames with a partial checksum (the pseudo-header sum seeded in
 * the checksum field, NEEDS_CSUM), the virtio_net_hdr asking for a checksum
 * or segmentation, and an independent checksum reference to judge what the
 * switch delivers (a textbook RFC 1071 sum; nothing from src/).
 */
import { bitsOf } from './vmm.js';

/** Offload feature bits (§5.1.3). */
export const NetOffloadFeature = {
  CSUM: 0,
  GUEST_CSUM: 1,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
} as const;

/** Every offload a driver may take. */
export const NET_OFFLOAD_FEATURES = bitsOf(Object.values(NetOffloadFeature));

/** virtio_net_hdr.flags NEEDS_CSUM and the gso_type values. */
export const NEEDS_CSUM = 1;
export const GSO_TCPV4 = 1;
export const GSO_TCPV6 = 4;

/** A 12-byte virtio_net_hdr. */
export function vnetHeader(
  flags: number,
  gsoType: number,
  gsoSize: number,
  csumStart: number,
  csumOffset: number,
  hdrLen = 0,
): Uint8Array {
  const h = new Uint8Array(12);
  const v = new DataView(h.buffer);
  h[0] = flags;
  h[1] = gsoType;
  v.setUint16(2, hdrLen, true);
  v.setUint16(4, gsoSize, true);
  v.setUint16(6, csumStart, true);
  v.setUint16(8, csumOffset, true);
  return h;
}

/** RFC 1071 sum of 16-bit big-endian words, end-around carry at every step (not complemented). */
export function rfc1071Sum(bytes: ArrayLike<number>, start = 0, end = bytes.length): number {
  let sum = 0;
  for (let i = start; i < end; i += 2) {
    sum += (bytes[i] << 8) + (i + 1 < end ? bytes[i + 1] : 0);
    sum = (sum & 0xffff) + (sum >> 16);
  }
  return sum;
}

/** One TCP frame as a Linux sender builds it. */
export interface TcpFrame {
  frame: Uint8Array;
  /** Offset of the IP header, and of the TCP header (csum_start). */
  l3: number;
  l4: number;
  /** Ethernet + IP + TCP header bytes. */
  headers: number;
  ipv6: boolean;
}

/** Options of {@link tcpFrame}. */
export interface TcpFrameOptions {
  dst: Uint8Array;
  src: Uint8Array;
  payload: Uint8Array;
  ipv6?: boolean;
  seq?: number;
  /** TCP flags; default ACK|PSH. */
  flags?: number;
  /** IPv4 identification. */
  id?: number;
}

function pseudoHeaderSum(f: Uint8Array, l3: number, l4: number, ipv6: boolean): number {
  const len = f.length - l4;
  const pseudo = ipv6
    ? [...f.subarray(l3 + 8, l3 + 40), 0, 0, len >> 8, len & 0xff, 0, 0, 0, 6]
    : [...f.subarray(l3 + 12, l3 + 20), 0, 6, len >> 8, len & 0xff];
  return rfc1071Sum(pseudo);
}

/**
 * A TCP frame (link-local addresses) whose checksum field holds the folded
 * pseudo-header sum: what a sender leaves for the device to complete (NEEDS_CSUM).
 */
export function tcpFrame(o: TcpFrameOptions): TcpFrame {
  const ipv6 = o.ipv6 === true;
  const l3 = 14;
  const l4 = l3 + (ipv6 ? 40 : 20);
  const headers = l4 + 20;
  const f = new Uint8Array(headers + o.payload.length);
  f.set(o.dst, 0);
  f.set(o.src, 6);
  f.set(ipv6 ? [0x86, 0xdd] : [0x08, 0x00], 12);
  const l4Len = 20 + o.payload.length;
  const v = new DataView(f.buffer);
  if (ipv6) {
    f[l3] = 0x60;
    v.setUint16(l3 + 4, l4Len);
    f[l3 + 6] = 6;
    f[l3 + 7] = 64;
    f.set([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], l3 + 8);
    f.set([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], l3 + 24);
  } else {
    f[l3] = 0x45;
    v.setUint16(l3 + 2, 20 + l4Len);
    v.setUint16(l3 + 4, o.id ?? 0x4242);
    f[l3 + 6] = 0x40;
    f[l3 + 8] = 64;
    f[l3 + 9] = 6;
    f.set([169, 254, 7, 1, 169, 254, 7, 2], l3 + 12);
    v.setUint16(l3 + 10, ~rfc1071Sum(f, l3, l3 + 20) & 0xffff);
  }
  v.setUint16(l4, 40000);
  v.setUint16(l4 + 2, 5001);
  v.setUint32(l4 + 4, o.seq ?? 1000);
  v.setUint32(l4 + 8, 77);
  f[l4 + 12] = 5 << 4;
  f[l4 + 13] = o.flags ?? 0x18;
  v.setUint16(l4 + 14, 65535);
  f.set(o.payload, headers);
  v.setUint16(l4 + 16, pseudoHeaderSum(f, l3, l4, ipv6));
  return { frame: f, l3, l4, headers, ipv6 };
}

/** True when the frame's TCP checksum (and IPv4 header checksum) verify: each sum is 0xffff. */
export function tcpChecksumsValid(f: Uint8Array, l3: number, l4: number, ipv6: boolean): boolean {
  const pseudo = pseudoHeaderSum(f, l3, l4, ipv6);
  let sum = pseudo + rfc1071Sum(f, l4);
  sum = (sum & 0xffff) + (sum >> 16);
  const ipOk = ipv6 || rfc1071Sum(f, l3, l3 + (f[l3] & 0xf) * 4) === 0xffff;
  return sum === 0xffff && ipOk;
}

/** A deterministic byte pattern of `n` bytes. */
export function bytePattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}
