/**
 * The redirect overlay of a blk device (issue 12, src/devices/blk/redirect.ts and
 * src/io/redirect-file.ts) over real files and the real linux-aio engine: writes go
 * to the overlay at the same offsets and leave the image alone, reads are routed
 * (and split at sector granularity), a flush makes the bitmap durable, the merge
 * copies back — including a unit the guest rewrites while it is being merged — and
 * removes the file; a left overlay is merged by recoverRedirect, a broken one is
 * refused by name; engines without a second file cannot redirect.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ChainSource,
  REDIRECT_USER_BASE,
  SPLIT,
  TO_IMAGE,
  WriteRedirect,
} from '../../src/devices/blk/redirect.js';
import { createEngine, type IoEngine, IoFile, IoOp } from '../../src/io/index.js';
import {
  createRedirectFile,
  REDIRECT_FLAG_KEEP,
  REDIRECT_FLAG_PREFILLED,
  recoverRedirect,
  redirectLayout,
  redirectPath,
  redirectPending,
} from '../../src/io/redirect-file.js';
import { waitFor } from '../support/wait.js';

const KiB = 1024;
const SIZE = 1024 * KiB;
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-redirect-unit-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Image bytes: sector s holds 0x40 + (s % 64). */
function pattern(bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = 0x40 + (Math.floor(i / 512) % 64);
  return b;
}

/** A guest buffer (engine buffer 0) staged from a position, as a chain part stages its iovecs. */
class GuestBytes implements ChainSource {
  pos = 0;
  readonly bytes: Uint8Array;
  constructor(readonly sab: SharedArrayBuffer) {
    this.bytes = new Uint8Array(sab);
  }
  stageIovecs(sink: { addIov(b: number, o: number, l: number): boolean }, n: number): number {
    if (!sink.addIov(0, this.pos, n)) return -1;
    this.pos += n;
    return 1;
  }
}

interface Rig {
  image: string;
  engine: IoEngine;
  ov: WriteRedirect;
  guest: GuestBytes;
  /** Results of slot ids, from the engine or the overlay's hooks. */
  results: Map<number, number>;
  detached: boolean;
  warnings: string[];
  /** The device's guest counters the merge samples (requests started, in flight). */
  guestStarted: number;
  guestInFlight: number;
}

async function rig(name: string, kind: 'linux-aio' | 'io_uring' = 'linux-aio'): Promise<Rig> {
  const image = join(dir, `${name}.img`);
  writeFileSync(image, pattern(SIZE));
  const engine = createEngine(kind, {
    path: image,
    readonly: false,
    direct: true,
    depth: 64,
    maxIovs: 64,
    warn: () => {},
  });
  const r = {
    image,
    engine,
    results: new Map<number, number>(),
    detached: false,
    warnings: [],
    guestStarted: 0,
    guestInFlight: 0,
  } as Rig | Omit<Rig, 'ov' | 'guest'>;
  const results = r.results;
  const ov = await WriteRedirect.create({
    image,
    diskBytes: SIZE,
    unitBytes: 512,
    engine,
    direct: true,
    slots: 8,
    maxIovs: 64,
    hooks: {
      complete: (id, result) => {
        results.set(id, result);
        ov.released(id);
      },
      endBatch: () => {
        ov.needsSubmit = false;
        engine.submit();
      },
      detached: () => {
        (r as Rig).detached = true;
      },
      warn: (m) => r.warnings.push(m),
      guestStarted: () => r.guestStarted,
      guestInFlight: () => r.guestInFlight,
    },
  });
  engine.onComplete(
    (ud, result) => {
      if (ud >= REDIRECT_USER_BASE) ov.done(ud, result);
      else {
        ov.writeCompleted(ud, result);
        results.set(ud, result);
        ov.released(ud);
      }
    },
    () => {
      if (!ov.needsSubmit) return;
      ov.needsSubmit = false;
      engine.submit();
    },
  );
  // Page-aligned guest memory (a large SharedArrayBuffer is mmapped): O_DIRECT takes it.
  const guest = new GuestBytes(new SharedArrayBuffer(4 * SIZE));
  engine.setBuffers([guest.sab, ov.bitmapBuffer, ov.mergeBuffer]);
  ov.bitmapIndex = 1;
  ov.mergeIndex = 2;
  return Object.assign(r, { ov, guest }) as Rig;
}

