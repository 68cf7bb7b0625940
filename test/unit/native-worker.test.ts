import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';
import { native, projectRoot } from '../../src/native.js';

const fixture = join(projectRoot, 'test', 'fixtures', 'native-worker.mjs');
const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-native-worker-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Started {
  worker: Worker;
  /**
   * Listened for from the start: a worker that posts and ends at once may emit
   * 'exit' right after 'message', before an awaiting caller could subscribe.
   */
  exited: Promise<number>;
}

/** Starts the fixture in `mode`; with `first`, resolves once the worker posted it. */
async function startWorker(mode: string, data: object, first?: string): Promise<Started> {
  const worker = new Worker(fixture, { workerData: { mode, ...data } });
  const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
  if (first === undefined) return { worker, exited };
  await new Promise<void>((resolve, reject) => {
    worker.once('error', reject);
    worker.once('message', (m) => (m === first ? resolve() : reject(new Error(String(m)))));
  });
  return { worker, exited };
}

function nextMessage<T>(worker: Worker): Promise<T> {
  return new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
}

describe('addon inside worker_threads', () => {
  it('runs an FdWatcher on the worker loop while main uses the addon too', async () => {
    const efd = native.eventfd(0);
    const { worker, exited } = await startWorker('watch', { fd: efd }, 'ready');
    const report = nextMessage<{ events: number; value: number; tid: number }>(worker);
    native.eventfdWrite(efd, 9);
    const { events, value, tid } = await report;
    expect(events).toBe(1);
    expect(value).toBe(9);
    expect(tid).not.toBe(native.gettid());
    expect(await exited).toBe(0);
    native.close(efd);
  });

  it('shares mmapShared pages with a worker through postMessage', async () => {
    const fd = native.memfdCreate('shared', 4096);
    const sab = native.mmapShared(fd, 4096, 0);
    const bytes = new Uint8Array(sab);
    bytes.set([1, 2, 3, 4]);
    const { worker, exited } = await startWorker('shared', { sab });
    const { seen } = await nextMessage<{ seen: number[] }>(worker);
    expect(seen).toEqual([1, 2, 3, 4]);
    expect(Array.from(bytes.subarray(4, 8))).toEqual([0xca, 0xfe, 0xba, 0xbe]);
    // A second mapping of the same memfd sees what the worker wrote.
    const again = new Uint8Array(native.mmapShared(fd, 4096, 0));
    expect(Array.from(again.subarray(0, 8))).toEqual([1, 2, 3, 4, 0xca, 0xfe, 0xba, 0xbe]);
    expect(await exited).toBe(0);
    native.close(fd);
  });

  it('terminates a worker that still has open watchers without crashing', async () => {
    const efd = native.eventfd(0);
    const { worker } = await startWorker('leak', { fd: efd }, 'ready');
    await worker.terminate();
    const second = await startWorker('unclosed', { fd: efd }, 'done');
    expect(await second.exited).toBe(0);
    native.close(efd);
  });

  it('terminates workers whose file calls are still on the threadpool without crashing', async () => {
    // A fragmented file: its FIEMAP count takes milliseconds, so the calls are still running
    // or queued when the worker goes. With Napi::AsyncWorker a completion on the terminating
    // worker threw past every frame, and std::terminate killed this whole process (native/fileio.cc
    // PoolCall).
    const path = join(dir, 'fragmented.img');
    const fd = openSync(path, 'w');
    const block = Buffer.alloc(4096, 1);
    for (let i = 0; i < 40_000; i += 2) writeSync(fd, block, 0, block.length, i * 4096);
    closeSync(fd);
    for (let i = 0; i < 20; i++) {
      const { worker, exited } = await startWorker('poolcalls', { path, count: 8 }, 'ready');
      await worker.terminate();
      expect(await exited).toBe(1);
    }
  });

  it.each([
    ['callbacks', 'while the main thread holds the addon too', ['main-loads']],
    ['callbacks', 'when the workers alone hold the addon', []],
    ['throwing', 'while they throw from native calls in a loop', ['main-loads']],
  ])('terminates workers (%s) %s', (kind, _, extra) => {
    // Before native/loop-callback.cc, a completion on a terminating worker went through
    // node-addon-api's error path and aborted the process ("Error::Error
    // napi_define_properties", 5 of 6 runs of 20-60 workers); before the addon pinned itself,
    // a worker's close callbacks ran after Node unloaded it (SIGSEGV, 6 of 6). Before
    // NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS (native/binding.gyp), a native call's error on a
    // terminating worker could not be thrown to JS and node-addon-api threw a second one out
    // of its callback wrapper: "terminate called after throwing an instance of
    // 'Napi::Error'" (fresh-clone CI; 3 of 3 runs of 200 'throwing' workers).
    const path = join(dir, 'stream.img');
    const fd = openSync(path, 'w');
    const block = Buffer.alloc(4096, 1);
    for (let i = 0; i < 4000; i += 2) writeSync(fd, block, 0, block.length, i * 4096);
    closeSync(fd);
    const script = join(projectRoot, 'test', 'fixtures', 'native-terminate.mjs');
    const workers = kind === 'throwing' ? 150 : 60;
    const run = spawnSync(process.execPath, [script, path, String(workers), kind, ...extra], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect({ status: run.status, signal: run.signal, stderr: run.stderr }).toEqual({
      status: 0,
      signal: null,
      stderr: '',
    });
    expect(run.stdout.trim()).toBe(`survived ${workers}`);
  });

  it('reports an exception thrown by a watcher callback as the worker error', async () => {
    const efd = native.eventfd(0);
    const { worker } = await startWorker('throwing', { fd: efd }, 'ready');
    const failed = new Promise<Error>((resolve) => worker.once('error', resolve));
    native.eventfdWrite(efd, 1);
    expect((await failed).message).toBe('thrown in FdWatcher callback');
    native.close(efd);
  });

  it('completes a large sendMsg across partial writes while a worker drains', async () => {
    const path = join(dir, 'big.sock');
    const listener = native.unixListen(path, 1);
    const client = native.unixConnect(path);
    const server = native.accept(listener);
    const total = 4 << 20;
    const { worker } = await startWorker('drain', { fd: server, total }, 'ready');
    const report = nextMessage<{ received: number; sum: number; fds: number[] }>(worker);
    const payload = new Uint8Array(total);
    let sum = 0;
    for (let i = 0; i < total; i++) {
      payload[i] = (i * 7) & 0xff;
      sum = (sum + payload[i]) % 1000000007;
    }
    const efd = native.eventfd(0);
    native.sendMsg(client, payload, [efd]);
    const got = await report;
    expect(got.received).toBe(total);
    expect(got.sum).toBe(sum);
    expect(got.fds).toHaveLength(1);
    for (const fd of [...got.fds, efd, client, server, listener]) native.close(fd);
  });
});
