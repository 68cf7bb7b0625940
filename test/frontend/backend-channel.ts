/**
 * The front end's end of the back-end request channel
 * (VHOST_USER_PROTOCOL_F_BACKEND_REQ): a second unix socket whose other end
 * is passed with SET_BACKEND_REQ_FD, on which the back-end sends requests
 * such as CONFIG_CHANGE_MSG and the front end replies when asked to.
 */
import { unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type FdWatcher, native, POLL_DISCONNECT, POLL_READABLE } from '../../src/native.js';
import { encodeMessage, encodeU64 } from '../../src/vhost-user/codec.js';
import { BackendRequest, HeaderFlag } from '../../src/vhost-user/protocol.js';
import { MessageReader, type WireMessage } from './framing.js';
import { closeAll, pumpSocket } from './socket-io.js';

let pairCount = 0;

/**
 * A connected pair of non-blocking unix stream sockets. The addon has no
 * socketpair(2), so the pair is made by listening on a throw-away path,
 * connecting and accepting (an AF_UNIX connect completes at once).
 */
export function unixSocketPair(): [number, number] {
  const path = join(tmpdir(), `vhost-rt-fe-${process.pid}-${pairCount++}.sock`);
  const listenFd = native.unixListen(path, 1);
  try {
    const a = native.unixConnect(path);
    const b = native.accept(listenFd);
    if (b < 0) {
      native.close(a);
      throw new Error('accept found no pending connection right after connect');
    }
    return [a, b];
  } finally {
    native.close(listenFd);
    unlinkSync(path);
  }
}

/** Serves back-end requests; counts them and acks those that ask for it. */
export class BackendChannel {
  /** How many CONFIG_CHANGE_MSG requests arrived. */
  configChanges = 0;
  /** Request codes in arrival order, for tests. */
  readonly received: number[] = [];
  /** Called on every CONFIG_CHANGE_MSG. */
  onConfigChange: (() => void) | undefined;

  private readonly reader = new MessageReader();
  private readonly watcher: FdWatcher;
  private open = true;

  /** Makes a channel; the caller sends `backendFd` with SET_BACKEND_REQ_FD and then closes it. */
  static create(): { channel: BackendChannel; backendFd: number } {
    const [ours, theirs] = unixSocketPair();
    return { channel: new BackendChannel(ours), backendFd: theirs };
  }

  private constructor(private readonly fd: number) {
    this.watcher = new native.FdWatcher(fd, (events) => this.onEvents(events));
    this.watcher.start(POLL_READABLE | POLL_DISCONNECT);
  }

  /** Stops serving and closes our end. Idempotent. */
  close(): void {
    if (!this.open) return;
    this.open = false;
    this.watcher.close();
    native.close(this.fd);
    closeAll(this.reader.takeUnclaimedFds());
  }

  private onEvents(events: number): void {
    if (!this.open) return;
    let alive = events >= 0;
    try {
      if (alive) alive = pumpSocket(this.fd, this.reader, (m) => this.onRequest(m));
    } catch {
      alive = false;
    }
    if (!alive || (events & POLL_DISCONNECT) !== 0) this.close();
  }

  private onRequest(m: WireMessage): boolean {
    closeAll(m.fds);
    this.received.push(m.request);
    const handled = m.request === BackendRequest.CONFIG_CHANGE_MSG;
    if (handled) {
      this.configChanges++;
      this.onConfigChange?.();
    }
    if ((m.flags & HeaderFlag.NEED_REPLY) !== 0) {
      // §REPLY_ACK: 0 for success, non-zero for a request we do not serve.
      const reply = encodeMessage(m.request, HeaderFlag.REPLY, encodeU64(handled ? 0n : 1n));
      native.sendMsg(this.fd, reply, []);
    }
    return this.open;
  }
}
