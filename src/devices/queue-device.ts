/**
 * What a device model offers the worker runtime: the transport-independent
 * operations that vhost-user (or an embedding VMM) maps its requests onto.
 */
import type { GuestMemory, SplitVirtqueue } from '../virtio/index.js';

export interface QueueDevice {
  setMemory(memory: GuestMemory): void;
  startQueue(index: number, vq: SplitVirtqueue): void;
  setEnabled(index: number, enabled: boolean): void;
  /** The driver signalled queue `index`. */
  kick(index: number): void;
  /** Completes what is in flight on `index`, then stops it; resolves to the last avail index. */
  stopQueue(index: number): Promise<number>;
  /** Stops every queue and releases the device's resources. */
  close(): Promise<void>;
}
