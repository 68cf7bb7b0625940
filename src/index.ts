/**
 * vhost-rt's public API for VMM authors who embed the device models:
 *
 * - device models (`BlkDevice`, `ConsoleDevice`, `NetDevice`), each a
 *   {@link VirtioDeviceModel}: give it guest memory and {@link Vring}s
 *   (`activate`, `setMemory`), start and enable the rings, call `kick()` when
 *   the driver notifies; its `signal` callback is your interrupt;
 * - the virtio layer: guest memory, the hardened split virtqueue, descriptor
 *   chains with their reader and writer, feature bits;
 * - the I/O engines (linux-aio, io_uring, threads, sync) behind one interface;
 * - RT options and coded errors.
 *
 * Serving devices over vhost-user is under `vhost-rt/vhost-user`; the daemon's
 * worker-per-device pieces are under `vhost-rt/daemon`.
 */

export { InputBuffer } from './chardev/input-buffer.js';
export {
  BLK_CONFIG_SIZE,
  BlkFeature,
  type BlkGeometry,
  BlkRequestType,
  BlkStatus,
  blkDeviceFeatures,
  encodeBlkConfig,
} from './devices/blk/config.js';
export { BlkDevice, type BlkDeviceOptions } from './devices/blk/device.js';
export type { BlkOptions } from './devices/blk/options.js';
export { BLK_STAT_NAMES, BlkStat } from './devices/blk/stats.js';
export {
  type ConsoleCommand,
  ConsoleDevice,
  type ConsoleDeviceOptions,
  type ConsolePortIo,
} from './devices/console/device.js';
export { CONSOLE_STAT_NAMES, ConsoleStat } from './devices/console/stats.js';
export {
  type DeviceEnv,
  readConfigBytes,
  type VirtioDeviceModel,
} from './devices/device.js';
export * from './errors.js';
export * from './io/index.js';
export { SpscByteRing, StatCounters } from './locking/index.js';
export type { Logger, LogLevel } from './log.js';
export { OutputStream, PORT_STAT_NAMES, PortStat, type RingPolicy } from './logger/index.js';
export {
  applyRtOptions,
  describeThread,
  mapGuestPriority,
  type RtOptions,
  type RtPolicy,
  type ThreadRtState,
  validateRtOptions,
} from './rt/index.js';
export * from './virtio/index.js';
