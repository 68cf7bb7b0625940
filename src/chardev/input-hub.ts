/**
 * The host end of a port's input: a Unix socket that people or programs
 * attach to (`vhost-rt attach SOCK`, or `socat - UNIX-CONNECT:SOCK`). Any
 * number of clients may write; their bytes go to `deliver`, and what it
 * cannot take is refused: counted by the caller and announced to the client.
 */

import { POLL_DISCONNECT, POLL_READABLE } from '../native.js';
import type { SocketPermissions } from '../sockets/listen.js';
import { StreamPeer, UnixListener, WOULD_BLOCK } from './unix-stream.js';

/** Takes input bytes; returns how many it accepted (the rest is refused). */
export type InputDeliver = (buf: Uint8Array, off: number, len: number) => number;

const READ_BYTES = 4096;
const encoder = new TextEncoder();

/**
 * Listens on one input socket and reads every attached client (on the owning
 * thread's fd watchers); `flag` names the CLI option in listen errors.
 */
export class InputHub {
  private readonly listener: UnixListener;
  private readonly clients = new Set<StreamPeer>();
  private readonly buf = new Uint8Array(READ_BYTES);

  constructor(
    path: string,
    flag: string,
    private readonly deliver: InputDeliver,
    private readonly onRefused: (bytes: number) => void,
    permissions: SocketPermissions = {},
  ) {
    this.listener = new UnixListener(path, flag, (fd) => this.attach(fd), permissions);
  }

  /** Connected input clients. */
  get clientCount(): number {
    return this.clients.size;
  }

  private attach(fd: number): void {
    const peer = new StreamPeer(fd, (p, events) => this.onEvents(p, events));
    this.clients.add(peer);
    peer.watch(POLL_READABLE | POLL_DISCONNECT);
  }

  private onEvents(peer: StreamPeer, events: number): void {
    if (events < 0) {
      this.detach(peer);
      return;
    }
    for (;;) {
      const n = peer.read(this.buf, 0, READ_BYTES);
      if (n === WOULD_BLOCK) return;
      if (n === 0) {
        this.detach(peer);
        return;
      }
      const taken = this.deliver(this.buf, 0, n);
      if (taken < n) this.refuse(peer, n - taken);
    }
  }

  /** Tells the client (best effort, never waiting) how much of its input was refused. */
  private refuse(peer: StreamPeer, bytes: number): void {
    this.onRefused(bytes);
    const notice = encoder.encode(
      `\r\n[vhost-rt: ${bytes} input bytes refused: guest not reading]\r\n`,
    );
    peer.write(notice, 0, notice.length);
  }

  private detach(peer: StreamPeer): void {
    peer.close();
    this.clients.delete(peer);
  }

  /** Disconnects every client and stops listening. */
  close(): void {
    for (const c of this.clients) c.close();
    this.clients.clear();
    this.listener.close();
  }
}
