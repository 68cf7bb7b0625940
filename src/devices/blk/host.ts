/**
 * The main thread's side of virtio-blk devices: features and config space for
 * the vhost-user backend, and commands forwarded to the worker that holds the
 * device (its own, or a shared one in --single-thread mode).
 */
import { StatCounters } from '../../locking/index.js';
import type { RtOptions } from '../../rt/index.js';
import type { Logger } from '../../vhost-user/connection.js';
import { ProtocolFeature } from '../../vhost-user/protocol.js';
import { featureBit } from '../../virtio/index.js';
import type { ThreadInfo } from '../messages.js';
import { WorkerDeviceHost } from '../worker-device-host.js';
import { WorkerHost } from '../worker-host.js';
import { type BlkGeometry, blkDeviceFeatures, encodeBlkConfig } from './config.js';
import { type BlkOptions, type BlkWorkerInit, validateBlkOptions } from './options.js';
import { BLK_STAT_NAMES } from './stats.js';

export class BlkDeviceHost extends WorkerDeviceHost {
  readonly kind = 'blk';
  readonly deviceFeatures: bigint;
  readonly protocolFeatures = featureBit(ProtocolFeature.CONFIG);
  readonly numQueues: number;
  readonly maxQueueSize: number;
  protected readonly config: Uint8Array;

  constructor(
    worker: WorkerHost,
    index: number,
    readonly options: BlkOptions,
    readonly geometry: BlkGeometry,
    readonly thread: ThreadInfo,
    readonly engineInfo: Record<string, number | string | boolean>,
    readonly stats: StatCounters,
  ) {
    super(worker, index);
    this.numQueues = geometry.numQueues;
    this.maxQueueSize = geometry.segMax + 2;
    this.deviceFeatures = blkDeviceFeatures(geometry);
    this.config = encodeBlkConfig(geometry);
  }

  setConfig(_offset: number, _data: Uint8Array): boolean {
    // CONFIG_WCE is not offered, so no field of virtio_blk_config is writable.
    return false;
  }
}

/** One device to start: its options and the RT options of the thread that serves it. */
export interface BlkDeviceSpec {
  options: BlkOptions;
  rt: RtOptions;
}

/** Running blk devices and the worker threads that serve them. */
export class BlkDeviceSet {
  private constructor(
    readonly devices: BlkDeviceHost[],
    private readonly workers: WorkerHost[],
  ) {}

  /**
   * Starts one worker per device, or one worker for all of them when
   * `singleThread` is set (then the first device's RT options apply to it).
   */
  static async start(
    specs: BlkDeviceSpec[],
    singleThread: boolean,
    log: Logger,
  ): Promise<BlkDeviceSet> {
    for (const s of specs) validateBlkOptions(s.options);
    const stats = specs.map(() => StatCounters.create(BLK_STAT_NAMES));
    const groups = singleThread ? [specs.map((_, i) => i)] : specs.map((_, i) => [i]);
    const workers = groups.map((group, w) => {
      const init: BlkWorkerInit = {
        devices: group.map((i) => ({ options: specs[i].options, statsBuffer: stats[i].buffer })),
        rt: specs[group[0]].rt,
      };
      return new WorkerHost(
        'devices/blk/worker.js',
        init,
        log,
        groups.length > 1 ? `blk${w}` : 'blk',
      );
    });
    try {
      const started = await Promise.all(workers.map((w) => w.ready));
      const devices: BlkDeviceHost[] = [];
      groups.forEach((group, w) => {
        group.forEach((i, slot) => {
          const info = started[w].info;
          const engineInfo = {
            sizeBytes: info[`${slot}.sizeBytes`],
            direct: info[`${slot}.direct`],
            alignment: info[`${slot}.alignment`],
            engine: info[`${slot}.engine`],
          };
          const o = specs[i].options;
          const geometry: BlkGeometry = {
            imageBytes: Number(engineInfo.sizeBytes),
            blockSize: 512,
            numQueues: o.queues,
            segMax: o.queueSize - 2,
            readonly: o.readonly,
          };
          devices[i] = new BlkDeviceHost(
            workers[w],
            slot,
            o,
            geometry,
            started[w].thread,
            engineInfo,
            stats[i],
          );
        });
      });
      return new BlkDeviceSet(devices, workers);
    } catch (err) {
      await Promise.all(workers.map((w) => w.terminate()));
      throw err;
    }
  }

  /** Completes in-flight I/O, closes the images and ends the worker threads. */
  async shutdown(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.shutdown()));
  }
}
