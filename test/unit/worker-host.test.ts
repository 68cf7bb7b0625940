/**
 * A worker that dies unasked (an uncaught exception: a bug) must be
 * reported, so the daemon can stop and exit non-zero; one asked to shut down
 * must not be, nor one whose start failed (its caller is told through `ready`).
 */
import { describe, expect, it } from 'vitest';
import { onWorkerFailure, WorkerHost } from '../../src/thread/index.js';

const ENTRY = '../../test/fixtures/worker-crash.mjs';
const quiet = () => {};

describe('WorkerHost', () => {
  it('reports a worker that dies unasked, and fails its pending requests', async () => {
    const failures: Error[] = [];
    const off = onWorkerFailure((e) => failures.push(e));
    try {
      const host = new WorkerHost<object, object, { op: 'poke' }>(
        ENTRY,
        {},
        { name: 'test', log: quiet },
      );
      await host.ready;
      const pending = host.request({ op: 'poke' });
      await expect(pending).rejects.toMatchObject({ code: 'ERR_WORKER_EXITED' });
      expect(failures.map((e) => (e as { code?: string }).code)).toEqual(['ERR_WORKER_EXITED']);
      await expect(host.request({ op: 'poke' })).rejects.toThrow(/has exited/);
    } finally {
      off();
    }
  });

  it('does not report a worker whose start failed, even when its exit comes with its failure', async () => {
    const failures: Error[] = [];
    const off = onWorkerFailure((e) => failures.push(e));
    try {
      const flag = new SharedArrayBuffer(4);
      const host = new WorkerHost<{ flag: SharedArrayBuffer }, object, { op: 'poke' }>(
        '../../test/fixtures/worker-start-fail.mjs',
        { flag },
        { name: 'test', log: quiet },
      );
      // Block this thread's loop until the worker has posted its failure, and a little past
      // that so that it has ended too: the failure and the exit then reach this thread in one
      // turn of its loop (as on a busy daemon), the exit before the ready promise's rejection
      // has been seen by anyone.
      expect(Atomics.wait(new Int32Array(flag), 0, 0, 10_000)).not.toBe('timed-out');
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
      await expect(host.ready).rejects.toMatchObject({ code: 'ERR_IMAGE_LOCKED' });
      expect(failures).toEqual([]);
    } finally {
      off();
    }
  });

  it('does not report a worker that was asked to shut down', async () => {
    const failures: Error[] = [];
    const off = onWorkerFailure((e) => failures.push(e));
    try {
      const host = new WorkerHost<object, object, { op: 'poke' }>(
        ENTRY,
        {},
        { name: 'test', log: quiet },
      );
      await host.ready;
      await host.shutdown();
      expect(failures).toEqual([]);
    } finally {
      off();
    }
  });
});
