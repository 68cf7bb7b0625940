/**
 * Messages between the main thread (control plane) and a device worker. Every
 * command carries an id and is answered by exactly one reply with that id, so
 * the vhost-user backend can await each step in protocol order.
 */
import type { MemoryRegion, SplitQueueConfig } from '../virtio/index.js';

/**
 * Commands to one device of a worker: `device` indexes the worker's devices
 * (one per worker normally, all of them in --single-thread mode).
 */
export type DeviceCommand =
  | { op: 'memory'; id: number; device: number; regions: MemoryRegion[] }
  | {
      op: 'start-queue';
      id: number;
      device: number;
      index: number;
      config: SplitQueueConfig;
      lastAvailIdx: number;
      kickFd: number;
      callFd: number;
    }
  | { op: 'set-call'; id: number; device: number; index: number; fd: number }
  | { op: 'enable'; id: number; device: number; index: number; enabled: boolean }
  | { op: 'stop-queue'; id: number; device: number; index: number };

/** Everything the main thread sends a worker: device commands, or shutting the whole thread down. */
export type WorkerCommand = DeviceCommand | { op: 'shutdown'; id: number };

export interface ThreadInfo {
  tid: number;
  policy: string;
  priority: number;
  cpus: number[];
}

export type WorkerReply =
  | { kind: 'reply'; id: number; ok: true; value: number }
  | { kind: 'reply'; id: number; ok: false; code: string; message: string }
  | { kind: 'ready'; thread: ThreadInfo; info: Record<string, number | string | boolean> }
  | { kind: 'failed'; code: string; message: string }
  | { kind: 'log'; level: 'info' | 'warn' | 'error'; message: string };
