import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SystemError } from '../../src/errors.js';
import { native, POLL_DISCONNECT, POLL_READABLE, POLL_WRITABLE } from '../../src/native.js';
import { waitFor } from '../support/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-native-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Resolves with the first events the watcher reports for `fd`, then closes it. */
function nextEvents(fd: number, events = POLL_READABLE): Promise<number> {
  return new Promise((resolve) => {
    const watcher = new native.FdWatcher(fd, (ready) => {
      watcher.close();
      resolve(ready);
    });
    watcher.start(events);
  });
}

/** A connected pair made the way vhost-user makes it: listen, connect, accept. */
function socketPair(name: string): { server: number; client: number; listener: number } {
  const path = join(dir, name);
  const listener = native.unixListen(path, 4);
  const client = native.unixConnect(path);
  const server = native.accept(listener);
  return { server, client, listener };
}

/** The fd flags the kernel reports in /proc (octal), e.g. to check O_CLOEXEC. */
function fdFlags(fd: number): number {
  const m = /flags:\s+([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return Number.parseInt(m![1], 8);
}
const O_CLOEXEC = 0o2000000;
const O_NONBLOCK = 0o4000;

describe('errors', () => {
  it('turns errno failures into SystemError with code, errno and syscall', () => {
    let caught: unknown;
    try {
      native.close(-1);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(SystemError);
    expect(caught).toMatchObject({
      code: 'EBADF',
      errno: 9,
      syscall: 'close',
      message: 'close: Bad file descriptor',
    });
  });

  it('rejects bad arguments with TypeError / RangeError naming the argument', () => {
    expect(() => native.close('3' as unknown as number)).toThrow(
      new TypeError('fd must be a number'),
    );
    expect(() => native.eventfd(-1)).toThrow(RangeError);
    expect(() => native.eventfd(-1)).toThrow(/initval/);
    expect(() => native.memfdCreate('x', 1.5)).toThrow(/size must be an integer/);
    expect(() => native.setErrorClass(42 as never)).toThrow(
      new TypeError('cls must be a function'),
    );
  });

  it('exposes the constants of the contract', () => {
    expect(native.constants).toEqual({
      O_DIRECT: 0o40000,
      SCHED_OTHER: 0,
      SCHED_FIFO: 1,
      SCHED_RR: 2,
      SCHED_BATCH: 3,
      SCHED_IDLE: 5,
      MCL_CURRENT: 1,
      MCL_FUTURE: 2,
      FALLOC_FL_KEEP_SIZE: 1,
      FALLOC_FL_PUNCH_HOLE: 2,
      FALLOC_FL_ZERO_RANGE: 16,
    });
  });
});

describe('unix sockets', () => {
  it('creates non-blocking close-on-exec fds and reports an empty accept queue as -1', () => {
    const { server, client, listener } = socketPair('flags.sock');
    for (const fd of [server, client, listener]) {
      expect(fdFlags(fd) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
    }
    expect(native.accept(listener)).toBe(-1);
    expect(native.recvMsg(server, new Uint8Array(16))).toBeNull();
    for (const fd of [server, client, listener]) native.close(fd);
  });

  it('passes an eventfd and a memfd over SCM_RIGHTS, usable on the other side', () => {
    const { server, client, listener } = socketPair('fds.sock');
    const efd = native.eventfd(0);
    const mfd = native.memfdCreate('guest-ram', 4096);
    native.sendMsg(client, new Uint8Array([1, 2, 3, 4, 5]), [efd, mfd]);

    const buf = new Uint8Array(64);
    const msg = native.recvMsg(server, buf);
    expect(msg).not.toBeNull();
    expect(msg!.bytes).toBe(5);
    expect(Array.from(buf.subarray(0, 5))).toEqual([1, 2, 3, 4, 5]);
    expect(msg!.fds).toHaveLength(2);
    const [efd2, mfd2] = msg!.fds;
    expect(fdFlags(efd2) & O_CLOEXEC).toBe(O_CLOEXEC);
    expect(fdFlags(mfd2) & O_CLOEXEC).toBe(O_CLOEXEC);

    native.eventfdWrite(efd2, 7);
    expect(native.eventfdRead(efd)).toBe(7);
    const mine = new Uint8Array(native.mmapShared(mfd, 4096, 0));
    const theirs = new Uint8Array(native.mmapShared(mfd2, 4096, 0));
    theirs[100] = 0x5a;
    expect(mine[100]).toBe(0x5a);

    for (const fd of [efd, mfd, efd2, mfd2, server, client, listener]) native.close(fd);
  });

  it('reports a closed peer as bytes 0 and POLL_DISCONNECT', async () => {
    const { server, client, listener } = socketPair('hup.sock');
    const hangup = nextEvents(server);
    native.close(client);
    const events = await hangup;
    expect(events & POLL_READABLE).toBe(POLL_READABLE);
    expect(events & POLL_DISCONNECT).toBe(POLL_DISCONNECT);
    expect(native.recvMsg(server, new Uint8Array(8))).toEqual({ bytes: 0, fds: [] });
    native.close(server);
    native.close(listener);
  });

  it('rejects more than 16 fds, and sending to a closed peer fails with EPIPE', () => {
    const { server, client, listener } = socketPair('limits.sock');
    const efd = native.eventfd(0);
    expect(() => native.sendMsg(client, new Uint8Array(1), new Array(17).fill(efd))).toThrow(
      RangeError,
    );
    native.sendMsg(client, new Uint8Array(1), new Array(16).fill(efd));
    const msg = native.recvMsg(server, new Uint8Array(4));
    expect(msg!.fds).toHaveLength(16);
    for (const fd of msg!.fds) native.close(fd);
    native.close(server);
    expect(() => native.sendMsg(client, new Uint8Array(1), [])).toThrow(
      expect.objectContaining({ code: 'EPIPE', syscall: 'sendmsg' }),
    );
    for (const fd of [efd, client, listener]) native.close(fd);
  });

  it('fails to connect to a missing path with ENOENT', () => {
    expect(() => native.unixConnect(join(dir, 'missing.sock'))).toThrow(
      expect.objectContaining({ code: 'ENOENT', syscall: 'connect' }),
    );
  });
});

describe('eventfd and FdWatcher', () => {
  it('reads and resets the counter, 0 when empty', () => {
    const efd = native.eventfd(3);
    native.eventfdWrite(efd, 2);
    expect(native.eventfdRead(efd)).toBe(5);
    expect(native.eventfdRead(efd)).toBe(0);
    native.close(efd);
  });

  it('fires on the calling thread when the eventfd is written', async () => {
    const efd = native.eventfd(0);
    const fired = nextEvents(efd);
    native.eventfdWrite(efd, 1);
    expect(await fired).toBe(POLL_READABLE);
    expect(native.eventfdRead(efd)).toBe(1);
    native.close(efd);
  });

  it('reports writability, stops, restarts and closes idempotently', async () => {
    const efd = native.eventfd(0);
    let calls = 0;
    const watcher = new native.FdWatcher(efd, () => {
      calls++;
    });
    watcher.start(POLL_READABLE);
    watcher.stop();
    native.eventfdWrite(efd, 1);
    // Sentinel: a second eventfd written after the first. Its watcher firing means the loop
    // polled after both writes; the poll phase runs every ready callback before setImmediate.
    const sentinel = native.eventfd(0);
    const fired = nextEvents(sentinel);
    native.eventfdWrite(sentinel, 1);
    expect(await fired).toBe(POLL_READABLE);
    await new Promise((r) => setImmediate(r));
    native.close(sentinel);
    expect(calls).toBe(0);
    watcher.close();
    watcher.close();
    watcher.stop();
    expect(() => watcher.start(POLL_READABLE)).toThrow(expect.objectContaining({ code: 'EBADF' }));
    expect(await nextEvents(efd, POLL_WRITABLE)).toBe(POLL_WRITABLE);
    native.close(efd);
  });

  it('survives watchers that are garbage collected without close()', async () => {
    const { setFlagsFromString } = await import('node:v8');
    const { runInNewContext } = await import('node:vm');
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const efd = native.eventfd(0);
    let collected = 0;
    const registry = new FinalizationRegistry(() => {
      collected++;
    });
    // In a function of its own, so that no frame of this test keeps the last one alive.
    (() => {
      for (let i = 0; i < 50; i++) {
        const w = new native.FdWatcher(efd, () => {});
        w.start(POLL_READABLE);
        w.stop();
        registry.register(w, i);
      }
    })();
    await waitFor(() => {
      gc();
      return collected === 50;
    }, 'the 50 dropped watchers to be collected');
    // Native finalizers that V8 defers run from the loop: one turn more.
    await new Promise((r) => setImmediate(r));
    const fired = nextEvents(efd);
    native.eventfdWrite(efd, 1);
    expect(await fired).toBe(POLL_READABLE);
    native.close(efd);
  });
});

describe('shared memory', () => {
  it('maps a memfd twice and both mappings see the same pages', () => {
    const fd = native.memfdCreate('twice', 8192);
    const a = native.mmapShared(fd, 8192, 0);
    const b = native.mmapShared(fd, 4096, 4096);
    expect(a).toBeInstanceOf(SharedArrayBuffer);
    expect(a.byteLength).toBe(8192);
    new Uint32Array(a)[1024] = 0xdeadbeef;
    expect(new Uint32Array(b)[0]).toBe(0xdeadbeef);
    // Atomics.add is a read-modify-write on the shared page itself; the plain
    // read below is ordered after it by program order on this one thread.
    expect(Atomics.add(new Int32Array(b), 1, 5)).toBe(0);
    expect(new Int32Array(a)[1025]).toBe(5);
    native.close(fd);
  });

  it('reports mmap failures as SystemError', () => {
    const fd = native.memfdCreate('bad', 4096);
    expect(() => native.mmapShared(fd, 4096, 100)).toThrow(
      expect.objectContaining({ code: 'EINVAL', syscall: 'mmap' }),
    );
    expect(() => native.mmapShared(fd, 0, 0)).toThrow(RangeError);
    native.close(fd);
  });
});
