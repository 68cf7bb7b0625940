/**
 * Every I/O engine behind IoEngine, driven directly (no device) over a real
 * image file, memfd "guest RAM" and the engines' real eventfds / pools: the
 * same data-path checks for each, then each engine's error paths — a file
 * that is shorter than the request, a descriptor that refuses the operation,
 * an iovec outside guest RAM — which must come back as -errno completions,
 * never as exceptions.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  createEngine,
  IO_ENGINE_NAMES,
  type IoEngine,
  type IoEngineName,
  type IoEngineOptions,
  IoOp,
  type ThreadsEngine,
  type UringEngine,
} from '../../src/io/index.js';
import { native } from '../../src/native.js';

const RAM_BYTES = 1024 * 1024;
const EBADF = 9;

const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-io-'));
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

function pattern(seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (seed * 31 + i * 7) & 0xff;
  return out;
}

let files = 0;
function imageOf(size: number): string {
  const path = join(dir, `img${files++}`);
  writeFileSync(path, Buffer.alloc(size));
  return path;
}

const BASE_OPTIONS = { readonly: false, direct: true, depth: 32, maxIovs: 64, warn: () => {} };

function engineFor(
  name: IoEngineName,
  path: string,
  extra: Partial<IoEngineOptions> = {},
): IoEngine {
  const engine = createEngine(name, { ...BASE_OPTIONS, path, ...extra });
  open.push(engine);
  engine.setBuffers([ram]);
  return engine;
}

type Result = Map<number, number>;

/** Runs `stage` (which stages ops with userData 0..n-1), submits, resolves with every result. */
function runBatch(engine: IoEngine, n: number, stage: (e: IoEngine) => void): Promise<Result> {
  return new Promise((resolve, reject) => {
    const results: Result = new Map();
    const timer = setTimeout(() => reject(new Error(`${results.size}/${n} completed`)), 10_000);
    engine.onComplete(
      (userData, result) => results.set(userData, result),
      () => {
        if (results.size < n) return;
        clearTimeout(timer);
        resolve(results);
      },
    );
    stage(engine);
    engine.submit();
  });
}

function rw(e: IoEngine, op: 0 | 1, fileOffset: number, ramOffset: number, len: number, ud = 0) {
  const first = e.stagedIovs;
  // Two iovecs per request, so the vectored path is exercised.
  e.addIov(0, ramOffset, len / 2);
  e.addIov(0, ramOffset + len / 2, len / 2);
  expect(e.queueReadWrite(op, fileOffset, first, 2, ud)).toBe(true);
}

// The null engine does no I/O (test/unit/io-null.test.ts checks it) and the nbd engine
// serves NBD servers, not files (test/integration/blk-nbd.test.ts): the file engines here.
const DISK_ENGINES = IO_ENGINE_NAMES.filter((n) => n !== 'null' && n !== 'nbd');

