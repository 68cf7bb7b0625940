/**
 * What the io_uring, threads and sync engines share: the staging tables (iovecs
 * and ops in the AIO_OP layout of src/native.ts, allocated once), the O_DIRECT
 * fallback to the buffered descriptor, and the completion hooks. Each engine
 * supplies its own submit.
 */
import { AIO_CMD, AIO_OP, AIO_OP_STRIDE, type BufferTable, IOV_STRIDE, native } from '../native.js';
import {
  type IoCompletion,
  type IoEngine,
  type IoEngineName,
  type IoEngineOptions,
  IoFile,
  type IoFileIndex,
  IoOp,
  type IoOpCode,
} from './engine.js';
import { closeImage, type OpenImage, openImage } from './image.js';
import { CLASS_RANK, CLASS_RANKS, ioprioClass } from './ioprio.js';

/** errno values the engines hand back themselves. */
export const Errno = { EIO: 5, EBADF: 9, EAGAIN: 11, EINVAL: 22 } as const;

/** The errno of a caught SystemError (EIO when it carries none). */
export function errnoOf(err: unknown): number {
  const errno = (err as { errno?: number }).errno;
  return typeof errno === 'number' && errno > 0 ? errno : Errno.EIO;
}

/** Most completions reaped per native call. */
export const REAP_BATCH = 256;

/** A native completion queue: writes [userData, result] pairs, returns how many. */
export interface CompletionSource {
  getEvents(out: Float64Array, max: number): number;
}

/**
 * Base of every engine: the staging tables, the image and the completion hooks;
 * subclasses supply setBuffers, queueSlowOp and submit.
 */
export abstract class StagingEngine implements IoEngine {
  abstract readonly name: IoEngineName;
  readonly direct: boolean;
  readonly sizeBytes: number;
  readonly alignment: number;
  inFlight = 0;
  stagedIovs = 0;

  protected readonly image: OpenImage;
  /** The attached file ({@link IoFile.ATTACHED}); null: none. */
  protected attached: OpenImage | null = null;
  protected readonly iovs: Float64Array;
  /** Staged ops, AIO_OP_STRIDE doubles each. */
  protected readonly ops: Float64Array;
  protected readonly maxOps: number;
  protected stagedOps = 0;
  /** I/O priority of each staged op (ioprio_set(2) encoding; 0: the thread's own). */
  protected readonly prios: Uint16Array;
  /** Bit per {@link CLASS_RANK} staged since the last submit: more than one bit means reorder. */
  private rankMask = 0;
  /** Where a mixed batch is reordered (allocated once). */
  private readonly scratchOps: Float64Array;
  private readonly scratchPrios: Uint16Array;
  /** Batches whose ops were reordered so that higher I/O classes go first. */
  reorderedBatches = 0;
  /** Reaped [userData, result] pairs, reused by every reap. */
  private readonly events = new Float64Array(REAP_BATCH * 2);
  /**
   * Alignment of each buffer's base address: O_DIRECT cares about addresses,
   * and only mmapped guest RAM is known to start on a page.
   */
  protected bufferAlignment = new Int32Array(0);
  protected handler: IoCompletion = () => {};
  protected batchDone: () => void = () => {};
  protected closed = false;

  constructor(options: IoEngineOptions) {
    this.image = openImage(options.path, options.readonly, options.direct, options.warn);
    this.direct = this.image.direct;
    this.sizeBytes = this.image.sizeBytes;
    this.alignment = this.image.alignment;
    this.maxOps = options.depth;
    this.iovs = new Float64Array(options.maxIovs * IOV_STRIDE);
    this.ops = new Float64Array(options.depth * AIO_OP_STRIDE);
    this.prios = new Uint16Array(options.depth);
    this.scratchOps = new Float64Array(options.depth * AIO_OP_STRIDE);
    this.scratchPrios = new Uint16Array(options.depth);
  }

