/**
 * The main thread's side of the network switch: it creates the packet rings
 * (one per ordered pair of ports) and the doorbell eventfds, and starts one
 * worker thread per port — a device worker holding the virtio-net model of a
 * vhost-user port, or the TAP worker. Nothing per frame runs here;
 * statistics are read from shared memory.
 */

import type { NetOptions, NetPortSpec } from '../devices/net/options.js';
import { DEFAULT_HOLD_MS, validateNetOptions } from '../devices/net/options.js';
import { StatCounters } from '../locking/index.js';
import type { Logger } from '../log.js';
import { native } from '../native.js';
import { formatMac } from '../net/mac-table.js';
import { PacketRing } from '../net/packet-ring.js';
import { NET_STAT_NAMES } from '../net/port-stats.js';
import { createSwitchRings, type SwitchPortInit } from '../net/switch-port.js';
import type { TapWorkerInit, TapWorkerReady } from '../net/tap-worker.js';
import type { ThreadRtState } from '../rt/index.js';
import { WorkerHost } from '../thread/index.js';
import { AddGate } from './add-gate.js';
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
  /** The device workers of the vhost-user ports, by port index (one worker set each). */
  private readonly workerOf = new Map<number, DeviceWorkerSet>();
  /** Closed when the daemon begins to stop ({@link stopAdding}): `device-add` is refused. */
  private readonly adding = new AddGate('port');

  private constructor(
    /** The ports that run, in order (device-add appends, device-del takes out). */
    readonly ports: NetPort[],
    private readonly taps: TapWorker[],
    private readonly rings: (PacketRing | null)[][],
    private readonly doorbells: number[],
    /** Counters by port index (a slot's counters start afresh when a port is added there). */
    private readonly stats: StatCounters[],
    private readonly options: NetOptions,
    private readonly log: Logger,
  ) {}

  /**
   * Creates the rings and doorbells and starts one worker per port. `spare`
   * more port slots get rings and doorbells but no worker: `add` starts a
   * port in one at run time (frames flooded towards a free slot are dropped
   * when its rings fill, and discarded when a port is added there).
   */
  static async start(
    specs: NetPortSpec[],
    options: NetOptions,
    log: Logger,
    spare = 0,
  ): Promise<NetSwitch> {
    validateNetOptions(options);
    if (specs.length < 1) throw new RangeError('a switch needs at least one port');
    if (!Number.isInteger(spare) || spare < 0 || spare > MAX_SPARE_PORTS)
      throw new RangeError(`--spare-ports ${spare}: must be an integer in 0..${MAX_SPARE_PORTS}`);
    const slots = specs.length + spare;
    const rings = createSwitchRings(slots, options.ringBytes);
    const doorbells = Array.from({ length: slots }, () => native.eventfd(0));
    const stats = Array.from({ length: slots }, () => StatCounters.create(NET_STAT_NAMES));
    const sw = new NetSwitch([], [], rings, doorbells, stats, options, log);
    const taps = specs.flatMap((spec, port) => (spec.kind === 'tap' ? [{ spec, port }] : []));
    const tapWorkers: TapWorker[] = taps.map(
      ({ spec, port }) =>
        new WorkerHost(
          'net/tap-worker.js',
          {
            name: spec.name,
            switchPort: sw.switchPort(port, true),
            statsBuffer: stats[port].buffer,
            rt: options.rt,
          },
          { name: `port${port}`, log },
        ),
    );
    sw.taps.push(...tapWorkers);
    const ports: NetPort[] = specs.map((spec, index) => ({
      index,
      spec,
      device: null,
      tap: null,
      thread: { tid: 0, policy: 'other', priority: 0, cpus: [] },
      stats: stats[index],
    }));
    const started = await Promise.allSettled([
      ...specs.map((spec, port) =>
        spec.kind === 'vhost-user' ? sw.startPort(ports[port], spec.mac) : Promise.resolve(),
      ),
      Promise.all(tapWorkers.map((w) => w.ready)).then((ready) =>
        taps.forEach(({ port }, w) => {
          ports[port].tap = ready[w].ready.tap;
          ports[port].thread = ready[w].thread;
        }),
      ),
    ]);
    const failed = started.find((r) => r.status === 'rejected');
    if (failed !== undefined) {
      await Promise.all([...sw.workerOf.values()].map((w) => w.shutdown()));
      await Promise.all(tapWorkers.map((w) => w.terminate()));
      for (const fd of doorbells) native.close(fd);
      throw (failed as PromiseRejectedResult).reason;
    }
    sw.ports.push(...ports);
    return sw;
  }

  /**
   * What port `port`'s worker is handed: its rings and every doorbell. A TAP
   * port never holds frames (`tap`: the kernel's queue is its buffer, and a
   * read frame has nowhere to wait), a vhost-user port holds them in the
   * guest's ring for up to holdMs.
   */
  private switchPort(port: number, tap = false): SwitchPortInit {
    return {
      port,
      outRings: this.rings[port].map((r) => r?.buffer ?? null),
      inRings: this.rings.map((row) => row[port]?.buffer ?? null),
      doorbells: this.doorbells,
      ageingMs: this.options.ageingMs,
      macCapacity: this.options.macCapacity,
      holdMs: tap ? 0 : (this.options.holdMs ?? DEFAULT_HOLD_MS),
      nativeLoop: this.options.frameLoop !== 'typescript',
    };
  }

  /** Starts the device worker of vhost-user port `p` (in its slot `p.index`). */
  private async startPort(p: NetPort, mac: Uint8Array): Promise<void> {
    const workers = await DeviceWorkerSet.start(
      [
        {
          name: `port${p.index}`,
          init: {
            devices: [
              {
                kind: 'net' as const,
                mac,
                queuePairs: this.options.queuePairs,
                queueSize: this.options.queueSize,
                switchPort: this.switchPort(p.index),
                statsBuffer: p.stats.buffer,
                pollUs: this.options.pollUs ?? 0,
              },
            ],
            rt: this.options.rt,
          },
        },
      ],
      this.log,
    );
    this.workerOf.set(p.index, workers);
    p.device = workers.hosts[0][0];
    p.thread = p.device.thread;
  }

  /** Port slots that no running port uses (device-add takes the first). */
  freeSlots(): number[] {
    const used = new Set(this.ports.map((p) => p.index));
    return this.doorbells.map((_, i) => i).filter((i) => !used.has(i));
  }

  /**
   * Starts a vhost-user port at run time (device-add) in free slot `slot`,
   * on a worker of its own. What other ports flooded towards the free slot
   * is discarded first: the new port starts with empty rings.
   */
  async add(slot: number, spec: NetPortSpec & { kind: 'vhost-user' }): Promise<NetPort> {
    this.adding.check();
    if (!this.freeSlots().includes(slot)) throw new RangeError(`port slot ${slot} is not free`);
    // No worker consumes these rings while the slot is free: the main thread
    // may, and the worker started next takes over (its start orders after this).
    // A fresh handle: a previous port's worker may have consumed since ours was made.
    for (const row of this.rings) {
      const buffer = row[slot]?.buffer;
      if (buffer === undefined) continue;
      const ring = PacketRing.attach(buffer);
      while (ring.peek() >= 0) ring.release();
    }
    const p: NetPort = {
      index: slot,
      spec,
      device: null,
      tap: null,
      thread: { tid: 0, policy: 'other', priority: 0, cpus: [] },
      stats: StatCounters.create(NET_STAT_NAMES),
    };
    this.stats[slot] = p.stats;
    await this.startPort(p, spec.mac);
    await this.adding.admit(async () => {
      const workers = this.workerOf.get(slot);
      this.workerOf.delete(slot);
      await workers?.shutdown();
    });
    this.ports.push(p);
    return p;
  }

  /**
   * The daemon begins to stop: from now on `device-add` is refused (ERR_DAEMON_STOPPING), and a
   * port still starting is ended instead of added. Called before the vhost-user servers close.
   */
  stopAdding(): void {
    this.adding.close();
  }

  /**
   * Ends vhost-user port `port` (by port index) at run time (device-del):
   * its worker completes what is in flight and ends; its slot becomes free.
   * The caller has closed its vhost-user server first. Its address ages out
   * of the other ports' tables; frames sent to it meanwhile are dropped.
   */
  async remove(port: number): Promise<void> {
    const at = this.ports.findIndex((p) => p.index === port);
    const workers = this.workerOf.get(port);
    if (at < 0 || workers === undefined)
      throw new RangeError(`port ${port} is not a running vhost-user port`);
    this.ports.splice(at, 1);
    this.workerOf.delete(port);
    await workers.shutdown();
  }

  /** Frames dropped because the ring towards `port` was full (its own traffic, never a sender's stall). */
  ringDrops(port: number): number {
    let n = 0;
    for (const row of this.rings) n += row[port]?.drops ?? 0;
    return n;
  }

  /** Counters of `port`, with its ring drops. */
  snapshot(port: number): Record<string, number> {
    return { ...this.stats[port].snapshot(), ringDrops: this.ringDrops(port) };
  }

  /** Ends every port's worker, then closes the doorbells. */
  async shutdown(): Promise<void> {
    this.stopAdding();
    await Promise.all([
      ...[...this.workerOf.values()].map((w) => w.shutdown()),
      ...this.taps.map((w) => w.shutdown()),
    ]);
    this.workerOf.clear();
    for (const fd of this.doorbells.splice(0)) native.close(fd);
  }
}

/** Most spare port slots (`--spare-ports`): each costs rings to and from every port. */
export const MAX_SPARE_PORTS = 16;

/** A human-readable name of a port, for logs and stats. */
export function describePort(port: NetPort): string {
  const s = port.spec;
  return s.kind === 'tap'
    ? `tap ${port.tap ?? s.name}`
    : `socket ${s.socketPath} mac ${formatMac(s.mac)}`;
}
