/**
 * The main thread's side of a virtio-blk device: features and config space
 * for the vhost-user backend, and commands forwarded to the device's worker.
 */
import { StatCounters } from '../../locking/index.js';
import type { RtOptions } from '../../rt/index.js';
import type { Logger } from '../../vhost-user/connection.js';
import type { QueueStart, VhostUserDevice } from '../../vhost-user/device-backend.js';
import { ProtocolFeature } from '../../vhost-user/protocol.js';
import type { MemoryRegion } from '../../virtio/index.js';
import { featureBit } from '../../virtio/index.js';
import type { ThreadInfo } from '../messages.js';
import { WorkerHost } from '../worker-host.js';
import { type BlkGeometry, blkDeviceFeatures, encodeBlkConfig } from './config.js';
import { type BlkOptions, type BlkWorkerInit, validateBlkOptions } from './options.js';
import { BLK_STAT_NAMES } from './stats.js';

export class BlkDeviceHost implements VhostUserDevice {
  readonly kind = 'blk';
  readonly deviceFeatures: bigint;
  readonly protocolFeatures = featureBit(ProtocolFeature.CONFIG);
  readonly numQueues: number;
  readonly maxQueueSize: number;
  private readonly config: Uint8Array;

  private constructor(
    private readonly worker: WorkerHost,
    readonly geometry: BlkGeometry,
    readonly thread: ThreadInfo,
    readonly engineInfo: Record<string, number | string | boolean>,
    readonly stats: StatCounters,
  ) {
    this.numQueues = geometry.numQueues;
    this.maxQueueSize = geometry.segMax + 2;
    this.deviceFeatures = blkDeviceFeatures(geometry);
    this.config = encodeBlkConfig(geometry);
  }

  /** Starts the device's worker thread and waits until the image is open. */
  static async start(options: BlkOptions, rt: RtOptions, log: Logger): Promise<BlkDeviceHost> {
    validateBlkOptions(options);
    const stats = StatCounters.create(BLK_STAT_NAMES);
    const init: BlkWorkerInit = { options, rt, statsBuffer: stats.buffer };
    const worker = new WorkerHost('devices/blk/worker.js', init, log, 'blk');
    try {
      const { thread, info } = await worker.ready;
      const geometry: BlkGeometry = {
        imageBytes: Number(info.sizeBytes),
        blockSize: 512,
        numQueues: options.queues,
        segMax: options.queueSize - 2,
        readonly: options.readonly,
      };
      return new BlkDeviceHost(worker, geometry, thread, info, stats);
    } catch (err) {
      await worker.terminate();
      throw err;
    }
  }

  getConfig(offset: number, size: number): Uint8Array {
    const out = new Uint8Array(size);
    if (offset < this.config.length)
      out.set(this.config.subarray(offset, Math.min(offset + size, this.config.length)));
    return out;
  }

  setConfig(_offset: number, _data: Uint8Array): boolean {
    // CONFIG_WCE is not offered, so no field of virtio_blk_config is writable.
    return false;
  }

  async setMemory(regions: MemoryRegion[]): Promise<void> {
    await this.worker.request({ op: 'memory', regions });
  }

  async startQueue(index: number, s: QueueStart): Promise<void> {
    await this.worker.request({
      op: 'start-queue',
      index,
      config: s.config,
      lastAvailIdx: s.lastAvailIdx,
      kickFd: s.kickFd,
      callFd: s.callFd,
    });
    if (s.enabled) await this.setEnabled(index, true);
  }

  async setCall(index: number, fd: number): Promise<void> {
    await this.worker.request({ op: 'set-call', index, fd });
  }

  async setEnabled(index: number, enabled: boolean): Promise<void> {
    await this.worker.request({ op: 'enable', index, enabled });
  }

  stopQueue(index: number): Promise<number> {
    return this.worker.request({ op: 'stop-queue', index });
  }

  /** Completes in-flight I/O, closes the image and ends the worker thread. */
  shutdown(): Promise<void> {
    return this.worker.shutdown();
  }
}
