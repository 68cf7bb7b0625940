/**
 * Running virtio-blk devices: one device worker per device, or one for all
 * of them (--single-thread). The main thread keeps only handles and the
 * counters' shared memory.
 */

import { readFileSync } from 'node:fs';
import { stat, truncate } from 'node:fs/promises';
import { type BlkOptions, validateBlkOptions } from '../devices/blk/options.js';
import { BLK_STAT_NAMES, createBlkAccounting } from '../devices/blk/stats.js';
import type { BlkInfo } from '../devices/index.js';
import { VhostRtError } from '../errors.js';
import { DEFAULT_RT_GUARD, diskGuards } from '../io/disk-guard.js';
import { type LatencyHistograms, StatCounters } from '../locking/index.js';
import type { Logger } from '../log.js';
import type { RtOptions } from '../rt/index.js';
import { AddGate } from './add-gate.js';
import { DeviceBackups } from './backup.js';
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
  /** Per-queue counters (blkQueueStatNames), written by the worker once per batch. */
  queueStats: StatCounters;
  /** Kick-to-completion latency histograms, one series per queue. */
  latency: LatencyHistograms;
  /** The image size the device serves now (bytes): info.sizeBytes until a resize. */
  sizeBytes: number;
  /** The worker(s) it runs on; shared with other devices in --single-thread mode. */
  workers: DeviceWorkerSet;
  /** Its worker serves other devices too (--single-thread): it cannot be removed alone. */
  sharedWorker: boolean;
  /** Resizes of this device run one after the other: the last one queued. */
  resizing: Promise<unknown>;
  /** Its live backups and snapshots (issue 12). */
  backups: DeviceBackups;
}

/**
 * A run-time change of a blk device refused or failed; `code` says why:
 * ERR_BLK_RESIZE_READONLY, ERR_BLK_RESIZE_BLOCK_DEVICE, ERR_BLK_RESIZE_IO,
 * ERR_BLK_SHARED_WORKER (device-del of a device sharing its worker).
 */
export class BlkChangeError extends VhostRtError {}

/** What a resize did: the size before and after, in bytes. */
export interface BlkResized {
  /** Index of the device in the set. */
  device: number;
  previous: number;
  size: number;
}

/**
 * The size of image `path` now: a regular file's length, or a block
 * device's size from sysfs (fstat says 0 for those).
 */
export async function imageSizeBytes(
  path: string,
): Promise<{ size: number; blockDevice: boolean }> {
  const st = await stat(path);
  if (!st.isBlockDevice()) return { size: st.size, blockDevice: false };
  const major = (st.rdev >>> 8) & 0xfff;
  const minor = (st.rdev & 0xff) | ((st.rdev >>> 12) & 0xfff00);
  const sectors = readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim();
  return { size: Number(sectors) * 512, blockDevice: true };
}

/** Running blk devices and the worker threads that serve them. */
export class BlkDeviceSet {
  /** Devices added at run time so far (names their workers). */
  private added = 0;
  /** Closed when the daemon begins to stop ({@link stopAdding}): `device-add` is refused. */
  private readonly adding = new AddGate('device');

  private constructor(
    readonly devices: BlkDeviceHandle[],
    private readonly log: Logger,
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
    const groups = singleThread ? [specs.map((_, i) => i)] : specs.map((_, i) => [i]);
    const started = await Promise.allSettled(
      groups.map((group, w) =>
        startGroup(
          group.map((i) => specs[i]),
          groups.length > 1 ? `blk${w}` : 'blk',
          log,
        ),
      ),
    );
    const failed = started.find((r) => r.status === 'rejected');
    if (failed !== undefined) {
      await Promise.all(
        started.flatMap((r) => (r.status === 'fulfilled' ? [r.value[0].workers.shutdown()] : [])),
      );
      throw (failed as PromiseRejectedResult).reason;
    }
    const devices: BlkDeviceHandle[] = [];
    groups.forEach((group, w) => {
      const handles = (started[w] as PromiseFulfilledResult<BlkDeviceHandle[]>).value;
      group.forEach((i, slot) => {
        devices[i] = handles[slot];
      });
    });
    return new BlkDeviceSet(devices, log);
  }

  /**
   * Starts one more device on a worker of its own (`device-add`); it joins
   * {@link devices} at the end, under the name `blk-N`.
   */
  async add(spec: BlkDeviceSpec): Promise<BlkDeviceHandle> {
    this.adding.check();
    validateBlkOptions(spec.options);
    const [handle] = await startGroup([spec], `blk-${++this.added}`, this.log);
    await this.adding.admit(() => handle.workers.shutdown());
    this.devices.push(handle);
    return handle;
  }

  /**
   * The daemon begins to stop: from now on `device-add` is refused (ERR_DAEMON_STOPPING), and a
   * device still starting is ended instead of added. Called before the vhost-user servers
   * close, so that no device is added after them.
   */
  stopAdding(): void {
    this.adding.close();
  }

  /**
   * Takes device `index` out of the set (`device-del`): completes its
   * in-flight I/O, closes its image and ends its worker. The caller has
   * closed its vhost-user server first. Refused for a device that shares
   * its worker (--single-thread).
   */
  async remove(index: number): Promise<void> {
    const handle = this.devices[index];
    if (handle === undefined) throw new RangeError(`no blk device ${index}`);
    if (handle.sharedWorker)
      throw new BlkChangeError(
        'ERR_BLK_SHARED_WORKER',
        'the device shares its worker thread with others (--single-thread)',
      );
    this.devices.splice(index, 1);
    await handle.backups.close();
    await handle.resizing.catch(() => {});
    await handle.workers.shutdown();
  }

