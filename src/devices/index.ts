/**
 * The device models (virtio-blk, virtio-console, virtio-net) and how a device
 * worker opens each kind: {@link openDevice} is the one place that knows every
 * kind, so the worker framework stays generic.
 */

import type { BlkCommand } from './blk/device.js';
import { openBlkDevice } from './blk/open.js';
import type { BlkDeviceInit } from './blk/options.js';
import type { ConsoleCommand } from './console/device.js';
import { openConsoleDevice } from './console/open.js';
import type { ConsoleDeviceInit } from './console/options.js';
import type { DeviceEnv } from './device.js';
import type { NetCommand } from './net/device.js';
import { openNetDevice } from './net/open.js';
import type { NetDeviceInit } from './net/options.js';

export type { BlkInfo } from './blk/options.js';
export type { ConsoleInfo } from './console/options.js';
export {
  type DeviceEnv,
  describeModel,
  type ModelDescription,
  type OpenedDevice,
  readConfigBytes,
  type VirtioDeviceModel,
} from './device.js';
export type { NetInfo } from './net/options.js';
export type { BlkCommand, BlkDeviceInit, ConsoleCommand, ConsoleDeviceInit, NetDeviceInit };

/** What a device worker is given to open a device, by kind. */
export type DeviceInit = BlkDeviceInit | ConsoleDeviceInit | NetDeviceInit;

/** Every kind's opened device. */
type AnyOpened =
  | ReturnType<typeof openBlkDevice>
  | ReturnType<typeof openConsoleDevice>
  | ReturnType<typeof openNetDevice>;

/** What the main thread learns about an opened device, by kind. */
export type DeviceDescription = AnyOpened['description'];

/** Run-time commands of every device model. */
export type ModelCommand = ConsoleCommand | BlkCommand | NetCommand;

/** Opens the device `init` describes, in the calling (worker) thread. */
export function openDevice(init: DeviceInit, env: DeviceEnv): AnyOpened {
  switch (init.kind) {
    case 'blk':
      return openBlkDevice(init, env);
    case 'console':
      return openConsoleDevice(init, env);
    case 'net':
      return openNetDevice(init, env);
  }
}
