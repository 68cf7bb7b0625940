/**
 * The main thread's side of the network switch: it creates the packet rings
 * (one per ordered pair of ports) and the doorbell eventfds, and starts one
 * worker thread per port — a device worker holding the virtio-net model of a
 * vhost-user port, or the TAP worker. Nothing per frame runs here;
 * statistics are read from shared memory.
 */

import type { NetOptions, NetPortSpec } from '../devices/net/options.js';
import { validateNetOptions } from '../devices/net/options.js';
import { StatCounters } from '../locking/index.js';
import type { Logger } from '../log.js';
import { native } from '../native.js';
import { formatMac } from '../net/mac-table.js';
import type { PacketRing } from '../net/packet-ring.js';
import { NET_STAT_NAMES } from '../net/port-stats.js';
import { createSwitchRings, type SwitchPortInit } from '../net/switch-port.js';
import type { TapWorkerInit, TapWorkerReady } from '../net/tap-worker.js';
import type { ThreadRtState } from '../rt/index.js';
import { WorkerHost } from '../thread/index.js';
import { type DeviceHost, DeviceWorkerSet } from './device-host.js';

type TapWorker = WorkerHost<TapWorkerInit, TapWorkerReady, never>;

/** One running port. */
export interface NetPort {
  index: number;
  spec: NetPortSpec;
  /** The vhost-user device (null for a TAP port). */
  device: DeviceHost | null;
  /** The TAP interface's name (null for a vhost-user port). */
  tap: string | null;
  thread: ThreadRtState;
  stats: StatCounters;
}

/** A running switch: its ports, their workers and the rings between them. */
export class NetSwitch {
  private constructor(
    readonly ports: NetPort[],
    private readonly devices: DeviceWorkerSet,
    private readonly taps: TapWorker[],
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
    const switchPort = (port: number): SwitchPortInit => ({
      port,
      outRings: rings[port].map((r) => r?.buffer ?? null),
      inRings: rings.map((row) => row[port]?.buffer ?? null),
      doorbells,
      ageingMs: options.ageingMs,
      macCapacity: options.macCapacity,
    });
    const vhostUser = specs.flatMap((spec, port) =>
      spec.kind === 'vhost-user' ? [{ spec, port }] : [],
    );
    const taps = specs.flatMap((spec, port) => (spec.kind === 'tap' ? [{ spec, port }] : []));
    const tapWorkers: TapWorker[] = taps.map(
      ({ spec, port }) =>
        new WorkerHost(
          'net/tap-worker.js',
          {
            name: spec.name,
            switchPort: switchPort(port),
            statsBuffer: stats[port].buffer,
            rt: options.rt,
          },
          { name: `port${port}`, log },
        ),
    );
    try {
      const [devices, tapsStarted] = await Promise.all([
        DeviceWorkerSet.start(
          vhostUser.map(({ spec, port }) => ({
            name: `port${port}`,
            init: {
              devices: [
                {
                  kind: 'net' as const,
                  mac: spec.mac,
                  queuePairs: options.queuePairs,
                  queueSize: options.queueSize,
                  switchPort: switchPort(port),
                  statsBuffer: stats[port].buffer,
                },
              ],
              rt: options.rt,
            },
          })),
          log,
        ),
        Promise.all(tapWorkers.map((w) => w.ready)),
      ]);
      const ports: NetPort[] = specs.map((spec, index) => ({
        index,
        spec,
        device: null,
        tap: null,
        thread: { tid: 0, policy: 'other', priority: 0, cpus: [] },
        stats: stats[index],
      }));
      vhostUser.forEach(({ port }, w) => {
        const host = devices.hosts[w][0];
        ports[port].device = host;
        ports[port].thread = host.thread;
      });
      taps.forEach(({ port }, w) => {
        ports[port].tap = tapsStarted[w].ready.tap;
        ports[port].thread = tapsStarted[w].thread;
      });
      return new NetSwitch(ports, devices, tapWorkers, rings, doorbells);
    } catch (err) {
      await Promise.all(tapWorkers.map((w) => w.terminate()));
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
    await Promise.all([this.devices.shutdown(), ...this.taps.map((w) => w.shutdown())]);
    for (const fd of this.doorbells.splice(0)) native.close(fd);
  }
}

/** A human-readable name of a port, for logs and stats. */
export function describePort(port: NetPort): string {
  const s = port.spec;
  return s.kind === 'tap'
    ? `tap ${port.tap ?? s.name}`
    : `socket ${s.socketPath} mac ${formatMac(s.mac)}`;
}
