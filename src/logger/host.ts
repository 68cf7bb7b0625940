/**
 * The main thread's handle on the logger thread, and the construction of log
 * streams (a ring per stream, shared between one device worker and the logger).
 */

import { SpscByteRing, StatCounters } from '../locking/index.js';
import type { Logger } from '../log.js';
import type { ThreadRtState } from '../rt/index.js';
import { WorkerHost } from '../thread/index.js';
import type { SinkSpec } from './sinks.js';
import {
  LOGGER_STAT_NAMES,
  type LoggerInit,
  type LoggerReady,
  type LogStreamInit,
} from './stream.js';

type LoggerWorker = WorkerHost<LoggerInit, LoggerReady, never>;

/** Default ring size per stream: 1 MiB absorbs seconds of a fast guest console. */
export const DEFAULT_RING_BYTES = 1 << 20;

/** A stream as the main thread keeps it: the ring (for its high-water mark) and counters. */
export interface LogStream {
  init: LogStreamInit;
  ring: SpscByteRing;
  /** The logger thread's counters for this stream. */
  loggerStats: StatCounters;
}

/** Makes a stream with a ring of `ringBytes` (a power of two). */
export function createLogStream(name: string, ringBytes: number, sinks: SinkSpec[]): LogStream {
  const ring = SpscByteRing.create(ringBytes);
  const loggerStats = StatCounters.create(LOGGER_STAT_NAMES);
  return {
    init: { name, ring: ring.buffer, sinks, statsBuffer: loggerStats.buffer },
    ring,
    loggerStats,
  };
}

/** The running logger thread. */
export class LoggerThread {
  private constructor(
    private readonly worker: LoggerWorker,
    /** The logger thread's tid and (lowered) scheduling. */
    readonly thread: ThreadRtState,
    /** 'idle' (SCHED_IDLE) or 'nice' (nice 19). */
    readonly background: string,
  ) {}

  /** Starts the thread; resolves once every sink is open. */
  static async start(streams: LogStream[], log: Logger): Promise<LoggerThread> {
    const worker: LoggerWorker = new WorkerHost(
      'logger/worker.js',
      { streams: streams.map((s) => s.init) },
      { name: 'logger', log },
    );
    try {
      const started = await worker.ready;
      return new LoggerThread(worker, started.thread, started.ready.background);
    } catch (err) {
      await worker.terminate();
      throw err;
    }
  }

  /** Drains every ring to its sinks, closes them and ends the thread. Stop the producers first. */
  async shutdown(): Promise<void> {
    await this.worker.shutdown();
  }
}
