/**
 * Target `codec`: the vhost-user message codec (src/vhost-user/codec.ts).
 *
 * Byte cases: one message (header + payload) from a valid encoding of a
 * random request, mutated or spliced, or plain random bytes. The header and
 * every payload decoder see it; each must return or throw a ProtocolError
 * with a known code and a message. A payload that decodes must encode back
 * to the same bytes (reserved padding aside), so decoding loses nothing.
 *
 * Value cases: a structured value from fast-check (numbers at and past every
 * boundary, NaN, negative zero, huge bigints, oversized arrays) given to an
 * encoder, which must throw only ProtocolError (RangeError/TypeError are not
 * expected either: the encoders check their input) or produce bytes that
 * decode to the same value.
 */
import fc from 'fast-check';
import {
  decodeConfig,
  decodeHeader,
  decodeInflight,
  decodeLog,
  decodeMemoryTable,
  decodeMemRegion,
  decodeU64,
  decodeVringAddr,
  decodeVringFd,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeLog,
  encodeMemoryTable,
  encodeMemRegion,
  encodeMessage,
  encodeU64,
  encodeVringAddr,
  encodeVringFd,
  encodeVringState,
  type MemRegionWire,
  ProtocolError,
} from '../../../src/vhost-user/codec.js';
import {
  HEADER_SIZE,
  HeaderFlag,
  MAX_PAYLOAD,
  Request,
  requestName,
} from '../../../src/vhost-user/protocol.js';
import { check, type FuzzTarget, fromHex, toHex } from '../harness.js';
import { interestingU32, mutateBytes } from '../mutate.js';
import type { Prng } from '../prng.js';

const PROTOCOL_CODES = new Set([
  'VHOST_USER_BAD_SIZE',
  'VHOST_USER_BAD_VALUE',
  'VHOST_USER_BAD_VERSION',
  'VHOST_USER_TOO_MANY_REGIONS',
]);

/** A payload layout: its decoder, and the encoding of what it decoded. */
interface Layout {
  decode(p: Uint8Array): unknown;
  encode(v: unknown): Uint8Array;
  /** Byte ranges the encoder writes as zero whatever the input held (padding). */
  padding: [number, number][];
}

const LAYOUTS: Record<string, Layout> = {
  U64: { decode: decodeU64, encode: (v) => encodeU64(v as bigint), padding: [] },
  VRING_FD: {
    decode: decodeVringFd,
    encode: (v) => {
      const f = v as { index: number; noFd: boolean };
      return encodeVringFd(f.index, f.noFd);
    },
    padding: [],
  },
  VRING_STATE: {
    decode: decodeVringState,
    encode: (v) => encodeVringState(v as never),
    padding: [],
  },
  VRING_ADDR: { decode: decodeVringAddr, encode: (v) => encodeVringAddr(v as never), padding: [] },
  MEMORY_TABLE: {
    decode: decodeMemoryTable,
    encode: (v) => encodeMemoryTable(v as never),
    padding: [[4, 8]],
  },
  MEM_REGION: {
    decode: decodeMemRegion,
    encode: (v) => encodeMemRegion(v as never),
    padding: [[0, 8]],
  },
  CONFIG: { decode: decodeConfig, encode: (v) => encodeConfig(v as never), padding: [] },
  INFLIGHT: {
    decode: decodeInflight,
    encode: (v) => encodeInflight(v as never),
    padding: [[20, 24]],
  },
  LOG: { decode: decodeLog, encode: (v) => encodeLog(v as never), padding: [] },
};
const LAYOUT_NAMES = Object.keys(LAYOUTS);

