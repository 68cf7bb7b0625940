/**
 * What every device host shares: the vhost-user ring commands forwarded to
 * the worker thread that holds the device, and config-space reads. A device
 * host adds its features, its config space and what is its own.
 */
import type { QueueStart, VhostUserDevice } from '../vhost-user/device-backend.js';
import type { MemoryRegion } from '../virtio/index.js';
import type { WorkerHost } from './worker-host.js';

export abstract class WorkerDeviceHost implements VhostUserDevice {
  abstract readonly kind: string;
  abstract readonly deviceFeatures: bigint;
  abstract readonly protocolFeatures: bigint;
  abstract readonly numQueues: number;
  abstract readonly maxQueueSize: number;
  /** The device's config space as it stands; reads past its end see zeroes. */
  protected abstract config: Uint8Array;

  /** `device` indexes the worker's devices (0 unless several share the worker). */
  constructor(
    protected readonly worker: WorkerHost,
    protected readonly device = 0,
  ) {}

  abstract setConfig(offset: number, data: Uint8Array): boolean;

  getConfig(offset: number, size: number): Uint8Array {
    const out = new Uint8Array(size);
    if (offset < this.config.length) {
      out.set(this.config.subarray(offset, Math.min(offset + size, this.config.length)));
    }
    return out;
  }

  async setMemory(regions: MemoryRegion[]): Promise<void> {
    await this.worker.request({ op: 'memory', device: this.device, regions });
  }

  async startQueue(index: number, s: QueueStart): Promise<void> {
    await this.worker.request({
      op: 'start-queue',
      device: this.device,
      index,
      config: s.config,
      lastAvailIdx: s.lastAvailIdx,
      kickFd: s.kickFd,
      callFd: s.callFd,
    });
    if (s.enabled) await this.setEnabled(index, true);
  }

  async setCall(index: number, fd: number): Promise<void> {
    await this.worker.request({ op: 'set-call', device: this.device, index, fd });
  }

  async setEnabled(index: number, enabled: boolean): Promise<void> {
    await this.worker.request({ op: 'enable', device: this.device, index, enabled });
  }

  stopQueue(index: number): Promise<number> {
    return this.worker.request({ op: 'stop-queue', device: this.device, index });
  }
}
