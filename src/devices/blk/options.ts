/** Options of a virtio-blk device, as the CLI and embedders give them. */
import type { IoEngineName, ThreadPolicy } from '../../io/engine.js';

/**
 * One blk device: image path, queues (1..64) and queue size (power of two, 4..1024),
 * I/O engine (`aio`) and O_DIRECT; checked by {@link validateBlkOptions}.
 */
export interface BlkOptions {
  image: string;
  readonly: boolean;
  queues: number;
  queueSize: number;
  aio: IoEngineName;
  direct: boolean;
  /** GET_ID answer; at most 20 bytes are sent. */
  serial: string;
  /** io_uring only: a kernel thread polls the submission ring (IORING_SETUP_SQPOLL). */
  uringSqpoll?: boolean;
  /** threads only: pool size. */
  aioThreads?: number;
  /** threads only: scheduling of the pool threads. */
  aioThreadsPolicy?: ThreadPolicy;
  /**
   * Adaptive polling: after a batch (of kicks or of completions) the worker
   * keeps checking the avail rings for up to this many microseconds, with
   * kicks turned off, before it sleeps on the kick eventfds. 0: never poll.
   */
  pollUs?: number;
}

/** Largest `--poll-us` accepted: a second of spinning is a configuration mistake. */
export const MAX_POLL_US = 1_000_000;

/** What a device worker is given to open one blk device. */
export interface BlkDeviceInit {
  kind: 'blk';
  options: BlkOptions;
  /** StatCounters buffer shared with the main thread. */
  statsBuffer: SharedArrayBuffer;
}

/** What an opened blk device reports about its image and engine. */
export interface BlkInfo {
  sizeBytes: number;
  /** The image is open with O_DIRECT. */
  direct: boolean;
  /** Buffer alignment O_DIRECT needs, in bytes. */
  alignment: number;
  /** The I/O engine in use. */
  engine: string;
  pollUs: number;
}

/** Checks the numbers that do not depend on the image; throws RangeError naming the option. */
export function validateBlkOptions(o: BlkOptions): void {
  if (!Number.isInteger(o.queues) || o.queues < 1 || o.queues > 64) {
    throw new RangeError(`--queues ${o.queues}: must be an integer in 1..64`);
  }
  const q = o.queueSize;
  if (!Number.isInteger(q) || q < 4 || q > 1024 || (q & (q - 1)) !== 0) {
    throw new RangeError(`--queue-size ${q}: must be a power of two in 4..1024`);
  }
  const p = o.pollUs ?? 0;
  if (!Number.isInteger(p) || p < 0 || p > MAX_POLL_US) {
    throw new RangeError(`--poll-us ${p}: must be an integer in 0..${MAX_POLL_US}`);
  }
}
