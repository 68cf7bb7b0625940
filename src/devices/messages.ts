/**
 * Messages between the main thread (control plane) and a device worker. Every
 * command carries an id and is answered by exactly one reply with that id, so
 * the vhost-user backend can await each step in protocol order.
 */
import type { MemoryRegion, SplitQueueConfig } from '../virtio/index.js';

export type WorkerCommand =
  | { op: 'memory'; id: number; regions: MemoryRegion[] }
  | {
      op: 'start-queue';
      id: number;
      index: number;
      config: SplitQueueConfig;
      lastAvailIdx: number;
      kickFd: number;
      callFd: number;
    }
  | { op: 'set-call'; id: number; index: number; fd: number }
  | { op: 'enable'; id: number; index: number; enabled: boolean }
  | { op: 'stop-queue'; id: number; index: number }
  | { op: 'shutdown'; id: number };

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
