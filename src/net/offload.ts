/**
 * Checksum and segmentation offloads of the switch (issue 13): what the
 * switch does to a frame that carries a virtio_net_hdr asking for work
 * (virtio 1.x §5.1.6.2) when its destination did not take that work on.
 *
 * Policy. A port's peer says which offloads it can take: a vhost-user port
 * through the features its driver negotiated (CSUM / HOST_TSO4 / HOST_TSO6:
 * it may send partial checksums and 64 KiB TCP frames; GUEST_CSUM /
 * GUEST_TSO4 / GUEST_TSO6: it may be sent them), the TAP through
 * TUNSETOFFLOAD. A frame keeps its header through the switch's rings
 * unchanged; the RECEIVING port decides, against its own peer's offloads:
 * - the peer takes what the header asks for: the header passes through, the
 *   switch computes nothing (the common case between two offload guests);
 * - a partial checksum (NEEDS_CSUM) for a peer without GUEST_CSUM: the
 *   switch completes it ({@link completeChecksum}) in the ring, in place;
 * - a TCP frame to segment (gso_type TCPV4/TCPV6) for a peer without the
 *   matching GUEST_TSO: the switch cuts it into gso_size segments
 *   ({@link TcpSegmenter}), each with its own IPv4 id / total length and
 *   header checksum (IPv6: payload length), TCP sequence number, flags and a
 *   full TCP checksum.
 * Deciding at the receiver means a frame flooded to several ports is worked
 * on only for those that need it, and the sender never looks past the header.
 *
 * In place: a frame in a packet ring belongs to its consumer from peek to
 * release (the producer reuses the space only after TAIL moves past it), and
 * a frame flooded to several ports has a copy in each port's ring, so the
 * consumer may rewrite it. Segment k's headers are written just in front of
 * its payload — over the tail of segment k-1, whose copy out was done first
 * — so every segment is one contiguous run the device's copy path takes as
 * it takes any frame, and nothing is allocated or staged per frame.
 *
 * Hostile input: the sender checks the header against what its peer
 * negotiated ({@link checkTxHeader}: drop + count, never crash), and the
 * receiver parses the frame before it trusts any offset in it: a frame whose
 * headers do not match what its vnet header says is dropped and counted.
 */

/** virtio_net_hdr.flags: the checksum from csum_start to the end is left to complete. */
export const VNET_F_NEEDS_CSUM = 1;
/** virtio_net_hdr.flags (device to driver only): the checksum was checked. */
export const VNET_F_DATA_VALID = 2;
/** virtio_net_hdr.gso_type: no segmentation. */
export const VNET_GSO_NONE = 0;
/** gso_type: TCP over IPv4 to segment. */
export const VNET_GSO_TCPV4 = 1;
/** gso_type: UDP to fragment (UFO; never offered). */
export const VNET_GSO_UDP = 3;
/** gso_type: TCP over IPv6 to segment. */
export const VNET_GSO_TCPV6 = 4;
/** gso_type bit: the TCP frame has ECN's CWR set (needs HOST_ECN, never offered). */
export const VNET_GSO_ECN = 0x80;

/** Offsets in virtio_net_hdr (little-endian fields). */
export const VNET_HDR = {
  FLAGS: 0,
  GSO_TYPE: 1,
  HDR_LEN: 2,
  GSO_SIZE: 4,
  CSUM_START: 6,
  CSUM_OFFSET: 8,
  NUM_BUFFERS: 10,
} as const;

/** What a port's peer can take or send, as bits (see {@link offloadsOf}). */
export const Offload = {
  /** Partial checksums (NEEDS_CSUM). */
  CSUM: 1,
  /** TCP over IPv4 frames to segment (gso_type TCPV4). */
  TSO4: 2,
  /** TCP over IPv6 frames to segment (gso_type TCPV6). */
  TSO6: 4,
} as const;

/** Every offload the switch knows. */
export const ALL_OFFLOADS = Offload.CSUM | Offload.TSO4 | Offload.TSO6;

/**
 * Largest frame that carries a segmentation request: an IP packet of at most
 * 65535 bytes behind an Ethernet header and one VLAN tag.
 */
export const MAX_GSO_FRAME = 65535 + 18;

/** Most bytes of Ethernet + IP + TCP headers a segmented frame may have (TCP and IPv4 options at most). */
export const MAX_SEGMENT_HEADERS = 14 + 4 + 60 + 60;

