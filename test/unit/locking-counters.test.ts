import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { StatCounters } from '../../src/locking/counters.js';
import { LockError } from '../../src/locking/errors.js';
import { COUNTERS, countersByteLength } from '../../src/locking/layout.js';

/** Workers load dist/: fail with the fix when it is older than the sources. */
function assertBuilt(names: string[]): void {
  for (const name of names) {
    const src = fileURLToPath(new URL(`../../src/locking/${name}.ts`, import.meta.url));
    const out = fileURLToPath(new URL(`../../dist/src/locking/${name}.js`, import.meta.url));
    const built = statSync(out, { throwIfNoEntry: false });
    if (built === undefined || built.mtimeMs < statSync(src).mtimeMs) {
      throw new Error(`dist/src/locking/${name}.js is stale: run npx tsc -p tsconfig.json`);
    }
  }
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof LockError ? err.code : `not a LockError: ${String(err)}`;
  }
  return undefined;
}

const NAMES = ['requests', 'bytes', 'peak'] as const;

describe('StatCounters on one thread', () => {
  it('adds, sets and raises, and snapshots by name', () => {
    const c = StatCounters.create(NAMES);
    expect(c.snapshot()).toEqual({ requests: 0, bytes: 0, peak: 0 });
    c.add(0, 5);
    c.add(0, -2);
    c.set(1, 1000);
    c.max(2, 7);
    c.max(2, 3);
    expect(c.get(0)).toBe(3);
    expect(c.get(2)).toBe(7);
    expect(c.snapshot()).toEqual({ requests: 3, bytes: 1000, peak: 7 });
    expect(c.indexOf('bytes')).toBe(1);
    expect(c.names).toEqual(NAMES);
  });

  it('holds 64-bit values across the 32-bit halves, negatives included', () => {
    const c = StatCounters.create(['v']);
    const values = [2 ** 32 - 1, 2 ** 32, 2 ** 40 + 5, -1, -(2 ** 33) - 7, Number.MAX_SAFE_INTEGER];
    for (const v of values) {
      c.set(0, v);
      expect(c.get(0)).toBe(v);
    }
    c.set(0, 2 ** 32 - 1);
    c.add(0, 1);
    expect(c.get(0)).toBe(2 ** 32);
  });

  it('saturates at the safe-integer limits instead of losing precision', () => {
    const c = StatCounters.create(['v']);
    c.set(0, Number.MAX_SAFE_INTEGER - 1);
    c.add(0, 10);
    expect(c.get(0)).toBe(Number.MAX_SAFE_INTEGER);
    c.set(0, Number.MIN_SAFE_INTEGER);
    c.add(0, -1);
    expect(c.get(0)).toBe(Number.MIN_SAFE_INTEGER);
  });

  it('validates names, indexes and values', () => {
    expect(() => StatCounters.create(['a', 'a'])).toThrow(RangeError);
    expect(() => StatCounters.create(['a', ''])).toThrow(TypeError);
    const c = StatCounters.create(['a']);
    expect(() => c.add(1, 1)).toThrow(RangeError);
    expect(() => c.get(-1)).toThrow(RangeError);
    expect(() => c.set(0, 1.5)).toThrow(RangeError);
    expect(() => c.max(0, 2 ** 53)).toThrow(RangeError);
    expect(() => c.indexOf('b')).toThrow(RangeError);
  });

  it('attaches only to a block of the same counters', () => {
    const c = StatCounters.create(NAMES);
    const reader = StatCounters.attach(c.buffer, NAMES);
    c.add(1, 99);
    expect(reader.get(1)).toBe(99);
    expect(codeOf(() => StatCounters.attach(c.buffer, ['requests', 'bytes']))).toBe(
      'SHM_BAD_LAYOUT',
    );
    const blank = new SharedArrayBuffer(countersByteLength(3));
    expect(codeOf(() => StatCounters.attach(blank, NAMES))).toBe('SHM_BAD_LAYOUT');
  });

  it('keeps the sequence even outside batches, odd inside, and nests batches', () => {
    const c = StatCounters.create(['a', 'b']);
    const slots = new Int32Array(c.buffer);
    c.add(0, 1);
    expect(slots[COUNTERS.SEQ]).toBe(2);
    c.beginBatch();
    c.beginBatch();
    c.add(0, 1);
    c.add(1, 1);
    c.endBatch();
    expect(slots[COUNTERS.SEQ] & 1).toBe(1); // still inside the outer batch
    c.endBatch();
    expect(slots[COUNTERS.SEQ]).toBe(4);
    expect(codeOf(() => c.endBatch())).toBe('LOCK_NOT_HELD');
  });

  it('catches an overlapping second writer', () => {
    const c = StatCounters.create(['a']);
    const intruder = StatCounters.attach(c.buffer, ['a']);
    c.beginBatch();
    expect(codeOf(() => intruder.add(0, 1))).toBe('COUNTERS_SECOND_WRITER');
    c.endBatch();
    intruder.add(0, 1); // fine once the first section is closed
    expect(c.get(0)).toBe(1);
  });

  it('a reader gives up with COUNTERS_BUSY when the writer stays mid-update', () => {
    const c = StatCounters.create(['a']);
    const reader = StatCounters.attach(c.buffer, ['a']);
    c.beginBatch(); // as if the writer died here
    const t0 = performance.now();
    expect(codeOf(() => reader.get(0))).toBe('COUNTERS_BUSY');
    expect(performance.now() - t0).toBeGreaterThanOrEqual(990);
    c.endBatch();
    expect(reader.get(0)).toBe(0);
  });
});

