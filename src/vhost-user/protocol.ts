/**
 * Constants of the vhost-user protocol, named after the specification
 * (QEMU docs/interop/vhost-user.rst, "Message Specification" and
 * "Front-end message types"). Section names are given as § references.
 * All multi-byte numbers on the wire are little-endian: the spec says
 * "machine native byte order", and every host vhost-rt runs on is
 * little-endian.
 */

/**
 * Front-end request codes, §"Front-end message types". The same numbers
 * appear in the `request` field of the back-end's replies.
 */
export const Request = {
  NONE: 0,
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  /** Deprecated by the spec: back-ends should ignore it or disable all rings. */
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  /** Called SET_SLAVE_REQ_FD in QEMU 7.2's copy of the spec. */
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
} as const;

/** One of the {@link Request} codes. */
export type RequestCode = (typeof Request)[keyof typeof Request];

/**
 * Back-end request codes, sent by the back-end on the channel passed with
 * SET_BACKEND_REQ_FD (§"Back-end message types").
 */
export const BackendRequest = {
  NONE: 0,
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
} as const;

function invert(table: Record<string, number>): string[] {
  const names: string[] = [];
  for (const [name, code] of Object.entries(table)) names[code] = name;
  return names;
}

const requestNames = invert(Request);
const backendRequestNames = invert(BackendRequest);

/** Spec name of a front-end request for logs and errors: `'SET_VRING_KICK'`, or `'UNKNOWN(99)'`. */
export function requestName(request: number): string {
  return requestNames[request] ?? `UNKNOWN(${request})`;
}

/** Spec name of a back-end request: `'CONFIG_CHANGE_MSG'`, or `'UNKNOWN(99)'`. */
export function backendRequestName(request: number): string {
  return backendRequestNames[request] ?? `UNKNOWN(${request})`;
}

/**
 * Protocol feature bit numbers, §"Protocol features". Bits 5 and 10 are
 * SLAVE_REQ and SLAVE_SEND_FD in QEMU 7.2's copy of the spec.
 */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
} as const;

/**
 * Virtio feature bit (the legacy-reserved bit 30) by which a back-end says
 * it understands GET/SET_PROTOCOL_FEATURES, §"Communication".
 */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

/** Vhost feature bit: dirty-page logging is on (§"Migration"). */
export const VHOST_F_LOG_ALL = 26;

/** Bytes of the header: request u32, flags u32, size u32 (§"Header"). */
export const HEADER_SIZE = 12;

/** Bits of the header's `flags` field (§"Header"). */
export const HeaderFlag = {
  /** The only protocol version there is; lives in the low two bits. */
  VERSION: 0x1,
  VERSION_MASK: 0x3,
  /** Set on every message the back-end sends as a reply. */
  REPLY: 0x4,
  /** The sender wants a u64 ack, §"VHOST_USER_PROTOCOL_F_REPLY_ACK". */
  NEED_REPLY: 0x8,
} as const;

/**
 * Largest virtio device config space a GET_CONFIG / SET_CONFIG may carry.
 * QEMU caps it at 256 (VHOST_USER_MAX_CONFIG_SIZE); every device config in
 * virtio 1.x fits.
 */
export const MAX_CONFIG_SIZE = 256;

/** Bytes of the config payload's fixed part: offset, size, flags (§"Virtio device config space"). */
export const CONFIG_HEADER_SIZE = 12;

/**
 * Largest payload either side accepts. The largest payloads the spec defines
 * are CREATE_CRYPTO_SESSION (about 1.1 KiB in QEMU), the config space
 * (12 + 256) and the memory table (8 + 8 × 32). One page of config space
 * plus its header bounds all of them with room for growth, while keeping
 * what a hostile peer can make us buffer per message small; receive buffers
 * are sized HEADER_SIZE + MAX_PAYLOAD once.
 */
export const MAX_PAYLOAD = 4096 + CONFIG_HEADER_SIZE;

/** Regions a SET_MEM_TABLE may carry (§"Memory regions description"). */
export const VHOST_MEMORY_BASELINE_NREGIONS = 8;

/** Bytes of one memory region on the wire: gpa, size, user address, mmap offset. */
export const MEM_REGION_SIZE = 32;

