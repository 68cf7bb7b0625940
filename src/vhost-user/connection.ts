/**
 * One front end's vhost-user connection: reads the byte stream and its
 * SCM_RIGHTS fds, cuts it into messages, hands them to the backend strictly in
 * order (a request is answered before the next is looked at, as the protocol
 * requires), and writes replies and REPLY_ACK acks.
 *
 * A unix stream socket may glue the bytes of several sendmsg calls into one
 * read, and the fds of the last of them come with it; so, as libvhost-user
 * does, each read asks for no more than the rest of the current message (its
 * header, then its payload), and every fd received belongs to that message.
 */
import { classifyErrno, VhostRtError } from '../errors.js';
import type { Logger } from '../log.js';
import { type FdWatcher, native, POLL_READABLE } from '../native.js';
import type { IncomingMessage, VhostUserBackend } from './backend.js';
import { decodeHeader, encodeMessage, encodeU64 } from './codec.js';
import { HEADER_SIZE, HeaderFlag, MAX_PAYLOAD, ownReply, requestName } from './protocol.js';

/**
 * Serves one accepted socket: frames messages with their fds, runs them through
 * the backend one at a time, replies; `done` resolves after close and reset.
 */
export class VhostUserConnection {
  private readonly watcher: FdWatcher;
  private readonly header = new Uint8Array(HEADER_SIZE);
  private headerHave = 0;
  private current: { request: number; flags: number; payload: Uint8Array; have: number } | null =
    null;
  private currentFds: number[] = [];
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
    if (events < 0) {
      this.close(`socket error (${-events})`);
      return;
    }
    for (;;) {
      const target =
        this.current === null
          ? this.header.subarray(this.headerHave)
          : this.current.payload.subarray(this.current.have);
      let got: { bytes: number; fds: number[] } | null;
      try {
        got = native.recvMsg(this.fd, target);
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (classifyErrno(code) === 'retry') break;
        this.close(`receive failed (${code})`);
        return;
      }
      if (got === null) break;
      if (got.bytes === 0) {
        this.close('front end disconnected');
        return;
      }
      this.currentFds.push(...got.fds);
      if (!this.advance(got.bytes)) return;
    }
    void this.pump();
  }

  /** Accounts for `bytes` just read; queues the message once complete. False when the stream is unusable. */
  private advance(bytes: number): boolean {
    if (this.current !== null) {
      this.current.have += bytes;
    } else {
      this.headerHave += bytes;
      if (this.headerHave < HEADER_SIZE) return true;
      let h: ReturnType<typeof decodeHeader>;
      try {
        h = decodeHeader(this.header);
      } catch (err) {
        // A header we cannot trust leaves no way to find the next message.
        this.close(`unusable message header: ${(err as Error).message}`);
        return false;
      }
      this.current = {
        request: h.request,
        flags: h.flags,
        payload: new Uint8Array(h.size),
        have: 0,
      };
    }
    const c = this.current;
    if (c.have === c.payload.length) {
      this.queue.push({
        request: c.request,
        flags: c.flags,
        payload: c.payload,
        fds: this.currentFds,
      });
      this.current = null;
      this.headerHave = 0;
      this.currentFds = [];
    }
    return true;
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
    this.reply(msg, failed, reply);
  }

  /**
   * Every request that expects an answer gets one, refusals included: the
   * reply of its own when it has one (§"Communication"), else an ack when the
   * front end set NEED_REPLY — even without REPLY_ACK negotiated (as
   * libvhost-user does), since a front end that asks waits. Unknown requests
   * without NEED_REPLY cannot be told apart from ones that expect nothing.
   */
  private reply(msg: IncomingMessage, failed: boolean, payload: Uint8Array | undefined): void {
    const own = ownReply(msg.request, this.backend.negotiatedProtocolFeatures);
    if (own?.kind === 'payload') {
      // Fds the handler returns with its answer (GET_INFLIGHT_FD's memfd): sent, then ours closed.
      const fds = this.backend.takeReplyFds();
      // On failure an empty payload: the front end sees a size it cannot accept and fails, rather than hang.
      try {
        this.send(msg.request, failed ? new Uint8Array(0) : payload, failed ? [] : fds);
      } finally {
        for (const fd of fds) native.close(fd);
      }
    } else if (own?.kind === 'status') {
      this.send(msg.request, failed ? encodeU64(own.failure) : (payload ?? encodeU64(0n)));
    } else if ((msg.flags & HeaderFlag.NEED_REPLY) !== 0) {
      this.send(msg.request, encodeU64(failed ? 1n : 0n));
    }
  }

  private send(request: number, payload: Uint8Array | undefined, fds: number[] = []): void {
    if (this.closed) return;
    try {
      native.sendMsg(
        this.fd,
        encodeMessage(request, HeaderFlag.VERSION | HeaderFlag.REPLY, payload),
        fds,
      );
    } catch (err) {
      this.close(`reply to ${requestName(request)} failed (${(err as { code?: string }).code})`);
    }
  }

  /** Closes the socket and resets the backend (completing in-flight I/O first). */
  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.log('info', `connection closed: ${reason}`);
    const hint = this.backend.queueHint();
    if (hint !== null) this.log('warn', hint);
    this.watcher.close();
    native.close(this.fd);
    for (const fd of this.currentFds) native.close(fd);
    for (const msg of this.queue) for (const fd of msg.fds) native.close(fd);
    this.currentFds = [];
    this.queue = [];
    const waitIdle = async () => {
      while (this.busy) await new Promise((r) => setTimeout(r, 1));
    };
    void waitIdle()
      .then(() => this.backend.reset())
      .catch((err: unknown) =>
        this.log('error', `reset after disconnect failed: ${(err as Error).message}`),
      )
      .finally(() => this.resolveDone());
  }
}

/** Largest message the connection accepts, for documentation and tests. */
export const MAX_MESSAGE_SIZE = HEADER_SIZE + MAX_PAYLOAD;
