/**
 * Opens one vhost-user port of the switch inside a device worker: the port's
 * rings and doorbell (a PortRuntime) and the virtio-net model over them.
 */
import { StatCounters } from '../../locking/index.js';
import { PortRuntime } from '../../net/port-runtime.js';
import { NET_STAT_NAMES } from '../../net/port-stats.js';
import { type DeviceEnv, describeModel, type OpenedDevice } from '../device.js';
import { NetDevice } from './device.js';
import type { NetDeviceInit, NetInfo } from './options.js';

/** Attaches the port of `init` and builds the device on it. */
export function openNetDevice(init: NetDeviceInit, env: DeviceEnv): OpenedDevice<'net', NetInfo> {
  const ports = new PortRuntime(init.switchPort);
  try {
    const model = new NetDevice({
      queuePairs: init.queuePairs,
      mac: init.mac,
      queueSize: init.queueSize,
      port: ports.port,
      stats: StatCounters.attach(init.statsBuffer, NET_STAT_NAMES),
      warn: env.warn,
      fault: env.fault,
      // The doorbell watcher keeps the thread's loop alive: it stops when the device closes.
      onClose: () => ports.close(),
    });
    ports.host(model);
    return {
      model,
      description: describeModel(model, 'net', {}),
      runtime: { pollUs: init.pollUs ?? 0 },
    };
  } catch (err) {
    ports.close();
    throw err;
  }
}
