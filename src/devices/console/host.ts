/**
 * The main thread's side of a virtio-console device: features and config
 * space for the vhost-user backend, the config-change notification on the
 * BACKEND_REQ channel, and the commands it forwards to the device's worker.
 * It touches no byte of the guest's output.
 */

import { SpscByteRing, StatCounters } from '../../locking/index.js';
import {
  createLogStream,
  LoggerThread,
  type LogStream,
  PORT_STAT_NAMES,
} from '../../logger/index.js';
import { native } from '../../native.js';
import type { RtOptions } from '../../rt/index.js';
import type { Logger } from '../../vhost-user/connection.js';
import type { BackendRequestSender } from '../../vhost-user/device-backend.js';
import { ProtocolFeature } from '../../vhost-user/protocol.js';
import { featureBit } from '../../virtio/index.js';
import type { ThreadInfo } from '../messages.js';
import { WorkerDeviceHost } from '../worker-device-host.js';
import { WorkerHost } from '../worker-host.js';
import {
  COMMAND_RECORD_BYTES,
  COMMAND_RING_BYTES,
  ConsoleCommand,
  encodeCommand,
} from './commands.js';
import {
  CONSOLE_CONFIG_SIZE,
  ConsoleConfigOffset,
  consoleDeviceFeatures,
  consoleQueueCount,
  encodeConsoleConfig,
} from './config.js';
import { type ConsoleOptions, type ConsoleWorkerInit, validateConsoleOptions } from './options.js';
import { CONSOLE_STAT_NAMES } from './stats.js';

/** Everything a console device needs to start. */
export interface ConsoleSpec {
  options: ConsoleOptions;
  rt: RtOptions;
}

export class ConsoleDeviceHost extends WorkerDeviceHost {
  readonly kind = 'console';
  readonly deviceFeatures: bigint;
  readonly protocolFeatures =
    featureBit(ProtocolFeature.CONFIG) | featureBit(ProtocolFeature.BACKEND_REQ);
  readonly numQueues: number;
  readonly maxQueueSize: number;
  protected config: Uint8Array;
  private channel: BackendRequestSender | null = null;
  private readonly commands: SpscByteRing;
  private readonly record = new Uint8Array(COMMAND_RECORD_BYTES);
  /** Config-change notifications sent to a front end. */
  configChanges = 0;

  constructor(
    worker: WorkerHost,
    private readonly doorbellFd: number,
    commands: SharedArrayBuffer,
    readonly options: ConsoleOptions,
    readonly thread: ThreadInfo,
  ) {
    super(worker);
    const o = options;
    this.deviceFeatures = consoleDeviceFeatures(o.multiport);
    this.numQueues = consoleQueueCount(o.ports.length, o.multiport);
    this.maxQueueSize = o.queueSize;
    this.config = encodeConsoleConfig(o.cols, o.rows, o.ports.length);
    this.commands = SpscByteRing.attach(commands);
  }

  /** Only emerg_wr is writable: its low byte goes to port 0's log (F_EMERG_WRITE, §5.3.4). */
  setConfig(offset: number, data: Uint8Array): boolean {
    const at = ConsoleConfigOffset.EMERG_WR;
    if (offset < at || offset + data.length > CONSOLE_CONFIG_SIZE || data.length === 0)
      return false;
    if (offset === at) this.command(ConsoleCommand.EMERG_WRITE, data[0], 0);
    return true;
  }

  /** Changes the console size at run time and notifies the driver (config change; RESIZE with multiport). */
  resize(cols: number, rows: number): void {
    if (!Number.isInteger(cols) || !Number.isInteger(rows) || cols > 0xffff || rows > 0xffff)
      throw new RangeError(`console size ${cols}x${rows}: each must be 0..65535`);
    this.config = encodeConsoleConfig(cols, rows, this.options.ports.length);
    this.command(ConsoleCommand.RESIZE, cols, rows);
    if (this.channel !== null) {
      this.channel.configChange();
      this.configChanges++;
    }
  }

  /** Hot-unplugs (false) or re-plugs (true) port `id` > 0 (multiport). */
  setPortPresent(id: number, present: boolean): void {
    if (!this.options.multiport || id < 1 || id >= this.options.ports.length)
      throw new RangeError(
        `port ${id}: only ports 1..${this.options.ports.length - 1} of a multiport device`,
      );
    this.command(present ? ConsoleCommand.PORT_ADD : ConsoleCommand.PORT_REMOVE, id, 0);
  }

  setBackendChannel(channel: BackendRequestSender | null): void {
    this.channel = channel;
  }

  private command(op: number, a: number, b: number): void {
    encodeCommand(this.record, op, a, b);
    // The ring's seq-cst HEAD store publishes the record before the eventfd write wakes the worker.
    if (!this.commands.writeAll(this.record)) throw new RangeError('console command ring full');
    native.eventfdWrite(this.doorbellFd, 1);
  }
}

/** A running console device: its worker, its log streams and the logger thread. */
export class ConsoleService {
  private constructor(
    readonly device: ConsoleDeviceHost,
    private readonly worker: WorkerHost,
    private readonly logger: LoggerThread,
    readonly streams: LogStream[],
    readonly portStats: StatCounters[],
    readonly deviceStats: StatCounters,
    private readonly doorbellFd: number,
  ) {}

  get loggerThread(): { thread: ThreadInfo; background: string } {
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
    const commands = SpscByteRing.create(COMMAND_RING_BYTES);
    const logger = await LoggerThread.start(streams, log);
    const doorbellFd = native.eventfd(0);
    const init: ConsoleWorkerInit = {
      options: o,
      rings: streams.map((s) => s.ring.buffer),
      portStats: portStats.map((s) => s.buffer),
      deviceStats: deviceStats.buffer,
      commands: commands.buffer,
      doorbellFd,
      rt: spec.rt,
    };
    const worker = new WorkerHost('devices/console/worker.js', init, log, 'console');
    try {
      const started = await worker.ready;
      const device = new ConsoleDeviceHost(worker, doorbellFd, commands.buffer, o, started.thread);
      return new ConsoleService(
        device,
        worker,
        logger,
        streams,
        portStats,
        deviceStats,
        doorbellFd,
      );
    } catch (err) {
      await worker.terminate();
      await logger.shutdown();
      native.close(doorbellFd);
      throw err;
    }
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
    native.close(this.doorbellFd);
  }
}