const ETH_P_IPV4 = 0x0800;
const ETH_P_IPV6 = 0x86dd;
const ETH_P_VLAN = 0x8100;
const IPPROTO_TCP = 6;
const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_CWR = 0x80;

function le16(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8);
}

function be16(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

function putBe16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}

/**
 * Why {@link checkTxHeader} refused a header; 0 is "acceptable". Stable
 * numbers, so the hot path returns a number and only a refusal builds text
 * ({@link describeHeaderError}).
 */
export const HeaderError = {
  OK: 0,
  /** flags other than NEEDS_CSUM (DATA_VALID, RSC_INFO: device-to-driver bits). */
  FLAGS: 1,
  /** NEEDS_CSUM without CSUM negotiated. */
  CSUM_NOT_NEGOTIATED: 2,
  /** csum_start + csum_offset + 2 past the frame's end. */
  CSUM_RANGE: 3,
  /** gso_type that is not TCPV4/TCPV6, or has the ECN bit. */
  GSO_TYPE: 4,
  /** TCPV4 / TCPV6 without HOST_TSO4 / HOST_TSO6 negotiated. */
  GSO_NOT_NEGOTIATED: 5,
  /** Segmentation asked without NEEDS_CSUM, or with gso_size below {@link MIN_GSO_SIZE}. */
  GSO_FIELDS: 6,
  /** A frame that is not to be segmented but is longer than the port's largest frame. */
  TOO_LONG: 7,
} as const;

/**
 * Smallest gso_size a sender may ask for: Linux's own floor for a TCP MSS
 * (net.ipv4.tcp_min_snd_mss defaults to 48). Smaller ones come from no real
 * stack; a hostile sender would use them to make the switch cut one 64 KiB
 * frame into tens of thousands of segments for a receiver without TSO.
 */
export const MIN_GSO_SIZE = 48;

const HEADER_ERROR_TEXT = [
  'acceptable',
  'flags other than NEEDS_CSUM',
  'NEEDS_CSUM without the CSUM feature',
  'csum_start/csum_offset outside the frame',
  'gso_type other than TCPV4/TCPV6 (or with ECN)',
  'segmentation offload that was not negotiated',
  'segmentation without NEEDS_CSUM or with gso_size below 48',
  'frame longer than the largest frame without segmentation',
];

/** The virtio_net_hdr at `hdr[o]` in words, for a warning. */
export function describeHeader(hdr: Uint8Array, o: number): string {
  return (
    `virtio_net_hdr (flags ${hdr[o]}, gso_type ${hdr[o + 1]}, gso_size ` +
    `${le16(hdr, o + VNET_HDR.GSO_SIZE)}, csum_start ${le16(hdr, o + VNET_HDR.CSUM_START)}, ` +
    `csum_offset ${le16(hdr, o + VNET_HDR.CSUM_OFFSET)})`
  );
}

/** Words for a {@link HeaderError} and the header it refers to (built only for a refusal). */
export function describeHeaderError(code: number, hdr: Uint8Array, o: number): string {
  return `${HEADER_ERROR_TEXT[code] ?? 'refused'}: ${describeHeader(hdr, o)}`;
}

/**
 * Checks the virtio_net_hdr at `hdr[o]` of a transmitted frame of `length`
 * bytes (after the header) against the offloads its sender may use
 * (`allowed`, {@link Offload} bits); `maxFrame` bounds a frame that is not to
 * be segmented. Returns a {@link HeaderError} (OK: forward it with its header).
 */
export function checkTxHeader(
  hdr: Uint8Array,
  o: number,
  length: number,
  allowed: number,
  maxFrame: number,
): number {
  const flags = hdr[o];
  const gso = hdr[o + 1];
  if ((flags & ~VNET_F_NEEDS_CSUM) !== 0) return HeaderError.FLAGS;
  if (flags !== 0) {
    if ((allowed & Offload.CSUM) === 0) return HeaderError.CSUM_NOT_NEGOTIATED;
    const end = le16(hdr, o + VNET_HDR.CSUM_START) + le16(hdr, o + VNET_HDR.CSUM_OFFSET) + 2;
    if (end > length) return HeaderError.CSUM_RANGE;
  }
  if (gso === VNET_GSO_NONE) return length > maxFrame ? HeaderError.TOO_LONG : HeaderError.OK;
  const need = gso === VNET_GSO_TCPV4 ? Offload.TSO4 : gso === VNET_GSO_TCPV6 ? Offload.TSO6 : -1;
  if (need < 0) return HeaderError.GSO_TYPE;
  if ((allowed & need) === 0) return HeaderError.GSO_NOT_NEGOTIATED;
  if (flags === 0 || le16(hdr, o + VNET_HDR.GSO_SIZE) < MIN_GSO_SIZE) return HeaderError.GSO_FIELDS;
  return HeaderError.OK;
}