  /**
   * Changes device `index`'s capacity at run time. With `bytes`, the image
   * file is grown or shrunk to it (ftruncate); without, its size is re-read
   * (a file resized from outside, a grown block device). A grow resizes the
   * file first, a shrink last: the device refuses requests past the new end
   * and waits for those in flight there (they fail with IOERR) before the
   * file is cut. The driver is told (config change). Resizes of one device
   * run in order.
   */
  resize(index: number, bytes?: number): Promise<BlkResized> {
    const handle = this.devices[index];
    if (handle === undefined) return Promise.reject(new RangeError(`no blk device ${index}`));
    const run = handle.resizing.catch(() => {}).then(() => resizeDevice(handle, index, bytes));
    handle.resizing = run;
    return run;
  }

  /** Re-reads every image's size (SIGHUP); resolves with the devices whose size changed. */
  async rereadSizes(): Promise<BlkResized[]> {
    const results = await Promise.allSettled(this.devices.map((_, i) => this.resize(i)));
    const changed: BlkResized[] = [];
    results.forEach((r, i) => {
      if (r.status === 'rejected')
        this.log('warn', `blk device ${i}: re-reading the image size failed: ${String(r.reason)}`);
      else if (r.value.size !== r.value.previous) changed.push(r.value);
    });
    return changed;
  }

  /** Completes in-flight I/O, closes the images and ends the worker threads. */
  async shutdown(): Promise<void> {
    this.stopAdding();
    // A running backup is cancelled first (BACKUP_CANCELLED): its device then lets go of it.
    await Promise.all(this.devices.map((d) => d.backups.close()));
    const sets = new Set(this.devices.map((d) => d.workers));
    await Promise.all([...sets].map((w) => w.shutdown()));
  }
}

/** Starts one worker serving `specs` (one device, or several with --single-thread). */
async function startGroup(
  specs: BlkDeviceSpec[],
  name: string,
  log: Logger,
): Promise<BlkDeviceHandle[]> {
  const stats = specs.map(() => StatCounters.create(BLK_STAT_NAMES));
  const accounting = specs.map((s) =>
    createBlkAccounting(s.options.queues, s.options.latencyTargetUs ?? 0),
  );
  const workers = await DeviceWorkerSet.start(
    [
      {
        name,
        init: {
          devices: specs.map((s, i) => ({
            kind: 'blk' as const,
            options: s.options,
            statsBuffer: stats[i].buffer,
            accounting: s.options.latencyHistograms === false ? undefined : accounting[i].init,
            // The RT guard of the image's disk (issue 14); an nbd or null device has no disk.
            diskGuard:
              s.options.aio === 'nbd' || s.options.aio === 'null'
                ? undefined
                : diskGuards.assign(
                    s.options.image,
                    s.options.rtGuard === undefined ? { ...DEFAULT_RT_GUARD } : s.options.rtGuard,
                    (m) => log('warn', m),
                  ),
          })),
          rt: specs[0].rt,
        },
      },
    ],
    log,
  );
  return workers.hosts[0].map((host, i) => {
    if (host.description.kind !== 'blk') throw new TypeError('blk worker opened another kind');
    const handle: BlkDeviceHandle = {
      host,
      options: specs[i].options,
      info: host.description.info,
      stats: stats[i],
      queueStats: accounting[i].queueStats,
      latency: accounting[i].latency,
      sizeBytes: host.description.info.sizeBytes,
      workers,
      sharedWorker: specs.length > 1,
      resizing: Promise.resolve(),
      backups: null as unknown as DeviceBackups,
    };
    handle.backups = new DeviceBackups(
      {
        host,
        image: specs[i].options.image,
        engine: host.description.info.engine,
        sizeBytes: () => handle.sizeBytes,
      },
      log,
    );
    return handle;
  });
}

/** One resize of `handle` (see {@link BlkDeviceSet.resize}). */
async function resizeDevice(
  handle: BlkDeviceHandle,
  index: number,
  bytes: number | undefined,
): Promise<BlkResized> {
  const previous = handle.sizeBytes;
  const path = handle.options.image;
  let current: { size: number; blockDevice: boolean };
  try {
    current = await imageSizeBytes(path);
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'EIO';
    throw new BlkChangeError('ERR_BLK_RESIZE_IO', `${path}: cannot stat (${code})`, { cause: err });
  }
  if (bytes === undefined || bytes === current.size) {
    if (current.size === previous) return { device: index, previous, size: previous };
    await handle.host.command({ type: 'resize', bytes: current.size });
    handle.sizeBytes = current.size;
    return { device: index, previous, size: current.size };
  }
  if (handle.options.readonly)
    throw new BlkChangeError('ERR_BLK_RESIZE_READONLY', `${path} is served read-only`);
  if (current.blockDevice)
    throw new BlkChangeError(
      'ERR_BLK_RESIZE_BLOCK_DEVICE',
      `${path} is a block device: resize it outside, then re-read its size`,
    );
  // Refused before the file changes: a backup reads, or a redirect overlay covers, the disk as it is.
  const refusal = handle.backups.resizeRefusal();
  if (refusal !== null) throw refusal;
  if (bytes > current.size) await truncateImage(path, bytes);
  await handle.host.command({ type: 'resize', bytes });
  handle.sizeBytes = bytes;
  if (bytes < current.size) await truncateImage(path, bytes);
  return { device: index, previous, size: bytes };
}

async function truncateImage(path: string, bytes: number): Promise<void> {
  try {
    await truncate(path, bytes);
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'EIO';
    throw new BlkChangeError(
      'ERR_BLK_RESIZE_IO',
      `${path}: cannot resize to ${bytes} bytes (${code})`,
      {
        cause: err,
      },
    );
  }
}