/** A write of `fill` bytes through the overlay's routing, as the device issues it. */
async function write(r: Rig, id: number, offset: number, length: number, fill: number) {
  r.guest.bytes.fill(fill, 0, length);
  r.guest.pos = 0;
  r.results.delete(id);
  const at = r.ov.writeTarget(id, offset, length);
  r.guest.stageIovecs(r.engine, length);
  const file = at === TO_IMAGE ? IoFile.IMAGE : IoFile.ATTACHED;
  const where = at === TO_IMAGE ? offset : at;
  expect(r.engine.queueReadWrite(IoOp.WRITE, where, r.engine.stagedIovs - 1, 1, id, 0, file)).toBe(
    true,
  );
  r.engine.submit();
  await waitFor(() => r.results.get(id), `write ${id}`);
  return { at, result: r.results.get(id) };
}

/** A read routed (and split) as the device does; returns the bytes. */
async function read(r: Rig, id: number, offset: number, length: number) {
  r.guest.bytes.fill(0, SIZE, SIZE + length);
  r.guest.pos = SIZE;
  r.results.delete(id);
  const at = r.ov.readTarget(id, offset, length);
  if (at === SPLIT) expect(r.ov.startSplitRead(id, offset, length, r.guest, 0)).toBe(true);
  else {
    r.guest.stageIovecs(r.engine, length);
    const file = at === TO_IMAGE ? IoFile.IMAGE : IoFile.ATTACHED;
    const where = at === TO_IMAGE ? offset : at;
    r.engine.queueReadWrite(IoOp.READ, where, r.engine.stagedIovs - 1, 1, id, 0, file);
  }
  r.engine.submit();
  await waitFor(() => r.results.get(id), `read ${id}`);
  expect(r.results.get(id)).toBe(length);
  return { at, data: Buffer.from(r.guest.bytes.subarray(SIZE, SIZE + length)) };
}

