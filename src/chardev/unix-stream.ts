/**
 * Non-blocking Unix stream sockets on a worker's own event loop: a listener
 * that accepts connections and a peer that reads and writes without ever
 * waiting (fds from the addon are O_NONBLOCK; a would-block is a return
 * value, not an exception the caller has to expect).
 */
import { lstatSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { ConfigError, classifyErrno } from '../errors.js';
import { type FdWatcher, native, POLL_READABLE } from '../native.js';

/** Returned by {@link StreamPeer.read} / {@link StreamPeer.write} when the socket is not ready. */
export const WOULD_BLOCK = -1;

/** Removes a stale socket file at `path`; refuses to touch anything that is not a socket. */
export function clearSocketPath(path: string, flag: string): void {
  try {
    if (!lstatSync(path).isSocket()) {
      throw new ConfigError(`${flag} ${path}: exists and is not a socket`);
    }
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return;
    throw err;
  }
  unlinkSync(path);
}

/** A listening socket that hands every accepted fd to `onAccept`. */
export class UnixListener {
  private readonly fd: number;
  private readonly watcher: FdWatcher;
  private closed = false;

  constructor(
    readonly path: string,
    flag: string,
    private readonly onAccept: (fd: number) => void,
  ) {
    clearSocketPath(path, flag);
    try {
      this.fd = native.unixListen(path, 8);
    } catch (err) {
      const code = (err as { code?: string }).code;
      throw new ConfigError(`${flag} ${path}: cannot listen (${code})`, { cause: err });
    }
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
    try {
      unlinkSync(this.path);
    } catch {
      // Already removed by someone else: nothing to clean.
    }
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
