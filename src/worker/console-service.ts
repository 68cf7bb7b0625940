/**
 * A running virtio-console device: its device worker, the logger thread that
 * drains its ports' rings, and the counters. The main thread touches no byte
 * of the guest's output.
 */

import { type ConsoleOptions, validateConsoleOptions } from '../devices/console/options.js';
import { CONSOLE_STAT_NAMES } from '../devices/console/stats.js';
import { StatCounters } from '../locking/index.js';
import type { Logger } from '../log.js';
import { createLogStream, LoggerThread, type LogStream, PORT_STAT_NAMES } from '../logger/index.js';
import type { RtOptions, ThreadRtState } from '../rt/index.js';
import { type DeviceHost, DeviceWorkerSet } from './device-host.js';

/** Everything a console device needs to start. */
export interface ConsoleSpec {
  options: ConsoleOptions;
  rt: RtOptions;
}

/** A running console device: its worker, its log streams and the logger thread. */
export class ConsoleService {
  private constructor(
    /** The device as the vhost-user layer serves it. */
    readonly device: DeviceHost,
    private readonly worker: DeviceWorkerSet,
    private readonly logger: LoggerThread,
    readonly streams: LogStream[],
    readonly portStats: StatCounters[],
    readonly deviceStats: StatCounters,
  ) {}

  /** The logger thread's scheduling, for the ready line. */
  get loggerThread(): { thread: ThreadRtState; background: string } {
    return { thread: this.logger.thread, background: this.logger.background };
  }

  static async start(spec: ConsoleSpec, log: Logger): Promise<ConsoleService> {
    const o = spec.options;
    validateConsoleOptions(o);
    const streams = o.ports.map((p, i) =>
      createLogStream(p.name ?? `port${i}`, o.ringBytes, p.sinks),
    );
    const portStats = o.ports.map(() => StatCounters.create(PORT_STAT_NAMES));
    const deviceStats = StatCounters.create(CONSOLE_STAT_NAMES);
    const logger = await LoggerThread.start(streams, log);
    try {
      const worker = await DeviceWorkerSet.start(
        [
          {
            name: 'console',
            init: {
              devices: [
                {
                  kind: 'console',
                  options: o,
                  rings: streams.map((s) => s.ring.buffer),
                  portStats: portStats.map((s) => s.buffer),
                  deviceStats: deviceStats.buffer,
                },
              ],
              rt: spec.rt,
            },
          },
        ],
        log,
      );
      const device = worker.hosts[0][0];
      return new ConsoleService(device, worker, logger, streams, portStats, deviceStats);
    } catch (err) {
      await logger.shutdown();
      throw err;
    }
  }

  /** Changes the console size at run time; the driver is told (config change; RESIZE with multiport). */
  async resize(cols: number, rows: number): Promise<void> {
    await this.device.command({ type: 'resize', cols, rows });
  }

  /** Hot-unplugs (false) or re-plugs (true) port `port` > 0 (multiport). */
  async setPortPresent(port: number, present: boolean): Promise<void> {
    await this.device.command({ type: 'port-present', port, present });
  }

  /** Counters of port `i`, with its ring's high-water mark and the logger's counters. */
  portSnapshot(i: number): Record<string, number> {
    return {
      ...this.portStats[i].snapshot(),
      ringHighWater: this.streams[i].ring.highWater,
      ...this.streams[i].loggerStats.snapshot(),
    };
  }

  /** Stops the worker (no more output), lets the logger drain and close its sinks. */
  async shutdown(): Promise<void> {
    await this.worker.shutdown();
    await this.logger.shutdown();
  }
}
