/**
 * The threads engine: a piscina pool of threads each doing one blocking
 * preadv / pwritev (or fdatasync / fallocate) per task — QEMU's "threads"
 * AIO, glibc's POSIX AIO. It is here to be measured: under load its
 * completions pile up in the pool's queue (DESIGN.md, reference figures).
 *
 * Guest RAM reaches the pool threads as SharedArrayBuffers (no copy): a task
 * names its memory generation, and a thread that has not seen that generation
 * asks for the buffers once. Completions come back as promise resolutions on
 * the device worker's loop and are handed to the device at once; the end of
 * the batch is signalled once per turn of the loop (setImmediate), so many
 * completions arriving together raise one interrupt.
 *
 * Pools are shared per thread: every device of one worker with the same pool
 * size and policy (e.g. --single-thread) uses one pool and one queue.
 *
 * Unlike the other engines this one allocates per request (a task message, a
 * copy of its iovecs, a promise): that cost is part of what it measures.
 */
import { join } from 'node:path';
import { Piscina } from 'piscina';
import { AIO_CMD, AIO_OP, AIO_OP_STRIDE, IOV_STRIDE, native, projectRoot } from '../native.js';
import {
  DEFAULT_AIO_THREADS,
  type IoEngineOptions,
  type IoFileIndex,
  IoOp,
  type IoOpCode,
  type ThreadPolicy,
} from './engine.js';
import { errnoOf, StagingEngine } from './staging.js';
import { NEED_BUFFERS, type ThreadsWorkerData, type ThreadTask } from './threads-protocol.js';

/** Largest pool accepted by `--aio-threads`. */
export const MAX_AIO_THREADS = 256;

interface SharedPool {
  pool: Piscina<ThreadTask, number>;
  users: number;
}

const pools = new Map<string, SharedPool>();
/**
 * Memory generations are numbered per thread, not per engine: engines that
 * share a pool must never name two different memory tables with one number.
 */
let nextGeneration = 1;

function poolKey(threads: number, policy: ThreadPolicy | undefined): string {
  return `${threads}/${policy?.policy ?? 'inherit'}/${policy?.priority ?? 0}`;
}

function acquirePool(
  threads: number,
  policy: ThreadPolicy | undefined,
  warn: (message: string) => void,
): SharedPool {
  const key = poolKey(threads, policy);
  let shared = pools.get(key);
  if (shared === undefined) {
    const workerData: ThreadsWorkerData = { policy };
    const pool = new Piscina<ThreadTask, number>({
      // The compiled worker, whether this module runs compiled or from sources.
      filename: join(projectRoot, 'dist', 'src', 'io', 'threads-worker.js'),
      minThreads: threads,
      maxThreads: threads,
      idleTimeout: Number.POSITIVE_INFINITY,
      workerData,
    });
    // A pool thread that dies outside a task is replaced by piscina; without a
    // listener its 'error' would end the device worker instead.
    pool.on('error', (err: unknown) => warn(`threads engine: pool thread failed: ${String(err)}`));
    shared = { pool, users: 0 };
    pools.set(key, shared);
  }
  shared.users++;
  return shared;
}

function releasePool(threads: number, policy: ThreadPolicy | undefined): void {
  const key = poolKey(threads, policy);
  const shared = pools.get(key);
  if (shared === undefined || --shared.users > 0) return;
  pools.delete(key);
  void shared.pool.destroy();
}

/** Guest RAM as of one setBuffers call. */
interface Generation {
  gen: number;
  buffers: SharedArrayBuffer[];
}

/**
 * The `threads` engine: each operation is a task on a piscina pool shared by the
 * thread's engines with the same size and policy; allocates per request.
 */
