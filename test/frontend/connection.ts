/**
 * The front end's side of one vhost-user socket. Everything is asynchronous
 * and driven by an FdWatcher on the calling thread's loop: the back-end under
 * test may run in this very process on the main thread, so the front end
 * must never block waiting for it.
 *
 * vhost-user is strictly ordered: the back-end answers requests in the order
 * it received them, so pending replies form a FIFO. Like QEMU, any reply that
 * breaks the protocol (wrong request code, flags other than REPLY|VERSION,
 * unsolicited message) ends the connection, because the stream can no longer
 * be trusted to be in step.
 */
import { classifyErrno } from '../../src/errors.js';
import { type FdWatcher, native, POLL_DISCONNECT, POLL_READABLE } from '../../src/native.js';
import { decodeU64, encodeMessage, ProtocolError } from '../../src/vhost-user/codec.js';
import { HeaderFlag, requestName } from '../../src/vhost-user/protocol.js';
import { WaitTimeoutError, waitFor } from '../support/wait.js';
import { FrontendError } from './errors.js';
import { MessageReader, type WireMessage } from './framing.js';
import { closeAll, pumpSocket } from './socket-io.js';

/** A reply from the back-end. The caller owns `fds`. */
export type Reply = WireMessage;

/** Options of {@link FrontendConnection.request}. */
export interface RequestOptions {
  /**
   * Ask for a REPLY_ACK ack (NEED_REPLY) and wait for it. Only honoured once
   * REPLY_ACK was negotiated ({@link FrontendConnection.replyAck}); QEMU sets
   * it on the same subset of messages.
   */
  needReply?: boolean;
}

/** Options of {@link FrontendConnection}. */
export interface ConnectionOptions {
  /** How long a reply may take before the connection is failed. Default 10 s. */
  replyTimeoutMs?: number;
}

interface Pending {
  request: number;
  resolve(reply: Reply): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

/** Errno codes under which a socket path is not (yet) served. */
const NOT_LISTENING = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);
/** The only flags a back-end reply may carry (QEMU checks the same). */
const REPLY_FLAGS = HeaderFlag.REPLY | HeaderFlag.VERSION;

/** One connected vhost-user socket, front-end side. */
export class FrontendConnection {
  /** Set by the VMM once VHOST_USER_PROTOCOL_F_REPLY_ACK is negotiated. */
  replyAck = false;
  /** Settles (never rejects) with the reason once the connection is over. */
  readonly closed: Promise<FrontendError>;

  private readonly reader = new MessageReader();
  private readonly pending: Pending[] = [];
  private readonly watcher: FdWatcher;
  private readonly replyTimeoutMs: number;
  private reason: FrontendError | undefined;
  private settleClosed!: (reason: FrontendError) => void;

  /**
   * Connects to a back-end listening on `path`, retrying while the socket
   * does not exist or nobody accepts yet (a back-end that is still starting).
   */
  static async connect(
    path: string,
    options: ConnectionOptions & { connectTimeoutMs?: number } = {},
  ): Promise<FrontendConnection> {
    let refused: unknown;
    const attempt = () => {
      try {
        return { fd: native.unixConnect(path) };
      } catch (err) {
        if (!NOT_LISTENING.has((err as { code?: string }).code ?? '')) throw err;
        refused = err;
        return null;
      }
    };
    const timeoutMs = options.connectTimeoutMs ?? 10_000;
    try {
      const { fd } = await waitFor(attempt, `a back-end accepting on ${path}`, timeoutMs);
      return new FrontendConnection(fd, options);
    } catch (err) {
      if (!(err instanceof WaitTimeoutError)) throw err;
      throw new FrontendError('FRONTEND_DISCONNECTED', `no back-end accepts on ${path}`, {
        cause: refused ?? err,
      });
    }
  }

  /** Takes ownership of a connected, non-blocking socket `fd`. */
  constructor(
    readonly fd: number,
    options: ConnectionOptions = {},
  ) {
    this.replyTimeoutMs = options.replyTimeoutMs ?? 10_000;
    this.closed = new Promise((resolve) => {
      this.settleClosed = resolve;
    });
    this.watcher = new native.FdWatcher(fd, (events) => this.onEvents(events));
    this.watcher.start(POLL_READABLE | POLL_DISCONNECT);
  }

  /** False once the back-end hung up, a reply broke the protocol, or close() ran. */
  get isOpen(): boolean {
    return this.reason === undefined;
  }

  /**
   * Sends one message as is, waiting for nothing: the raw tool of hostile
   * tests. `flags` gets the version bits added; `fds` go as SCM_RIGHTS.
   */
  send(request: number, payload?: Uint8Array, fds: number[] = [], flags = 0): void {
    if (this.reason) throw this.reason;
    const message = encodeMessage(request, flags, payload);
    try {
      native.sendMsg(this.fd, message, fds);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (classifyErrno(code) !== 'broken') throw err;
      throw this.fail(
        'FRONTEND_DISCONNECTED',
        `back-end is gone (${code}) while sending ${requestName(request)}`,
        err,
      );
    }
  }