/**
 * The 16-bit ones'-complement sum (RFC 1071) of `b[o, o + n)` as big-endian
 * words (an odd last byte padded with zero), added to `sum`; not folded.
 */
export function onesSum(b: Uint8Array, o: number, n: number, sum: number): number {
  let s = sum;
  const end = o + (n & ~1);
  // Words are summed in a double: 2^37 words of 0xffff before it loses a bit.
  for (let i = o; i < end; i += 2) s += (b[i] << 8) | b[i + 1];
  if ((n & 1) !== 0) s += b[o + n - 1] << 8;
  return s;
}

/** Folds a sum from {@link onesSum} to 16 bits and complements it: the checksum field's value. */
export function foldChecksum(sum: number): number {
  let s = sum;
  while (s > 0xffff) s = (s % 0x10000) + Math.floor(s / 0x10000);
  const c = ~s & 0xffff;
  // 0 and 0xffff are the same number in ones' complement; UDP reserves 0 for "none".
  return c === 0 ? 0xffff : c;
}

/**
 * Completes a partial checksum (NEEDS_CSUM) in the frame at `b[o, o + length)`:
 * sums from csum_start to the end (the field already holds the pseudo-header
 * sum the sender seeded) and stores the result at csum_start + csum_offset.
 * False when the offsets do not fit in the frame (nothing is written).
 */
export function completeChecksum(
  b: Uint8Array,
  o: number,
  length: number,
  csumStart: number,
  csumOffset: number,
): boolean {
  if (csumStart + csumOffset + 2 > length) return false;
  const at = o + csumStart + csumOffset;
  putBe16(b, at, foldChecksum(onesSum(b, o + csumStart, length - csumStart, 0)));
  return true;
}

/**
 * Cuts one TCP frame that asks for segmentation (gso_type TCPV4 / TCPV6)
 * into gso_size segments, in place (see the module comment). One per port,
 * reused for every frame: {@link begin} parses and keeps the original
 * headers, {@link writeSegment} writes segment k's headers in front of its
 * payload and returns where the segment starts. Segments must be written in
 * order and each copied out of the buffer before the next is written.
 */
export class TcpSegmenter {
  /** Segments of the frame begun last. */
  count = 0;
  /** Next segment to write (the caller advances it as segments are delivered). */
  next = 0;
  /** Ethernet + IP + TCP header bytes of every segment. */
  headerBytes = 0;
  /** Payload bytes per segment (gso_size); the last may be shorter. */
  mss = 0;
  /** The frame being segmented: buffer identity and offset (see {@link isCurrent}). */
  private frameView = -1;
  private frameOffset = -1;
  private payload = 0;
  private l3 = 0;
  private l4 = 0;
  private ipv6 = false;
  private seq = 0;
  private ipId = 0;
  private tcpFlags = 0;
  /** The frame's original headers: segment k's are made from these. */
  private readonly original = new Uint8Array(MAX_SEGMENT_HEADERS);

  /** True while frame (view, offset) is the one begun last and not finished. */
  isCurrent(view: number, offset: number): boolean {
    return this.frameView === view && this.frameOffset === offset && this.next < this.count;
  }

  /** Forgets the frame (it was delivered, dropped or released). */
  reset(): void {
    this.frameView = -1;
    this.frameOffset = -1;
    this.count = 0;
    this.next = 0;
  }

