/**
 * The native UringContext on its own: argument checks happen before anything
 * is queued, FALLOCATE and FDSYNC go through the ring, completions arrive on
 * the registered eventfd, and a destroyed ring refuses work with EBADF.
 */
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { URING_CMD } from '../../src/io/index.js';
import { AIO_OP_STRIDE, native, POLL_READABLE } from '../../src/native.js';

const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-uring-'));
const path = join(dir, 'disk.img');
const fd = openSync(path, 'w+');
const memfd = native.memfdCreate('buf', 65536);
const table = new native.BufferTable();
table.set([native.mmapShared(memfd, 65536, 0)]);

afterAll(() => {
  closeSync(fd);
  native.close(memfd);
  rmSync(dir, { recursive: true, force: true });
});

function opsOf(rows: number[][]): Float64Array {
  const ops = new Float64Array(Math.max(1, rows.length) * AIO_OP_STRIDE);
  for (const [i, row] of rows.entries()) ops.set(row, i * AIO_OP_STRIDE);
  return ops;
}

/** Waits for the eventfd, then reaps until `n` completions arrived. */
function reap(ring: { getEvents(out: Float64Array, max: number): number }, efd: number, n: number) {
  return new Promise<number[][]>((resolve) => {
    const got: number[][] = [];
    const out = new Float64Array(64);
    const w = new native.FdWatcher(efd, () => {
      native.eventfdRead(efd);
      const k = ring.getEvents(out, 32);
      for (let i = 0; i < k; i++) got.push([out[2 * i], out[2 * i + 1]]);
      if (got.length >= n) {
        w.close();
        resolve(got.sort((a, b) => a[0] - b[0]));
      }
    });
    w.start(POLL_READABLE);
  });
}

describe('UringContext', () => {
  it('extends, zeroes, writes and syncs through the ring; completions signal the eventfd', async () => {
    const efd = native.eventfd(0);
    const ring = new native.UringContext(8, efd, 8, -1);
    expect(ring.sqpoll).toBe(false);
    const iovs = new Float64Array([0, 0, 4096]);
    new Uint8Array(native.mmapShared(memfd, 4096, 0)).fill(7);
    expect(ring.submit(table, opsOf([[URING_CMD.FALLOCATE, fd, 0, 0, 65536, 1]]), 1, iovs)).toBe(1);
    expect(await reap(ring, efd, 1)).toEqual([[1, 0]]);
    const ops = opsOf([
      [URING_CMD.PWRITEV, fd, 8192, 0, 1, 2],
      [URING_CMD.FDSYNC, fd, 0, 0, 0, 3],
    ]);
    expect(ring.submit(table, ops, 1, iovs)).toBe(1);
    expect(await reap(ring, efd, 1)).toEqual([[2, 4096]]);
    expect(ring.submit(table, ops.subarray(AIO_OP_STRIDE), 1, iovs)).toBe(1);
    expect(await reap(ring, efd, 1)).toEqual([[3, 0]]);
    const file = readFileSync(path);
    expect(file.length).toBe(65536);
    expect(file[8192]).toBe(7);
    expect(file[0]).toBe(0);
    ring.destroy();
    ring.destroy();
    expect(() => ring.submit(table, ops, 1, iovs)).toThrow(
      expect.objectContaining({ code: 'EBADF' }),
    );
    native.close(efd);
  });

  it('checks every entry before queuing any', () => {
    const ring = new native.UringContext(4, -1, 4, -1);
    const iovs = new Float64Array([0, 0, 4096, 3, 0, 16]);
    const good = [URING_CMD.PREADV, fd, 0, 0, 1, 1];
    const cases: [number[], RegExp][] = [
      [[42, fd, 0, 0, 1, 2], /ops\[1\]\.opcode 42 is not a known URING_CMD/],
      [[URING_CMD.PREADV, -1, 0, 0, 1, 2], /ops\[1\]\.fd/],
      [[URING_CMD.PREADV, fd, 0.5, 0, 1, 2], /ops\[1\]\.offset/],
      [[URING_CMD.PREADV, fd, 0, 1, 1, 2], /ops\[1\]: iovs\[1\] names buffer 3/],
      [[URING_CMD.PREADV, fd, 0, 0, 9, 2], /ops\[1\]: iovCount 9 exceeds/],
      [[URING_CMD.FALLOCATE, fd, 0, -1, 4096, 2], /ops\[1\]\.mode/],
    ];
    for (const [bad, message] of cases) {
      expect(() => ring.submit(table, opsOf([good, bad]), 2, iovs)).toThrow(message);
    }
    expect(() => ring.submit(table, opsOf([good]), 5, iovs)).toThrow(RangeError);
    // Nothing was queued by the refused calls: the ring is empty.
    expect(ring.getEvents(new Float64Array(8), 4)).toBe(0);
    ring.destroy();
  });

  it('refuses impossible sizes up front', () => {
    expect(() => new native.UringContext(0, -1, 4, -1)).toThrow(RangeError);
    expect(() => new native.UringContext(40000, -1, 4, -1)).toThrow(RangeError);
    expect(() => new native.UringContext(4, -1, 4, -2)).toThrow(RangeError);
  });
});
