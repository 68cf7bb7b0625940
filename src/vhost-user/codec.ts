/**
 * The vhost-user message codec: pure functions from bytes to typed payloads
 * and back, no I/O, safe to feed any bytes (they throw only
 * {@link ProtocolError}). Every decoder checks the payload size exactly as
 * the spec's payload layouts define it (QEMU docs/interop/vhost-user.rst,
 * §"Payload"). All numbers are little-endian.
 *
 * u64 fields that hold addresses, sizes or offsets become JS numbers; one
 * above Number.MAX_SAFE_INTEGER cannot name real memory and is rejected.
 * Feature masks and other opaque u64 values stay bigint.
 */
import { VhostRtError } from '../errors.js';
import {
  CONFIG_HEADER_SIZE,
  HEADER_SIZE,
  HeaderFlag,
  MAX_CONFIG_SIZE,
  MAX_PAYLOAD,
  MEM_REGION_SIZE,
  VHOST_MEMORY_BASELINE_NREGIONS,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
} from './protocol.js';

/** Stable codes of {@link ProtocolError}. */
export type ProtocolErrorCode =
  | 'VHOST_USER_BAD_SIZE'
  | 'VHOST_USER_BAD_VALUE'
  | 'VHOST_USER_BAD_VERSION'
  | 'VHOST_USER_TOO_MANY_REGIONS';

/** A message or payload that breaks the vhost-user wire format. */
export class ProtocolError extends VhostRtError {
  declare readonly code: ProtocolErrorCode;

  constructor(code: ProtocolErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** The fixed 12-byte header of every message (§"Header"). */
export interface MessageHeader {
  request: number;
  flags: number;
  /** Bytes of payload that follow the header. */
  size: number;
}

/** One guest memory region (§"Memory regions description"). */
export interface MemRegionWire {
  guestPhysAddr: number;
  size: number;
  /** The front end's virtual address of the region; ring addresses are given in this space. */
  userAddr: number;
  /** Where the region starts inside the fd passed with it. */
  mmapOffset: number;
}

/** §"A vring state description": SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE. */
export interface VringState {
  index: number;
  num: number;
}

/** §"A vring address description": SET_VRING_ADDR. Addresses are front-end user addresses. */
export interface VringAddr {
  index: number;
  flags: number;
  descUserAddr: number;
  usedUserAddr: number;
  availUserAddr: number;
  logGuestAddr: number;
}

/** §"Virtio device config space": GET_CONFIG / SET_CONFIG. */
export interface ConfigPayload {
  offset: number;
  size: number;
  flags: number;
  /** Exactly `size` bytes of config space. */
  data: Uint8Array;
}

/** §"Inflight description": GET_INFLIGHT_FD / SET_INFLIGHT_FD. */
export interface InflightPayload {
  mmapSize: number;
  mmapOffset: number;
  numQueues: number;
  queueSize: number;
}

/** §"Log description": SET_LOG_BASE. */
export interface LogPayload {
  mmapSize: number;
  mmapOffset: number;
}

/** Bytes of each fixed-size payload layout. */
export const PayloadSize = {
  U64: 8,
  VRING_STATE: 8,
  VRING_ADDR: 40,
  MEM_REGION: 8 + MEM_REGION_SIZE,
  MEMORY_TABLE_HEADER: 8,
  INFLIGHT: 24,
  LOG: 16,
} as const;

const TWO_32 = 2 ** 32;
/** Largest high word of a u64 that still fits in Number.MAX_SAFE_INTEGER (2^53 - 1). */
const MAX_SAFE_HIGH = 0x1f_ffff;
const U64_MAX = (1n << 64n) - 1n;

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function badSize(what: string, actual: number, expected: string): ProtocolError {
  return new ProtocolError(
    'VHOST_USER_BAD_SIZE',
    `${what} payload is ${actual} bytes, expected ${expected}`,
  );
}

function expectSize(what: string, payload: Uint8Array, expected: number): DataView {
  if (payload.byteLength !== expected) throw badSize(what, payload.byteLength, `${expected}`);
  return view(payload);
}

/** Reads a u64 that must fit a JS number (an address, size or offset). */
function readSafeU64(dv: DataView, offset: number, field: string): number {
  const low = dv.getUint32(offset, true);
  const high = dv.getUint32(offset + 4, true);
  if (high > MAX_SAFE_HIGH) {
    const value = (BigInt(high) << 32n) | BigInt(low);
    throw new ProtocolError(
      'VHOST_USER_BAD_VALUE',
      `${field} is 0x${value.toString(16)}, above Number.MAX_SAFE_INTEGER`,
    );
  }
  return high * TWO_32 + low;
}

function checkUint(value: number, max: number, field: string): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new ProtocolError('VHOST_USER_BAD_VALUE', `${field} is ${value}, expected 0..${max}`);
  }
}

