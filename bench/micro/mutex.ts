/**
 * Question: what does taking and releasing a per-queue lock cost when nobody
 * else holds it — the common case the fine-grained locks are designed for —
 * next to a bare atomic and to the no-op lock a single-owner queue uses?
 */
import { Mutex, NoopLock } from '../../src/locking/index.js';
import { isMain, type MicroRow, runMicro } from './common.js';

const OPS = 1000;

/** Runs the question and prints its table. */
export function run(): Promise<MicroRow[]> {
  const mutex = Mutex.create();
  const noop = new NoopLock();
  const word = new Int32Array(new SharedArrayBuffer(4));
  return runMicro('mutex: one uncontended lock + unlock', [
    {
      name: 'Mutex lock/unlock',
      opsPerCall: OPS,
      fn: () => {
        for (let i = 0; i < OPS; i++) {
          mutex.lock();
          mutex.unlock();
        }
      },
    },
    {
      name: 'Mutex tryLock/unlock',
      opsPerCall: OPS,
      fn: () => {
        for (let i = 0; i < OPS; i++) if (mutex.tryLock()) mutex.unlock();
      },
    },
    {
      name: 'NoopLock lock/unlock',
      opsPerCall: OPS,
      fn: () => {
        for (let i = 0; i < OPS; i++) {
          noop.lock();
          noop.unlock();
        }
      },
    },
    {
      name: 'baseline: 2 x Atomics.exchange',
      opsPerCall: OPS,
      fn: () => {
        for (let i = 0; i < OPS; i++) {
          // Stands for the lock's acquire and release: both full barriers.
          Atomics.exchange(word, 0, 1);
          Atomics.exchange(word, 0, 0);
        }
      },
    },
  ]);
}

if (isMain(import.meta.url)) await run();
