/**
 * The linux-aio engine: io_submit batches with iovecs pointing into guest RAM,
 * completions signalled on an eventfd (IOCB_FLAG_RESFD) that the worker's own
 * event loop watches, reaped in batches by io_getevents. Flush, discard and
 * write-zeroes have no AIO form that every file system honours, so they run on
 * libuv's thread pool and complete through the same handler.
 */
import {
  AIO_CMD,
  AIO_OP,
  AIO_OP_STRIDE,
  type AioContext,
  type BufferTable,
  type FdWatcher,
  IOV_STRIDE,
  native,
  POLL_READABLE,
} from '../native.js';
import {
  type IoCompletion,
  type IoEngine,
  type IoEngineOptions,
  IoOp,
  type IoOpCode,
} from './engine.js';
import { closeImage, type OpenImage, openImage } from './image.js';

/** Most completions reaped per io_getevents call. */
const REAP_BATCH = 256;

export class LinuxAioEngine implements IoEngine {
  readonly name = 'linux-aio' as const;
  readonly direct: boolean;
  readonly sizeBytes: number;
  readonly alignment: number;
  inFlight = 0;
  stagedIovs = 0;

  private readonly image: OpenImage;
  private readonly eventFd: number;
  private readonly ctx: AioContext;
  private readonly table: BufferTable;
  private readonly watcher: FdWatcher;
  private readonly iovs: Float64Array;
  private readonly ops: Float64Array;
  private readonly events = new Float64Array(REAP_BATCH * 2);
  private readonly maxOps: number;
  private stagedOps = 0;
  /** Alignment of each buffer's base address (mmapped guest RAM: a page). */
  private bufferAlignment = new Int32Array(0);
  private handler: IoCompletion = () => {};
  private batchDone: () => void = () => {};
  private closed = false;

  constructor(options: IoEngineOptions) {
    this.image = openImage(options.path, options.readonly, options.direct, options.warn);
    this.direct = this.image.direct;
    this.sizeBytes = this.image.sizeBytes;
    this.alignment = this.image.alignment;
    this.maxOps = options.depth;
    this.iovs = new Float64Array(options.maxIovs * IOV_STRIDE);
    this.ops = new Float64Array(options.depth * AIO_OP_STRIDE);
    this.eventFd = native.eventfd(0);
    this.ctx = new native.AioContext(options.depth, this.eventFd, options.maxIovs);
    this.table = new native.BufferTable();
    this.watcher = new native.FdWatcher(this.eventFd, () => this.reap());
    this.watcher.start(POLL_READABLE);
  }

  setBuffers(buffers: SharedArrayBuffer[]): void {
    this.table.set(buffers);
    this.bufferAlignment = Int32Array.from(buffers, (_, i) => this.table.baseAlignment(i));
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
    const o = this.stagedOps * AIO_OP_STRIDE;
    this.ops[o + AIO_OP.opcode] = op === IoOp.WRITE ? AIO_CMD.PWRITEV : AIO_CMD.PREADV;
    this.ops[o + AIO_OP.fd] = this.fdFor(fileOffset, firstIov, iovCount);
    this.ops[o + AIO_OP.offset] = fileOffset;
    this.ops[o + AIO_OP.firstIov] = firstIov;
    this.ops[o + AIO_OP.iovCount] = iovCount;
    this.ops[o + AIO_OP.userData] = userData;
    this.stagedOps++;
    return true;
  }

  /**
   * O_DIRECT needs offset, every length and every buffer address aligned; a
   * request that is not goes to the buffered descriptor instead of failing.
   */
  private fdFor(fileOffset: number, firstIov: number, iovCount: number): number {
    const a = this.alignment;
    if (!this.direct || fileOffset % a !== 0) return this.image.bufferedFd;
    for (let i = firstIov; i < firstIov + iovCount; i++) {
      const b = i * IOV_STRIDE;
      const baseAligned = this.bufferAlignment[this.iovs[b]] >= a;
      if (!baseAligned || this.iovs[b + 1] % a !== 0 || this.iovs[b + 2] % a !== 0)
        return this.image.bufferedFd;
    }
    return this.image.fd;
  }

  queueSlowOp(op: IoOpCode, fileOffset: number, length: number, userData: number): void {
    this.inFlight++;
    const done = (err: Error | null) => {
      this.inFlight--;
      if (this.closed) return;
      this.handler(userData, err ? -((err as { errno?: number }).errno ?? 5) : 0);
      this.batchDone();
    };
    const fd = this.image.bufferedFd;
    const c = native.constants;
    if (op === IoOp.FLUSH) native.fdatasyncAsync(fd, done);
    else if (op === IoOp.DISCARD) {
      native.fallocateAsync(
        fd,
        c.FALLOC_FL_PUNCH_HOLE | c.FALLOC_FL_KEEP_SIZE,
        fileOffset,
        length,
        done,
      );
    } else native.fallocateAsync(fd, c.FALLOC_FL_ZERO_RANGE, fileOffset, length, done);
  }

  submit(): void {
    let first = 0;
    while (first < this.stagedOps) {
      const taken = this.submitFrom(first);
      first += taken;
    }
    this.stagedOps = 0;
    this.stagedIovs = 0;
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
    try {
      const n = this.ctx.submit(this.table, ops, limit, this.iovs);
      this.inFlight += n;
      if (n > 0) return n;
      this.failOp(first, 11 /* EAGAIN */);
    } catch (err) {
      if (err instanceof RangeError && limit > 1) return this.submitEach(first, limit);
      this.failOp(first, (err as { errno?: number }).errno ?? 22);
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

  onComplete(handler: IoCompletion, batchDone: () => void): void {
    this.handler = handler;
    this.batchDone = batchDone;
  }

  /** Drains the completion eventfd and every ready event, then ends the batch once. */
  private reap(): void {
    native.eventfdRead(this.eventFd);
    let reaped = 0;
    for (;;) {
      const n = this.ctx.getEvents(this.events, REAP_BATCH);
      for (let i = 0; i < n; i++) this.handler(this.events[2 * i], this.events[2 * i + 1]);
      this.inFlight -= n;
      reaped += n;
      if (n < REAP_BATCH) break;
    }
    if (reaped > 0) this.batchDone();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    this.ctx.destroy();
    native.close(this.eventFd);
    closeImage(this.image);
  }
}
