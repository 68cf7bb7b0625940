/**
 * What the main thread and a device worker say to each other, typed: the
 * vhost-user ring and memory commands, config-space access, run-time device
 * commands (resize, ...) — all over the one command channel of the thread —
 * the worker's ready payload, and the events a device raises on its own.
 */
import type { DeviceDescription, DeviceInit, ModelCommand } from '../devices/index.js';
import type { RtOptions } from '../rt/index.js';
import type { MemoryRegion, SplitQueueConfig } from '../virtio/index.js';

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
    }
  | { op: 'set-call'; device: number; index: number; fd: number }
  | { op: 'enable'; device: number; index: number; enabled: boolean }
  | { op: 'stop-queue'; device: number; index: number }
  | { op: 'read-config'; device: number; offset: number; size: number }
  | { op: 'write-config'; device: number; offset: number; data: Uint8Array }
  | { op: 'command'; device: number; command: ModelCommand };

/** workerData of a device worker: its devices and the RT options of the thread. */
export interface DeviceWorkerInit {
  devices: DeviceInit[];
  rt: RtOptions;
}

/** A device worker's ready payload: what each of its devices is. */
export interface DeviceWorkerReady {
  devices: DeviceDescription[];
}

/** What a device raises on its own. */
export interface DeviceEvent {
  /** Index of the device in its worker. */
  device: number;
  /** The config space changed: the driver must re-read it (vhost-user: CONFIG_CHANGE_MSG). */
  type: 'config-changed';
}
