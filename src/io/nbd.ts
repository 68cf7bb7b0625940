/**
 * The `nbd` engine: a disk on an NBD server, through libnbd's asynchronous
 * API (native/nbd.cc). The socket is watched by an FdWatcher on the device
 * worker's own loop, like the AIO eventfd; every staged op of a batch is
 * issued with one native call, and every finished op is reaped with one
 * native call per wake-up. Reads and writes go straight between guest RAM
 * and the socket (libnbd sends from and receives into the guest's buffers;
 * no copy in this process — see native/nbd.cc for where bytes move and why
 * a multi-segment request becomes one NBD command per segment).
 *
 * Policy, all here:
 * - Features: the guest is offered flush, discard and write-zeroes only where
 *   the server advertises them (`capabilities`); a read-only export makes a
 *   read-only device. A server with FUA but no flush gets every write with
 *   FUA (the guest, offered no flush, assumes a write-through disk).
 * - DISCARD: the blk device hands write-zeroes-with-UNMAP to engines as
 *   DISCARD (a punched hole reads back zeros in a file). NBD_CMD_TRIM
 *   promises no zeros (qemu-nbd's default --discard=ignore does nothing), so
 *   DISCARD is sent as NBD_CMD_WRITE_ZEROES without NO_HOLE — the server may
 *   still unmap — and as TRIM only when the server cannot write zeroes (then
 *   the guest is offered no write-zeroes and a DISCARD is a plain discard).
 * - Reconnect: when the connection dies (server restarted, socket reset,
 *   NBD_ESHUTDOWN) every command in flight is held natively with its guest
 *   buffer, and new ones are held too; the engine reconnects with back-off
 *   ({@link NBD_BACKOFF_MS}) and resubmits them in order. Reads and writes
 *   are idempotent and virtio-blk orders nothing between requests in flight,
 *   so replaying is safe. The hold is bounded in size by the device's request
 *   slots (queues × queue size: the guest's rings back up behind them) and
 *   in time by `nbdTimeoutMs` ({@link DEFAULT_NBD_TIMEOUT_MS}), counted from
 *   the first held request: then everything held fails with EIO (the guest
 *   sees IOERR), and until a connection is back new requests fail at once
 *   instead of waiting, while reconnect attempts go on every
 *   {@link NBD_BACKOFF_MAX_MS}.
 * - A server that keeps the connection open but never answers is not
 *   detected (there is no per-request timeout).
 */
import { VhostRtError } from '../errors.js';
import {
  type BufferTable,
  type FdWatcher,
  IOV_STRIDE,
  NBD_CMD,
  NBD_FLAG,
  NBD_OP,
  NBD_OP_STRIDE,
  NBD_PUMP,
  NBD_STATUS,
  type NbdClient,
  type NbdExportInfo,
  native,
} from '../native.js';
import {
  type EngineCapabilities,
  type IoCompletion,
  type IoEngine,
  type IoEngineOptions,
  IoOp,
  type IoOpCode,
} from './engine.js';
import { checkNbdUri } from './nbd-uri.js';
import { Errno, REAP_BATCH } from './staging.js';

/** errno for an operation the server does not offer (the device answers IOERR). */
const EOPNOTSUPP = 95;

/**
 * How long requests wait for a lost NBD server to come back before they fail
 * with IOERR, and how long the first connection may take: 15 s — a restarted
 * qemu-nbd or nbdkit is back well within it, and the guest sees an error
 * long before its own hung-task warnings (120 s).
 */
export const DEFAULT_NBD_TIMEOUT_MS = 15_000;
/** Largest `--nbd-timeout-ms`: one hour. */
export const MAX_NBD_TIMEOUT_MS = 3_600_000;
/** First reconnect attempt is immediate, then after this many ms, doubling... */
export const NBD_BACKOFF_MS = 50;
/** ...up to this. */
export const NBD_BACKOFF_MAX_MS = 2_000;

