/**
 * What the threads engine and its pool threads say to each other. Kept apart
 * from threads-worker.ts so the engine (main or device thread) never loads
 * the pool thread's entry module and runs its top level.
 */
import type { ThreadPolicy } from './engine.js';

/** Result asking the engine to resend the task with the current buffers (never a -errno). */
export const NEED_BUFFERS = -0x10000;

/** What the engine sends per operation. */
export interface ThreadTask {
  /** Memory generation the iovecs refer to. */
  gen: number;
  /** Present when the sender knows this thread may not have generation `gen`. */
  buffers?: SharedArrayBuffer[];
  op: number;
  fd: number;
  offset: number;
  /** READ / WRITE: IOV_STRIDE doubles per iovec. */
  iovs?: Float64Array;
  /**
   * READ / WRITE: the request's I/O priority (0: none). The pool thread sets
   * it on itself with ioprio_set(IOPRIO_WHO_PROCESS, its tid) before the
   * preadv / pwritev whenever it differs from the last one it set: a thread
   * is one task to the kernel, so its I/O priority is its own.
   */
  ioprio?: number;
  /** DISCARD / WRITE_ZEROES: fallocate mode and length. */
  mode?: number;
  length?: number;
}

/** What the engine hands each pool thread at start. */
export interface ThreadsWorkerData {
  policy?: ThreadPolicy;
}
