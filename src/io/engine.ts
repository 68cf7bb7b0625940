/**
 * One interface for every block I/O engine (STYLE.md §10). A device worker
 * stages iovecs and operations, submits the whole batch with one call, and
 * receives completions in batches through its handler. A failure never throws
 * out of the engine's completion path: it hands the request back with a
 * negative errno as its result.
 */
import type { RtPolicy } from '../rt/options.js';
import type { OpenImage } from './image.js';

/** Operations a block device asks of an engine. */
export const IoOp = { READ: 0, WRITE: 1, FLUSH: 2, DISCARD: 3, WRITE_ZEROES: 4 } as const;
/** One of the {@link IoOp} values: the `op` of a staged operation. */
export type IoOpCode = (typeof IoOp)[keyof typeof IoOp];

/**
 * Which file an operation goes to: the image, or the file attached beside it
 * ({@link IoEngine.attachFile}: a redirect backup's overlay).
 */
export const IoFile = { IMAGE: 0, ATTACHED: 1 } as const;
/** One of the {@link IoFile} values. */
export type IoFileIndex = (typeof IoFile)[keyof typeof IoFile];

/** Called once per finished operation: `result` is bytes transferred, 0, or -errno. */
export type IoCompletion = (userData: number, result: number) => void;

/**
 * Names of the engines that `--aio` accepts: Linux AIO, io_uring, a piscina
 * pool of threads doing preadv/pwritev ("threaded AIO"), preadv/pwritev on
 * the device worker itself (a baseline that blocks the worker), and `null`
 * (no I/O at all: reads give zeroes; measures the back end's own overhead).
 */
export const IO_ENGINE_NAMES = ['linux-aio', 'io_uring', 'threads', 'sync', 'null', 'nbd'] as const;
/** An `--aio` engine name, as `createEngine` takes it. */
export type IoEngineName = (typeof IO_ENGINE_NAMES)[number];

/**
 * What `createEngine` needs to open an image; an engine-specific field given to
 * another engine is refused (`validateEngineOptions`).
 */
export interface IoEngineOptions {
  /** Image file to serve. */
  path: string;
  readonly: boolean;
  /** Ask for O_DIRECT; engines fall back to buffered I/O with a warning where refused. */
  direct: boolean;
  /** Most operations in flight at once (sum over all queues of the device). */
  depth: number;
  /** Most iovecs staged in one batch. */
  maxIovs: number;
  /** Where warnings go (the worker forwards them to the main thread's log). */
  warn: (message: string) => void;
  /** io_uring: let a kernel thread poll the submission ring (IORING_SETUP_SQPOLL). */
  uringSqpoll?: boolean;
  /** threads: pool size (default {@link DEFAULT_AIO_THREADS}). */
  aioThreads?: number;
  /** threads: scheduling policy and priority of the pool threads (default: inherited). */
  aioThreadsPolicy?: ThreadPolicy;
  /** nbd: how long requests wait for a lost server, and the first connect may take (ms). */
  nbdTimeoutMs?: number;
}

/** Scheduling of engine-owned threads, as `--aio-threads-policy POLICY[:PRIO]` gives it. */
export interface ThreadPolicy {
  policy: RtPolicy;
  priority?: number;
}

/** Pool size of the threads engine when `--aio-threads` is not given. */
export const DEFAULT_AIO_THREADS = 4;

/**
 * What the storage behind an engine can do, for engines that cannot do
 * everything (nbd: what the server advertises); the device offers the guest
 * only these.
 */
export interface EngineCapabilities {
  /** Writes are refused: the device is read-only. */
  readonly: boolean;
  flush: boolean;
  discard: boolean;
  writeZeroes: boolean;
}

/**
 * A block I/O engine over one open image, driven by one device on one thread:
 * stage iovecs and ops, `submit` once per batch, completions come to `onComplete`.
 */
export interface IoEngine {
  readonly name: IoEngineName;
  /** True when the image is open with O_DIRECT. */
  readonly direct: boolean;
  /** Image size in bytes at open time. */
  readonly sizeBytes: number;
  /** Absent: a local image, which supports flush, discard and write-zeroes. */
  readonly capabilities?: EngineCapabilities;
  /** Alignment O_DIRECT needs for offsets, lengths and buffer addresses. */
  readonly alignment: number;
  /** Operations submitted and not yet completed. */
  readonly inFlight: number;
  /** Iovecs staged for the next submit. */
  readonly stagedIovs: number;
  /** Guest RAM (or any SharedArrayBuffers) that iovecs index into. */
  setBuffers(buffers: SharedArrayBuffer[]): void;
  /** Stages one iovec; false when the staging table is full (submit, then retry). */
  addIov(buffer: number, offset: number, length: number): boolean;
  /**
   * Stages a read or write over iovecs [firstIov, firstIov + iovCount); false
   * when full. `ioprio` (ioprio_set(2) encoding, src/io/ioprio.ts; 0 or
   * absent: the thread's own) is the priority the request is submitted with;
   * a batch that mixes classes is submitted higher classes first. `file`
   * (default IMAGE) is {@link IoFile.ATTACHED} only on an engine with an attached file.
   */
  queueReadWrite(
    op: IoOpCode,
    fileOffset: number,
    firstIov: number,
    iovCount: number,
    userData: number,
    ioprio?: number,
    file?: IoFileIndex,
  ): boolean;
  /** Flush, discard or write-zeroes: these run off the worker thread and complete like the rest. */
  queueSlowOp(
    op: IoOpCode,
    fileOffset: number,
    length: number,
    userData: number,
    file?: IoFileIndex,
  ): void;
  /**
   * Optional (local-file engines only): a second open file that operations
   * reach with `file` ATTACHED, or null to detach it (the caller closes it,
   * once nothing in flight uses it). Engines without it cannot redirect.
   */
  attachFile?(file: OpenImage | null): void;
  /** Submits every staged operation with one native call. */
  submit(): void;
  /** Installs the completion handler and the end-of-batch hook; called once by the device. */
  onComplete(handler: IoCompletion, batchDone: () => void): void;
  /**
   * Optional: delivers completions that are already ready without waiting for
   * the completion eventfd (busy polling, `--poll-us`). Cheap when nothing is ready.
   */
  poll?(): void;
  /** Stops watching for completions and closes the image; call when inFlight is 0. */
  close(): void;
}