/** The NBD server could not be reached or refused the export at open. */
export class NbdConnectError extends VhostRtError {
  /** errno's name from libnbd (ECONNREFUSED, ENOENT, ETIMEDOUT...). */
  readonly errnoCode: string;
  constructor(uri: string, errnoCode: string, detail: string, options?: { cause?: unknown }) {
    super('ERR_NBD_CONNECT', `--image ${uri}: cannot connect (${errnoCode}: ${detail})`, options);
    this.errnoCode = errnoCode;
  }
}

type State = 'ready' | 'reconnecting' | 'failing' | 'closed';

/** The `nbd` engine: one libnbd connection per device, driven from the device worker's loop. */
export class NbdEngine implements IoEngine {
  readonly name = 'nbd' as const;
  readonly direct = false;
  readonly sizeBytes: number;
  /** NBD takes any byte alignment (a server's minimum block size above 512 is not honoured). */
  readonly alignment = 1;
  readonly capabilities: EngineCapabilities;
  /** The export as negotiated at open. */
  readonly exportInfo: NbdExportInfo;
  inFlight = 0;
  stagedIovs = 0;

  private readonly uri: string;
  private readonly timeoutMs: number;
  private readonly warn: (message: string) => void;
  private readonly client: NbdClient;
  private readonly table: BufferTable = new native.BufferTable();
  private readonly iovs: Float64Array;
  private readonly ops: Float64Array;
  private readonly maxOps: number;
  private stagedOps = 0;
  /** Reaped [userData, result] pairs, reused by every reap. */
  private readonly events = new Float64Array(REAP_BATCH * 2);
  /** Ops finished without the server (flush it cannot do, fail-fast), delivered after submit. */
  private readonly immediate: Float64Array;
  private immediateCount = 0;
  /** Every write carries FUA: the server can FUA but not flush. */
  private readonly writeFlags: number;
  private handler: IoCompletion = () => {};
  private batchDone: () => void = () => {};
  private watcher: FdWatcher | null = null;
  private watchedEvents = -1;
  private state: State = 'ready';
  private lostAt = 0;
  private backoffMs = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  private deadlineTimer: NodeJS.Timeout | null = null;
  /** The server came back with another export during this outage (warned once). */
  private mismatchWarned = false;

  constructor(options: IoEngineOptions) {
    this.uri = checkNbdUri(options.path);
    this.timeoutMs = options.nbdTimeoutMs ?? DEFAULT_NBD_TIMEOUT_MS;
    this.warn = options.warn;
    this.maxOps = options.depth;
    this.iovs = new Float64Array(options.maxIovs * IOV_STRIDE);
    this.ops = new Float64Array(options.depth * NBD_OP_STRIDE);
    this.immediate = new Float64Array(options.depth * 2);
    this.client = new native.NbdClient(options.depth, options.maxIovs);
    try {
      this.client.connect(this.uri, this.timeoutMs);
    } catch (err) {
      const e = err as { code?: string; message?: string };
      const detail = (e.message ?? String(err)).replace(/^nbd_connect_uri: /, '');
      throw new NbdConnectError(this.uri, e.code ?? 'EIO', detail, { cause: err });
    }
    this.exportInfo = this.client.info();
    const x = this.exportInfo;
    this.sizeBytes = x.size;
    const readonly = options.readonly || x.readOnly;
    this.capabilities = {
      readonly,
      flush: x.canFlush,
      discard: !readonly && (x.canZero || x.canTrim),
      writeZeroes: !readonly && x.canZero,
    };
    this.writeFlags = !x.canFlush && x.canFua ? NBD_FLAG.FUA : 0;
    if (x.readOnly && !options.readonly)
      this.warn(`--image ${this.uri}: the server exports it read-only; serving a read-only disk`);
    this.watch(NBD_STATUS.READ);
  }

  setBuffers(buffers: SharedArrayBuffer[]): void {
    this.table.set(buffers);
  }

