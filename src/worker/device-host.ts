/**
 * The main thread's handle on one device served by a device worker: what
 * the vhost-user layer needs (features, queues, config space, ring commands)
 * forwarded to the worker thread that holds the device model, plus the
 * device's run-time commands. It keeps no device state of its own: features
 * and sizes come from the model's description in the worker's ready payload,
 * config bytes are read from the model when asked.
 */
import type { DeviceDescription, ModelCommand } from '../devices/index.js';
import type { Logger } from '../log.js';
import type { RtOptions, ThreadRtState } from '../rt/index.js';
import { WorkerHost } from '../thread/index.js';
import type { MemoryRegion, SplitQueueConfig } from '../virtio/index.js';
import type { InflightArea } from '../virtio/inflight.js';
import type {
  DeviceCommand,
  DeviceEvent,
  DeviceWorkerInit,
  DeviceWorkerReady,
  DirtyLogShare,
} from './messages.js';

/** A device worker thread as the main thread holds it. */
export type DeviceWorker = WorkerHost<
  DeviceWorkerInit,
  DeviceWorkerReady,
  DeviceCommand,
  DeviceEvent
>;

/** Everything needed to start one ring, already translated to guest-physical addresses. */
export interface QueueStart {
  config: SplitQueueConfig;
  lastAvailIdx: number;
  kickFd: number;
  /** -1 when the front end asked for no interrupts (polling). */
  callFd: number;
  /**
   * SET_VRING_ERR's eventfd, signalled when the ring breaks; -1 or absent
   * for none. The caller keeps owning it (as the kick and call fds).
   */
  errFd?: number;
  enabled: boolean;
  /** The ring's part of the inflight area (INFLIGHT_SHMFD); null or absent: requests are not tracked. */
  inflight?: InflightArea | null;
  /** The virtio features the front end set (SET_FEATURES), for the model's setFeatures; absent: 0. */
  features?: bigint;
}

/** A ring that stopped being served (DEVICE_BROKEN), as the control plane sees it. */
export interface BrokenRing {
  /** Stable code: a QueueErrorCode or a RingBreak code (ERR_CALL_FD, ERR_GUEST_MEMORY, ...). */
  code: string;
  reason: string;
  /** When the event arrived (Date.now()). */
  at: number;
}

/** Told of every DEVICE_BROKEN event of a device: the queue and what broke it. */
export type BrokenRingListener = (queue: number, ring: BrokenRing) => void;

/** Where a device tells its driver that the config space changed (vhost-user: BACKEND_REQ). */
export interface ConfigChangeChannel {
  configChange(): void;
}

/**
 * Device types whose config space the VMM builds itself from its own
 * options: QEMU's vhost-user virtio-net never asks the back end for it.
 */
const VMM_OWNS_CONFIG: ReadonlySet<string> = new Set(['net']);

/** Device types that announce a migrated guest (vhost-user SEND_RARP). */
const ANNOUNCES: ReadonlySet<string> = new Set(['net']);

/**
 * Device types that record their requests in an inflight area
 * (INFLIGHT_SHMFD), so a restarted back end resubmits exactly what was in
 * flight: block, where a lost or replayed write corrupts the guest's disk.
 */
const TRACKS_INFLIGHT: ReadonlySet<string> = new Set(['blk']);

/**
 * The main thread's proxy for device `device` of a device worker: the surface a
 * VhostUserDevice needs, each call forwarded to the worker as a request.
 */
