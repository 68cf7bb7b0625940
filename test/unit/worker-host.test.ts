/**
 * A worker that dies unasked (an uncaught exception: a bug) must be
 * reported, so the daemon can stop and exit non-zero; one asked to shut down
 * must not be.
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