  addIov(buffer: number, offset: number, length: number): boolean {
    const i = this.stagedIovs * IOV_STRIDE;
    if (i >= this.iovs.length) return false;
    this.iovs[i] = buffer;
    this.iovs[i + 1] = offset;
    this.iovs[i + 2] = length;
    this.stagedIovs++;
    return true;
  }

  queueReadWrite(
    op: IoOpCode,
    fileOffset: number,
    firstIov: number,
    iovCount: number,
    userData: number,
  ): boolean {
    if (this.stagedOps + this.inFlight >= this.maxOps) return false;
    const write = op === IoOp.WRITE;
    const cmd = write ? NBD_CMD.WRITE : NBD_CMD.READ;
    this.stage(cmd, write ? this.writeFlags : 0, fileOffset, 0, firstIov, iovCount, userData);
    return true;
  }

  queueSlowOp(op: IoOpCode, fileOffset: number, length: number, userData: number): void {
    // Every slot of the device holds at most one op, so the table has room
    // unless staged ops were never submitted; submit them first then.
    if (this.stagedOps + this.inFlight >= this.maxOps) this.submit();
    const c = this.capabilities;
    if (op === IoOp.FLUSH) {
      // Without flush nothing is cached that a flush could push: writes are FUA or the server is write-through.
      if (c.flush) this.stage(NBD_CMD.FLUSH, 0, 0, 0, 0, 0, userData);
      else this.finishNow(userData, 0);
    } else if (op === IoOp.WRITE_ZEROES) {
      if (c.writeZeroes)
        this.stage(NBD_CMD.ZERO, NBD_FLAG.NO_HOLE, fileOffset, length, 0, 0, userData);
      else this.finishNow(userData, -EOPNOTSUPP);
    } else if (this.exportInfo.canZero && !c.readonly) {
      this.stage(NBD_CMD.ZERO, 0, fileOffset, length, 0, 0, userData);
    } else if (c.discard) {
      this.stage(NBD_CMD.TRIM, 0, fileOffset, length, 0, 0, userData);
    } else {
      this.finishNow(userData, -EOPNOTSUPP);
    }
  }

  private stage(
    cmd: number,
    flags: number,
    offset: number,
    length: number,
    firstIov: number,
    iovCount: number,
    userData: number,
  ): void {
    const o = this.stagedOps * NBD_OP_STRIDE;
    this.ops[o + NBD_OP.cmd] = cmd;
    this.ops[o + NBD_OP.flags] = flags;
    this.ops[o + NBD_OP.offset] = offset;
    this.ops[o + NBD_OP.length] = length;
    this.ops[o + NBD_OP.firstIov] = firstIov;
    this.ops[o + NBD_OP.iovCount] = iovCount;
    this.ops[o + NBD_OP.userData] = userData;
    this.stagedOps++;
  }

  /** Completes an op without the server; delivered at the end of the next submit. */
  private finishNow(userData: number, result: number): void {
    this.immediate[2 * this.immediateCount] = userData;
    this.immediate[2 * this.immediateCount + 1] = result;
    this.immediateCount++;
    this.inFlight++;
  }

  submit(): void {
    const n = this.stagedOps;
    // A kick that staged nothing (and finished nothing) costs no native call.
    if (n === 0 && this.immediateCount === 0) return;
    if (this.state === 'failing') {
      for (let i = 0; i < n; i++)
        this.finishNow(this.ops[i * NBD_OP_STRIDE + NBD_OP.userData], -Errno.EIO);
    }
    // The status must be the connection's real one: the watcher follows its direction bits.
    const status = n > 0 && this.state !== 'failing' ? this.issue(0, n) : this.client.pump(0);
    this.stagedOps = 0;
    this.stagedIovs = 0;
    if (n > 0 && this.state === 'reconnecting') this.armDeadline();
    this.afterStatus(status);
  }