describe('WriteRedirect', () => {
  it('routes writes to the overlay and reads to where each sector is; a flush persists the bitmap; the merge copies back', async () => {
    const r = await rig('route');
    const { ov } = r;
    const layout = redirectLayout(SIZE, 512);
    // Before the instant nothing is redirected.
    expect(ov.writeTarget(0, 0, 512)).toBe(TO_IMAGE);
    ov.released(0);
    ov.startRedirect();
    const w = await write(r, 0, 4096, 8192, 0xbb);
    expect(w).toEqual({ at: layout.dataOffset + 4096, result: 8192 });
    const w2 = await write(r, 1, 3 * 512, 512, 0xcc);
    expect(w2.at).toBe(layout.dataOffset + 1536);
    // The image is untouched: it is the start instant.
    expect(readFileSync(r.image).equals(pattern(SIZE))).toBe(true);
    expect((await read(r, 2, 0, 1024)).at).toBe(TO_IMAGE);
    expect((await read(r, 2, 4096, 4096)).at).toBe(layout.dataOffset + 4096);
    // Sectors 0..2 image, 3 overlay, 4..7 image, 8..23 overlay, 24..31 image: five runs.
    const split = await read(r, 3, 0, 16384);
    expect(split.at).toBe(SPLIT);
    const expected = pattern(SIZE).subarray(0, 16384);
    expected.fill(0xcc, 1536, 2048);
    expected.fill(0xbb, 4096, 12288);
    expect(split.data.equals(expected)).toBe(true);
    expect(ov.remainingBytes).toBe(8192 + 512);

    // A flush completes only once the bitmap on disk has the redirected sectors.
    r.results.delete(4);
    ov.flush(4);
    r.engine.submit();
    await waitFor(() => r.results.get(4) !== undefined, 'the flush');
    expect(r.results.get(4)).toBe(0);
    const f = readFileSync(ov.path);
    const bitmap = f.subarray(layout.bitmapOffset, layout.bitmapOffset + 8);
    // Sector 3 (byte 0 bit 3), sectors 8..23 (bytes 1 and 2).
    expect([...bitmap.subarray(0, 4)]).toEqual([0x08, 0xff, 0xff, 0x00]);

    // The merge: a write into a unit being copied goes to the overlay and keeps the unit
    // redirected until a later pass copies it again.
    // The first run is sector 3 alone: its read is queued when beginMerge returns.
    ov.beginMerge();
    const during = await write(r, 5, 1536, 512, 0xdd);
    expect(during.at).toBe(layout.dataOffset + 1536);
    // Untouched sectors go straight to the image now.
    expect((await write(r, 6, 64 * KiB, 4096, 0xee)).at).toBe(TO_IMAGE);
    const m = await ov.merged();
    expect(m).toMatchObject({ merged: true, remainingBytes: 0 });
    expect(m.bytes).toBeGreaterThanOrEqual(8192 + 512);
    expect(r.detached).toBe(true);
    const img = readFileSync(r.image);
    const want = pattern(SIZE);
    want.fill(0xdd, 1536, 2048);
    want.fill(0xbb, 4096, 12288);
    want.fill(0xee, 64 * KiB, 68 * KiB);
    expect(img.equals(want)).toBe(true);
    expect(() => readFileSync(redirectPath(r.image))).toThrow(/ENOENT/);
    expect(r.warnings).toEqual([]);
    r.engine.close();
  });

  it('merge-quiet-ms: the merge keeps its pace while the guest does I/O and goes unpaced once it is quiet', async () => {
    const r = await rig('quiet');
    const { ov } = r;
    ov.startRedirect();
    // 32 runs of one sector each (every other 4 KiB block): 32 copies of 512 bytes.
    const RUNS = 32;
    for (let i = 0; i < RUNS; i++) await write(r, 0, i * 8192, 512, 0x60 + i);
    // The guest is busy when the merge begins (the device's counters are past the start).
    r.guestStarted = 1;
    r.guestInFlight = 1;
    // 512 bytes/s: paced, each copy after the first waits a second; quiet after 40 ms.
    ov.beginMerge(512, 40);
    // The device ends its batch after beginMerge: the first copy's read goes.
    r.engine.submit();
    let done = false;
    const merged = ov.merged().then((m) => {
      done = true;
      return m;
    });
    // The guest starts a request every few ms (its counter moves, one is in flight at times).
    let ticks = 0;
    const busy = setInterval(() => {
      r.guestStarted = (r.guestStarted + 1) | 0;
      r.guestInFlight = ticks++ % 2;
    }, 5);
    try {
      // 100 of the guest's requests (~0.5 s): at 512 bytes/s the merge made one or two of its
      // 32 copies (unpaced, the pass would have ended in a few ms).
      await waitFor(() => ticks >= 100, "the guest's requests");
      expect(done).toBe(false);
    } finally {
      clearInterval(busy);
    }
    // Quiet: the other 30 copies go unpaced, not in 30 s.
    r.guestInFlight = 0;
    const m = await merged;
    expect(m).toMatchObject({ merged: true, remainingBytes: 0 });
    expect(m.quietBytes).toBeGreaterThanOrEqual((RUNS - 2) * 512);
    expect(m.quietBytes).toBeLessThan(RUNS * 512);
    const img = readFileSync(r.image);
    for (let i = 0; i < RUNS; i++) expect(img[i * 8192], `sector ${i * 16}`).toBe(0x60 + i);
    expect(r.warnings).toEqual([]);
    r.engine.close();
  });

  it.each(['linux-aio', 'io_uring'] as const)(
    'merge-quiet-ms 0: a quiet guest leaves the pace as it is; the merge ends with no guest I/O (%s)',
    async (kind) => {
      // io_uring stages the merge's fdatasyncs: they must be submitted without a guest batch.
      const r = await rig(`quiet-off-${kind}`, kind);
      const { ov } = r;
      ov.startRedirect();
      for (let i = 0; i < 4; i++) await write(r, 0, i * 8192, 512, 0x70 + i);
      // 4 copies at 2 KiB/s: ~0.75 s paced; nothing is counted as quiet.
      ov.beginMerge(2048, 0);
      r.engine.submit();
      const m = await ov.merged();
      expect(m).toMatchObject({ merged: true, remainingBytes: 0, quietBytes: 0 });
      r.engine.close();
    },
  );

  it('a read the guest fragmented sector by sector (64 runs) goes in bounded waves and is exact', async () => {
    const r = await rig('waves');
    r.ov.startRedirect();
    // Every other sector of the first 32 KiB: 64 runs alternating image / overlay.
    for (let sector = 1; sector < 64; sector += 2)
      await write(r, 0, sector * 512, 512, 0x80 + sector);
    const got = await read(r, 1, 0, 32 * KiB);
    expect(got.at).toBe(SPLIT);
    const want = pattern(32 * KiB);
    for (let sector = 1; sector < 64; sector += 2)
      want.fill(0x80 + sector, sector * 512, sector * 512 + 512);
    expect(got.data.equals(want)).toBe(true);
    await r.ov.close();
    r.engine.close();
  });

  it('keep-overlay: the merged file stays with a clear bitmap, owes no merge, and the next backup reuses it', async () => {
    const image = join(dir, 'keep.img');
    writeFileSync(image, pattern(SIZE));
    const first = await createRedirectFile(redirectPath(image), SIZE, 512, true);
    expect(first.flags).toBe(1);
    // Written blocks of the data area, as a merged backup leaves them.
    const { openSync, writeSync, closeSync, statSync } = await import('node:fs');
    const fd = openSync(redirectPath(image), 'r+');
    writeSync(fd, Buffer.alloc(64 * KiB, 0x77), 0, 64 * KiB, first.dataOffset);
    closeSync(fd);
    expect(redirectPending(image)).toBe(false);
    expect(recoverRedirect(image, 0)).toBe(null);
    const again = await createRedirectFile(redirectPath(image), SIZE, 512, true);
    expect(again).toEqual(first);
    // Reused, not recreated: the blocks written before are still allocated.
    expect(statSync(redirectPath(image)).blocks * 512).toBeGreaterThanOrEqual(64 * KiB);
    // A kept overlay with units redirected is pending; recovery merges it and keeps the file.
    const w = openSync(redirectPath(image), 'r+');
    writeSync(w, Buffer.from([0x01]), 0, 1, first.bitmapOffset);
    closeSync(w);
    expect(redirectPending(image)).toBe(true);
    await expect(createRedirectFile(redirectPath(image), SIZE, 512, true)).rejects.toMatchObject({
      code: 'ERR_REDIRECT_EXISTS',
    });
    const img = openSync(image, 'r+');
    expect(recoverRedirect(image, img)).toMatchObject({ bytes: 512, runs: 1 });
    closeSync(img);
    expect(readFileSync(image).subarray(0, 512).equals(Buffer.alloc(512, 0x77))).toBe(true);
    expect(redirectPending(image)).toBe(false);
    // Without keep, a merged kept file is replaced by a fresh one.
    expect((await createRedirectFile(redirectPath(image), SIZE, 512)).flags).toBe(0);
  });

  it('prefill-overlay: the whole data area is written once, flagged, kept, and not written again', async () => {
    const { statSync, openSync, readSync, closeSync } = await import('node:fs');
    const image = join(dir, 'prefill.img');
    writeFileSync(image, pattern(SIZE));
    const path = redirectPath(image);
    // A plain kept overlay first: sparse, not prefilled.
    const sparse = await createRedirectFile(path, SIZE, 512, true);
    expect(sparse.flags).toBe(REDIRECT_FLAG_KEEP);
    expect(statSync(path).blocks * 512).toBeLessThan(SIZE / 2);
    // Asked to prefill: the kept file is filled in place (every data block allocated, and
    // none of them zero, which storage below may leave unallocated).
    const filled = await createRedirectFile(path, SIZE, 512, false, { bytesPerSecond: 0 });
    expect(filled.flags).toBe(REDIRECT_FLAG_KEEP | REDIRECT_FLAG_PREFILLED);
    expect(statSync(path).blocks * 512).toBeGreaterThanOrEqual(SIZE);
    const fd = openSync(path, 'r');
    const head = Buffer.alloc(64);
    readSync(fd, head, 0, 64, 0);
    closeSync(fd);
    expect(head.readUInt32LE(48)).toBe(REDIRECT_FLAG_KEEP | REDIRECT_FLAG_PREFILLED);
    const data = readFileSync(path).subarray(filled.dataOffset);
    expect(data.length).toBe(SIZE);
    const zeroBlock = Buffer.alloc(4096);
    const zeroBlocks = [];
    for (let at = 0; at < SIZE; at += 4096)
      if (data.subarray(at, at + 4096).equals(zeroBlock)) zeroBlocks.push(at);
    expect(zeroBlocks).toEqual([]);
    // Nothing is owed, and the next backup reuses it without writing it again.
    expect(redirectPending(image)).toBe(false);
    const before = statSync(path).mtimeMs;
    const again = await createRedirectFile(path, SIZE, 512, true, { bytesPerSecond: 0 });
    expect(again).toEqual(filled);
    expect(statSync(path).mtimeMs).toBe(before);
    // Paced: 1 MiB at 4 MiB/s takes about a quarter second (a lower bound only).
    rmSync(path);
    const began = performance.now();
    await createRedirectFile(path, SIZE, 512, true, { bytesPerSecond: 4 * SIZE });
    expect(performance.now() - began).toBeGreaterThanOrEqual(200);
  });

  it('close() leaves a persisted overlay that recoverRedirect merges into the image', async () => {
    const r = await rig('close');
    r.ov.startRedirect();
    await write(r, 0, 100 * 512, 3 * 512, 0x11);
    await write(r, 1, SIZE - 4096, 4096, 0x22);
    await r.ov.close();
    r.engine.close();
    expect(readFileSync(r.image).equals(pattern(SIZE))).toBe(true);
    const fd = (await import('node:fs')).openSync(r.image, 'r+');
    const rec = recoverRedirect(r.image, fd);
    (await import('node:fs')).closeSync(fd);
    expect(rec).toMatchObject({ bytes: 3 * 512 + 4096, runs: 2 });
    const want = pattern(SIZE);
    want.fill(0x11, 100 * 512, 103 * 512);
    want.fill(0x22, SIZE - 4096);
    expect(readFileSync(r.image).equals(want)).toBe(true);
    expect(recoverRedirect(r.image, 0)).toBe(null);
  });

  it('refuses an overlay that exists, is not one, or does not fit the image, naming it', async () => {
    const image = join(dir, 'bad.img');
    writeFileSync(image, pattern(SIZE));
    await createRedirectFile(redirectPath(image), SIZE, 512);
    await expect(createRedirectFile(redirectPath(image), SIZE, 512)).rejects.toMatchObject({
      code: 'ERR_REDIRECT_EXISTS',
      message: expect.stringContaining('not merged yet'),
    });
    const { openSync, closeSync } = await import('node:fs');
    const fd = openSync(image, 'r+');
    try {
      writeFileSync(image, pattern(SIZE / 2));
      expect(() => recoverRedirect(image, fd)).toThrow(
        /is for a disk of 1048576 bytes, the image has only 524288/,
      );
      writeFileSync(redirectPath(image), Buffer.alloc(8192, 0x5a));
      expect(() => recoverRedirect(image, fd)).toThrow(
        expect.objectContaining({
          code: 'ERR_REDIRECT_FORMAT',
          message: expect.stringContaining('not a vhost-rt overlay'),
        }),
      );
      writeFileSync(redirectPath(image), Buffer.from('VHRTROW1'));
      expect(() => recoverRedirect(image, fd)).toThrow(/truncated/);
    } finally {
      closeSync(fd);
    }
  });

  it('needs an engine that takes a second file (nbd has none)', async () => {
    const image = join(dir, 'nbd.img');
    const engine = { name: 'nbd' } as unknown as IoEngine;
    await expect(
      WriteRedirect.create({
        image,
        diskBytes: SIZE,
        unitBytes: 512,
        engine,
        direct: false,
        slots: 1,
        maxIovs: 4,
        hooks: {
          complete: () => {},
          endBatch: () => {},
          detached: () => {},
          warn: () => {},
          guestStarted: () => 0,
          guestInFlight: () => 0,
        },
      }),
    ).rejects.toThrow(
      /the nbd engine cannot redirect writes: method redirect needs a local image file/,
    );
  });
});