  /**
   * Parses the frame `b[o, o + length)` whose virtio_net_hdr is at `hdr[h]`
   * and prepares its segments; `view` names the buffer for {@link isCurrent}.
   * Returns the number of segments, or -1 when the frame is not the TCP
   * frame its header says (nothing is written then).
   */
  begin(
    b: Uint8Array,
    view: number,
    o: number,
    length: number,
    hdr: Uint8Array,
    h: number,
  ): number {
    this.reset();
    const gso = hdr[h + 1];
    const mss = le16(hdr, h + VNET_HDR.GSO_SIZE);
    if (mss === 0 || length < 14) return -1;
    let l3 = 14;
    let type = be16(b, o + 12);
    if (type === ETH_P_VLAN) {
      if (length < 18) return -1;
      type = be16(b, o + 16);
      l3 = 18;
    }
    let l4: number;
    if (type === ETH_P_IPV4 && gso === VNET_GSO_TCPV4) {
      if (length < l3 + 20 || b[o + l3] >> 4 !== 4) return -1;
      l4 = l3 + (b[o + l3] & 0xf) * 4;
      if (l4 < l3 + 20 || b[o + l3 + 9] !== IPPROTO_TCP) return -1;
      this.ipId = be16(b, o + l3 + 4);
      this.ipv6 = false;
    } else if (type === ETH_P_IPV6 && gso === VNET_GSO_TCPV6) {
      // No extension headers: Linux puts none in front of TCP it segments.
      if (length < l3 + 40 || b[o + l3] >> 4 !== 6 || b[o + l3 + 6] !== IPPROTO_TCP) return -1;
      l4 = l3 + 40;
      this.ipv6 = true;
    } else return -1;
    if (le16(hdr, h + VNET_HDR.CSUM_START) !== l4 || length < l4 + 20) return -1;
    const headers = l4 + (b[o + l4 + 12] >> 4) * 4;
    if (headers < l4 + 20 || headers > MAX_SEGMENT_HEADERS || headers > length) return -1;
    for (let i = 0; i < headers; i++) this.original[i] = b[o + i];
    this.l3 = l3;
    this.l4 = l4;
    this.headerBytes = headers;
    this.mss = mss;
    this.payload = length - headers;
    this.seq = (b[o + l4 + 4] * 0x1000000 + (b[o + l4 + 5] << 16) + be16(b, o + l4 + 6)) >>> 0;
    this.tcpFlags = b[o + l4 + 13];
    this.count = Math.max(1, Math.ceil(this.payload / mss));
    this.next = 0;
    this.frameView = view;
    this.frameOffset = o;
    return this.count;
  }

  /** Bytes of segment `k` (headers included). */
  segmentLength(k: number): number {
    return this.headerBytes + Math.min(this.mss, this.payload - k * this.mss);
  }

  /**
   * Writes segment `k`'s headers in front of its payload in the frame at
   * `b[o...]` (the one begun) and fills its lengths, sequence number, flags
   * and checksums. Returns the segment's offset in `b`; it is
   * {@link segmentLength}(k) bytes long.
   */
  writeSegment(b: Uint8Array, o: number, k: number): number {
    const at = o + k * this.mss;
    const headers = this.headerBytes;
    const data = Math.min(this.mss, this.payload - k * this.mss);
    const orig = this.original;
    for (let i = 0; i < headers; i++) b[at + i] = orig[i];
    const l3 = at + this.l3;
    const l4 = at + this.l4;
    const tcpLength = headers - this.l4 + data;
    if (this.ipv6) putBe16(b, l3 + 4, tcpLength);
    else {
      putBe16(b, l3 + 2, this.l4 - this.l3 + tcpLength);
      putBe16(b, l3 + 4, (this.ipId + k) & 0xffff);
      putBe16(b, l3 + 10, 0);
      putBe16(b, l3 + 10, foldChecksum(onesSum(b, l3, this.l4 - this.l3, 0)));
    }
    const seq = (this.seq + k * this.mss) >>> 0;
    b[l4 + 4] = seq >>> 24;
    b[l4 + 5] = (seq >>> 16) & 0xff;
    putBe16(b, l4 + 6, seq & 0xffff);
    let flags = this.tcpFlags;
    // FIN and PSH belong to the last segment, CWR to the first (as Linux's tcp_gso_segment).
    if (k < this.count - 1) flags &= ~(TCP_FIN | TCP_PSH);
    if (k > 0) flags &= ~TCP_CWR;
    b[l4 + 13] = flags;
    putBe16(b, l4 + 16, 0);
    // Pseudo-header: the addresses (IPv4 12..20, IPv6 8..40), protocol and TCP length.
    const pseudo = this.ipv6 ? onesSum(b, l3 + 8, 32, 0) : onesSum(b, l3 + 12, 8, 0);
    const sum = onesSum(b, l4, tcpLength, pseudo + IPPROTO_TCP + tcpLength);
    putBe16(b, l4 + 16, foldChecksum(sum));
    return at;
  }
}
