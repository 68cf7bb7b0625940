/**
 * `vhost-rt/daemon`: the pieces of the `vhost-rt` daemon — each device on its
 * own worker thread, handled from the main thread by a {@link DeviceHost}
 * that a vhost-user server serves — for programs that run devices the way
 * the CLI does.
 */

export { SerialService, type SerialSpec } from '../chardev/uart-service.js';
export { onWorkerFailure } from '../thread/index.js';
export { AddGate, DaemonStoppingError } from './add-gate.js';
export { type BlkDeviceHandle, BlkDeviceSet, type BlkDeviceSpec } from './blk-service.js';
export { ConsoleService, type ConsoleSpec } from './console-service.js';
export {
  type BrokenRing,
  type ConfigChangeChannel,
  DeviceHost,
  type DeviceWorker,
  DeviceWorkerSet,
  type DeviceWorkerSpec,
  type QueueStart,
} from './device-host.js';
export {
  type ConfigChangedEvent,
  type DeviceBrokenEvent,
  type DeviceCommand,
  type DeviceEvent,
  type DeviceWorkerInit,
  type DeviceWorkerReady,
  type DirtyLogShare,
  GUEST_MEMORY_SHRANK,
  RingBreak,
} from './messages.js';
export type { RuntimeOptions } from './runtime.js';
