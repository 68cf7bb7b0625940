/**
 * The sync engine: preadv / pwritev on the device worker itself, one system
 * call per request, at submit time. It BLOCKS THE WORKER for every I/O — no
 * kick is seen and no other queue served meanwhile — and exists only as the
 * baseline the asynchronous engines are measured against (DESIGN.md rule 2).
 * Completions of a batch are delivered at the end of its submit, with one
 * end-of-batch call.
 */
import { AIO_CMD, AIO_OP, AIO_OP_STRIDE, type BufferTable, native } from '../native.js';
import type { IoFileIndex, IoOpCode } from './engine.js';
import { runSlowOp } from './slow-ops.js';
import { errnoOf, StagingEngine } from './staging.js';

/** The `sync` engine (a baseline): staged reads and writes run in `submit`, blocking the worker. */
export class SyncEngine extends StagingEngine {
  readonly name = 'sync' as const;
  private readonly table: BufferTable = new native.BufferTable();
  /** [userData, result] pairs of the batch being submitted, delivered after its last I/O. */
  private readonly results: Float64Array;
  /** The I/O priority last set on this (the worker) thread. */
  private ioprio = 0;

  constructor(options: ConstructorParameters<typeof StagingEngine>[0]) {
    super(options);
    this.results = new Float64Array(options.depth * 2);
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
    const count = this.stagedOps;
    const r = this.results;
    for (let i = 0; i < count; i++) {
      r[2 * i] = this.ops[i * AIO_OP_STRIDE + AIO_OP.userData];
      r[2 * i + 1] = this.run(i * AIO_OP_STRIDE);
    }
    // Staging is cleared before completions run: a completion handler may stage again.
    this.clearStaged();
    for (let i = 0; i < count; i++) this.handler(r[2 * i], r[2 * i + 1]);
    if (count > 0) this.batchDone();
  }

  /**
   * One blocking preadv / pwritev; bytes transferred or -errno. The request's
   * I/O priority is set on the worker thread itself (ioprio_set) when it
   * differs from the last one.
   */
  private run(o: number): number {
    const ops = this.ops;
    const ioprio = this.prios[o / AIO_OP_STRIDE];
    const fd = ops[o + AIO_OP.fd];
    const first = ops[o + AIO_OP.firstIov];
    const count = ops[o + AIO_OP.iovCount];
    const offset = ops[o + AIO_OP.offset];
    try {
      if (ioprio !== this.ioprio) {
        native.ioprioSet(0, ioprio);
        this.ioprio = ioprio;
      }
      return ops[o + AIO_OP.opcode] === AIO_CMD.PWRITEV
        ? native.pwritev(fd, this.table, this.iovs, first, count, offset)
        : native.preadv(fd, this.table, this.iovs, first, count, offset);
    } catch (err) {
      return -errnoOf(err);
    }
  }
}
