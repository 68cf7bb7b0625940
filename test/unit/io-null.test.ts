/**
 * The null engine (issue 14) driven directly over memfd "guest RAM": reads
 * write zeroes into the guest buffers, writes and slow ops complete without
 * touching the image, completions arrive asynchronously through one eventfd
 * write per batch; and the staging engines' ordering of a batch that mixes
 * I/O classes (RT first, idle last, stable), which the null engine makes
 * visible because it completes in submission order.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  createEngine,
  type IoEngine,
  IoOp,
  IoprioClass,
  ioprioValue,
  type NullEngine,
} from '../../src/io/index.js';
import { native } from '../../src/native.js';

const RAM_BYTES = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-null-'));
const memfd = native.memfdCreate('ram', RAM_BYTES);
const ram = native.mmapShared(memfd, RAM_BYTES, 0);
const bytes = new Uint8Array(ram);
let open: IoEngine[] = [];

afterEach(() => {
  for (const e of open) e.close();
  open = [];
});
afterAll(() => {
  native.close(memfd);
  rmSync(dir, { recursive: true, force: true });
});

function nullEngine(): { engine: NullEngine; path: string } {
  const path = join(dir, `img${open.length}`);
  writeFileSync(path, Buffer.alloc(256 * 1024, 0x5a));
  const options = { path, readonly: false, direct: true, depth: 32, maxIovs: 64, warn: () => {} };
  const engine = createEngine('null', options) as NullEngine;
  engine.setBuffers([ram]);
  open.push(engine);
  return { engine, path };
}

/** Submits what `stage` stages; resolves with the completions in delivery order. */
function run(e: IoEngine, n: number, stage: () => void): Promise<[number, number][]> {
  return new Promise((resolve) => {
    const seen: [number, number][] = [];
    e.onComplete(
      (userData, result) => seen.push([userData, result]),
      () => {
        if (seen.length >= n) resolve(seen);
      },
    );
    stage();
    e.submit();
    // Asynchronous: nothing was delivered inside submit.
    expect(seen).toEqual([]);
  });
}

function read(e: IoEngine, ramOffset: number, length: number, userData: number, ioprio = 0) {
  const first = e.stagedIovs;
  e.addIov(0, ramOffset, length / 2);
  e.addIov(0, ramOffset + length / 2, length / 2);
  expect(e.queueReadWrite(IoOp.READ, 0, first, 2, userData, ioprio)).toBe(true);
}

describe('null engine', () => {
  it('reads zeroes into guest RAM, one eventfd write for the batch, image untouched', async () => {
    const { engine, path } = nullEngine();
    bytes.fill(0xaa, 0, 65536);
    const done = await run(engine, 8, () => {
      for (let i = 0; i < 8; i++) read(engine, i * 8192, 8192, i);
    });
    expect(done).toEqual(Array.from({ length: 8 }, (_, i) => [i, 8192]));
    expect(bytes.subarray(0, 65536).every((b) => b === 0)).toBe(true);
    expect(engine.signals).toBe(1);
    expect(engine.inFlight).toBe(0);
    expect(readFileSync(path).every((b) => b === 0x5a)).toBe(true);
  });

  it('completes writes, flush, discard and write-zeroes without I/O', async () => {
    const { engine, path } = nullEngine();
    bytes.fill(0x11, 0, 8192);
    const done = await run(engine, 4, () => {
      const first = engine.stagedIovs;
      engine.addIov(0, 0, 8192);
      engine.queueReadWrite(IoOp.WRITE, 4096, first, 1, 0);
      engine.queueSlowOp(IoOp.FLUSH, 0, 0, 1);
      engine.queueSlowOp(IoOp.DISCARD, 0, 4096, 2);
      engine.queueSlowOp(IoOp.WRITE_ZEROES, 0, 4096, 3);
    });
    expect(new Map(done)).toEqual(
      new Map([
        [0, 8192],
        [1, 0],
        [2, 0],
        [3, 0],
      ]),
    );
    expect(bytes[0]).toBe(0x11); // a write leaves guest RAM alone
    expect(readFileSync(path).every((b) => b === 0x5a)).toBe(true);
  });

  it('fails an iovec outside guest RAM with -EFAULT and serves the rest', async () => {
    const { engine } = nullEngine();
    const done = await run(engine, 2, () => {
      engine.addIov(3, 0, 4096);
      engine.queueReadWrite(IoOp.READ, 0, 0, 1, 0);
      read(engine, 0, 4096, 1);
    });
    expect(done).toEqual([
      [0, -14],
      [1, 4096],
    ]);
  });

  it('takes a new batch staged from inside a completion (a re-drain) and signals it again', async () => {
    const { engine } = nullEngine();
    const seen: number[] = [];
    await new Promise<void>((resolve) => {
      engine.onComplete(
        (userData) => {
          seen.push(userData);
          if (userData === 0) {
            read(engine, 0, 4096, 1);
            engine.submit();
          }
        },
        () => {
          if (seen.length === 2) resolve();
        },
      );
      read(engine, 0, 4096, 0);
      engine.submit();
    });
    expect(seen).toEqual([0, 1]);
    expect(engine.signals).toBe(2);
  });
});

describe('a batch that mixes I/O classes', () => {
  const RT = ioprioValue(IoprioClass.RT, 0);
  const BE = ioprioValue(IoprioClass.BE, 4);
  const IDLE = ioprioValue(IoprioClass.IDLE, 0);

  it('is submitted RT first, then best-effort and unclassed in staging order, idle last', async () => {
    const { engine } = nullEngine();
    const prios = [IDLE, BE, 0, RT, IDLE, RT, BE];
    const done = await run(engine, prios.length, () => {
      for (let i = 0; i < prios.length; i++) read(engine, i * 4096, 4096, i, prios[i]);
    });
    expect(done.map(([u]) => u)).toEqual([3, 5, 1, 2, 6, 0, 4]);
    expect(engine.reorderedBatches).toBe(1);
  });

  it('is left as it is when one class is staged (QD1, or a single-class batch)', async () => {
    const { engine } = nullEngine();
    await run(engine, 1, () => read(engine, 0, 4096, 0, RT));
    const done = await run(engine, 3, () => {
      for (let i = 0; i < 3; i++) read(engine, i * 4096, 4096, i, BE);
    });
    expect(done.map(([u]) => u)).toEqual([0, 1, 2]);
    expect(engine.reorderedBatches).toBe(0);
  });
});
