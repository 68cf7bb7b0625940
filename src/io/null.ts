/**
 * The null engine (QEMU's null-co): no I/O at all. Reads complete with zeroes
 * written into the guest buffers (read-zeroes), writes, flush, discard and
 * write-zeroes complete at once without touching the image. Completions are
 * still asynchronous and take the path the real engines' take: the batch's
 * results wait in a preallocated table, ONE eventfd write per batch wakes the
 * worker's loop, and its watcher delivers them with one end-of-batch call. So
 * what a load generator measures over it is the back end's own cost: vrings,
 * chain parsing, staging, the eventfd round trip and the interrupt.
 *
 * The image is still opened (its size is the device's capacity, so the same
 * command line works with every engine) but never read or written.
 */
import {
  AIO_CMD,
  AIO_OP,
  AIO_OP_STRIDE,
  type FdWatcher,
  IOV_STRIDE,
  native,
  POLL_READABLE,
} from '../native.js';
import type { IoEngineOptions, IoOpCode } from './engine.js';
import { StagingEngine } from './staging.js';

/** A read or write whose iovec lies outside guest RAM (the native engines' BufferTable check). */
const EFAULT = 14;

/** The `null` engine: zeroes for reads, nothing for the rest, completions through an eventfd. */
export class NullEngine extends StagingEngine {
  readonly name = 'null' as const;
  /** Guest RAM as bytes, one view per buffer (made in setBuffers, never per request). */
  private bytes: Uint8Array[] = [];
  private readonly eventFd: number;
  private readonly watcher: FdWatcher;
  /** [userData, result] pairs waiting for the eventfd, and the ones being delivered. */
  private pending: Float64Array;
  private delivering: Float64Array;
  private pendingCount = 0;
  /** The eventfd was written and not yet read. */
  private armed = false;
  /** Eventfd writes: one per batch that found nothing pending. */
  signals = 0;

  constructor(options: IoEngineOptions) {
    super(options);
    this.pending = new Float64Array(options.depth * 2);
    this.delivering = new Float64Array(options.depth * 2);
    this.eventFd = native.eventfd(0);
    this.watcher = new native.FdWatcher(this.eventFd, () => this.reap());
    this.watcher.start(POLL_READABLE);
  }

  setBuffers(buffers: SharedArrayBuffer[]): void {
    this.bytes = buffers.map((b) => new Uint8Array(b));
    this.noteBufferAlignmentOf(buffers);
  }

  queueSlowOp(_op: IoOpCode, _fileOffset: number, _length: number, userData: number): void {
    this.inFlight++;
    this.post(userData, 0);
    this.signal();
  }

  submit(): void {
    this.orderByClass();
    const n = this.stagedOps;
    for (let i = 0; i < n; i++) {
      const o = i * AIO_OP_STRIDE;
      this.inFlight++;
      this.post(this.ops[o + AIO_OP.userData], this.run(o));
    }
    this.clearStaged();
    if (n > 0) this.signal();
  }

  /** Zeroes the iovecs of a read; returns the bytes the op covers. */
  private run(o: number): number {
    const ops = this.ops;
    const read = ops[o + AIO_OP.opcode] !== AIO_CMD.PWRITEV;
    const first = ops[o + AIO_OP.firstIov];
    const end = first + ops[o + AIO_OP.iovCount];
    let total = 0;
    for (let i = first; i < end; i++) {
      const b = i * IOV_STRIDE;
      const offset = this.iovs[b + 1];
      const length = this.iovs[b + 2];
      const bytes = this.bytes[this.iovs[b]];
      if (bytes === undefined || offset + length > bytes.length) return -EFAULT;
      if (read) bytes.fill(0, offset, offset + length);
      total += length;
    }
    return total;
  }

  private post(userData: number, result: number): void {
    const k = this.pendingCount++ * 2;
    this.pending[k] = userData;
    this.pending[k + 1] = result;
  }

  /** Wakes the loop once for everything pending: a second write before the reap would be wasted. */
  private signal(): void {
    if (this.pendingCount === 0 || this.armed) return;
    this.armed = true;
    this.signals++;
    native.eventfdWrite(this.eventFd, 1);
  }

  private reap(): void {
    native.eventfdRead(this.eventFd);
    this.armed = false;
    this.poll();
  }

  /**
   * Delivers what is pending (also without the eventfd: `--poll-us`). The
   * tables swap first, so a completion handler that submits again (a
   * re-drain) posts into the other one and is signalled anew.
   */
  poll(): void {
    const n = this.pendingCount;
    if (this.closed || n === 0) return;
    const batch = this.pending;
    this.pending = this.delivering;
    this.delivering = batch;
    this.pendingCount = 0;
    this.inFlight -= n;
    for (let i = 0; i < n; i++) this.handler(batch[2 * i], batch[2 * i + 1]);
    this.batchDone();
  }

  override close(): void {
    if (this.closed) return;
    this.watcher.close();
    native.close(this.eventFd);
    super.close();
  }
}