  /**
   * Sends a request that has no reply of its own. With `needReply` and
   * REPLY_ACK negotiated it sets NEED_REPLY and resolves once the back-end
   * acked with 0 (rejects with FRONTEND_NACK otherwise).
   */
  async request(
    request: number,
    payload?: Uint8Array,
    fds: number[] = [],
    options: RequestOptions = {},
  ): Promise<void> {
    if (!(options.needReply && this.replyAck)) {
      this.send(request, payload, fds);
      return;
    }
    const reply = await this.exchange(request, payload, fds, HeaderFlag.NEED_REPLY);
    closeAll(reply.fds);
    const ack = this.decodeAck(reply);
    if (ack !== 0n) {
      throw new FrontendError(
        'FRONTEND_NACK',
        `back-end refused ${requestName(request)} (ack ${ack})`,
      );
    }
  }

  /**
   * Hostile tests: sends `request` with NEED_REPLY whether or not REPLY_ACK
   * was negotiated, and resolves with the ack's u64 (0 success) as is.
   */
  async ack(request: number, payload?: Uint8Array, fds: number[] = []): Promise<bigint> {
    const reply = await this.exchange(request, payload, fds, HeaderFlag.NEED_REPLY);
    closeAll(reply.fds);
    return this.decodeAck(reply);
  }

  /** Sends a request that has a reply of its own and resolves with that reply. */
  call(request: number, payload?: Uint8Array, fds: number[] = []): Promise<Reply> {
    return this.exchange(request, payload, fds, 0);
  }

  /** Ends the connection; pending calls reject with FRONTEND_CLOSED. Idempotent. */
  close(): void {
    this.fail('FRONTEND_CLOSED', 'the front end closed the connection');
  }

  private exchange(
    request: number,
    payload: Uint8Array | undefined,
    fds: number[],
    flags: number,
  ): Promise<Reply> {
    if (this.reason) return Promise.reject(this.reason);
    const reply = new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => this.onTimeout(request), this.replyTimeoutMs);
      this.pending.push({ request, resolve, reject, timer });
    });
    // Queue the waiter first: the reply is only read on a later loop turn anyway,
    // but a failing send must find it to reject.
    try {
      this.send(request, payload, fds, flags);
    } catch (err) {
      this.dropLastPending(err as Error);
    }
    return reply;
  }

  private dropLastPending(error: Error): void {
    const p = this.pending.pop();
    if (!p) return;
    clearTimeout(p.timer);
    p.reject(error);
  }

  private decodeAck(reply: Reply): bigint {
    try {
      return decodeU64(reply.payload);
    } catch (err) {
      throw new FrontendError(
        'FRONTEND_BAD_REPLY',
        `ack of ${requestName(reply.request)} is malformed: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }

  private onEvents(events: number): void {
    if (this.reason) return;
    if (events < 0) {
      this.fail('FRONTEND_DISCONNECTED', `socket error (errno ${-events}) ${this.waitingFor()}`);
      return;
    }
    let open: boolean;
    try {
      open = pumpSocket(this.fd, this.reader, (m) => this.onMessage(m));
    } catch (err) {
      const code = err instanceof ProtocolError ? 'FRONTEND_BAD_REPLY' : 'FRONTEND_DISCONNECTED';
      this.fail(code, `reading the socket failed: ${(err as Error).message}`, err);
      return;
    }
    if (!open || (events & POLL_DISCONNECT) !== 0) {
      this.fail('FRONTEND_DISCONNECTED', `back-end closed the connection ${this.waitingFor()}`);
    }
  }

  /** Matches a reply to the oldest pending request; returns false once the connection failed. */
  private onMessage(m: WireMessage): boolean {
    if (this.reason) return false;
    const p = this.pending.shift();
    const name = requestName(m.request);
    if (!p || m.flags !== REPLY_FLAGS || m.request !== p.request) {
      if (p) this.pending.unshift(p);
      closeAll(m.fds);
      const expected = p ? requestName(p.request) : 'nothing';
      this.fail(
        'FRONTEND_BAD_REPLY',
        `got ${name} with flags 0x${m.flags.toString(16)} while expecting ${expected}`,
      );
      return false;
    }
    clearTimeout(p.timer);
    p.resolve(m);
    return true;
  }

  private onTimeout(request: number): void {
    this.fail(
      'FRONTEND_TIMEOUT',
      `no reply to ${requestName(request)} within ${this.replyTimeoutMs} ms`,
    );
  }

  private waitingFor(): string {
    if (this.pending.length === 0) return 'with no request pending';
    return `while ${this.pending.map((p) => requestName(p.request)).join(', ')} awaited a reply`;
  }

  /** Tears everything down once; every pending call rejects with the reason. */
  private fail(code: FrontendError['code'], message: string, cause?: unknown): FrontendError {
    if (this.reason) return this.reason;
    const reason = new FrontendError(code, message, cause === undefined ? undefined : { cause });
    this.reason = reason;
    this.watcher.close();
    native.close(this.fd);
    closeAll(this.reader.takeUnclaimedFds());
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(reason);
    }
    this.settleClosed(reason);
    return reason;
  }
}