/** In the u64 of SET_VRING_KICK/CALL/ERR: no fd is attached (poll instead). */
export const VRING_NOFD_MASK = 0x100;
/** In the u64 of SET_VRING_KICK/CALL/ERR: the vring index. */
export const VRING_IDX_MASK = 0xff;

/** In SET_VRING_ADDR's flags: log writes to the used ring (VHOST_VRING_F_LOG). */
export const VHOST_VRING_F_LOG = 0;

/** SET_CONFIG flags (§"Virtio device config space"). */
export const ConfigFlag = {
  /** A front-end write to a writable field. */
  WRITABLE: 0,
  /** Live migration: read-only fields may be set. */
  MIGRATION: 1,
} as const;

/**
 * The reply a request has of its own, apart from a REPLY_ACK ack: the spec's
 * "reply payload" of each request in §"Front-end message types", with the
 * list in §"Communication".
 */
export type OwnReply =
  /**
   * The reply carries the answer; a refusal sends an empty payload — the
   * convention §"VHOST_USER_GET_CONFIG" spells out, and one the front end's
   * size check turns into an error for every request of this kind.
   */
  | { kind: 'payload' }
  /** The reply is a u64 status, 0 for success; a refusal sends `failure`. */
  | { kind: 'status'; failure: bigint };

const PAYLOAD: OwnReply = { kind: 'payload' };
const STATUS: OwnReply = { kind: 'status', failure: 1n };

/**
 * Every request with a reply of its own. Not listed: SET_MEM_TABLE,
 * ADD_MEM_REG and REM_MEM_REG answer with the region bases only in postcopy
 * mode (after POSTCOPY_LISTEN), which needs PAGEFAULT, never offered here.
 */
const OWN_REPLIES: ReadonlyMap<number, OwnReply> = new Map<number, OwnReply>([
  [Request.GET_FEATURES, PAYLOAD],
  [Request.GET_PROTOCOL_FEATURES, PAYLOAD],
  [Request.GET_VRING_BASE, PAYLOAD],
  [Request.GET_QUEUE_NUM, PAYLOAD],
  [Request.GET_CONFIG, PAYLOAD],
  [Request.CREATE_CRYPTO_SESSION, PAYLOAD],
  // The reply is the userfaultfd with an empty payload; a refusal is the same without the fd.
  [Request.POSTCOPY_ADVISE, PAYLOAD],
  // Its own entry says "N/A", but §"Communication" lists it and QEMU reads
  // an inflight description (and the fd) back.
  [Request.GET_INFLIGHT_FD, PAYLOAD],
  [Request.GET_MAX_MEM_SLOTS, PAYLOAD],
  [Request.GET_STATUS, PAYLOAD],
  [Request.SET_LOG_BASE, STATUS],
  [Request.IOTLB_MSG, STATUS],
  [Request.POSTCOPY_END, STATUS],
  // A u64 and, on success, the dma-buf fd.
  [Request.GET_SHARED_OBJECT, STATUS],
  // Bits 0-7 are the error, bit 8 (VRING_NOFD_MASK) says no fd comes back.
  [Request.SET_DEVICE_STATE_FD, { kind: 'status', failure: 0x101n }],
  [Request.CHECK_DEVICE_STATE, STATUS],
]);

/** Requests whose own reply exists only once a protocol feature is negotiated. */
const REPLY_NEEDS_FEATURE: ReadonlyMap<number, number> = new Map<number, number>([
  [Request.SET_LOG_BASE, ProtocolFeature.LOG_SHMFD],
]);

/**
 * The reply `request` has of its own under the negotiated `protocolFeatures`,
 * or undefined when it has none (it may still be acked under NEED_REPLY).
 * GET_INFLIGHT_FD's and the other GET_ requests' replies do not depend on
 * negotiation: a front end that asks waits for the answer, so an unadvertised
 * one is answered too, with a refusal.
 */
export function ownReply(request: number, protocolFeatures: bigint): OwnReply | undefined {
  const feature = REPLY_NEEDS_FEATURE.get(request);
  if (feature !== undefined && (protocolFeatures & (1n << BigInt(feature))) === 0n)
    return undefined;
  return OWN_REPLIES.get(request);
}