/** The payload layout of each request that has one. */
export const LAYOUT_OF: Record<number, string> = {
  [Request.GET_FEATURES]: 'U64',
  [Request.SET_FEATURES]: 'U64',
  [Request.SET_PROTOCOL_FEATURES]: 'U64',
  [Request.GET_PROTOCOL_FEATURES]: 'U64',
  [Request.SET_MEM_TABLE]: 'MEMORY_TABLE',
  [Request.SET_LOG_BASE]: 'LOG',
  [Request.SET_VRING_NUM]: 'VRING_STATE',
  [Request.SET_VRING_ADDR]: 'VRING_ADDR',
  [Request.SET_VRING_BASE]: 'VRING_STATE',
  [Request.GET_VRING_BASE]: 'VRING_STATE',
  [Request.SET_VRING_KICK]: 'VRING_FD',
  [Request.SET_VRING_CALL]: 'VRING_FD',
  [Request.SET_VRING_ERR]: 'VRING_FD',
  [Request.SET_VRING_ENABLE]: 'VRING_STATE',
  [Request.GET_CONFIG]: 'CONFIG',
  [Request.SET_CONFIG]: 'CONFIG',
  [Request.GET_INFLIGHT_FD]: 'INFLIGHT',
  [Request.SET_INFLIGHT_FD]: 'INFLIGHT',
  [Request.ADD_MEM_REG]: 'MEM_REGION',
  [Request.REM_MEM_REG]: 'MEM_REGION',
};
const REQUESTS_WITH_LAYOUT = Object.keys(LAYOUT_OF).map(Number);

/** A codec case: message bytes, or an encoder fed a fast-check value drawn from `seed`. */
export type CodecCase = { bytes: Uint8Array } | { encoder: string; seed: number };

// ── byte cases ────────────────────────────────────────────────────────────────

function safeAddr(rng: Prng): number {
  switch (rng.below(4)) {
    case 0:
      return rng.u32();
    case 1:
      return rng.pick([0, 0x1000, 2 ** 32, 2 ** 53 - 1, 0x7f00_0000_0000]);
    default:
      return rng.below(0x20_0000) * 2 ** 32 + rng.u32();
  }
}

function validRegion(rng: Prng): MemRegionWire {
  return {
    guestPhysAddr: safeAddr(rng),
    size: safeAddr(rng),
    userAddr: safeAddr(rng),
    mmapOffset: safeAddr(rng),
  };
}

/** A valid payload for `layout` (a key of LAYOUT_OF's values), from the encoders. */
export function validPayload(rng: Prng, layout: string): Uint8Array {
  switch (layout) {
    case 'U64':
      return encodeU64((BigInt(rng.u32()) << 32n) | BigInt(rng.u32()));
    case 'VRING_FD':
      return encodeVringFd(rng.below(256), rng.chance(0.3));
    case 'VRING_STATE':
      return encodeVringState({ index: interestingU32(rng), num: interestingU32(rng) });
    case 'VRING_ADDR':
      return encodeVringAddr({
        index: interestingU32(rng),
        flags: rng.below(2),
        descUserAddr: safeAddr(rng),
        usedUserAddr: safeAddr(rng),
        availUserAddr: safeAddr(rng),
        logGuestAddr: safeAddr(rng),
      });
    case 'MEMORY_TABLE':
      return encodeMemoryTable(Array.from({ length: rng.below(9) }, () => validRegion(rng)));
    case 'MEM_REGION':
      return encodeMemRegion(validRegion(rng));
    case 'CONFIG': {
      const size = rng.below(257);
      return encodeConfig({
        offset: rng.below(257 - size),
        size,
        flags: rng.below(3),
        data: rng.bytes(size),
      });
    }
    case 'INFLIGHT':
      return encodeInflight({
        mmapSize: safeAddr(rng),
        mmapOffset: safeAddr(rng),
        numQueues: rng.below(0x10000),
        queueSize: rng.below(0x10000),
      });
    default:
      return encodeLog({ mmapSize: safeAddr(rng), mmapOffset: safeAddr(rng) });
  }
}

function freshMessage(rng: Prng): Uint8Array {
  if (rng.chance(0.05)) return rng.bytes(rng.below(HEADER_SIZE + 64));
  const request = rng.chance(0.9) ? rng.pick(REQUESTS_WITH_LAYOUT) : rng.below(64);
  const layout = LAYOUT_OF[request] ?? rng.pick(LAYOUT_NAMES);
  const flags = rng.pick([
    HeaderFlag.VERSION,
    HeaderFlag.VERSION | HeaderFlag.NEED_REPLY,
    HeaderFlag.VERSION | HeaderFlag.REPLY,
  ]);
  return encodeMessage(request, flags, validPayload(rng, layout));
}

