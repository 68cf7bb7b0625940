/**
 * Opens one virtio-blk device inside a device worker: the image with its I/O
 * engine, then the model over it.
 */
import { lockedWhileOpen, lockImage } from '../../io/image-lock.js';
import { createEngine, IoprioPolicy } from '../../io/index.js';
import { StatCounters } from '../../locking/index.js';
import { type DeviceEnv, describeModel, type OpenedDevice } from '../device.js';
import { BlkDevice } from './device.js';
import type { BlkDeviceInit, BlkInfo } from './options.js';
import { BLK_STAT_NAMES } from './stats.js';

/** Opens the image of `init` and builds the device on it. */
export function openBlkDevice(init: BlkDeviceInit, env: DeviceEnv): OpenedDevice<'blk', BlkInfo> {
  const o = init.options;
  // Locked before the engine opens it (QEMU-style lock bytes, see image-lock.ts), held until the engine closes.
  const lock = lockImage(o.image, { readonly: o.readonly, warn: env.warn });
  const engine = lockedWhileOpen(lock, () =>
    createEngine(o.aio, {
      path: o.image,
      readonly: o.readonly,
      direct: o.direct,
      depth: o.queues * o.queueSize,
      maxIovs: o.queueSize * (o.queueSize + 2),
      warn: env.warn,
      uringSqpoll: o.uringSqpoll,
      aioThreads: o.aioThreads,
      aioThreadsPolicy: o.aioThreadsPolicy,
    }),
  );
  const model = new BlkDevice({
    engine,
    geometry: {
      imageBytes: engine.sizeBytes,
      blockSize: 512,
      numQueues: o.queues,
      segMax: o.queueSize - 2,
      readonly: o.readonly,
    },
    serial: o.serial,
    queueSize: o.queueSize,
    stats: StatCounters.attach(init.statsBuffer, BLK_STAT_NAMES),
    warn: env.warn,
    fault: env.fault,
    ioprio: new IoprioPolicy(o.guestIoprio, o.ioprio),
    throttle: o.throttle,
  });
  const pollUs = o.pollUs ?? 0;
  const info: BlkInfo = {
    sizeBytes: engine.sizeBytes,
    direct: engine.direct,
    alignment: engine.alignment,
    engine: engine.name,
    pollUs,
  };
  return {
    model,
    description: describeModel(model, 'blk', info),
    runtime: { pollUs, reap: engine.poll === undefined ? undefined : () => engine.poll?.() },
  };
}