export class DeviceHost {
  /** Device type: 'blk', 'net', 'console'. */
  readonly kind: string;
  /** Device-specific feature bits (the transport adds its own). */
  readonly deviceFeatures: bigint;
  readonly numQueues: number;
  /** Largest ring size a front end may ask for. */
  readonly maxQueueSize: number;
  /** The transport serves the config space (vhost-user GET/SET_CONFIG). */
  readonly servesConfig: boolean;
  /** The device changes its config space at run time and must tell the driver. */
  readonly raisesConfigChanges: boolean;
  /** The device's rings record their requests in an inflight area (vhost-user INFLIGHT_SHMFD). */
  readonly tracksInflight: boolean;
  /** The device announces a migrated guest on the network (offers vhost-user RARP). */
  readonly announcesMigration: boolean;
  /** Config-change notifications sent to a front end. */
  configChanges = 0;
  /**
   * Rings that are broken now (DEVICE_BROKEN), by queue index: kept for the
   * control plane until the ring starts again. One entry per queue at most.
   */
  readonly brokenRings = new Map<number, BrokenRing>();
  /** DEVICE_BROKEN events received in all (a ring broken, restarted and broken again counts twice). */
  ringBreaks = 0;
  /** Optional hook for the control plane, called after each DEVICE_BROKEN is recorded. */
  onBroken: BrokenRingListener | null = null;
  /** Optional hook for the control plane, told of each notice (LATENCY_TARGET_EXCEEDED, ...). */
  onNotice: ((name: string, data: Record<string, number>) => void) | null = null;
  private channel: ConfigChangeChannel | null = null;

  /**
   * `device` indexes the worker's devices (0 unless several share the
   * worker); `log` gets the device's DEVICE_BROKEN lines.
   */
  constructor(
    private readonly worker: DeviceWorker,
    readonly device: number,
    readonly description: DeviceDescription,
    /**
     * The scheduling of the thread that serves the device: one object per
     * worker, shared by its devices' hosts and updated by {@link setRt}.
     */
    readonly thread: ThreadRtState,
    private readonly log: Logger = () => {},
  ) {
    this.kind = description.kind;
    this.deviceFeatures = description.features;
    this.numQueues = description.numQueues;
    this.maxQueueSize = description.maxQueueSize;
    this.servesConfig = !VMM_OWNS_CONFIG.has(description.kind);
    this.raisesConfigChanges = description.raisesConfigChanges;
    this.announcesMigration = ANNOUNCES.has(description.kind);
    this.tracksInflight = TRACKS_INFLIGHT.has(description.kind);
  }

  /** Bytes [offset, offset+size) of the device's config space, read from the model. */
  async getConfig(offset: number, size: number): Promise<Uint8Array> {
    return (await this.request({
      op: 'read-config',
      device: this.device,
      offset,
      size,
    })) as Uint8Array;
  }

  /** Writes the config space; false when the device refuses. */
  async setConfig(offset: number, data: Uint8Array): Promise<boolean> {
    return (await this.request({ op: 'write-config', device: this.device, offset, data })) === true;
  }

  async setMemory(regions: MemoryRegion[]): Promise<void> {
    await this.request({ op: 'memory', device: this.device, regions });
  }

  async startQueue(index: number, s: QueueStart): Promise<void> {
    // A started ring is served again, whatever broke it before.
    this.brokenRings.delete(index);
    await this.request({
      op: 'start-queue',
      device: this.device,
      index,
      config: s.config,
      lastAvailIdx: s.lastAvailIdx,
      kickFd: s.kickFd,
      callFd: s.callFd,
      errFd: s.errFd ?? -1,
      inflight: s.inflight ?? null,
      features: s.features ?? 0n,
    });
    if (s.enabled) await this.setEnabled(index, true);
  }

  async setCall(index: number, fd: number): Promise<void> {
    await this.request({ op: 'set-call', device: this.device, index, fd });
  }

  /**
   * Replaces ring `index`'s err fd (-1: none). Resolves once the worker uses
   * the new one: only then may the caller close the old.
   */
  async setErr(index: number, fd: number): Promise<void> {
    await this.request({ op: 'set-err', device: this.device, index, fd });
  }

  async setEnabled(index: number, enabled: boolean): Promise<void> {
    await this.request({ op: 'enable', device: this.device, index, enabled });
  }

  /** Completes in-flight requests, stops the ring, resolves to the last avail index. */
  async stopQueue(index: number): Promise<number> {
    return (await this.request({ op: 'stop-queue', device: this.device, index })) as number;
  }

  /**
   * Dirty logging (live migration): marks go to `log` from the next batch on,
   * or stop (null); `usedLogAddrs[i]` is ring i's used-ring log address (-1:
   * not logged). Resolves once the worker uses it: only then may the caller
   * retire a log it replaced.
   */
  async setDirtyLog(log: DirtyLogShare | null, usedLogAddrs: number[]): Promise<void> {
    await this.request({ op: 'dirty-log', device: this.device, log, usedLogAddrs });
  }