export class ThreadsEngine extends StagingEngine {
  readonly name = 'threads' as const;
  /** Pool threads. */
  readonly threads: number;
  private readonly policy: ThreadPolicy | undefined;
  private readonly shared: SharedPool;
  private memory: Generation = { gen: 0, buffers: [] };
  /**
   * Tasks left that carry the buffers along after a setBuffers: one per pool
   * thread is enough in the common case and saves each its NEED_BUFFERS round trip.
   */
  private carryBuffers = 0;
  private batchScheduled = false;
  private reported = false;
  private readonly warn: (message: string) => void;
  private readonly endBatch = () => {
    this.batchScheduled = false;
    if (!this.closed) this.batchDone();
  };

  constructor(options: IoEngineOptions) {
    super(options);
    this.threads = options.aioThreads ?? DEFAULT_AIO_THREADS;
    this.warn = options.warn;
    this.policy = options.aioThreadsPolicy;
    this.shared = acquirePool(this.threads, this.policy, options.warn);
  }

  /** Tasks queued in the pool and not yet started (shared by every user of the pool). */
  get queued(): number {
    return this.shared.pool.queueSize;
  }

  setBuffers(buffers: SharedArrayBuffer[]): void {
    this.memory = { gen: nextGeneration++, buffers };
    this.noteBufferAlignmentOf(buffers);
    this.carryBuffers = 2 * this.threads;
  }

  queueSlowOp(
    op: IoOpCode,
    fileOffset: number,
    length: number,
    userData: number,
    file?: IoFileIndex,
  ): void {
    const c = native.constants;
    const mode =
      op === IoOp.DISCARD ? c.FALLOC_FL_PUNCH_HOLE | c.FALLOC_FL_KEEP_SIZE : c.FALLOC_FL_ZERO_RANGE;
    const fd = this.fileOf(file).bufferedFd;
    this.send({ gen: this.memory.gen, op, fd, offset: fileOffset, mode, length }, userData);
  }

  submit(): void {
    this.orderByClass();
    for (let i = 0; i < this.stagedOps; i++) this.sendStaged(i);
    this.clearStaged();
  }

  /** Copies one staged op's iovecs into its task: the staging table is reused at once. */
  private sendStaged(index: number): void {
    const o = index * AIO_OP_STRIDE;
    const ops = this.ops;
    const first = ops[o + AIO_OP.firstIov] * IOV_STRIDE;
    const iovs = this.iovs.slice(first, first + ops[o + AIO_OP.iovCount] * IOV_STRIDE);
    const op = ops[o + AIO_OP.opcode] === AIO_CMD.PWRITEV ? IoOp.WRITE : IoOp.READ;
    const task: ThreadTask = {
      gen: this.memory.gen,
      op,
      fd: ops[o + AIO_OP.fd],
      offset: ops[o + AIO_OP.offset],
      iovs,
      ioprio: this.prios[index],
    };
    this.send(task, ops[o + AIO_OP.userData]);
  }

  private send(task: ThreadTask, userData: number): void {
    this.inFlight++;
    if (this.carryBuffers > 0) {
      this.carryBuffers--;
      task.buffers = this.memory.buffers;
    }
    this.run(task, this.memory, userData);
  }

  private run(task: ThreadTask, memory: Generation, userData: number): void {
    this.shared.pool.run(task).then(
      (result) => {
        if (result !== NEED_BUFFERS) return this.complete(userData, result);
        // This thread has not seen the task's generation: send it along once.
        this.run({ ...task, buffers: memory.buffers }, memory, userData);
      },
      (err: unknown) => {
        this.reportOnce(err);
        this.complete(userData, -errnoOf(err));
      },
    );
  }

  /** A pool thread failed a task outright (not an I/O error): say why, once. */
  private reportOnce(err: unknown): void {
    if (this.reported) return;
    this.reported = true;
    this.warn(`threads engine: ${err instanceof Error ? err.message : String(err)}`);
  }

  private complete(userData: number, result: number): void {
    this.inFlight--;
    if (this.closed) return;
    this.handler(userData, result);
    if (!this.batchScheduled) {
      this.batchScheduled = true;
      setImmediate(this.endBatch);
    }
  }

  override close(): void {
    if (this.closed) return;
    super.close();
    releasePool(this.threads, this.policy);
  }
}