function writeSafeU64(dv: DataView, offset: number, value: number, field: string): void {
  checkUint(value, Number.MAX_SAFE_INTEGER, field);
  dv.setUint32(offset, value % TWO_32, true);
  dv.setUint32(offset + 4, Math.floor(value / TWO_32), true);
}

function writeU32(dv: DataView, offset: number, value: number, field: string): void {
  checkUint(value, 0xffff_ffff, field);
  dv.setUint32(offset, value, true);
}

// ── header ──────────────────────────────────────────────────────────────────

/**
 * Decodes the 12-byte header at the start of `bytes` (§"Header"). Throws when
 * fewer than 12 bytes are given, when the version bits are not 1, or when the
 * announced payload exceeds {@link MAX_PAYLOAD}.
 */
export function decodeHeader(bytes: Uint8Array): MessageHeader {
  if (bytes.byteLength < HEADER_SIZE) {
    throw new ProtocolError(
      'VHOST_USER_BAD_SIZE',
      `header is ${bytes.byteLength} bytes, expected ${HEADER_SIZE}`,
    );
  }
  const dv = view(bytes);
  const header = {
    request: dv.getUint32(0, true),
    flags: dv.getUint32(4, true),
    size: dv.getUint32(8, true),
  };
  const version = header.flags & HeaderFlag.VERSION_MASK;
  if (version !== HeaderFlag.VERSION) {
    throw new ProtocolError('VHOST_USER_BAD_VERSION', `header version is ${version}, expected 1`);
  }
  if (header.size > MAX_PAYLOAD) {
    throw new ProtocolError(
      'VHOST_USER_BAD_SIZE',
      `header announces a ${header.size}-byte payload, the maximum is ${MAX_PAYLOAD}`,
    );
  }
  return header;
}

/**
 * Builds one message: header followed by `payload`. The version bits of
 * `flags` are always set to 1; pass REPLY / NEED_REPLY as needed.
 */
export function encodeMessage(
  request: number,
  flags: number,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  if (payload.byteLength > MAX_PAYLOAD) {
    throw badSize('outgoing', payload.byteLength, `at most ${MAX_PAYLOAD}`);
  }
  const message = new Uint8Array(HEADER_SIZE + payload.byteLength);
  const dv = view(message);
  writeU32(dv, 0, request, 'request');
  checkUint(flags, 0xffff_ffff, 'flags');
  // `>>> 0` keeps the masked value unsigned when bit 31 is set.
  dv.setUint32(4, ((flags & ~HeaderFlag.VERSION_MASK) | HeaderFlag.VERSION) >>> 0, true);
  dv.setUint32(8, payload.byteLength, true);
  message.set(payload, HEADER_SIZE);
  return message;
}

// ── u64 ─────────────────────────────────────────────────────────────────────

/** §"A single 64-bit integer": features, protocol features, acks, counts. */
export function decodeU64(payload: Uint8Array): bigint {
  return expectSize('U64', payload, PayloadSize.U64).getBigUint64(0, true);
}

