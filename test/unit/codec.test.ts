import { describe, expect, it } from 'vitest';
import {
  type ConfigPayload,
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
  PayloadSize,
  ProtocolError,
} from '../../src/vhost-user/codec.js';
import {
  BackendRequest,
  backendRequestName,
  HEADER_SIZE,
  HeaderFlag,
  MAX_CONFIG_SIZE,
  MAX_PAYLOAD,
  ProtocolFeature,
  Request,
  requestName,
  VRING_NOFD_MASK,
} from '../../src/vhost-user/protocol.js';
import { MessageReader } from '../frontend/framing.js';

/** mulberry32: small, seeded, good enough to spread fuzz inputs. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

function expectProtocolError(fn: () => unknown, code: string, message?: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown).toBeInstanceOf(ProtocolError);
  expect((thrown as ProtocolError).code).toBe(code);
  if (message) expect((thrown as ProtocolError).message).toMatch(message);
}

function u64Bytes(value: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, value, true);
  return b;
}

const region = (i: number): MemRegionWire => ({
  guestPhysAddr: i * 0x1000_0000,
  size: 0x20_0000 + i * 0x1000,
  userAddr: 0x7f00_0000_0000 + i * 0x1_0000_0000,
  mmapOffset: i * 0x1000,
});

describe('protocol constants', () => {
  it('names requests after the spec and flags unknown codes', () => {
    expect(requestName(Request.SET_VRING_KICK)).toBe('SET_VRING_KICK');
    expect(requestName(12)).toBe('SET_VRING_KICK');
    expect(requestName(Request.GET_MAX_MEM_SLOTS)).toBe('GET_MAX_MEM_SLOTS');
    expect(requestName(99)).toBe('UNKNOWN(99)');
    expect(requestName(-1)).toBe('UNKNOWN(-1)');
    expect(backendRequestName(BackendRequest.CONFIG_CHANGE_MSG)).toBe('CONFIG_CHANGE_MSG');
    expect(backendRequestName(77)).toBe('UNKNOWN(77)');
  });

  it('numbers requests and protocol features as the spec does', () => {
    expect([Request.SET_MEM_TABLE, Request.GET_QUEUE_NUM, Request.GET_CONFIG]).toEqual([5, 17, 24]);
    expect([Request.ADD_MEM_REG, Request.REM_MEM_REG, Request.SET_STATUS]).toEqual([37, 38, 39]);
    expect(Request.GET_STATUS).toBe(40);
    expect([ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG]).toEqual([3, 9]);
    expect([ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.STATUS]).toEqual([15, 16]);
    const codes = Object.values(Request);
    expect(new Set(codes).size).toBe(codes.length);
  });
});

describe('header', () => {
  it('round-trips through encodeMessage and decodeHeader', () => {
    const payload = encodeU64(0x1234n);
    const msg = encodeMessage(Request.SET_FEATURES, HeaderFlag.NEED_REPLY, payload);
    expect(msg.byteLength).toBe(HEADER_SIZE + 8);
    expect(decodeHeader(msg)).toEqual({
      request: Request.SET_FEATURES,
      flags: HeaderFlag.VERSION | HeaderFlag.NEED_REPLY,
      size: 8,
    });
    expect(decodeU64(msg.subarray(HEADER_SIZE))).toBe(0x1234n);
  });

  it('forces the version bits to 1 and encodes an empty payload', () => {
    const msg = encodeMessage(Request.SET_OWNER, 0x3 | HeaderFlag.REPLY);
    expect(msg.byteLength).toBe(HEADER_SIZE);
    expect(decodeHeader(msg)).toEqual({ request: 3, flags: 0x5, size: 0 });
  });

  it('keeps flag bit 31 unsigned', () => {
    expect(decodeHeader(encodeMessage(1, 0x8000_0000)).flags).toBe(0x8000_0001);
  });

  it('reads a header from a longer buffer at a non-zero byte offset', () => {
    const backing = new Uint8Array(64);
    backing.set(encodeMessage(Request.GET_VRING_BASE, HeaderFlag.REPLY, new Uint8Array(8)), 20);
    expect(decodeHeader(backing.subarray(20))).toEqual({ request: 11, flags: 5, size: 8 });
  });

  it('rejects a truncated header', () => {
    for (let len = 0; len < HEADER_SIZE; len++) {
      expectProtocolError(
        () => decodeHeader(new Uint8Array(len)),
        'VHOST_USER_BAD_SIZE',
        new RegExp(`header is ${len} bytes, expected 12`),
      );
    }
  });

  it('rejects every version but 1', () => {
    for (const version of [0, 2, 3]) {
      const msg = encodeMessage(Request.GET_FEATURES, 0);
      new DataView(msg.buffer).setUint32(4, version | HeaderFlag.REPLY, true);
      expectProtocolError(() => decodeHeader(msg), 'VHOST_USER_BAD_VERSION', /version is/);
    }
  });

  it('rejects an announced payload above MAX_PAYLOAD, accepts MAX_PAYLOAD', () => {
    const msg = encodeMessage(Request.GET_CONFIG, 0);
    const dv = new DataView(msg.buffer);
    dv.setUint32(8, MAX_PAYLOAD, true);
    expect(decodeHeader(msg).size).toBe(MAX_PAYLOAD);
    dv.setUint32(8, MAX_PAYLOAD + 1, true);
    expectProtocolError(() => decodeHeader(msg), 'VHOST_USER_BAD_SIZE', /maximum/);
    dv.setUint32(8, 0xffff_ffff, true);
    expectProtocolError(() => decodeHeader(msg), 'VHOST_USER_BAD_SIZE');
  });

  it('refuses to encode an oversized payload or a bad request code', () => {
    expect(encodeMessage(1, 0, new Uint8Array(MAX_PAYLOAD)).byteLength).toBe(
      HEADER_SIZE + MAX_PAYLOAD,
    );
    expectProtocolError(
      () => encodeMessage(1, 0, new Uint8Array(MAX_PAYLOAD + 1)),
      'VHOST_USER_BAD_SIZE',
    );
    expectProtocolError(() => encodeMessage(-1, 0), 'VHOST_USER_BAD_VALUE', /request/);
    expectProtocolError(() => encodeMessage(2 ** 32, 0), 'VHOST_USER_BAD_VALUE');
    expectProtocolError(() => encodeMessage(1, 1.5), 'VHOST_USER_BAD_VALUE', /flags/);
  });
});

describe('u64 payloads', () => {
  it('round-trips feature masks as bigint over the whole range', () => {
    for (const v of [0n, 1n, 1n << 30n, (1n << 64n) - 1n, 0x1_4000_0000n]) {
      expect(decodeU64(encodeU64(v))).toBe(v);
    }
  });

  it('is little-endian', () => {
    expect([...encodeU64(0x0102030405060708n)]).toEqual([8, 7, 6, 5, 4, 3, 2, 1]);
  });

  it('rejects out-of-range values and every wrong size', () => {
    expectProtocolError(() => encodeU64(-1n), 'VHOST_USER_BAD_VALUE');
    expectProtocolError(() => encodeU64(1n << 64n), 'VHOST_USER_BAD_VALUE');
    for (let len = 0; len <= 16; len++) {
      if (len === 8) continue;
      expectProtocolError(
        () => decodeU64(new Uint8Array(len)),
        'VHOST_USER_BAD_SIZE',
        new RegExp(`U64 payload is ${len} bytes, expected 8`),
      );
    }
  });
});

describe('vring fd u64 (SET_VRING_KICK/CALL/ERR)', () => {
  it('round-trips index and the no-fd flag', () => {
    for (const index of [0, 1, 7, 255]) {
      for (const noFd of [false, true]) {
        expect(decodeVringFd(encodeVringFd(index, noFd))).toEqual({ index, noFd });
      }
    }
    expect(decodeU64(encodeVringFd(3, true))).toBe(BigInt(3 | VRING_NOFD_MASK));
  });

  it('rejects reserved bits, indexes above 255 and wrong sizes', () => {
    expectProtocolError(() => decodeVringFd(u64Bytes(0x200n)), 'VHOST_USER_BAD_VALUE', /0x200/);
    expectProtocolError(() => decodeVringFd(u64Bytes(1n << 40n)), 'VHOST_USER_BAD_VALUE');
    expectProtocolError(() => encodeVringFd(256, false), 'VHOST_USER_BAD_VALUE');
    expectProtocolError(() => encodeVringFd(-1, false), 'VHOST_USER_BAD_VALUE');
    for (const len of [0, 4, 7, 9, 16]) {
      expectProtocolError(
        () => decodeVringFd(new Uint8Array(len)),
        'VHOST_USER_BAD_SIZE',
        /VRING_FD payload/,
      );
    }
  });
});

describe('vring state and address', () => {
  it('round-trips a vring state', () => {
    const s = { index: 3, num: 0xffff_ffff };
    expect(decodeVringState(encodeVringState(s))).toEqual(s);
    expect(encodeVringState(s).byteLength).toBe(PayloadSize.VRING_STATE);
  });

  it('round-trips a vring address with addresses up to MAX_SAFE_INTEGER', () => {
    const a = {
      index: 1,
      flags: 1,
      descUserAddr: 0x7f12_3456_0000,
      usedUserAddr: Number.MAX_SAFE_INTEGER,
      availUserAddr: 0x7f12_3456_1000,
      logGuestAddr: 0,
    };
    const bytes = encodeVringAddr(a);
    expect(bytes.byteLength).toBe(40);
    expect(decodeVringAddr(bytes)).toEqual(a);
  });

  it('rejects every wrong size, naming the payload and both sizes', () => {
    for (let len = 0; len <= 48; len++) {
      if (len !== 8) {
        expectProtocolError(
          () => decodeVringState(new Uint8Array(len)),
          'VHOST_USER_BAD_SIZE',
          new RegExp(`VRING_STATE payload is ${len} bytes, expected 8`),
        );
      }
      if (len !== 40) {
        expectProtocolError(
          () => decodeVringAddr(new Uint8Array(len)),
          'VHOST_USER_BAD_SIZE',
          new RegExp(`VRING_ADDR payload is ${len} bytes, expected 40`),
        );
      }
    }
  });

  it('rejects addresses above MAX_SAFE_INTEGER on decode and encode', () => {
    const bytes = new Uint8Array(40);
    new DataView(bytes.buffer).setBigUint64(16, 1n << 53n, true);
    expectProtocolError(() => decodeVringAddr(bytes), 'VHOST_USER_BAD_VALUE', /used is 0x2/);
    const ok = decodeVringAddr(new Uint8Array(40));
    expectProtocolError(
      () => encodeVringAddr({ ...ok, descUserAddr: 2 ** 53 }),
      'VHOST_USER_BAD_VALUE',
    );
    expectProtocolError(
      () => encodeVringAddr({ ...ok, availUserAddr: -1 }),
      'VHOST_USER_BAD_VALUE',
    );
    expectProtocolError(() => encodeVringState({ index: 2 ** 32, num: 0 }), 'VHOST_USER_BAD_VALUE');
  });
});

describe('memory table and single regions', () => {
  it('round-trips 0 to 8 regions with exact sizes', () => {
    for (let n = 0; n <= 8; n++) {
      const regions = Array.from({ length: n }, (_, i) => region(i));
      const bytes = encodeMemoryTable(regions);
      expect(bytes.byteLength).toBe(8 + 32 * n);
      expect(decodeMemoryTable(bytes)).toEqual(regions);
    }
  });

  it('lays out the table as nregions, padding, then gpa/size/uaddr/offset', () => {
    const bytes = encodeMemoryTable([region(1)]);
    const dv = new DataView(bytes.buffer);
    expect(dv.getUint32(0, true)).toBe(1);
    expect(dv.getBigUint64(8, true)).toBe(0x1000_0000n);
    expect(dv.getBigUint64(16, true)).toBe(0x20_1000n);
    expect(dv.getBigUint64(24, true)).toBe(0x7f01_0000_0000n);
    expect(dv.getBigUint64(32, true)).toBe(0x1000n);
  });

  it('rejects more than 8 regions', () => {
    const nine = Array.from({ length: 9 }, (_, i) => region(i));
    expectProtocolError(() => encodeMemoryTable(nine), 'VHOST_USER_TOO_MANY_REGIONS', /9 regions/);
    const bytes = new Uint8Array(8 + 9 * 32);
    new DataView(bytes.buffer).setUint32(0, 9, true);
    expectProtocolError(() => decodeMemoryTable(bytes), 'VHOST_USER_TOO_MANY_REGIONS');
    new DataView(bytes.buffer).setUint32(0, 0xffff_ffff, true);
    expectProtocolError(() => decodeMemoryTable(bytes), 'VHOST_USER_TOO_MANY_REGIONS');
  });

  it('rejects a table whose size does not match nregions', () => {
    for (let len = 0; len < 8; len++) {
      expectProtocolError(
        () => decodeMemoryTable(new Uint8Array(len)),
        'VHOST_USER_BAD_SIZE',
        new RegExp(`MEMORY_TABLE payload is ${len} bytes, expected at least 8`),
      );
    }
    const two = encodeMemoryTable([region(0), region(1)]);
    expectProtocolError(
      () => decodeMemoryTable(two.subarray(0, two.byteLength - 1)),
      'VHOST_USER_BAD_SIZE',
      /MEMORY_TABLE payload is 71 bytes, expected 72 for 2 regions/,
    );
    const padded = new Uint8Array(8 + 8 * 32);
    padded.set(two);
    expectProtocolError(() => decodeMemoryTable(padded), 'VHOST_USER_BAD_SIZE', /264 bytes/);
  });

  it('round-trips a single region and rejects every wrong size', () => {
    const bytes = encodeMemRegion(region(3));
    expect(bytes.byteLength).toBe(40);
    expect([...bytes.subarray(0, 8)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(decodeMemRegion(bytes)).toEqual(region(3));
    for (let len = 0; len <= 48; len++) {
      if (len === 40) continue;
      expectProtocolError(
        () => decodeMemRegion(new Uint8Array(len)),
        'VHOST_USER_BAD_SIZE',
        new RegExp(`MEM_REGION payload is ${len} bytes, expected 40`),
      );
    }
  });

  it('rejects a region whose size or address exceeds MAX_SAFE_INTEGER', () => {
    const bytes = encodeMemRegion(region(0));
    new DataView(bytes.buffer).setBigUint64(16, (1n << 64n) - 1n, true);
    expectProtocolError(() => decodeMemRegion(bytes), 'VHOST_USER_BAD_VALUE', /MEM_REGION size/);
    expectProtocolError(
      () => encodeMemRegion({ ...region(0), mmapOffset: 0.5 }),
      'VHOST_USER_BAD_VALUE',
      /mmap offset/,
    );
  });
});

describe('config space', () => {
  const config = (size: number, offset = 0): ConfigPayload => ({
    offset,
    size,
    flags: 0,
    data: Uint8Array.from({ length: size }, (_, i) => i & 0xff),
  });

  it('round-trips payloads of 0 to 256 bytes', () => {
    for (const size of [0, 1, 60, 72, MAX_CONFIG_SIZE]) {
      const c = config(size);
      const bytes = encodeConfig(c);
      expect(bytes.byteLength).toBe(12 + size);
      expect(decodeConfig(bytes)).toEqual(c);
    }
    const c = { ...config(4, 20), flags: 1 };
    expect(decodeConfig(encodeConfig(c))).toEqual(c);
  });

  it('returns data that does not alias the input', () => {
    const bytes = encodeConfig(config(8));
    const decoded = decodeConfig(bytes);
    bytes[12] = 0xee;
    expect(decoded.data[0]).toBe(0);
  });

  it('rejects short payloads, size mismatches and oversized config', () => {
    for (let len = 0; len < 12; len++) {
      expectProtocolError(
        () => decodeConfig(new Uint8Array(len)),
        'VHOST_USER_BAD_SIZE',
        new RegExp(`CONFIG payload is ${len} bytes, expected at least 12`),
      );
    }
    const bytes = encodeConfig(config(60));
    expectProtocolError(
      () => decodeConfig(bytes.subarray(0, 70)),
      'VHOST_USER_BAD_SIZE',
      /CONFIG payload is 70 bytes, expected 72 for size 60/,
    );
    const big = new Uint8Array(12 + 300);
    new DataView(big.buffer).setUint32(4, 300, true);
    expectProtocolError(() => decodeConfig(big), 'VHOST_USER_BAD_SIZE', /at most 256/);
    expectProtocolError(() => encodeConfig(config(257)), 'VHOST_USER_BAD_SIZE');
    expectProtocolError(
      () => encodeConfig({ ...config(4), size: 5 }),
      'VHOST_USER_BAD_SIZE',
      /CONFIG size 5 with 4 data bytes/,
    );
  });

  it('rejects an access beyond the config space', () => {
    const bytes = encodeConfig(config(16));
    new DataView(bytes.buffer).setUint32(0, 250, true);
    expectProtocolError(() => decodeConfig(bytes), 'VHOST_USER_BAD_VALUE', /offset 250/);
    new DataView(bytes.buffer).setUint32(0, 0xffff_fff0, true);
    expectProtocolError(() => decodeConfig(bytes), 'VHOST_USER_BAD_VALUE');
    expectProtocolError(() => encodeConfig(config(16, 241)), 'VHOST_USER_BAD_VALUE');
  });
});

describe('inflight and log descriptions', () => {
  it('round-trips an inflight description of 24 bytes', () => {
    const i = { mmapSize: 0x21000, mmapOffset: 0x1000, numQueues: 2, queueSize: 256 };
    const bytes = encodeInflight(i);
    expect(bytes.byteLength).toBe(24);
    expect(decodeInflight(bytes)).toEqual(i);
    expectProtocolError(() => encodeInflight({ ...i, numQueues: 0x10000 }), 'VHOST_USER_BAD_VALUE');
  });

  it('round-trips a log description of 16 bytes', () => {
    const l = { mmapSize: 0x4000, mmapOffset: 0 };
    expect(decodeLog(encodeLog(l))).toEqual(l);
  });

  it('rejects every wrong size', () => {
    for (let len = 0; len <= 32; len++) {
      if (len !== 24) {
        expectProtocolError(
          () => decodeInflight(new Uint8Array(len)),
          'VHOST_USER_BAD_SIZE',
          new RegExp(`INFLIGHT payload is ${len} bytes, expected 24`),
        );
      }
      if (len !== 16) {
        expectProtocolError(
          () => decodeLog(new Uint8Array(len)),
          'VHOST_USER_BAD_SIZE',
          new RegExp(`LOG payload is ${len} bytes, expected 16`),
        );
      }
    }
  });
});

describe('fuzz: random bytes make decoders throw only ProtocolError', () => {
  const decoders: Record<string, (b: Uint8Array) => unknown> = {
    decodeHeader,
    decodeU64,
    decodeVringFd,
    decodeVringState,
    decodeVringAddr,
    decodeMemoryTable,
    decodeMemRegion,
    decodeConfig,
    decodeInflight,
    decodeLog,
  };
  /** Valid encodings to mutate, so that a good share of inputs get past the size checks. */
  const seeds: Uint8Array[] = [
    encodeMessage(Request.GET_CONFIG, HeaderFlag.REPLY, new Uint8Array(72)),
    encodeU64(1n << 30n),
    encodeVringFd(1, true),
    encodeVringState({ index: 0, num: 256 }),
    encodeVringAddr({ ...decodeVringAddr(new Uint8Array(40)), descUserAddr: 0x7f00_0000_0000 }),
    encodeMemoryTable([region(0), region(1)]),
    encodeMemoryTable([]),
    encodeMemRegion(region(2)),
    encodeConfig({ offset: 0, size: 60, flags: 0, data: new Uint8Array(60) }),
    encodeInflight({ mmapSize: 4096, mmapOffset: 0, numQueues: 1, queueSize: 128 }),
    encodeLog({ mmapSize: 4096, mmapOffset: 0 }),
  ];

  function randomBytes(rand: () => number, len: number): Uint8Array {
    const bytes = new Uint8Array(len);
    for (let i = 0; i < len; i++) bytes[i] = Math.floor(rand() * 256);
    return bytes;
  }

  /** A random buffer (a third of the time) or a seed with a few bytes flipped, cut or grown. */
  function randomInput(rand: () => number): Uint8Array {
    if (rand() < 0.33) return randomBytes(rand, Math.floor(rand() * 400));
    const seed = seeds[Math.floor(rand() * seeds.length)];
    const resize = rand() < 0.2 ? Math.floor(rand() * 17) - 8 : 0;
    const bytes = new Uint8Array(Math.max(0, seed.byteLength + resize));
    bytes.set(seed.subarray(0, bytes.byteLength));
    const flips = Math.floor(rand() * 3);
    for (let k = 0; k < flips && bytes.byteLength > 0; k++) {
      bytes[Math.floor(rand() * bytes.byteLength)] = Math.floor(rand() * 256);
    }
    return bytes;
  }

  for (const [name, decode] of Object.entries(decoders)) {
    it(`${name} over 4000 seeded inputs`, () => {
      const rand = prng(0xc0dec ^ name.length);
      let accepted = 0;
      let rejected = 0;
      for (let n = 0; n < 4000; n++) {
        const input = randomInput(rand);
        try {
          decode(input);
          accepted++;
        } catch (err) {
          if (!(err instanceof ProtocolError)) throw err;
          expect(err.code).toMatch(/^VHOST_USER_/);
          rejected++;
        }
      }
      // Both paths must be exercised for the fuzz run to mean anything.
      expect(accepted).toBeGreaterThan(0);
      expect(rejected).toBeGreaterThan(0);
    });
  }

  it('re-encoding whatever decodes gives back the same bytes', () => {
    const rand = prng(42);
    let checked = 0;
    for (let n = 0; n < 4000; n++) {
      const bytes = randomInput(rand);
      try {
        if (bytes.byteLength === 40) {
          const addr = decodeVringAddr(bytes);
          expect(encodeVringAddr(addr)).toEqual(bytes);
          checked++;
        } else if (bytes.byteLength === 8) {
          expect(encodeVringState(decodeVringState(bytes))).toEqual(bytes);
          expect(encodeU64(decodeU64(bytes))).toEqual(bytes);
          checked++;
        }
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw err;
      }
    }
    expect(checked).toBeGreaterThan(100);
  });
});

