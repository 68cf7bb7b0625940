/**
 * The io_uring engine: one io_uring_enter per batch with iovecs pointing into
 * guest RAM, completions signalled on an eventfd registered with the ring
 * (io_uring_register_eventfd) that the worker's own event loop watches, and
 * reaped from the CQ ring in userspace. Flush (IORING_OP_FSYNC, DATASYNC) and
 * discard / write-zeroes (IORING_OP_FALLOCATE) go through the same ring, so
 * this engine needs no thread pool at all. With `--uring-sqpoll` a kernel
 * thread polls the SQ ring and most batches need no system call.
 */
import { ConfigError } from '../errors.js';
import {
  AIO_OP,
  AIO_OP_STRIDE,
  type BufferTable,
  type FdWatcher,
  type NativeBinding,
  native,
  POLL_READABLE,
} from '../native.js';
import { type IoEngineOptions, type IoFileIndex, IoOp, type IoOpCode } from './engine.js';
import { Errno, errnoOf, StagingEngine } from './staging.js';

/** A native io_uring instance (see NativeBinding.UringContext). */
export type UringContext = InstanceType<NativeBinding['UringContext']>;

/** Opcodes of the ops entries a UringContext takes (vectored and sync share IOCB_CMD_* values). */
export const URING_CMD = { FDSYNC: 3, PREADV: 7, PWRITEV: 8, FALLOCATE: 100 } as const;
/** FALLOCATE entries carry mode and length in the firstIov and iovCount fields. */
export const URING_OP = { mode: 3, length: 4 } as const;

/** How long the SQPOLL kernel thread spins on an idle ring before it sleeps. */
export const SQPOLL_IDLE_MS = 50;

/** The kernel refused to set up the ring (or SQPOLL); `code` names the errno. */
export class UringSetupError extends ConfigError {}

function createRing(options: IoEngineOptions, eventFd: number): UringContext {
  const sqpoll = options.uringSqpoll === true;
  try {
    return new native.UringContext(
      options.depth,
      eventFd,
      options.maxIovs,
      sqpoll ? SQPOLL_IDLE_MS : -1,
    );
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'EIO';
    const what = sqpoll
      ? `--uring-sqpoll: the kernel refused IORING_SETUP_SQPOLL (${code}); run without --uring-sqpoll`
      : `--aio io_uring: the kernel refused io_uring_setup (${code}); choose --aio linux-aio`;
    throw new UringSetupError(what, { cause: err });
  }
}

/**
 * The `io_uring` engine; the constructor throws {@link UringSetupError} when the
 * kernel refuses the ring (or SQPOLL).
 */
export class UringEngine extends StagingEngine {
  readonly name = 'io_uring' as const;
  /** True when a kernel thread polls the submission ring. */
  readonly sqpoll: boolean;
  private readonly eventFd: number;
  private readonly ring: UringContext;
  private readonly table: BufferTable;
  private readonly watcher: FdWatcher;
  /** errno of a failed io_uring_enter; non-zero: the ring takes no more work. */
  private broken = 0;

  constructor(options: IoEngineOptions) {
    super(options);
    this.eventFd = native.eventfd(0);
    try {
      this.ring = createRing(options, this.eventFd);
    } catch (err) {
      native.close(this.eventFd);
      super.close();
      throw err;
    }
    this.sqpoll = this.ring.sqpoll;
    this.table = new native.BufferTable();
    this.watcher = new native.FdWatcher(this.eventFd, () => this.reap());
    this.watcher.start(POLL_READABLE);
  }

  setBuffers(buffers: SharedArrayBuffer[]): void {
    this.table.set(buffers);
    this.noteBufferAlignment(this.table);
  }

  queueSlowOp(
    op: IoOpCode,
    fileOffset: number,
    length: number,
    userData: number,
    file?: IoFileIndex,
  ): void {
    if (!this.stageSlowOp(op, fileOffset, length, userData, file)) {
      this.submit();
      if (!this.stageSlowOp(op, fileOffset, length, userData, file))
        this.failNow(userData, Errno.EAGAIN);
    }
  }

  private stageSlowOp(
    op: IoOpCode,
    offset: number,
    length: number,
    userData: number,
    file: IoFileIndex | undefined,
  ): boolean {
    const fd = this.fileOf(file).bufferedFd;
    const c = native.constants;
    if (op === IoOp.FLUSH) return this.stageOp(URING_CMD.FDSYNC, fd, 0, 0, 0, userData);
    const mode =
      op === IoOp.DISCARD ? c.FALLOC_FL_PUNCH_HOLE | c.FALLOC_FL_KEEP_SIZE : c.FALLOC_FL_ZERO_RANGE;
    return this.stageOp(URING_CMD.FALLOCATE, fd, offset, mode, length, userData);
  }

  submit(): void {
    this.orderByClass();
    const count = this.stagedOps;
    if (count > 0) this.submitRange(0, count);
    this.clearStaged();
  }

  /**
   * The native side checks every entry before it queues any, so a RangeError
   * means nothing was queued: the batch is then retried op by op, and only
   * the bad one is handed back (EINVAL), never the others.
   */
  private submitRange(first: number, count: number): void {
    const ops = first === 0 ? this.ops : this.ops.subarray(first * AIO_OP_STRIDE);
    const prios = first === 0 ? this.prios : this.prios.subarray(first);
    try {
      if (this.broken !== 0) throw Object.assign(new Error('ring broken'), { errno: this.broken });
      this.inFlight += this.ring.submit(this.table, ops, count, this.iovs, prios);
    } catch (err) {
      if (err instanceof RangeError && count > 1) {
        for (let i = 0; i < count; i++) this.submitRange(first + i, 1);
        return;
      }
      const errno = err instanceof RangeError ? Errno.EINVAL : errnoOf(err);
      // io_uring_enter itself failed (after its retries): some SQEs of the batch
      // may sit in the SQ ring, so it is never entered again — every later
      // request fails the same way instead of completing twice.
      if (!(err instanceof RangeError)) this.broken = errno;
      for (let i = 0; i < count; i++) this.failOp(first + i, errno);
    }
  }

  private failOp(index: number, errno: number): void {
    this.failNow(this.ops[index * AIO_OP_STRIDE + AIO_OP.userData], errno);
  }

  private failNow(userData: number, errno: number): void {
    this.handler(userData, -errno);
    this.batchDone();
  }

  /** Drains the eventfd, then the CQ ring; ends the batch once. */
  private reap(): void {
    native.eventfdRead(this.eventFd);
    this.poll();
  }

  /** Reaps whatever the CQ ring holds (userspace only: no system call). */
  poll(): void {
    if (this.closed) return;
    this.deliverCompletions(this.ring);
  }

  override close(): void {
    if (this.closed) return;
    // Tearing the ring down cancels whatever is still in flight; the device
    // closes its engine only once every queue is idle.
    this.watcher.close();
    this.ring.destroy();
    native.close(this.eventFd);
    super.close();
  }
}