/** Encodes a u64 payload; `v` must lie in 0..2^64-1. */
export function encodeU64(v: bigint): Uint8Array {
  if (v < 0n || v > U64_MAX) {
    throw new ProtocolError('VHOST_USER_BAD_VALUE', `u64 value ${v} is out of range`);
  }
  const payload = new Uint8Array(PayloadSize.U64);
  view(payload).setBigUint64(0, v, true);
  return payload;
}

/**
 * The u64 of SET_VRING_KICK / CALL / ERR (§SET_VRING_KICK): bits 0-7 are
 * the vring index, bit 8 says no fd is attached. Other bits are reserved
 * and rejected.
 */
export function decodeVringFd(payload: Uint8Array): { index: number; noFd: boolean } {
  const dv = expectSize('VRING_FD', payload, PayloadSize.U64);
  const low = dv.getUint32(0, true);
  const high = dv.getUint32(4, true);
  if (high !== 0 || (low & ~(VRING_IDX_MASK | VRING_NOFD_MASK)) !== 0) {
    const value = (BigInt(high) << 32n) | BigInt(low);
    throw new ProtocolError(
      'VHOST_USER_BAD_VALUE',
      `VRING_FD u64 is 0x${value.toString(16)}, only bits 0-8 are defined`,
    );
  }
  return { index: low & VRING_IDX_MASK, noFd: (low & VRING_NOFD_MASK) !== 0 };
}

/** Encodes the u64 of SET_VRING_KICK / CALL / ERR. */
export function encodeVringFd(index: number, noFd: boolean): Uint8Array {
  checkUint(index, VRING_IDX_MASK, 'vring index');
  const payload = new Uint8Array(PayloadSize.U64);
  view(payload).setUint32(0, index | (noFd ? VRING_NOFD_MASK : 0), true);
  return payload;
}

// ── vring state / address ───────────────────────────────────────────────────

/** §"A vring state description": index u32, num u32. */
export function decodeVringState(payload: Uint8Array): VringState {
  const dv = expectSize('VRING_STATE', payload, PayloadSize.VRING_STATE);
  return { index: dv.getUint32(0, true), num: dv.getUint32(4, true) };
}

/** Encodes a vring state description. */
export function encodeVringState(s: VringState): Uint8Array {
  const payload = new Uint8Array(PayloadSize.VRING_STATE);
  const dv = view(payload);
  writeU32(dv, 0, s.index, 'VRING_STATE index');
  writeU32(dv, 4, s.num, 'VRING_STATE num');
  return payload;
}

/** §"A vring address description": index, flags, then desc, used, avail, log u64s. */
export function decodeVringAddr(payload: Uint8Array): VringAddr {
  const dv = expectSize('VRING_ADDR', payload, PayloadSize.VRING_ADDR);
  return {
    index: dv.getUint32(0, true),
    flags: dv.getUint32(4, true),
    descUserAddr: readSafeU64(dv, 8, 'VRING_ADDR descriptor'),
    usedUserAddr: readSafeU64(dv, 16, 'VRING_ADDR used'),
    availUserAddr: readSafeU64(dv, 24, 'VRING_ADDR available'),
    logGuestAddr: readSafeU64(dv, 32, 'VRING_ADDR log'),
  };
}

/** Encodes a vring address description. */
export function encodeVringAddr(a: VringAddr): Uint8Array {
  const payload = new Uint8Array(PayloadSize.VRING_ADDR);
  const dv = view(payload);
  writeU32(dv, 0, a.index, 'VRING_ADDR index');
  writeU32(dv, 4, a.flags, 'VRING_ADDR flags');
  writeSafeU64(dv, 8, a.descUserAddr, 'VRING_ADDR descriptor');
  writeSafeU64(dv, 16, a.usedUserAddr, 'VRING_ADDR used');
  writeSafeU64(dv, 24, a.availUserAddr, 'VRING_ADDR available');
  writeSafeU64(dv, 32, a.logGuestAddr, 'VRING_ADDR log');
  return payload;
}

// ── memory ──────────────────────────────────────────────────────────────────