describe.each(DISK_ENGINES)('engine %s', (name) => {
  it('writes and reads back a batch through guest RAM, with O_DIRECT and without', async () => {
    const path = imageOf(1024 * 1024);
    const e = engineFor(name, path);
    expect(e.name).toBe(name);
    expect(e.direct).toBe(true);
    const data = pattern(1, 16384);
    bytes.set(data, 0);
    const w = await runBatch(e, 2, (x) => {
      rw(x, IoOp.WRITE, 65536, 0, 8192, 0);
      rw(x, IoOp.WRITE, 65536 + 8192, 8192, 8192, 1);
    });
    expect([...w.values()]).toEqual([8192, 8192]);
    expect(Buffer.from(readFileSync(path).subarray(65536, 65536 + 16384)).equals(data)).toBe(true);
    bytes.fill(0, 65536, 65536 + 16384);
    // The second read is misaligned in RAM: it takes the buffered descriptor.
    const r = await runBatch(e, 2, (x) => {
      rw(x, IoOp.READ, 65536, 65536, 8192, 0);
      rw(x, IoOp.READ, 65536 + 8192, 65536 + 8192 + 1, 8192, 1);
    });
    expect([...r.values()]).toEqual([8192, 8192]);
    expect(Buffer.from(bytes.subarray(65536, 65536 + 8192)).equals(data.subarray(0, 8192))).toBe(
      true,
    );
    const second = bytes.subarray(65536 + 8193, 65536 + 8193 + 8192);
    expect(Buffer.from(second).equals(data.subarray(8192))).toBe(true);
    expect(e.inFlight).toBe(0);
  });

  it('flushes, writes zeroes and discards; the file shows it', async () => {
    const path = imageOf(256 * 1024);
    const e = engineFor(name, path);
    bytes.set(pattern(2, 65536), 0);
    await runBatch(e, 1, (x) => rw(x, IoOp.WRITE, 0, 0, 65536));
    const results = await runBatch(e, 3, (x) => {
      x.queueSlowOp(IoOp.FLUSH, 0, 0, 0);
      x.queueSlowOp(IoOp.WRITE_ZEROES, 4096, 8192, 1);
      x.queueSlowOp(IoOp.DISCARD, 32768, 4096, 2);
    });
    expect([...results.entries()].sort()).toEqual([
      [0, 0],
      [1, 0],
      [2, 0],
    ]);
    const file = readFileSync(path);
    expect(file.subarray(4096, 12288).every((b) => b === 0)).toBe(true);
    expect(file.subarray(32768, 36864).every((b) => b === 0)).toBe(true);
    expect(file[0]).toBe(pattern(2, 1)[0]);
    expect(Buffer.from(file.subarray(12288, 32768)).equals(bytes.subarray(12288, 32768))).toBe(
      true,
    );
  });

  it('reports a read past the end of a short file as a short or empty result', async () => {
    const e = engineFor(name, imageOf(12288));
    const r = await runBatch(e, 2, (x) => {
      rw(x, IoOp.READ, 8192, 0, 8192, 0); // straddles the end: 4096 bytes
      rw(x, IoOp.READ, 65536, 8192, 8192, 1); // wholly past it: 0 bytes
    });
    expect(r.get(0)).toBe(4096);
    expect(r.get(1)).toBe(0);
  });

  it('hands back a write to a read-only descriptor as -EBADF, and keeps serving', async () => {
    const e = engineFor(name, imageOf(65536), { readonly: true });
    const r = await runBatch(e, 2, (x) => {
      rw(x, IoOp.WRITE, 0, 0, 4096, 0);
      rw(x, IoOp.READ, 4096, 0, 4096, 1);
    });
    expect(r.get(0)).toBe(-EBADF);
    expect(r.get(1)).toBe(4096);
    expect(e.inFlight).toBe(0);
  });

  it('fails an iovec outside guest RAM with -errno, not an exception, and serves the rest', async () => {
    const e = engineFor(name, imageOf(65536));
    const r = await runBatch(e, 3, (x) => {
      rw(x, IoOp.READ, 4096, 0, 4096, 0);
      x.addIov(7, 0, 4096); // no buffer 7
      expect(x.queueReadWrite(IoOp.READ, 0, 2, 1, 1)).toBe(true);
      rw(x, IoOp.READ, 8192, 8192, 4096, 2);
    });
    expect(r.get(0)).toBe(4096);
    expect(r.get(1)).toBeLessThan(0);
    expect(r.get(2)).toBe(4096);
  });
});

describe('io_uring specifics', () => {
  it('runs with SQPOLL, or refuses with an error naming --uring-sqpoll', async () => {
    let e: IoEngine;
    try {
      e = engineFor('io_uring', imageOf(65536), { uringSqpoll: true });
    } catch (err) {
      expect((err as Error).message).toMatch(/^--uring-sqpoll: /);
      return;
    }
    expect((e as UringEngine).sqpoll).toBe(true);
    bytes.set(pattern(5, 4096), 0);
    const r = await runBatch(e, 1, (x) => rw(x, IoOp.WRITE, 0, 0, 4096));
    expect(r.get(0)).toBe(4096);
  });

  it('submits a batch larger than the submission ring holds at once', async () => {
    const e = engineFor('io_uring', imageOf(1024 * 1024), { depth: 300, maxIovs: 600 });
    const r = await runBatch(e, 300, (x) => {
      for (let i = 0; i < 300; i++) rw(x, IoOp.READ, i * 512, 0, 1024, i);
    });
    expect(r.size).toBe(300);
    expect([...r.values()].every((v) => v === 1024)).toBe(true);
  });
});

