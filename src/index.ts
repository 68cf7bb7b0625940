/**
 * vhost-rt's public API, for VMM authors who embed the device models and for
 * programs that serve devices over vhost-user themselves.
 *
 * - Device models (`BlkDevice`, `ConsoleDevice`, `NetDevice`) are transport-agnostic: give them guest memory,
 *   split virtqueues and an I/O engine, call `kick()` when the driver notifies.
 * - `VhostUserServer` + a device host (`BlkDeviceSet`, `ConsoleService`,
 *   `NetSwitch`) serve devices to QEMU over vhost-user, each on its own
 *   worker thread; `SerialService` serves a QEMU chardev socket (16550 UART).
 */

export {
  BLK_CONFIG_SIZE,
  BlkFeature,
  type BlkGeometry,
  BlkRequestType,
  BlkStatus,
  blkDeviceFeatures,
  encodeBlkConfig,
} from './devices/blk/config.js';
export { BlkDevice, type BlkDeviceOptions, type Notify } from './devices/blk/device.js';
export { BlkDeviceHost, BlkDeviceSet, type BlkDeviceSpec } from './devices/blk/host.js';
export type { BlkOptions } from './devices/blk/options.js';
export { BLK_STAT_NAMES, BlkStat } from './devices/blk/stats.js';
export { ConsoleDevice } from './devices/console/device.js';
export { ConsoleDeviceHost, ConsoleService } from './devices/console/host.js';
export { NetDevice } from './devices/net/device.js';
export { NetDeviceHost, NetSwitch } from './devices/net/host.js';
export type { QueueDevice } from './devices/queue-device.js';
export { SerialService } from './devices/serial/host.js';
export { WorkerDeviceHost } from './devices/worker-device-host.js';
export * from './errors.js';
export * from './io/index.js';
export * from './locking/index.js';
export * from './logger/index.js';
export { formatMac, MacTable, parseMac } from './net/mac-table.js';
export { PacketRing } from './net/packet-ring.js';
export { createSwitchRings, SwitchPort } from './net/switch-port.js';
export * from './rt/index.js';
export {
  type IncomingMessage,
  MAX_MEM_SLOTS,
  RequestError,
  VhostUserBackend,
} from './vhost-user/backend.js';
export * as codec from './vhost-user/codec.js';
export { type Logger, VhostUserConnection } from './vhost-user/connection.js';
export type { QueueStart, VhostUserDevice } from './vhost-user/device-backend.js';
export * as protocol from './vhost-user/protocol.js';
export { VhostUserServer } from './vhost-user/server.js';
export * from './virtio/index.js';