function readRegion(dv: DataView, offset: number, what: string): MemRegionWire {
  return {
    guestPhysAddr: readSafeU64(dv, offset, `${what} guest address`),
    size: readSafeU64(dv, offset + 8, `${what} size`),
    userAddr: readSafeU64(dv, offset + 16, `${what} user address`),
    mmapOffset: readSafeU64(dv, offset + 24, `${what} mmap offset`),
  };
}

function writeRegion(dv: DataView, offset: number, r: MemRegionWire, what: string): void {
  writeSafeU64(dv, offset, r.guestPhysAddr, `${what} guest address`);
  writeSafeU64(dv, offset + 8, r.size, `${what} size`);
  writeSafeU64(dv, offset + 16, r.userAddr, `${what} user address`);
  writeSafeU64(dv, offset + 24, r.mmapOffset, `${what} mmap offset`);
}

function tooManyRegions(n: number): ProtocolError {
  return new ProtocolError(
    'VHOST_USER_TOO_MANY_REGIONS',
    `MEMORY_TABLE has ${n} regions, at most ${VHOST_MEMORY_BASELINE_NREGIONS} are allowed`,
  );
}

/**
 * §"Memory regions description" (SET_MEM_TABLE): nregions u32, padding u32,
 * then exactly nregions 32-byte regions, at most 8.
 */
export function decodeMemoryTable(payload: Uint8Array): MemRegionWire[] {
  const header = PayloadSize.MEMORY_TABLE_HEADER;
  if (payload.byteLength < header) {
    throw badSize('MEMORY_TABLE', payload.byteLength, `at least ${header}`);
  }
  const dv = view(payload);
  const n = dv.getUint32(0, true);
  if (n > VHOST_MEMORY_BASELINE_NREGIONS) throw tooManyRegions(n);
  const expected = header + n * MEM_REGION_SIZE;
  if (payload.byteLength !== expected) {
    throw badSize('MEMORY_TABLE', payload.byteLength, `${expected} for ${n} regions`);
  }
  const regions: MemRegionWire[] = [];
  for (let i = 0; i < n; i++) {
    regions.push(readRegion(dv, header + i * MEM_REGION_SIZE, `MEMORY_TABLE region ${i}`));
  }
  return regions;
}

/** Encodes a memory table; the fds travel separately, one per region, same order. */
export function encodeMemoryTable(regions: MemRegionWire[]): Uint8Array {
  if (regions.length > VHOST_MEMORY_BASELINE_NREGIONS) throw tooManyRegions(regions.length);
  const header = PayloadSize.MEMORY_TABLE_HEADER;
  const payload = new Uint8Array(header + regions.length * MEM_REGION_SIZE);
  const dv = view(payload);
  dv.setUint32(0, regions.length, true);
  regions.forEach((r, i) => {
    writeRegion(dv, header + i * MEM_REGION_SIZE, r, `MEMORY_TABLE region ${i}`);
  });
  return payload;
}

/** §"Single memory region description" (ADD_MEM_REG / REM_MEM_REG): u64 padding + region. */
export function decodeMemRegion(payload: Uint8Array): MemRegionWire {
  const dv = expectSize('MEM_REGION', payload, PayloadSize.MEM_REGION);
  return readRegion(dv, 8, 'MEM_REGION');
}

/** Encodes a single memory region description. */
export function encodeMemRegion(r: MemRegionWire): Uint8Array {
  const payload = new Uint8Array(PayloadSize.MEM_REGION);
  writeRegion(view(payload), 8, r, 'MEM_REGION');
  return payload;
}

// ── config space ────────────────────────────────────────────────────────────

/**
 * §"Virtio device config space": offset u32, size u32, flags u32, then
 * exactly `size` bytes; size at most {@link MAX_CONFIG_SIZE} and the access
 * inside the config space. (A back-end's zero-length GET_CONFIG reply means
 * failure and must be checked before decoding.)
 */
