/** What the main thread hands the logger thread about each stream. */
import type { SinkSpec } from './sinks.js';

/** One log stream: a ring (its producer is a device worker) drained to its sinks. */
export interface LogStreamInit {
  /** Name for logs and stats, e.g. `port0` or `serial`. */
  name: string;
  /** The SpscByteRing's buffer; the logger thread is its only consumer. */
  ring: SharedArrayBuffer;
  /** Destinations; a sink named by several streams is opened once. */
  sinks: SinkSpec[];
  /** StatCounters block ({@link LOGGER_STAT_NAMES}) the logger thread writes. */
  statsBuffer: SharedArrayBuffer;
}

/** workerData of the logger thread. */
export interface LoggerInit {
  streams: LogStreamInit[];
}

/**
 * Commands the logger thread takes besides shutdown. `reopen`: close and
 * reopen every file sink at its path (logrotate moved the file away: SIGHUP);
 * answered with the number of files reopened.
 */
export type LoggerCommand = { op: 'reopen' };

/** The logger thread's ready payload. */
export interface LoggerReady {
  /** 'idle' (SCHED_IDLE) or 'nice' (nice 19). */
  background: string;
  /** Sinks opened (a sink named by several streams counts once). */
  sinks: number;
}

/** Counters the logger thread keeps per stream. */
export const LOGGER_STAT_NAMES = ['sinkBytes', 'sinkWrites', 'sinkErrors'] as const;

/** Index of each counter in {@link LOGGER_STAT_NAMES}. */
export const LoggerStat = { sinkBytes: 0, sinkWrites: 1, sinkErrors: 2 } as const;

/** Largest read from a ring per sink write. */
export const LOGGER_CHUNK_BYTES = 64 * 1024;
