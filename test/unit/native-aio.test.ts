import { closeSync, constants, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SystemError } from '../../src/errors.js';
import {
  AIO_CMD,
  AIO_OP_STRIDE,
  type AioContext,
  type BufferTable,
  IOV_STRIDE,
  native,
  POLL_READABLE,
} from '../../src/native.js';
import { waitFor } from '../support/wait.js';

const BUF_SIZE = 64 * 1024;
const FILE_SIZE = 1024 * 1024;
const DEPTH = 8;
const MAX_IOVS = 16;

// /tmp is ext4 here: O_DIRECT works with 4096-aligned offsets and lengths, and
// mmapShared buffers are page aligned, so buffer offsets of 4096 multiples are too.
const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-aio-'));
let fd = -1;
let efd = -1;
let memfds: number[] = [];
let src: Uint8Array;
let dst: Uint8Array;
let table: BufferTable;
let ctx: AioContext;

beforeAll(async () => {
  const flags = constants.O_RDWR | constants.O_CREAT | native.constants.O_DIRECT;
  fd = openSync(join(dir, 'disk.img'), flags, 0o600);
  efd = native.eventfd(0);
  memfds = [native.memfdCreate('src', BUF_SIZE), native.memfdCreate('dst', BUF_SIZE)];
  const sabs = memfds.map((m) => native.mmapShared(m, BUF_SIZE, 0));
  [src, dst] = sabs.map((s) => new Uint8Array(s));
  table = new native.BufferTable();
  table.set(sabs);
  ctx = new native.AioContext(DEPTH, efd, MAX_IOVS);
  native.pwritev(fd, table, new Float64Array([1, 0, BUF_SIZE]), 0, 1, 0); // zeroes
  await new Promise((resolve) => native.fallocateAsync(fd, 0, 0, FILE_SIZE, resolve));
});

afterAll(() => {
  ctx.destroy();
  for (const m of memfds) native.close(m);
  native.close(efd);
  closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
});

/** ops entries from [opcode, fd, offset, firstIov, iovCount, userData] rows. */
function opsOf(rows: number[][]): Float64Array {
  const ops = new Float64Array(rows.length * AIO_OP_STRIDE);
  for (const [i, row] of rows.entries()) ops.set(row, i * AIO_OP_STRIDE);
  return ops;
}

function iovsOf(rows: number[][]): Float64Array {
  const iovs = new Float64Array(MAX_IOVS * IOV_STRIDE);
  for (const [i, row] of rows.entries()) iovs.set(row, i * IOV_STRIDE);
  return iovs;
}

function fill(bytes: Uint8Array, seed: number): void {
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31 + seed) & 0xff;
}

/** Waits on the eventfd and reaps until `count` completions came; returns them by userData. */
async function reap(count: number): Promise<Map<number, number>> {
  const done = new Map<number, number>();
  const out = new Float64Array(DEPTH * 2);
  while (done.size < count) {
    await new Promise<void>((resolve) => {
      const w = new native.FdWatcher(efd, () => {
        w.close();
        resolve();
      });
      w.start(POLL_READABLE);
    });
    native.eventfdRead(efd);
    const n = ctx.getEvents(out, DEPTH);
    for (let i = 0; i < n; i++) done.set(out[2 * i], out[2 * i + 1]);
  }
  return done;
}

function readBack(offset: number, length: number): Uint8Array {
  dst.fill(0);
  const n = native.preadv(fd, table, new Float64Array([1, 0, length]), 0, 1, offset);
  expect(n).toBe(length);
  return dst.subarray(0, length);
}