  abstract setBuffers(buffers: SharedArrayBuffer[]): void;
  abstract queueSlowOp(
    op: IoOpCode,
    fileOffset: number,
    length: number,
    userData: number,
    file?: IoFileIndex,
  ): void;
  abstract submit(): void;

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
    ioprio = 0,
    file: IoFileIndex = IoFile.IMAGE,
  ): boolean {
    const cmd = op === IoOp.WRITE ? AIO_CMD.PWRITEV : AIO_CMD.PREADV;
    const fd = this.fdFor(fileOffset, firstIov, iovCount, this.fileOf(file));
    return this.stageOp(cmd, fd, fileOffset, firstIov, iovCount, userData, ioprio);
  }

  /** Appends one op entry; false when staged plus in-flight ops would exceed the depth. */
  protected stageOp(
    cmd: number,
    fd: number,
    offset: number,
    a: number,
    b: number,
    userData: number,
    ioprio = 0,
  ): boolean {
    if (this.stagedOps + this.inFlight >= this.maxOps) return false;
    this.prios[this.stagedOps] = ioprio;
    this.rankMask |= 1 << CLASS_RANK[ioprioClass(ioprio)];
    const o = this.stagedOps * AIO_OP_STRIDE;
    this.ops[o + AIO_OP.opcode] = cmd;
    this.ops[o + AIO_OP.fd] = fd;
    this.ops[o + AIO_OP.offset] = offset;
    this.ops[o + AIO_OP.firstIov] = a;
    this.ops[o + AIO_OP.iovCount] = b;
    this.ops[o + AIO_OP.userData] = userData;
    this.stagedOps++;
    return true;
  }

  /** Records the base-address alignment of the buffers `table` holds (call from setBuffers). */
  protected noteBufferAlignment(table: BufferTable): void {
    this.bufferAlignment = Int32Array.from({ length: table.length }, (_, i) =>
      table.baseAlignment(i),
    );
  }

  /** The same for engines that keep no BufferTable on this thread. */
  protected noteBufferAlignmentOf(buffers: SharedArrayBuffer[]): void {
    const table = new native.BufferTable();
    table.set(buffers);
    this.noteBufferAlignment(table);
  }

  /** Attaches (or, with null, detaches) the second file; the caller owns and closes it. */
  attachFile(file: OpenImage | null): void {
    this.attached = file;
  }

  /** The open file an op with `file` goes to (the image when nothing is attached). */
  protected fileOf(file: IoFileIndex | undefined): OpenImage {
    return file === IoFile.ATTACHED && this.attached !== null ? this.attached : this.image;
  }

  /**
   * O_DIRECT needs offset, every length and every buffer address aligned; a
   * request that is not goes to the buffered descriptor instead of failing.
   */
  protected fdFor(
    fileOffset: number,
    firstIov: number,
    iovCount: number,
    image: OpenImage = this.image,
  ): number {
    const a = image.alignment;
    if (!image.direct || fileOffset % a !== 0) return image.bufferedFd;
    for (let i = firstIov; i < firstIov + iovCount; i++) {
      const b = i * IOV_STRIDE;
      const baseAligned = this.bufferAlignment[this.iovs[b]] >= a;
      if (!baseAligned || this.iovs[b + 1] % a !== 0 || this.iovs[b + 2] % a !== 0) {
        return image.bufferedFd;
      }
    }
    return image.fd;
  }

  /**
   * Hands every completion `source` has ready to the handler, REAP_BATCH at
   * a time, then ends the batch once. Returns how many were reaped.
   */
  protected deliverCompletions(source: CompletionSource): number {
    let reaped = 0;
    for (;;) {
      const n = source.getEvents(this.events, REAP_BATCH);
      for (let i = 0; i < n; i++) this.handler(this.events[2 * i], this.events[2 * i + 1]);
      this.inFlight -= n;
      reaped += n;
      if (n < REAP_BATCH) break;
    }
    if (reaped > 0) this.batchDone();
    return reaped;
  }

  /**
   * When the staged batch mixes I/O classes, reorders its ops (a stable
   * partition by class: RT, then BE and none, then idle) so the disk queue
   * sees the higher classes first. Nothing happens — not even a loop — for a
   * batch of one class, e.g. every batch at QD1. Iovec indexes travel with
   * their ops, so the iovec table stays as it is. Engines call it first thing
   * in submit.
   */
  protected orderByClass(): void {
    const mask = this.rankMask;
    if ((mask & (mask - 1)) === 0) return;
    const n = this.stagedOps;
    const S = AIO_OP_STRIDE;
    const ops = this.ops;
    const prios = this.prios;
    const so = this.scratchOps;
    const sp = this.scratchPrios;
    let out = 0;
    for (let rank = 0; rank < CLASS_RANKS; rank++) {
      if ((mask & (1 << rank)) === 0) continue;
      for (let i = 0; i < n; i++) {
        if (CLASS_RANK[ioprioClass(prios[i])] !== rank) continue;
        for (let k = 0; k < S; k++) so[out * S + k] = ops[i * S + k];
        sp[out++] = prios[i];
      }
    }
    // Copied back by hand: a subarray() view would allocate.
    for (let j = 0; j < n * S; j++) ops[j] = so[j];
    for (let j = 0; j < n; j++) prios[j] = sp[j];
    this.rankMask = 0;
    this.reorderedBatches++;
  }

  /** Forgets what is staged (after a submit). */
  protected clearStaged(): void {
    this.stagedOps = 0;
    this.stagedIovs = 0;
    this.rankMask = 0;
  }

  onComplete(handler: IoCompletion, batchDone: () => void): void {
    this.handler = handler;
    this.batchDone = batchDone;
  }

  /** Closes the image; subclasses release their own resources first. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeImage(this.image);
  }
}