/** Scheduling policy (field 41 of /proc/self/task/TID/stat) of every thread of this process. */
function threadPolicies(): number[] {
  return readdirSync('/proc/self/task').map((tid) => {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[38]);
  });
}

describe('threads specifics', () => {
  it('runs the pool at the size and scheduling policy asked for', async () => {
    const e = engineFor('threads', imageOf(65536), {
      aioThreads: 3,
      aioThreadsPolicy: { policy: 'idle' },
    });
    expect((e as ThreadsEngine).threads).toBe(3);
    const r = await runBatch(e, 6, (x) => {
      for (let i = 0; i < 6; i++) rw(x, IoOp.READ, 0, 0, 4096, i);
    });
    expect(r.size).toBe(6);
    const SCHED_IDLE = native.constants.SCHED_IDLE;
    expect(threadPolicies().filter((p) => p === SCHED_IDLE).length).toBe(3);
  });

  it('keeps the memory of two engines apart when they share one pool', async () => {
    const pathA = imageOf(65536);
    writeFileSync(pathA, pattern(10, 65536));
    const a = engineFor('threads', pathA, { aioThreads: 1 });
    const pathB = imageOf(65536);
    writeFileSync(pathB, pattern(11, 65536));
    const b = createEngine('threads', { ...BASE_OPTIONS, path: pathB, aioThreads: 1 });
    open.push(b);
    const other = native.memfdCreate('ram-b', 65536);
    try {
      const ramB = native.mmapShared(other, 65536, 0);
      b.setBuffers([ramB]);
      // Enough tasks that later ones no longer carry buffers: the pool thread
      // must still tell the two engines' memory apart.
      for (let i = 0; i < 4; i++) await runBatch(a, 1, (x) => rw(x, IoOp.READ, 0, 0, 4096));
      for (let i = 0; i < 4; i++) await runBatch(b, 1, (x) => rw(x, IoOp.READ, 0, 0, 4096));
      bytes.fill(0, 0, 4096);
      await runBatch(a, 1, (x) => rw(x, IoOp.READ, 0, 0, 4096));
      expect(Buffer.from(bytes.subarray(0, 4096)).equals(pattern(10, 4096))).toBe(true);
      expect(Buffer.from(new Uint8Array(ramB, 0, 4096)).equals(pattern(11, 4096))).toBe(true);
    } finally {
      native.close(other);
    }
  });

  it('fails I/O with a warning naming the flag when pool threads cannot take their policy', async () => {
    const warnings: string[] = [];
    // Past the CLI's checks on purpose: the pool thread's own refusal is what is tested.
    const e = engineFor('threads', imageOf(65536), {
      aioThreads: 1,
      aioThreadsPolicy: { policy: 'fifo', priority: 200 },
      warn: (m) => warnings.push(m),
    });
    const r = await runBatch(e, 2, (x) => {
      rw(x, IoOp.READ, 0, 0, 4096, 0);
      rw(x, IoOp.READ, 4096, 0, 4096, 1);
    });
    expect([...r.values()].every((v) => v < 0)).toBe(true);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/--aio-threads-policy fifo:200: /);
  });

  it('follows guest RAM across setBuffers (a new memory table)', async () => {
    const path = imageOf(65536);
    writeFileSync(path, pattern(9, 65536));
    const e = engineFor('threads', path, { aioThreads: 2 });
    await runBatch(e, 4, (x) => {
      for (let i = 0; i < 4; i++) rw(x, IoOp.READ, 0, 0, 4096, i);
    });
    const other = native.memfdCreate('ram2', 65536);
    try {
      const ram2 = native.mmapShared(other, 65536, 0);
      e.setBuffers([ram2]);
      await runBatch(e, 4, (x) => {
        for (let i = 0; i < 4; i++) rw(x, IoOp.READ, 4096 * i, 4096 * i, 4096, i);
      });
      expect(Buffer.from(new Uint8Array(ram2, 0, 16384)).equals(pattern(9, 16384))).toBe(true);
    } finally {
      native.close(other);
    }
  });
});
