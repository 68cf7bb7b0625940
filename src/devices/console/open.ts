/**
 * Opens one virtio-console device inside a device worker: an output stream
 * per port (this worker produces into the port's log ring; the logger thread
 * drains it), a bounded input buffer per port fed by its input socket, and
 * the model over them.
 */
import { InputBuffer } from '../../chardev/input-buffer.js';
import { InputHub } from '../../chardev/input-hub.js';
import { SpscByteRing, StatCounters } from '../../locking/index.js';
import { OutputStream, PORT_STAT_NAMES, PortStat } from '../../logger/index.js';
import { type DeviceEnv, describeModel, type OpenedDevice } from '../device.js';
import { ConsoleDevice, type ConsolePortIo } from './device.js';
import type { ConsoleDeviceInit, ConsoleInfo } from './options.js';
import { CONSOLE_STAT_NAMES } from './stats.js';

const encoder = new TextEncoder();

function portIo(init: ConsoleDeviceInit, i: number): ConsolePortIo {
  const o = init.options;
  const stats = StatCounters.attach(init.portStats[i], PORT_STAT_NAMES);
  const name = o.ports[i].name;
  return {
    output: new OutputStream(SpscByteRing.attach(init.rings[i]), o.policy, stats),
    input: new InputBuffer(o.inputBufferBytes),
    stats,
    name: name === null ? null : encoder.encode(name),
  };
}

/**
 * Input from a port's socket into the model: work the device does outside any
 * kick, so a throw goes to the host (DeviceEnv.fault) and the bytes count as taken.
 */
function queueInput(
  model: ConsoleDevice,
  port: number,
  buf: Uint8Array,
  off: number,
  len: number,
  env: DeviceEnv,
): number {
  if (env.fault === undefined) return model.queueInput(port, buf, off, len);
  try {
    return model.queueInput(port, buf, off, len);
  } catch (err) {
    env.fault(err);
    return len;
  }
}

/** Builds the console of `init`, listening on the ports' input sockets. */
export function openConsoleDevice(
  init: ConsoleDeviceInit,
  env: DeviceEnv,
): OpenedDevice<'console', ConsoleInfo> {
  const o = init.options;
  const ports = o.ports.map((_, i) => portIo(init, i));
  const hubs: InputHub[] = [];
  const model = new ConsoleDevice({
    ports,
    multiport: o.multiport,
    cols: o.cols,
    rows: o.rows,
    queueSize: o.queueSize,
    stats: StatCounters.attach(init.deviceStats, CONSOLE_STAT_NAMES),
    warn: env.warn,
    configChanged: env.configChanged,
    // The sockets close with the device, so nothing keeps the thread's loop alive.
    onClose: () => {
      for (const h of hubs) h.close();
    },
  });
  o.ports.forEach((p, i) => {
    if (p.inputPath === undefined) return;
    hubs.push(
      new InputHub(
        p.inputPath,
        `--input (port ${i})`,
        (b, off, len) => queueInput(model, i, b, off, len, env),
        (n) => ports[i].stats.add(PortStat.inputRefused, n),
        o.socketPermissions,
      ),
    );
  });
  return {
    model,
    description: describeModel(model, 'console', { ports: o.ports.length }, true),
  };
}