export function decodeConfig(payload: Uint8Array): ConfigPayload {
  if (payload.byteLength < CONFIG_HEADER_SIZE) {
    throw badSize('CONFIG', payload.byteLength, `at least ${CONFIG_HEADER_SIZE}`);
  }
  const dv = view(payload);
  const offset = dv.getUint32(0, true);
  const size = dv.getUint32(4, true);
  if (size > MAX_CONFIG_SIZE) {
    throw badSize('CONFIG', payload.byteLength, `a size field of at most ${MAX_CONFIG_SIZE}`);
  }
  if (payload.byteLength !== CONFIG_HEADER_SIZE + size) {
    throw badSize('CONFIG', payload.byteLength, `${CONFIG_HEADER_SIZE + size} for size ${size}`);
  }
  if (offset + size > MAX_CONFIG_SIZE) {
    throw new ProtocolError(
      'VHOST_USER_BAD_VALUE',
      `CONFIG offset ${offset} + size ${size} lies beyond the ${MAX_CONFIG_SIZE}-byte config space`,
    );
  }
  const flags = dv.getUint32(8, true);
  return { offset, size, flags, data: payload.slice(CONFIG_HEADER_SIZE) };
}

/** Encodes a config payload; `c.size` must equal `c.data.byteLength`. */
export function encodeConfig(c: ConfigPayload): Uint8Array {
  if (c.size !== c.data.byteLength || c.size > MAX_CONFIG_SIZE) {
    throw new ProtocolError(
      'VHOST_USER_BAD_SIZE',
      `CONFIG size ${c.size} with ${c.data.byteLength} data bytes, expected equal and <= ${MAX_CONFIG_SIZE}`,
    );
  }
  checkUint(c.offset, MAX_CONFIG_SIZE - c.size, 'CONFIG offset');
  const payload = new Uint8Array(CONFIG_HEADER_SIZE + c.size);
  const dv = view(payload);
  dv.setUint32(0, c.offset, true);
  dv.setUint32(4, c.size, true);
  writeU32(dv, 8, c.flags, 'CONFIG flags');
  payload.set(c.data, CONFIG_HEADER_SIZE);
  return payload;
}

// ── inflight, log ───────────────────────────────────────────────────────────

/**
 * §"Inflight description": mmap size u64, mmap offset u64, num queues u16,
 * queue size u16, padded to 24 bytes as QEMU's C struct is.
 */
export function decodeInflight(payload: Uint8Array): InflightPayload {
  const dv = expectSize('INFLIGHT', payload, PayloadSize.INFLIGHT);
  return {
    mmapSize: readSafeU64(dv, 0, 'INFLIGHT mmap size'),
    mmapOffset: readSafeU64(dv, 8, 'INFLIGHT mmap offset'),
    numQueues: dv.getUint16(16, true),
    queueSize: dv.getUint16(18, true),
  };
}

/** Encodes an inflight description. */
export function encodeInflight(i: InflightPayload): Uint8Array {
  const payload = new Uint8Array(PayloadSize.INFLIGHT);
  const dv = view(payload);
  writeSafeU64(dv, 0, i.mmapSize, 'INFLIGHT mmap size');
  writeSafeU64(dv, 8, i.mmapOffset, 'INFLIGHT mmap offset');
  checkUint(i.numQueues, 0xffff, 'INFLIGHT num queues');
  checkUint(i.queueSize, 0xffff, 'INFLIGHT queue size');
  dv.setUint16(16, i.numQueues, true);
  dv.setUint16(18, i.queueSize, true);
  return payload;
}

/** §"Log description" (SET_LOG_BASE): log size u64, log offset u64. */
export function decodeLog(payload: Uint8Array): LogPayload {
  const dv = expectSize('LOG', payload, PayloadSize.LOG);
  return {
    mmapSize: readSafeU64(dv, 0, 'LOG size'),
    mmapOffset: readSafeU64(dv, 8, 'LOG offset'),
  };
}

/** Encodes a log description. */
export function encodeLog(l: LogPayload): Uint8Array {
  const payload = new Uint8Array(PayloadSize.LOG);
  const dv = view(payload);
  writeSafeU64(dv, 0, l.mmapSize, 'LOG size');
  writeSafeU64(dv, 8, l.mmapOffset, 'LOG offset');
  return payload;
}
