/**
 * The main thread's side of the network switch: it creates the packet rings
 * (one per ordered pair of ports) and the doorbell eventfds, starts one
 * worker thread per port, and for each vhost-user port offers the
 * {@link VhostUserDevice} the protocol layer serves. Nothing per frame runs
 * here; statistics are read from shared memory.
 */
import { StatCounters } from '../../locking/index.js';
import { native } from '../../native.js';
import { formatMac } from '../../net/mac-table.js';
import type { PacketRing } from '../../net/packet-ring.js';
import { createSwitchRings } from '../../net/switch-port.js';
import type { Logger } from '../../vhost-user/connection.js';
import type { ThreadInfo } from '../messages.js';
import { WorkerDeviceHost } from '../worker-device-host.js';
import { WorkerHost } from '../worker-host.js';
import { encodeNetConfig, type NetGeometry, netDeviceFeatures, netQueueCount } from './config.js';
import {
  type NetOptions,
  type NetPortSpec,
  type NetWorkerInit,
  validateNetOptions,
} from './options.js';
import { NET_STAT_NAMES } from './stats.js';

/** A vhost-user port as the protocol layer sees it: features, config, and commands to its worker. */
export class NetDeviceHost extends WorkerDeviceHost {
  readonly kind = 'net';
  readonly deviceFeatures: bigint;
  readonly protocolFeatures = 0n;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  protected readonly config: Uint8Array;

  constructor(
    worker: WorkerHost,
    readonly geometry: NetGeometry,
    queueSize: number,
  ) {
    super(worker);
    this.numQueues = netQueueCount(geometry.queuePairs);
    this.maxQueueSize = queueSize;
    this.deviceFeatures = netDeviceFeatures(geometry);
    this.config = encodeNetConfig(geometry);
  }

  setConfig(_offset: number, _data: Uint8Array): boolean {
    // The MAC is writable only through the control queue, which the VMM owns.
    return false;
  }
}

/** One running port. */
export interface NetPort {
  index: number;
  spec: NetPortSpec;
  /** The vhost-user device (null for a TAP port). */
  device: NetDeviceHost | null;
  thread: ThreadInfo;
  info: Record<string, number | string | boolean>;
  stats: StatCounters;
}

/** A running switch: its ports, their workers and the rings between them. */
export class NetSwitch {
  private constructor(
    readonly ports: NetPort[],
    private readonly workers: WorkerHost[],
    private readonly rings: (PacketRing | null)[][],
    private readonly doorbells: number[],
  ) {}

  /** Creates the rings and doorbells and starts one worker per port. */
  static async start(specs: NetPortSpec[], options: NetOptions, log: Logger): Promise<NetSwitch> {
    validateNetOptions(options);
    if (specs.length < 1) throw new RangeError('a switch needs at least one port');
    const rings = createSwitchRings(specs.length, options.ringBytes);
    const doorbells = specs.map(() => native.eventfd(0));
    const stats = specs.map(() => StatCounters.create(NET_STAT_NAMES));
    const workers = specs.map((spec, port) => {
      const init: NetWorkerInit = {
        spec,
        options,
        statsBuffer: stats[port].buffer,
        switchPort: {
          port,
          outRings: rings[port].map((r) => r?.buffer ?? null),
          inRings: rings.map((row) => row[port]?.buffer ?? null),
          doorbells,
          ageingMs: options.ageingMs,
          macCapacity: options.macCapacity,
        },
      };
      return new WorkerHost('devices/net/worker.js', init, log, `port${port}`);
    });
    try {
      const started = await Promise.all(workers.map((w) => w.ready));
      const ports = specs.map((spec, i) => ({
        index: i,
        spec,
        device: spec.kind === 'tap' ? null : portDevice(workers[i], spec.mac, options),
        thread: started[i].thread,
        info: started[i].info,
        stats: stats[i],
      }));
      return new NetSwitch(ports, workers, rings, doorbells);
    } catch (err) {
      await Promise.all(workers.map((w) => w.terminate()));
      for (const fd of doorbells) native.close(fd);
      throw err;
    }
  }

  /** Frames dropped because the ring towards `port` was full (its own traffic, never a sender's stall). */
  ringDrops(port: number): number {
    let n = 0;
    for (const row of this.rings) n += row[port]?.drops ?? 0;
    return n;
  }

  /** Counters of `port`, with its ring drops. */
  snapshot(port: number): Record<string, number> {
    return { ...this.ports[port].stats.snapshot(), ringDrops: this.ringDrops(port) };
  }

  /** Ends every port's worker, then closes the doorbells. */
  async shutdown(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.shutdown()));
    for (const fd of this.doorbells.splice(0)) native.close(fd);
  }
}

function portDevice(worker: WorkerHost, mac: Uint8Array, o: NetOptions): NetDeviceHost {
  return new NetDeviceHost(worker, { mac, queuePairs: o.queuePairs, linkUp: true }, o.queueSize);
}

/** A human-readable name of a port, for logs and stats. */
export function describePort(port: NetPort): string {
  const s = port.spec;
  return s.kind === 'tap'
    ? `tap ${String(port.info.tap ?? s.name)}`
    : `socket ${s.socketPath} mac ${formatMac(s.mac)}`;
}