describe('AioContext', () => {
  it('writes a pattern from shared memory with O_DIRECT and reads it back', async () => {
    fill(src.subarray(0, 24576), 1);
    const ops = opsOf([
      [AIO_CMD.PWRITEV, fd, 4096, 0, 2, 11],
      [AIO_CMD.PWRITE, fd, 65536, 2, 1, 0xffffffff],
    ]);
    const iovs = iovsOf([
      [0, 0, 8192],
      [0, 8192, 8192],
      [0, 16384, 8192],
    ]);
    expect(ctx.submit(table, ops, 2, iovs)).toBe(2);
    const done = await reap(2);
    expect(done).toEqual(
      new Map([
        [11, 16384],
        [0xffffffff, 8192],
      ]),
    );
    expect(readBack(4096, 16384)).toEqual(src.subarray(0, 16384));
    expect(readBack(65536, 8192)).toEqual(src.subarray(16384, 24576));
  });

  it('reads with PREADV and PREAD, and syncs with FSYNC / FDSYNC', async () => {
    fill(src.subarray(0, 8192), 2);
    native.pwritev(fd, table, new Float64Array([0, 0, 8192]), 0, 1, 131072);
    dst.fill(0);
    const ops = opsOf([
      [AIO_CMD.PREADV, fd, 131072, 0, 2, 1],
      [AIO_CMD.PREAD, fd, 135168, 2, 1, 2],
      [AIO_CMD.FDSYNC, fd, 0, 0, 0, 3],
      [AIO_CMD.FSYNC, fd, 0, 0, 0, 4],
    ]);
    const iovs = iovsOf([
      [1, 8192, 2048],
      [1, 10240, 2048],
      [1, 16384, 4096],
    ]);
    expect(ctx.submit(table, ops, 4, iovs)).toBe(4);
    expect(await reap(4)).toEqual(
      new Map([
        [1, 4096],
        [2, 4096],
        [3, 0],
        [4, 0],
      ]),
    );
    expect(dst.subarray(8192, 12288)).toEqual(src.subarray(0, 4096));
    expect(dst.subarray(16384, 20480)).toEqual(src.subarray(4096, 8192));
  });

  it('rejects an out-of-range iovec with RangeError before any I/O', async () => {
    fill(src.subarray(0, 4096), 3);
    const before = readBack(262144, 4096).slice();
    const ops = opsOf([
      [AIO_CMD.PWRITEV, fd, 262144, 0, 1, 1],
      [AIO_CMD.PWRITEV, fd, 266240, 1, 2, 2],
    ]);
    const iovs = iovsOf([
      [0, 0, 4096],
      [0, 4096, 4096],
      [0, BUF_SIZE - 4096, 8192],
    ]);
    expect(() => ctx.submit(table, ops, 2, iovs)).toThrow(RangeError);
    expect(() => ctx.submit(table, ops, 2, iovs)).toThrow(/^ops\[1\]: iovs\[2\] range/);
    // Sentinel: a good read of the same range, submitted after the rejected batch; once it
    // completed, nothing else may have completed or be waiting.
    const sentinel = opsOf([[AIO_CMD.PREADV, fd, 262144, 0, 1, 3]]);
    expect(ctx.submit(table, sentinel, 1, iovsOf([[1, 0, 4096]]))).toBe(1);
    expect(await reap(1)).toEqual(new Map([[3, 4096]]));
    expect(dst.subarray(0, 4096)).toEqual(before);
    expect(native.eventfdRead(efd)).toBe(0);
    expect(ctx.getEvents(new Float64Array(4), 2)).toBe(0);
    expect(readBack(262144, 4096)).toEqual(before);
  });

  it('names the bad entry or argument in validation errors', () => {
    const iovs = iovsOf([[0, 0, 4096]]);
    const write = [AIO_CMD.PWRITEV, fd, 0, 0, 1, 1];
    const bad = (row: number[]) => ctx.submit(table, opsOf([write, row]), 2, iovs);
    expect(() => bad([99, fd, 0, 0, 1, 2])).toThrow(/^ops\[1\]\.opcode 99/);
    expect(() => bad([AIO_CMD.PREAD, fd, 0, 0, 2, 2])).toThrow(/^ops\[1\]\.iovCount/);
    expect(() => bad([AIO_CMD.PREADV, fd, -1, 0, 1, 2])).toThrow(/^ops\[1\]\.offset/);
    expect(() => bad([AIO_CMD.PREADV, fd, 0, 0, 1, 0.5])).toThrow(/^ops\[1\]\.userData/);
    expect(() => bad([AIO_CMD.PREADV, fd, 0, MAX_IOVS, 1, 2])).toThrow(/^ops\[1\]: iovecs/);
    expect(() => bad([AIO_CMD.PREADV, fd, 0, 0, MAX_IOVS, 2])).toThrow(/maxIovs/);
    const otherBuffer = iovsOf([[2, 0, 1]]);
    expect(() => ctx.submit(table, opsOf([write]), 1, otherBuffer)).toThrow(/names buffer 2/);
    expect(() => ctx.submit(table, opsOf([write]), DEPTH + 1, iovs)).toThrow(/^count/);
    expect(() => ctx.submit(table, opsOf([write]), 2, iovs)).toThrow(/^ops holds fewer/);
    expect(() => ctx.submit({} as BufferTable, opsOf([write]), 1, iovs)).toThrow(TypeError);
    expect(() => new native.AioContext(0, efd, 1)).toThrow(/^depth/);
  });

  it('returns how many iocbs the kernel took, and throws errno for the first', async () => {
    const iovs = iovsOf([[0, 0, 4096]]);
    const closedFd = native.eventfd(0);
    native.close(closedFd);
    const bad = [AIO_CMD.PREADV, closedFd, 0, 0, 1, 2];
    let caught: unknown;
    try {
      ctx.submit(table, opsOf([bad]), 1, iovs);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(SystemError);
    expect(caught).toMatchObject({ code: 'EBADF', errno: 9, syscall: 'io_submit' });
    const ops = opsOf([[AIO_CMD.PREADV, fd, 0, 0, 1, 1], bad]);
    expect(ctx.submit(table, ops, 2, iovs)).toBe(1);
    expect(await reap(1)).toEqual(new Map([[1, 4096]]));
  });

  it('reports per-request errors as negative errno results', async () => {
    // O_DIRECT rejects a misaligned length at completion time with -EINVAL.
    const ops = opsOf([[AIO_CMD.PREADV, fd, 0, 0, 1, 5]]);
    expect(ctx.submit(table, ops, 1, iovsOf([[0, 0, 100]]))).toBe(1);
    expect(await reap(1)).toEqual(new Map([[5, -22]]));
  });

  it('destroys idempotently; a destroyed context fails with EINVAL', () => {
    const other = new native.AioContext(2, -1, 2);
    other.destroy();
    other.destroy();
    expect(() => other.submit(table, opsOf([]), 0, iovsOf([]))).toThrow(
      expect.objectContaining({ code: 'EINVAL', syscall: 'io_submit' }),
    );
  });
});

describe('BufferTable', () => {
  it('holds SharedArrayBuffers and rejects anything else, keeping the old entries', () => {
    const t = new native.BufferTable();
    expect(t.length).toBe(0);
    t.set([new SharedArrayBuffer(16), new SharedArrayBuffer(32)]);
    expect(t.length).toBe(2);
    expect(() =>
      t.set([new SharedArrayBuffer(8), new ArrayBuffer(8) as unknown as SharedArrayBuffer]),
    ).toThrow(new TypeError('buffers[1] must be a SharedArrayBuffer'));
    expect(t.length).toBe(2);
  });

  it('keeps a mapping alive through the table after every JS handle is dropped', async () => {
    const { setFlagsFromString } = await import('node:v8');
    const { runInNewContext } = await import('node:vm');
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const t = new native.BufferTable();
    let collected = false;
    const registry = new FinalizationRegistry(() => {
      collected = true;
    });
    (() => {
      const m = native.memfdCreate('dropped', 4096);
      const sab = native.mmapShared(m, 4096, 0);
      new Uint8Array(sab).fill(0x42);
      t.set([sab]);
      registry.register(sab, 'dropped');
      native.close(m);
    })();
    await waitFor(() => {
      gc();
      return collected;
    }, 'the dropped SharedArrayBuffer to be collected');
    // Native finalizers that V8 defers run from the loop: one turn more.
    await new Promise((r) => setImmediate(r));
    const buffered = openSync(join(dir, 'disk.img'), constants.O_RDWR);
    expect(native.pwritev(buffered, t, new Float64Array([0, 0, 4096]), 0, 1, 524288)).toBe(4096);
    closeSync(buffered);
    expect(readBack(524288, 4096).every((b) => b === 0x42)).toBe(true);
  });
});

describe('synchronous and threadpool file operations', () => {
  it('preadv / pwritev move data through several iovecs', () => {
    fill(src.subarray(0, 8192), 4);
    const iovs = new Float64Array([0, 4096, 4096, 0, 0, 4096]);
    expect(native.pwritev(fd, table, iovs, 0, 2, 327680)).toBe(8192);
    const back = readBack(327680, 8192);
    expect(back.subarray(0, 4096)).toEqual(src.subarray(4096, 8192));
    expect(back.subarray(4096)).toEqual(src.subarray(0, 4096));
    expect(() => native.preadv(fd, table, iovs, 1, 2, 0)).toThrow(RangeError);
    expect(() => native.preadv(-1, table, iovs, 0, 1, 0)).toThrow(
      expect.objectContaining({ code: 'EBADF', syscall: 'preadv' }),
    );
  });

  it('fdatasyncAsync calls back on this thread with (null, 0) or a SystemError', async () => {
    const ok = await new Promise<[Error | null, number]>((resolve) =>
      native.fdatasyncAsync(fd, (err, result) => resolve([err, result])),
    );
    expect(ok).toEqual([null, 0]);
    const [err] = await new Promise<[Error | null, number]>((resolve) =>
      native.fdatasyncAsync(-1, (e, result) => resolve([e, result])),
    );
    expect(err).toBeInstanceOf(SystemError);
    expect(err).toMatchObject({ code: 'EBADF', syscall: 'fdatasync' });
  });

  it('fallocateAsync punches a hole that reads back as zeroes', async () => {
    fill(src.subarray(0, 8192), 5);
    native.pwritev(fd, table, new Float64Array([0, 0, 8192]), 0, 1, 393216);
    const c = native.constants;
    const mode = c.FALLOC_FL_PUNCH_HOLE | c.FALLOC_FL_KEEP_SIZE;
    const [err, result] = await new Promise<[Error | null, number]>((resolve) =>
      native.fallocateAsync(fd, mode, 393216, 4096, (e, r) => resolve([e, r])),
    );
    expect([err, result]).toEqual([null, 0]);
    const back = readBack(393216, 8192);
    expect(back.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(back.subarray(4096)).toEqual(src.subarray(4096, 8192));
  });

  it('blockSize reports a power of two between 512 and 4096', () => {
    for (const f of [fd, memfds[0]]) {
      const size = native.blockSize(f);
      expect(size).toBeGreaterThanOrEqual(512);
      expect(size).toBeLessThanOrEqual(4096);
      expect(size & (size - 1)).toBe(0);
    }
    expect(() => native.blockSize(-1)).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });
});
