/**
 * Non-blocking Unix stream sockets on a worker's own event loop: a listener
 * that accepts connections and a peer that reads and writes without ever
 * waiting (fds from the addon are O_NONBLOCK; a would-block is a return
 * value, not an exception the caller has to expect).
 */
import { readSync, writeSync } from 'node:fs';
import { classifyErrno } from '../errors.js';
import { type FdWatcher, native, POLL_READABLE } from '../native.js';
import { listenUnix, removeSocket, type SocketPermissions } from '../sockets/listen.js';

/** Returned by {@link StreamPeer.read} / {@link StreamPeer.write} when the socket is not ready. */
export const WOULD_BLOCK = -1;

/** A listening socket that hands every accepted fd to `onAccept`. */
export class UnixListener {
  private readonly fd: number;
  private readonly watcher: FdWatcher;
  private closed = false;

  constructor(
    readonly path: string,
    flag: string,
    private readonly onAccept: (fd: number) => void,
    permissions: SocketPermissions = {},
  ) {
    this.fd = listenUnix(path, flag, 8, permissions);
    this.watcher = new native.FdWatcher(this.fd, () => this.acceptAll());
    this.watcher.start(POLL_READABLE);
  }

  private acceptAll(): void {
    for (let fd = native.accept(this.fd); fd >= 0 && !this.closed; fd = native.accept(this.fd)) {
      this.onAccept(fd);
    }
  }

  /** Stops listening and removes the socket file. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    native.close(this.fd);
    removeSocket(this.path);
  }
}

/** One connected stream socket, watched on this thread's loop. */
export class StreamPeer {
  private readonly watcher: FdWatcher;
  private events = 0;
  closed = false;

  constructor(
    readonly fd: number,
    onEvents: (peer: StreamPeer, events: number) => void,
  ) {
    this.watcher = new native.FdWatcher(fd, (events) => onEvents(this, events));
  }

  /** Watches exactly `events` (POLL_* bits); 0 stops watching. */
  watch(events: number): void {
    if (this.closed || events === this.events) return;
    this.events = events;
    if (events === 0) this.watcher.stop();
    else this.watcher.start(events);
  }

  /** Reads into `buf[off, off+len)`: bytes read, 0 at end of stream (or a broken peer), or WOULD_BLOCK. */
  read(buf: Uint8Array, off: number, len: number): number {
    try {
      return readSync(this.fd, buf, off, len, null);
    } catch (err) {
      const kind = classifyErrno((err as { code?: string }).code);
      if (kind === 'retry') return WOULD_BLOCK;
      if (kind === 'broken') return 0;
      throw err;
    }
  }

  /** Writes what the socket takes now: bytes written, WOULD_BLOCK, or 0 for a broken peer. */
  write(buf: Uint8Array, off: number, len: number): number {
    try {
      return writeSync(this.fd, buf, off, len);
    } catch (err) {
      const kind = classifyErrno((err as { code?: string }).code);
      if (kind === 'retry') return WOULD_BLOCK;
      if (kind === 'broken') return 0;
      throw err;
    }
  }

  /** Stops watching and closes the fd. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    native.close(this.fd);
  }
}