  /**
   * Issues ops [first, first + count). A RangeError means the native side
   * refused an entry before issuing anything: the ops are then issued one by
   * one, so only the bad one fails (EINVAL).
   */
  private issue(first: number, count: number): number {
    const ops = first === 0 ? this.ops : this.ops.subarray(first * NBD_OP_STRIDE);
    try {
      const status = this.client.submit(this.table, ops, count, this.iovs);
      this.inFlight += count;
      return status;
    } catch (err) {
      if (!(err instanceof RangeError)) throw err;
      if (count === 1) {
        this.finishNow(ops[NBD_OP.userData], -Errno.EINVAL);
        return this.client.pump(0);
      }
      let status = 0;
      for (let i = first; i < first + count; i++) status = this.issue(i, 1);
      return status;
    }
  }

  onComplete(handler: IoCompletion, batchDone: () => void): void {
    this.handler = handler;
    this.batchDone = batchDone;
  }

  /** Acts on a status from the native client: reap, follow the connection, re-arm the watcher. */
  private afterStatus(first: number): void {
    // The handler may submit more (a freed slot re-drains the rings), which
    // moves the connection on: after delivering, the status is read afresh,
    // or a stale direction would drop a pending write from the watcher.
    let status = first;
    while (this.deliver(status) > 0) status = this.client.pump(0);
    if (this.state === 'closed') return;
    const dead = (status & NBD_STATUS.DEAD) !== 0;
    if (this.state === 'ready') {
      if (dead) {
        this.lost();
        return;
      }
      // Held on a live connection: the server answered NBD_ESHUTDOWN and is
      // about to close it. Should it never do, the timeout fails them.
      if (status & NBD_STATUS.HELD) this.armDeadline();
      this.watch(status & (NBD_STATUS.READ | NBD_STATUS.WRITE));
      return;
    }
    // Reconnecting (or failing fast): status comes from the new handle, or is 0 (nothing issued).
    if (this.watcher === null) return;
    if (dead) this.retryLater();
    else if (status & NBD_STATUS.READY) this.reconnected();
    else this.watch(status & (NBD_STATUS.READ | NBD_STATUS.WRITE));
  }

  /**
   * Hands every finished op to the handler (immediate ones, then the
   * server's), then ends the batch once; returns how many.
   */
  private deliver(status: number): number {
    let delivered = 0;
    while (this.immediateCount > 0) {
      // Taken from the end: a handler may stage and finish more while this runs.
      const i = --this.immediateCount;
      this.inFlight--;
      delivered++;
      this.handler(this.immediate[2 * i], this.immediate[2 * i + 1]);
    }
    if (status & NBD_STATUS.COMPLETIONS) {
      for (;;) {
        const n = this.client.getEvents(this.events, REAP_BATCH);
        this.inFlight -= n;
        delivered += n;
        for (let i = 0; i < n; i++) this.handler(this.events[2 * i], this.events[2 * i + 1]);
        if (n < REAP_BATCH) break;
      }
    }
    if (delivered > 0) this.batchDone();
    return delivered;
  }

  /**
   * Busy polling (`--poll-us`): lets libnbd read whatever replies already
   * arrived and delivers them. Only if the socket is readable (one poll
   * system call when it is not): a guessed read notification stalls a
   * request the server is still reading (NBD_PUMP).
   */
  poll(): void {
    if (this.state === 'ready' && this.inFlight > 0)
      this.onSocket(NBD_STATUS.READ | NBD_PUMP.IF_READABLE);
  }

  private onSocket(events: number): void {
    this.afterStatus(this.client.pump(events));
  }

  /** (Re)starts the watcher on the client's current socket for `events`. */
  private watch(events: number): void {
    if (this.watcher === null) {
      const fd = this.client.fd;
      if (fd < 0) return;
      this.watcher = new native.FdWatcher(fd, (ev) => this.onSocket(ev));
      this.watchedEvents = -1;
    }
    if (events === this.watchedEvents) return;
    this.watchedEvents = events;
    this.watcher.start(events);
  }

