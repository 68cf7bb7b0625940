/**
 * Running virtio-blk devices: one device worker per device, or one for all
 * of them (--single-thread). The main thread keeps only handles and the
 * counters' shared memory.
 */

import { type BlkOptions, validateBlkOptions } from '../devices/blk/options.js';
import { BLK_STAT_NAMES } from '../devices/blk/stats.js';
import type { BlkInfo } from '../devices/index.js';
import { StatCounters } from '../locking/index.js';
import type { Logger } from '../log.js';
import type { RtOptions } from '../rt/index.js';
import { type DeviceHost, DeviceWorkerSet } from './device-host.js';

/** One device to start: its options and the RT options of the thread that serves it. */
export interface BlkDeviceSpec {
  options: BlkOptions;
  rt: RtOptions;
}

/** A running blk device: its vhost-user face, what its worker reported, its counters. */
export interface BlkDeviceHandle {
  host: DeviceHost;
  options: BlkOptions;
  /** Image size, engine and O_DIRECT as the worker opened them. */
  info: BlkInfo;
  stats: StatCounters;
}

/** Running blk devices and the worker threads that serve them. */
export class BlkDeviceSet {
  private constructor(
    readonly devices: BlkDeviceHandle[],
    private readonly workers: DeviceWorkerSet,
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
    const workers = await DeviceWorkerSet.start(
      groups.map((group, w) => ({
        name: groups.length > 1 ? `blk${w}` : 'blk',
        init: {
          devices: group.map((i) => ({
            kind: 'blk' as const,
            options: specs[i].options,
            statsBuffer: stats[i].buffer,
          })),
          rt: specs[group[0]].rt,
        },
      })),
      log,
    );
    const devices: BlkDeviceHandle[] = [];
    groups.forEach((group, w) => {
      group.forEach((i, slot) => {
        const host = workers.hosts[w][slot];
        if (host.description.kind !== 'blk') throw new TypeError('blk worker opened another kind');
        devices[i] = {
          host,
          options: specs[i].options,
          info: host.description.info,
          stats: stats[i],
        };
      });
    });
    return new BlkDeviceSet(devices, workers);
  }

  /** Completes in-flight I/O, closes the images and ends the worker threads. */
  async shutdown(): Promise<void> {
    await this.workers.shutdown();
  }
}
