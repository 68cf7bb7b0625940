/**
 * One front end's vhost-user connection: reads the byte stream and its
 * SCM_RIGHTS fds, cuts it into messages, hands them to the backend strictly in
 * order (a request is answered before the next is looked at, as the protocol
 * requires), and writes replies and REPLY_ACK acks.
 *
 * Stream sockets deliver fds with the first byte of the sendmsg that carried
 * them, and the kernel never merges such a segment into an earlier read, so
 * the fds of one recvmsg belong to the message starting at that read's first
 * byte.
 */
import { classifyErrno, VhostRtError } from '../errors.js';
import { type FdWatcher, native, POLL_READABLE } from '../native.js';
import type { IncomingMessage, VhostUserBackend } from './backend.js';
import { decodeHeader, encodeMessage, encodeU64 } from './codec.js';
import { HEADER_SIZE, HeaderFlag, MAX_PAYLOAD, Request, requestName } from './protocol.js';

export type Logger = (level: 'info' | 'warn' | 'error', message: string) => void;

/** Requests whose reply is their own payload rather than a REPLY_ACK. */
const HAS_REPLY = new Set<number>([
  Request.GET_FEATURES,
  Request.GET_PROTOCOL_FEATURES,
  Request.GET_VRING_BASE,
  Request.GET_QUEUE_NUM,
  Request.GET_CONFIG,
  Request.GET_MAX_MEM_SLOTS,
]);

const READ_CHUNK = 64 * 1024;

export class VhostUserConnection {
  private readonly watcher: FdWatcher;
  private readonly chunk = new Uint8Array(READ_CHUNK);
  private pending = new Uint8Array(0);
  /** fds received, keyed by the stream offset of the read they came with. */
  private fdQueue: { at: number; fds: number[] }[] = [];
  /** Stream offset of pending[0]. */
  private consumed = 0;
  private queue: IncomingMessage[] = [];
  private busy = false;
  private closed = false;
  /** Resolves when the connection has closed and the backend has been reset. */
  readonly done: Promise<void>;
  private resolveDone: () => void = () => {};

  constructor(
    private readonly fd: number,
    private readonly backend: VhostUserBackend,
    private readonly log: Logger,
  ) {
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
    this.watcher = new native.FdWatcher(fd, (events) => this.onReadable(events));
    this.watcher.start(POLL_READABLE);
  }

  private onReadable(events: number): void {
    if (this.closed) return;
    if (events < 0) return this.close(`socket error (${-events})`);
    for (;;) {
      let got: { bytes: number; fds: number[] } | null;
      try {
        got = native.recvMsg(this.fd, this.chunk);
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (classifyErrno(code) === 'retry') return;
        return this.close(`receive failed (${code})`);
      }
      if (got === null) break;
      if (got.bytes === 0) return this.close('front end disconnected');
      this.append(got.bytes, got.fds);
    }
    this.parse();
  }

  private append(bytes: number, fds: number[]): void {
    if (fds.length > 0) this.fdQueue.push({ at: this.consumed + this.pending.length, fds });
    const next = new Uint8Array(this.pending.length + bytes);
    next.set(this.pending);
    next.set(this.chunk.subarray(0, bytes), this.pending.length);
    this.pending = next;
  }

  private parse(): void {
    while (this.pending.length >= HEADER_SIZE) {
      let header: ReturnType<typeof decodeHeader>;
      try {
        header = decodeHeader(this.pending);
      } catch (err) {
        // A header we cannot trust leaves no way to find the next message.
        return this.close(`unusable message header: ${(err as Error).message}`);
      }
      const total = HEADER_SIZE + header.size;
      if (this.pending.length < total) break;
      const fds = this.takeFds(this.consumed);
      const payload = this.pending.slice(HEADER_SIZE, total);
      this.pending = this.pending.subarray(total);
      this.consumed += total;
      this.queue.push({ request: header.request, flags: header.flags, payload, fds });
    }
    void this.pump();
  }

  private takeFds(at: number): number[] {
    const out: number[] = [];
    while (this.fdQueue.length > 0 && this.fdQueue[0].at <= at) {
      const entry = this.fdQueue.shift()!;
      if (entry.at === at) out.push(...entry.fds);
      else for (const fd of entry.fds) native.close(fd); // fds of a message we could not place
    }
    return out;
  }

  /** Runs queued messages one at a time. */
  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    while (this.queue.length > 0 && !this.closed) {
      await this.dispatch(this.queue.shift()!);
    }
    this.busy = false;
  }

  private async dispatch(msg: IncomingMessage): Promise<void> {
    const name = requestName(msg.request);
    let reply: Uint8Array | undefined;
    let failed = false;
    try {
      reply = await this.backend.handle(msg);
    } catch (err) {
      failed = true;
      const code = (err as { code?: string }).code ?? 'ERR';
      this.log('error', `${name}: ${(err as Error).message} (${code})`);
      if (!(err instanceof VhostRtError)) this.log('error', (err as Error).stack ?? '');
    } finally {
      for (const fd of msg.fds) native.close(fd);
    }
    if (HAS_REPLY.has(msg.request)) {
      // On failure an empty payload: the front end sees a size it cannot accept and fails, rather than hang.
      this.send(msg.request, failed ? new Uint8Array(0) : reply);
    } else if ((msg.flags & HeaderFlag.NEED_REPLY) !== 0 && (this.backend.replyAck || failed)) {
      this.send(msg.request, encodeU64(failed ? 1n : 0n));
    }
  }

  private send(request: number, payload: Uint8Array | undefined): void {
    if (this.closed) return;
    try {
      native.sendMsg(this.fd, encodeMessage(request, HeaderFlag.VERSION | HeaderFlag.REPLY, payload), []);
    } catch (err) {
      this.close(`reply to ${requestName(request)} failed (${(err as { code?: string }).code})`);
    }
  }

  /** Closes the socket and resets the backend (completing in-flight I/O first). */
  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.log('info', `connection closed: ${reason}`);
    this.watcher.close();
    native.close(this.fd);
    for (const entry of this.fdQueue) for (const fd of entry.fds) native.close(fd);
    for (const msg of this.queue) for (const fd of msg.fds) native.close(fd);
    this.fdQueue = [];
    this.queue = [];
    const waitIdle = async () => {
      while (this.busy) await new Promise((r) => setTimeout(r, 1));
    };
    void waitIdle()
      .then(() => this.backend.reset())
      .catch((err: unknown) => this.log('error', `reset after disconnect failed: ${(err as Error).message}`))
      .finally(() => this.resolveDone());
  }
}

/** Largest message the connection accepts, for documentation and tests. */
export const MAX_MESSAGE_SIZE = HEADER_SIZE + MAX_PAYLOAD;