describe("stream framing of encoded messages (the front end's MessageReader)", () => {
  const first = encodeMessage(
    Request.GET_VRING_BASE,
    HeaderFlag.REPLY,
    encodeVringState({ index: 1, num: 9 }),
  );
  const second = encodeMessage(Request.GET_INFLIGHT_FD, HeaderFlag.REPLY, new Uint8Array(24));
  const third = encodeMessage(Request.SET_OWNER, 0);

  it('reassembles a message delivered one byte at a time', () => {
    const reader = new MessageReader();
    for (let i = 0; i < first.byteLength - 1; i++) {
      reader.push(first.subarray(i, i + 1));
      expect(reader.next()).toBeNull();
    }
    reader.push(first.subarray(first.byteLength - 1));
    const m = reader.next();
    expect(m?.request).toBe(Request.GET_VRING_BASE);
    expect(decodeVringState(m!.payload)).toEqual({ index: 1, num: 9 });
    expect(reader.next()).toBeNull();
  });

  it('splits coalesced messages and gives fds to the message they came with', () => {
    const reader = new MessageReader();
    const stream = new Uint8Array(first.byteLength + second.byteLength + third.byteLength);
    stream.set(first);
    stream.set(second, first.byteLength);
    stream.set(third, first.byteLength + second.byteLength);
    reader.push(stream.subarray(0, first.byteLength + 5));
    // Linux ends a read after the segment carrying fds, so they belong to the
    // last message starting in that read: here the third, not the second.
    reader.push(stream.subarray(first.byteLength + 5), [42]);
    expect(reader.next()?.fds).toEqual([]);
    expect(reader.next()?.fds).toEqual([]);
    const last = reader.next();
    expect(last?.request).toBe(Request.SET_OWNER);
    expect(last?.fds).toEqual([42]);
    expect(reader.takeUnclaimedFds()).toEqual([]);
  });

  it('claims fds that arrived with the start of a message, and hands back unclaimed ones', () => {
    const reader = new MessageReader();
    reader.push(second, [7, 8]);
    reader.push(third.subarray(0, 4), [9]);
    expect(reader.next()?.fds).toEqual([7, 8]);
    expect(reader.next()).toBeNull();
    expect(reader.takeUnclaimedFds()).toEqual([9]);
  });

  it('gives fds of a read that starts mid-message and starts no other to that message', () => {
    const reader = new MessageReader();
    reader.push(second.subarray(0, 3));
    reader.push(second.subarray(3, 20), [5]);
    reader.push(second.subarray(20));
    expect(reader.next()?.fds).toEqual([5]);
  });

  it('throws ProtocolError on a bad header in the stream', () => {
    const reader = new MessageReader();
    const bad = encodeMessage(Request.GET_FEATURES, 0);
    new DataView(bad.buffer).setUint32(4, 2, true);
    reader.push(bad);
    expect(() => reader.next()).toThrow(ProtocolError);
  });
});
