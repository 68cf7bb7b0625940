/**
 * The main thread's side of `vhost-rt serial`: it creates the log stream,
 * starts the logger thread and the serial worker, and reads their counters.
 * It touches no byte of the guest's output.
 */

import { StatCounters } from '../locking/index.js';
import type { Logger } from '../log.js';
import {
  createLogStream,
  LoggerThread,
  type LogStream,
  PORT_STAT_NAMES,
  type SinkSpec,
} from '../logger/index.js';
import type { RtOptions, ThreadRtState } from '../rt/index.js';
import { WorkerHost } from '../thread/index.js';
import type { SerialOptions, SerialWorkerInit } from './uart-options.js';

type SerialWorker = WorkerHost<SerialWorkerInit, Record<string, never>, never>;

/** Everything `vhost-rt serial` starts. */
export interface SerialSpec {
  options: SerialOptions;
  sinks: SinkSpec[];
  ringBytes: number;
  rt: RtOptions;
}

/**
 * A running `vhost-rt serial`: its serial worker, logger thread and log stream.
 * Build it with `SerialService.start`; `shutdown` stops the worker before the logger.
 */
export class SerialService {
  private constructor(
    private readonly worker: SerialWorker,
    private readonly logger: LoggerThread,
    readonly stream: LogStream,
    readonly stats: StatCounters,
    readonly thread: ThreadRtState,
  ) {}

  /** The logger thread's scheduling, for the ready line. */
  get loggerThread(): { thread: ThreadRtState; background: string } {
    return { thread: this.logger.thread, background: this.logger.background };
  }

  static async start(spec: SerialSpec, log: Logger): Promise<SerialService> {
    const stream = createLogStream('serial', spec.ringBytes, spec.sinks);
    const stats = StatCounters.create(PORT_STAT_NAMES);
    const logger = await LoggerThread.start([stream], log);
    const init: SerialWorkerInit = {
      options: spec.options,
      ring: stream.ring.buffer,
      statsBuffer: stats.buffer,
      rt: spec.rt,
    };
    const worker: SerialWorker = new WorkerHost('chardev/uart-worker.js', init, {
      name: 'serial',
      log,
    });
    try {
      const started = await worker.ready;
      return new SerialService(worker, logger, stream, stats, started.thread);
    } catch (err) {
      await worker.terminate();
      await logger.shutdown();
      throw err;
    }
  }

  /** Port counters, the ring's high-water mark and the logger's counters. */
  snapshot(): Record<string, number> {
    return {
      ...this.stats.snapshot(),
      ringHighWater: this.stream.ring.highWater,
      ...this.stream.loggerStats.snapshot(),
    };
  }

  /** Stops the worker (no more output), then lets the logger drain and close its sinks. */
  async shutdown(): Promise<void> {
    await this.worker.shutdown();
    await this.logger.shutdown();
  }
}
