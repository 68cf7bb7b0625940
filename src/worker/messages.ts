/**
 * What the main thread and a device worker say to each other, typed: the
 * vhost-user ring and memory commands, config-space access, run-time device
 * commands (resize, ...) — all over the one command channel of the thread —
 * the worker's ready payload, and the events a device raises on its own.
 */
import type { DeviceDescription, DeviceInit, ModelCommand } from '../devices/index.js';
import type { RtOptions } from '../rt/index.js';
import type { MemoryRegion, SplitQueueConfig } from '../virtio/index.js';
import type { InflightArea } from '../virtio/inflight.js';

/**
 * Commands to one device of a worker: `device` indexes the worker's devices
 * (one per worker normally, several in --single-thread mode).
 */
export type DeviceCommand =
  | { op: 'memory'; device: number; regions: MemoryRegion[] }
  | {
      op: 'start-queue';
      device: number;
      index: number;
      config: SplitQueueConfig;
      lastAvailIdx: number;
      kickFd: number;
      callFd: number;
      /** SET_VRING_ERR's eventfd, signalled when the ring breaks; -1 for none. */
      errFd: number;
      /** The ring's part of the inflight area (SET_INFLIGHT_FD); null: requests are not tracked. */
      inflight: InflightArea | null;
      /** The virtio features the front end set (SET_FEATURES); absent: 0. */
      features?: bigint;
    }
  | { op: 'set-call'; device: number; index: number; fd: number }
  | { op: 'set-err'; device: number; index: number; fd: number }
  | { op: 'enable'; device: number; index: number; enabled: boolean }
  | { op: 'stop-queue'; device: number; index: number }
  | { op: 'read-config'; device: number; offset: number; size: number }
  | { op: 'write-config'; device: number; offset: number; data: Uint8Array }
  | { op: 'command'; device: number; command: ModelCommand }
  /**
   * Dirty logging (live migration): `log` is the bitmap to mark (the log fd's
   * mapping, the bitmap at `offset`, `size` bytes), null to stop logging;
   * `usedLogAddrs[i]` is ring i's used-ring log address, -1 when not logged.
   */
  | {
      op: 'dirty-log';
      device: number;
      log: DirtyLogShare | null;
      usedLogAddrs: number[];
    }
  /**
   * Re-applies scheduling (policy, priority, affinity) to the worker thread
   * that serves the device, at run time; answered with the thread's new
   * ThreadRtState. In --single-thread mode it moves every device of the worker.
   */
  | { op: 'set-rt'; device: number; rt: RtOptions };

/** The dirty bitmap as the main thread hands it to a device worker (SET_LOG_BASE). */
export interface DirtyLogShare {
  /** The mapping of the log fd, from file offset 0. */
  buffer: SharedArrayBuffer;
  /** Where the bitmap starts in {@link buffer}. */
  offset: number;
  /** Bitmap bytes. */
  size: number;
}

/** workerData of a device worker: its devices and the RT options of the thread. */
export interface DeviceWorkerInit {
  devices: DeviceInit[];
  rt: RtOptions;
}

/** A device worker's ready payload: what each of its devices is. */
export interface DeviceWorkerReady {
  devices: DeviceDescription[];
}

/** The config space changed: the driver must re-read it (vhost-user: CONFIG_CHANGE_MSG). */
export interface ConfigChangedEvent {
  /** Index of the device in its worker. */
  device: number;
  type: 'config-changed';
}

/**
 * DEVICE_BROKEN: queue `queue` of the device stopped being served, until the
 * front end starts it again — the guest broke the ring, a kick or call fd
 * failed, guest memory shrank under the daemon (SIGBUS), or the device model
 * threw. Raised once per break; the worker and the other devices go on.
 */
export interface DeviceBrokenEvent {
  /** Index of the device in its worker. */
  device: number;
  type: 'device-broken';
  queue: number;
  /** Stable code: a QueueErrorCode or one of {@link RingBreak}. */
  code: string;
  /** What happened, for the log and the control plane. */
  reason: string;
}

/**
 * Something the control plane should hear about (rate-limited by the device),
 * e.g. LATENCY_TARGET_EXCEEDED: logged, and sent as a control-socket event
 * named `name` with `data`.
 */
export interface DeviceNoticeEvent {
  /** Index of the device in its worker. */
  device: number;
  type: 'notice';
  /** The control-socket event name, e.g. 'LATENCY_TARGET_EXCEEDED'. */
  name: string;
  data: Record<string, number>;
}

/** What a device raises on its own. */
export type DeviceEvent = ConfigChangedEvent | DeviceBrokenEvent | DeviceNoticeEvent;

/** Codes of {@link DeviceBrokenEvent} that the worker runtime finds itself (the guest's own are QueueErrorCodes). */
export const RingBreak = {
  /** Writing the call eventfd failed (EBADF, EPIPE, EINVAL...). */
  CALL_FD: 'ERR_CALL_FD',
  /** The kick fd reported an error or a hang-up, or reading it failed. */
  KICK_FD: 'ERR_KICK_FD',
  /** The kick fd kept waking the loop without an eventfd count. */
  KICK_SPIN: 'ERR_KICK_SPIN',
  /** A SIGBUS in the device's guest memory: the front end shrank the file behind it. */
  GUEST_MEMORY: 'ERR_GUEST_MEMORY',
  /** The device model threw out of a batch. */
  DEVICE_FAULT: 'ERR_DEVICE_FAULT',
} as const;

/** The reason given with {@link RingBreak.GUEST_MEMORY}. */
export const GUEST_MEMORY_SHRANK = 'guest memory shrank (SIGBUS)';