function byteCase(rng: Prng, corpus: readonly CodecCase[]): Uint8Array {
  const bytesOf = (c: CodecCase | undefined) =>
    c !== undefined && 'bytes' in c ? c.bytes : freshMessage(rng);
  const base = corpus.length > 0 && rng.chance(0.5) ? bytesOf(rng.pick(corpus)) : freshMessage(rng);
  if (rng.chance(0.2)) return base;
  const other = rng.chance(0.3) ? freshMessage(rng) : undefined;
  const maxLen = HEADER_SIZE + MAX_PAYLOAD + 16;
  const out = mutateBytes(rng, base, maxLen, other);
  // Keep the header's size field honest half of the time, so payload decoders see more.
  if (out.length >= HEADER_SIZE && rng.chance(0.5)) {
    new DataView(out.buffer, out.byteOffset).setUint32(8, out.length - HEADER_SIZE, true);
  }
  return out;
}

function expectProtocolError(err: unknown, what: string): string {
  if (!(err instanceof ProtocolError)) throw err;
  check(PROTOCOL_CODES.has(err.code), `${what}: unknown ProtocolError code ${err.code}`);
  check(err.message.length > 0, `${what}: ProtocolError ${err.code} without a message`);
  return err.code;
}

/** Decodes `payload` with one layout; a success must round-trip. Returns 'ok' or the code. */
function decodeOne(name: string, payload: Uint8Array): string {
  const layout = LAYOUTS[name];
  let value: unknown;
  try {
    value = layout.decode(payload);
  } catch (err) {
    return expectProtocolError(err, `decode ${name}`);
  }
  let again: Uint8Array;
  try {
    again = layout.encode(value);
  } catch (err) {
    throw new Error(`${name}: a decoded payload does not encode again: ${String(err)}`);
  }
  const expected = Uint8Array.from(payload);
  for (const [from, to] of layout.padding) expected.fill(0, from, Math.min(to, expected.length));
  check(
    Buffer.compare(Buffer.from(again), Buffer.from(expected)) === 0,
    () => `${name}: round trip changed ${toHex(payload)} into ${toHex(again)}`,
  );
  return 'ok';
}

function runBytes(bytes: Uint8Array): string {
  let headerOutcome: string;
  let request = -1;
  try {
    const h = decodeHeader(bytes);
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    check(h.request === dv.getUint32(0, true), 'header request differs from the wire');
    check(h.flags === dv.getUint32(4, true), 'header flags differ from the wire');
    check(h.size === dv.getUint32(8, true) && h.size <= MAX_PAYLOAD, 'header size out of range');
    check((h.flags & HeaderFlag.VERSION_MASK) === HeaderFlag.VERSION, 'header version not 1');
    request = h.request;
    headerOutcome = 'ok';
  } catch (err) {
    headerOutcome = expectProtocolError(err, 'decodeHeader');
  }
  const payload = bytes.subarray(Math.min(HEADER_SIZE, bytes.length));
  let own = '-';
  let okMask = 0;
  LAYOUT_NAMES.forEach((name, i) => {
    const outcome = decodeOne(name, payload);
    if (outcome === 'ok') okMask |= 1 << i;
    if (LAYOUT_OF[request] === name) own = outcome;
  });
  return `hdr:${headerOutcome} ${requestName(request)}:${own} ok:${okMask.toString(16)}`;
}

// ── value cases (fast-check) ─────────────────────────────────────────────────

const num = fc.oneof(
  { weight: 4, arbitrary: fc.nat({ max: 0xffff_ffff }) },
  { weight: 2, arbitrary: fc.maxSafeNat() },
  { weight: 1, arbitrary: fc.integer() },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      -1,
      -0,
      0.5,
      2 ** 32,
      2 ** 32 - 1,
      2 ** 53,
      Number.MAX_SAFE_INTEGER,
      Number.NaN,
      Number.POSITIVE_INFINITY,
      255,
      256,
      0xffff,
      0x10000,
    ),
  },
  { weight: 1, arbitrary: fc.double() },
);
const region = fc.record({ guestPhysAddr: num, size: num, userAddr: num, mmapOffset: num });
const bytes = (max: number) => fc.uint8Array({ maxLength: max });