describe('StatCounters across threads', () => {
  it('never shows a torn value or half a batch while a worker writes', async () => {
    assertBuilt(['counters', 'layout', 'errors', 'index']);
    const counters = StatCounters.create(NAMES);
    const done = new Int32Array(new SharedArrayBuffer(4));
    const seen = new Int32Array(new SharedArrayBuffer(4));
    // > 2^26: the high half changes every ~43 adds; 50M rounds stay below 2^53.
    const step = 100_000_007;
    const limits = { rounds: 100_000, maxRounds: 50_000_000, minSeen: 200_000, maxMs: 20_000 };
    // The writer aims at minSeen overlapping snapshots but stops at maxMs; what the test needs
    // is many reads that overlapped writes, not a rate. Measured 2026-12-02: an idle machine
    // took 200,563 in 19.7 s, a fresh-clone CI run beside the other test files 137,595 in 20 s.
    const minOverlap = 20_000;
    const worker = new Worker(new URL('../fixtures/ring-counters-writer.mjs', import.meta.url), {
      workerData: { buffer: counters.buffer, names: NAMES, step, done, seen, ...limits },
    });
    const finished = new Promise<{ rounds: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    let snapshots = 0;
    let last = 0;
    let bad: Record<string, number> | undefined;
    // Seq-cst load of the writer's done flag; reads after it see its final values.
    while (Atomics.load(done, 0) === 0) {
      const s = counters.snapshot();
      // Plain comparisons in the loop (expect() is slow): keep the first bad snapshot.
      const ok = s.bytes === s.requests * step && s.peak === s.requests && s.requests >= last;
      if (!ok) bad ??= s;
      last = s.requests;
      // Caught the writer midway: count it, the writer runs until enough did.
      if (s.requests > 0) Atomics.add(seen, 0, 1);
      if (++snapshots % 10_000 === 0) await new Promise((r) => setImmediate(r));
    }
    const { rounds } = await finished;
    expect(bad).toBeUndefined();
    expect(Atomics.load(seen, 0)).toBeGreaterThanOrEqual(minOverlap); // reads overlapped writes
    expect(counters.snapshot()).toEqual({ requests: rounds, bytes: rounds * step, peak: rounds });
    expect(counters.get(1)).toBe(rounds * step);
  });
});
