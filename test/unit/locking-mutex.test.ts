import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { LockError } from '../../src/locking/errors.js';
import { MUTEX_LOCKED, MUTEX_UNLOCKED } from '../../src/locking/layout.js';
import { type Lock, Mutex, NoopLock } from '../../src/locking/mutex.js';

const fixture = new URL('../fixtures/ring-mutex-counter.mjs', import.meta.url);

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

describe('Mutex on one thread', () => {
  it('moves the lock word 0 → 1 → 0 and refuses a second tryLock', () => {
    const m = Mutex.create();
    expect(m.state[m.index]).toBe(MUTEX_UNLOCKED);
    expect(m.tryLock()).toBe(true);
    expect(m.state[m.index]).toBe(MUTEX_LOCKED);
    expect(m.tryLock()).toBe(false);
    m.unlock();
    expect(m.state[m.index]).toBe(MUTEX_UNLOCKED);
    m.lock();
    expect(m.state[m.index]).toBe(MUTEX_LOCKED);
    m.unlock();
  });

  it('throws LOCK_NOT_HELD on unlock of an unlocked mutex, and stays usable', () => {
    const m = Mutex.create();
    expect(codeOf(() => m.unlock())).toBe('LOCK_NOT_HELD');
    expect(m.tryLock()).toBe(true);
    m.unlock();
  });

  it('withLock returns the value and releases on return and on throw', () => {
    const m = Mutex.create();
    expect(m.withLock(() => 42)).toBe(42);
    expect(m.state[0]).toBe(MUTEX_UNLOCKED);
    expect(() =>
      m.withLock(() => {
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(m.state[0]).toBe(MUTEX_UNLOCKED);
  });

  it('uses the given slot of a larger buffer and leaves its neighbours alone', () => {
    const words = new Int32Array(new SharedArrayBuffer(16));
    const m = new Mutex(words, 2);
    m.withLock(() => expect([...words]).toEqual([0, 0, MUTEX_LOCKED, 0]));
    expect([...words]).toEqual([0, 0, 0, 0]);
  });

  it('validates its arguments', () => {
    expect(() => new Mutex(new Int32Array(1))).toThrow(TypeError);
    const words = new Int32Array(new SharedArrayBuffer(8));
    expect(() => new Mutex(words, 2)).toThrow(RangeError);
    expect(() => new Mutex(words, -1)).toThrow(RangeError);
    expect(() => new Mutex(words, 0, { spinLimit: -1 })).toThrow(RangeError);
  });
});

describe('NoopLock', () => {
  it('behaves like a mutex for its single owner and fails where a mutex would hang', () => {
    const l = new NoopLock();
    expect(l.tryLock()).toBe(true);
    expect(l.tryLock()).toBe(false);
    expect(codeOf(() => l.lock())).toBe('LOCK_WOULD_DEADLOCK');
    l.unlock();
    expect(codeOf(() => l.unlock())).toBe('LOCK_NOT_HELD');
    expect(l.withLock(() => 'x')).toBe('x');
    expect(l.tryLock()).toBe(true);
  });

  it('is interchangeable with Mutex behind the Lock interface', () => {
    const bump = (lock: Lock, box: { n: number }) => lock.withLock(() => ++box.n);
    const box = { n: 0 };
    for (const lock of [new NoopLock(), Mutex.create()]) bump(lock, box);
    expect(box.n).toBe(2);
  });
});

type WorkerResult = { done: true; contended: number; increments: number };

/**
 * Starts one counting worker; resolves when it is ready, with a promise of its
 * result (boxed: resolving with a bare promise would wait for it).
 */
function startWorker(data: object): Promise<{ result: Promise<WorkerResult> }> {
  const worker = new Worker(fixture, { workerData: data });
  return new Promise((ready, fail) => {
    const result = new Promise<WorkerResult>((resolve, reject) => {
      worker.on('message', (m: { ready?: boolean } & WorkerResult) => {
        if (m.ready) ready({ result });
        else resolve(m);
      });
      worker.on('error', reject);
      worker.on('exit', (code) => code !== 0 && reject(new Error(`worker exited ${code}`)));
    });
    worker.on('error', fail);
  });
}

describe('Mutex under contention between threads', () => {
  // Lock word, counter, start flag and collision tally on separate cache lines.
  const LOCK = 0;
  const COUNTER = 16;
  const START = 32;
  const CONTENDED = 48;

  for (const spinLimit of [64, 0]) {
    it(`keeps a non-atomic counter exact: 2 workers + main thread (spinLimit ${spinLimit})`, async () => {
      assertBuilt(['mutex', 'layout', 'errors', 'index']);
      const words = new Int32Array(new SharedArrayBuffer(64 * 4));
      const iterations = 200_000;
      const data = {
        words,
        lockIndex: LOCK,
        counterIndex: COUNTER,
        startIndex: START,
        contendedIndex: CONTENDED,
        iterations,
        spinLimit,
        maxMs: 20_000,
      };
      const started = await Promise.all([startWorker(data), startWorker(data)]);
      // Release the barrier: the store is seen by the workers' Atomics.wait comparison.
      Atomics.store(words, START, 1);
      Atomics.notify(words, START);
      // The main thread contends too, doing O(1) work under the lock as the rules ask.
      const mutex = new Mutex(words, LOCK, { spinLimit });
      const mainIterations = 50_000;
      for (let i = 0; i < mainIterations; i++) {
        mutex.withLock(() => {
          words[COUNTER] = words[COUNTER] + 1;
        });
      }
      const done = await Promise.all(started.map((s) => s.result));
      const workerIncrements = done[0].increments + done[1].increments;
      expect(workerIncrements).toBeGreaterThanOrEqual(2 * iterations);
      expect(words[COUNTER]).toBe(workerIncrements + mainIterations);
      expect(words[LOCK]).toBe(MUTEX_UNLOCKED);
      // The test is only meaningful if the workers really collided.
      expect(done[0].contended + done[1].contended).toBeGreaterThan(0);
    });
  }
});