  private unwatch(): void {
    this.watcher?.close();
    this.watcher = null;
  }

  private lost(): void {
    this.state = 'reconnecting';
    this.lostAt = Date.now();
    this.backoffMs = 0;
    this.unwatch();
    this.warn(
      `--image ${this.uri}: NBD connection lost (${this.client.lastError || 'closed by the server'}); ` +
        `holding ${this.client.held} command(s) and reconnecting`,
    );
    this.armDeadline();
    this.scheduleAttempt();
  }

  private scheduleAttempt(): void {
    const delay = this.backoffMs;
    this.backoffMs = Math.min(Math.max(delay * 2, NBD_BACKOFF_MS), NBD_BACKOFF_MAX_MS);
    this.retryTimer = setTimeout(() => this.attempt(), delay);
  }

  private attempt(): void {
    this.retryTimer = null;
    if (this.state === 'closed') return;
    // The old watcher is gone: beginConnect closes the old handle and its socket.
    const status = this.client.beginConnect(this.uri);
    if (status & NBD_STATUS.DEAD) {
      this.scheduleAttempt();
      return;
    }
    this.watch(status & (NBD_STATUS.READ | NBD_STATUS.WRITE));
    this.afterStatus(status);
  }

  private retryLater(): void {
    this.unwatch();
    this.scheduleAttempt();
  }

  /** The new connection is up: check it serves the same export, then replay what is held. */
  private reconnected(): void {
    const x = this.client.info();
    if (x.size !== this.sizeBytes || (x.readOnly && !this.capabilities.readonly)) {
      // Said once per outage: attempts go on every NBD_BACKOFF_MAX_MS.
      if (!this.mismatchWarned)
        this.warn(
          `--image ${this.uri}: the server came back with another export (${x.size} bytes` +
            `${x.readOnly ? ', read-only' : ''}; was ${this.sizeBytes}); not using it`,
        );
      this.mismatchWarned = true;
      // The watcher goes before the socket it watches.
      this.unwatch();
      this.client.close();
      this.scheduleAttempt();
      return;
    }
    this.mismatchWarned = false;
    const held = this.client.held;
    this.state = 'ready';
    this.clearDeadline();
    this.warn(
      `--image ${this.uri}: NBD connection back after ${Date.now() - this.lostAt} ms; ` +
        `resubmitting ${held} command(s)`,
    );
    this.watchedEvents = -1;
    this.afterStatus(this.client.resubmitHeld());
  }

  /** Starts the hold's clock when something waits for the server and none is running. */
  private armDeadline(): void {
    if (this.deadlineTimer !== null || this.client.held === 0) return;
    this.deadlineTimer = setTimeout(() => this.expire(), this.timeoutMs);
  }

  private clearDeadline(): void {
    if (this.deadlineTimer !== null) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = null;
  }

  /** The server stayed away for the whole timeout: fail what is held; fail new requests at once. */
  private expire(): void {
    this.deadlineTimer = null;
    if (this.state === 'ready') {
      if (this.client.held > 0) {
        this.warn(
          `--image ${this.uri}: the NBD server said it is shutting down but kept the connection ` +
            `for ${this.timeoutMs} ms; failing ${this.client.held} held command(s) with EIO`,
        );
        this.deliver(this.client.failHeld(Errno.EIO));
      }
      return;
    }
    if (this.state !== 'reconnecting') return;
    this.state = 'failing';
    this.warn(
      `--image ${this.uri}: NBD server unreachable for ${this.timeoutMs} ms; failing ` +
        `${this.client.held} held command(s) with EIO until it is back`,
    );
    this.deliver(this.client.failHeld(Errno.EIO));
  }

  /** Stops watching, drops timers and disconnects; call when inFlight is 0. */
  close(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.clearDeadline();
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.unwatch();
    if (this.client.held > 0) this.client.failHeld(Errno.EIO);
    this.client.close();
  }
}
