/**
 * The linux-aio engine: io_submit batches with iovecs pointing into guest RAM,
 * completions signalled on an eventfd (IOCB_FLAG_RESFD) that the worker's own
 * event loop watches, reaped in batches by io_getevents. Flush, discard and
 * write-zeroes have no AIO form that every file system honours, so they run on
 * libuv's thread pool and complete through the same handler.
 */
import {
  AIO_OP,
  AIO_OP_STRIDE,
  type AioContext,
  type BufferTable,
  type FdWatcher,
  native,
  POLL_READABLE,
} from '../native.js';
import type { IoEngineOptions, IoFileIndex, IoOpCode } from './engine.js';
import { runSlowOp } from './slow-ops.js';
import { Errno, errnoOf, StagingEngine } from './staging.js';

/** The `linux-aio` engine: reads and writes through io_submit, slow ops on libuv's pool. */
export class LinuxAioEngine extends StagingEngine {
  readonly name = 'linux-aio' as const;

  private readonly eventFd: number;
  private readonly ctx: AioContext;
  private readonly table: BufferTable;
  private readonly watcher: FdWatcher;

  constructor(options: IoEngineOptions) {
    super(options);
    this.eventFd = native.eventfd(0);
    this.ctx = new native.AioContext(options.depth, this.eventFd, options.maxIovs);
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
    this.inFlight++;
    runSlowOp(this.fileOf(file).bufferedFd, op, fileOffset, length, (result) => {
      this.inFlight--;
      if (this.closed) return;
      this.handler(userData, result);
      this.batchDone();
    });
  }

  submit(): void {
    this.orderByClass();
    let first = 0;
    while (first < this.stagedOps) first += this.submitFrom(first);
    this.clearStaged();
  }

  /**
   * io_submit stops at the first iocb it cannot take; that one is handed back
   * with its errno and the rest are submitted again, so one bad request never
   * holds up the others. A RangeError means the native side refused an entry
   * before submitting anything: the ops are then submitted one by one, so
   * only the bad one fails.
   */
  private submitFrom(first: number, limit = this.stagedOps - first): number {
    const ops = first === 0 ? this.ops : this.ops.subarray(first * AIO_OP_STRIDE);
    const prios = first === 0 ? this.prios : this.prios.subarray(first);
    try {
      const n = this.ctx.submit(this.table, ops, limit, this.iovs, prios);
      this.inFlight += n;
      if (n > 0) return n;
      this.failOp(first, Errno.EAGAIN);
    } catch (err) {
      if (err instanceof RangeError && limit > 1) return this.submitEach(first, limit);
      this.failOp(first, err instanceof RangeError ? Errno.EINVAL : errnoOf(err));
    }
    return 1;
  }

  private submitEach(first: number, count: number): number {
    for (let i = first; i < first + count; i++) this.submitFrom(i, 1);
    return count;
  }

  private failOp(index: number, errno: number): void {
    this.handler(this.ops[index * AIO_OP_STRIDE + AIO_OP.userData], -errno);
    this.batchDone();
  }

  /** Drains the completion eventfd and every ready event, then ends the batch once. */
  private reap(): void {
    native.eventfdRead(this.eventFd);
    this.deliverCompletions(this.ctx);
  }

  override close(): void {
    if (this.closed) return;
    this.watcher.close();
    this.ctx.destroy();
    native.close(this.eventFd);
    super.close();
  }
}
