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
  type LoggerCommand,
  type LoggerInit,
  type LoggerReady,
  type LogStreamInit,
} from './stream.js';

type LoggerWorker = WorkerHost<LoggerInit, LoggerReady, LoggerCommand>;

/** Logger threads of this process that are running: SIGHUP reopens the files of all of them. */
const running = new Set<LoggerThread>();

/**
 * Reopens the file sinks of every running logger thread (SIGHUP after
 * logrotate moved the files away); resolves to the number of files reopened.
 * The reopen happens on each logger thread, between two writes.
 */
export async function reopenLogFiles(): Promise<number> {
  const counts = await Promise.all([...running].map((t) => t.reopen()));
  return counts.reduce((a, b) => a + b, 0);
}

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
      const thread = new LoggerThread(worker, started.thread, started.ready.background);
      running.add(thread);
      return thread;
    } catch (err) {
      await worker.terminate();
      throw err;
    }
  }

  /** Drains every ring to its sinks, closes them and ends the thread. Stop the producers first. */
  async shutdown(): Promise<void> {
    running.delete(this);
    await this.worker.shutdown();
  }

  /** Reopens this thread's file sinks at their paths; resolves to how many. */
  async reopen(): Promise<number> {
    return (await this.worker.request({ op: 'reopen' })) as number;
  }
}