  /** SEND_RARP: the device broadcasts a RARP from `mac` (net; see NetCommand 'announce'). */
  async sendRarp(mac: Uint8Array): Promise<void> {
    await this.command({ type: 'announce', mac });
  }

  /** Sends a run-time command to the device model (console resize, ...). */
  command(command: ModelCommand): Promise<unknown> {
    return this.request({ op: 'command', device: this.device, command });
  }

  /**
   * Applies `rt` (policy, priority, cpus; validated by the caller) to the
   * worker thread that serves the device, at run time. Resolves to the
   * thread's new state, which {@link thread} then holds; rejects with the
   * worker's error (a ConfigError with the kernel's reason) if refused.
   */
  async setRt(rt: RtOptions): Promise<ThreadRtState> {
    const state = (await this.request({ op: 'set-rt', device: this.device, rt })) as ThreadRtState;
    Object.assign(this.thread, state);
    return state;
  }

  /** The front end's config-change channel, or null when it has none (or went away). */
  setBackendChannel(channel: ConfigChangeChannel | null): void {
    this.channel = channel;
  }

  /** An event the device raised in its worker. */
  onEvent(event: DeviceEvent): void {
    switch (event.type) {
      case 'config-changed':
        if (this.channel === null) return;
        this.channel.configChange();
        this.configChanges++;
        return;
      case 'device-broken': {
        this.ringBreaks++;
        const ring = { code: event.code, reason: event.reason, at: Date.now() };
        this.brokenRings.set(event.queue, ring);
        this.log('warn', `queue ${event.queue} broken: ${event.reason} (${event.code})`);
        this.onBroken?.(event.queue, ring);
        return;
      }
      case 'notice':
        this.log('warn', `${event.name}: ${describeNotice(event.data)}`);
        this.onNotice?.(event.name, event.data);
    }
  }

  private request(cmd: DeviceCommand): Promise<unknown> {
    return this.worker.request(cmd);
  }
}

/** A notice's data as `key value` pairs for the log ("queue 0, latency-us 2500, ..."). */
function describeNotice(data: Record<string, number>): string {
  return Object.entries(data)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
}

/** One worker to start: a name for logs and its init (devices and RT options). */
export interface DeviceWorkerSpec {
  name: string;
  init: DeviceWorkerInit;
}

/** Device workers started together: one {@link DeviceHost} per device, in spec order. */
export class DeviceWorkerSet {
  private constructor(
    /** Per worker, its devices' hosts. */
    readonly hosts: DeviceHost[][],
    private readonly workers: DeviceWorker[],
  ) {}

  /** Starts every worker; if one fails to start, stops all of them and rethrows. */
  static async start(specs: DeviceWorkerSpec[], log: Logger): Promise<DeviceWorkerSet> {
    const hosts: DeviceHost[][] = specs.map(() => []);
    const workers = specs.map(
      (s, w) =>
        new WorkerHost<DeviceWorkerInit, DeviceWorkerReady, DeviceCommand, DeviceEvent>(
          'worker/device-worker.js',
          s.init,
          { name: s.name, log, onEvent: (e) => hosts[w][e.device]?.onEvent(e) },
        ),
    );
    try {
      const started = await Promise.all(workers.map((w) => w.ready));
      started.forEach((s, w) => {
        const several = s.ready.devices.length > 1;
        for (const [i, d] of s.ready.devices.entries()) {
          const prefix = `${specs[w].name}: ${several ? `device ${i}: ` : ''}`;
          const deviceLog: Logger = (level, message) => log(level, `${prefix}${message}`);
          hosts[w].push(new DeviceHost(workers[w], i, d, s.thread, deviceLog));
        }
      });
      return new DeviceWorkerSet(hosts, workers);
    } catch (err) {
      await Promise.all(workers.map((w) => w.terminate()));
      throw err;
    }
  }

  /** Completes in-flight I/O, releases the devices and ends the worker threads. */
  async shutdown(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.shutdown()));
  }
}
