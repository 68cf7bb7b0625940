/**
 * Drives a device model the way an embedding VMM does (no worker, no
 * vhost-user): it creates the rings, hands them to the model, starts and
 * enables each one, and records the interrupts the model raises.
 */
import type { VirtioDeviceModel } from '../../src/devices/index.js';
import {
  createVrings,
  type GuestMemory,
  type SplitQueueConfig,
  SplitVirtqueue,
  type Vring,
} from '../../src/virtio/index.js';

/** A model with its rings: `notified` lists the queue of every interrupt, in order. */
export interface EmbeddedDevice {
  vrings: Vring[];
  notified: number[];
  /** Starts and enables ring `index` on `config` (as SET_VRING_KICK + ENABLE would). */
  start(index: number, config: SplitQueueConfig, maxSegments?: number): SplitVirtqueue;
}

/** Activates `device` on fresh rings and `memory`. */
export function embed(device: VirtioDeviceModel<unknown>, memory: GuestMemory): EmbeddedDevice {
  const notified: number[] = [];
  const vrings = createVrings(device.numQueues, (v) => notified.push(v.index));
  device.activate(vrings);
  device.setMemory(memory);
  return {
    vrings,
    notified,
    start(index, config, maxSegments = device.maxQueueSize + 16) {
      const vq = new SplitVirtqueue(memory, config, maxSegments);
      vrings[index].start(vq);
      vrings[index].enabled = true;
      device.kick(index);
      return vq;
    },
  };
}