const ENCODERS: Record<string, { arb: fc.Arbitrary<unknown>; run(v: unknown): void }> = {
  message: {
    arb: fc.tuple(num, num, bytes(MAX_PAYLOAD + 8)),
    run(v) {
      const [request, flags, payload] = v as [number, number, Uint8Array];
      const m = encodeMessage(request, flags, payload);
      const h = decodeHeader(m);
      check(h.request === request && h.size === payload.length, 'message header round trip');
      check((h.flags | 3) >>> 0 === (flags | 3) >>> 0, 'message flags');
    },
  },
  u64: {
    arb: fc.bigInt({ min: -(2n ** 65n), max: 2n ** 65n }),
    run: (v) => check(decodeU64(encodeU64(v as bigint)) === v, 'u64 round trip'),
  },
  vringFd: {
    arb: fc.tuple(num, fc.boolean()),
    run(v) {
      const [index, noFd] = v as [number, boolean];
      const d = decodeVringFd(encodeVringFd(index, noFd));
      check(d.index === index && d.noFd === noFd, 'VRING_FD round trip');
    },
  },
  vringState: {
    arb: fc.record({ index: num, num }),
    run: (v) => sameFields(v, decodeVringState(encodeVringState(v as never)), 'VRING_STATE'),
  },
  vringAddr: {
    arb: fc.record({
      index: num,
      flags: num,
      descUserAddr: num,
      usedUserAddr: num,
      availUserAddr: num,
      logGuestAddr: num,
    }),
    run: (v) => sameFields(v, decodeVringAddr(encodeVringAddr(v as never)), 'VRING_ADDR'),
  },
  memoryTable: {
    arb: fc.array(region, { maxLength: 10 }),
    run(v) {
      const regions = v as MemRegionWire[];
      const d = decodeMemoryTable(encodeMemoryTable(regions));
      check(d.length === regions.length, 'MEMORY_TABLE region count');
      d.forEach((r, i) => {
        sameFields(regions[i], r, 'MEMORY_TABLE region');
      });
    },
  },
  memRegion: {
    arb: region,
    run: (v) => sameFields(v, decodeMemRegion(encodeMemRegion(v as never)), 'MEM_REGION'),
  },
  config: {
    arb: fc.record({ offset: num, size: num, flags: num, data: bytes(300) }),
    run(v) {
      const c = v as { offset: number; size: number; flags: number; data: Uint8Array };
      const d = decodeConfig(encodeConfig(c));
      check(d.offset === c.offset && d.size === c.size && d.flags === c.flags, 'CONFIG round trip');
      check(Buffer.compare(Buffer.from(d.data), Buffer.from(c.data)) === 0, 'CONFIG data');
    },
  },
  inflight: {
    arb: fc.record({ mmapSize: num, mmapOffset: num, numQueues: num, queueSize: num }),
    run: (v) => sameFields(v, decodeInflight(encodeInflight(v as never)), 'INFLIGHT'),
  },
  log: {
    arb: fc.record({ mmapSize: num, mmapOffset: num }),
    run: (v) => sameFields(v, decodeLog(encodeLog(v as never)), 'LOG'),
  },
};
const ENCODER_NAMES = Object.keys(ENCODERS);

function sameFields(expected: unknown, actual: unknown, what: string): void {
  const e = expected as Record<string, unknown>;
  const a = actual as Record<string, unknown>;
  for (const k of Object.keys(a)) {
    check(e[k] === a[k], () => `${what} round trip: ${k} ${String(e[k])} became ${String(a[k])}`);
  }
}

function runValue(encoder: string, seed: number): string {
  const e = ENCODERS[encoder];
  const [value] = fc.sample(e.arb, { seed, numRuns: 1 });
  try {
    e.run(value);
    return `enc:${encoder}:ok`;
  } catch (err) {
    return `enc:${encoder}:${expectProtocolError(err, `encoder ${encoder}`)}`;
  }
}

/** The codec target. */
export const codecTarget: FuzzTarget<CodecCase> = {
  name: 'codec',
  description:
    'vhost-user codec: header and every payload decoder on mutated messages; encoders on fast-check values',
  generate(rng, corpus) {
    if (rng.chance(0.15)) return { encoder: rng.pick(ENCODER_NAMES), seed: rng.u32() | 0 };
    return { bytes: byteCase(rng, corpus) };
  },
  execute: (c) => ('bytes' in c ? runBytes(c.bytes) : runValue(c.encoder, c.seed)),
  toJson: (c) => ('bytes' in c ? { bytes: toHex(c.bytes) } : c),
  fromJson(json) {
    const j = json as { bytes?: string; encoder?: string; seed?: number };
    if (j.bytes !== undefined) return { bytes: fromHex(j.bytes) };
    return { encoder: String(j.encoder), seed: Number(j.seed) };
  },
};
