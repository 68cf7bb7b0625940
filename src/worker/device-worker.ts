/**
 * Entry point of every device worker thread (blk, net, console). It applies
 * the RT options to itself, opens each device it was given (normally one; all
 * of them in --single-thread mode, like a VMM's main loop), wraps each in a
 * {@link DeviceRuntime} and serves the main thread's commands. The main thread
 * sends only control commands; kicks, completions and interrupts stay here.
 *
 * A device that fails — its fds, its guest memory, its model throwing — is
 * broken by its runtime and reported (DEVICE_BROKEN); the thread and the
 * other devices it serves go on. Only an exception outside every boundary
 * still ends the thread, and the daemon with it.
 */
import { type DeviceEnv, openDevice } from '../devices/index.js';
import { applyRtOptions } from '../rt/index.js';
import { postEvent, postLog, rateLimitedWarn, runWorker } from '../thread/index.js';
import type {
  DeviceCommand,
  DeviceEvent,
  DeviceWorkerInit,
  DeviceWorkerReady,
} from './messages.js';
import { DeviceRuntime, type RuntimeEvents } from './runtime.js';

runWorker<DeviceWorkerInit, DeviceWorkerReady, DeviceCommand>((init) => {
  // applyRtOptions' lockMemory unlocks on this thread's exit: V8 aborts if a thread ends with memory locked.
  applyRtOptions(init.rt);
  const warn = rateLimitedWarn();
  // Filled once every device is open; a device reports faults only after that.
  const runtimes: DeviceRuntime[] = [];
  const opened = init.devices.map((d, i) => {
    const name = init.devices.length > 1 ? `device ${i}: ` : '';
    const env: DeviceEnv = {
      warn: (message) => warn(`${name}${message}`),
      configChanged: () => postEvent<DeviceEvent>({ device: i, type: 'config-changed' }),
      notice: (name, data) => postEvent<DeviceEvent>({ device: i, type: 'notice', name, data }),
      fault: (error) => runtimes[i]?.fault(error),
    };
    return openDevice(d, env);
  });
  opened.forEach((o, i) => {
    const name = init.devices.length > 1 ? `device ${i}: ` : '';
    const events: RuntimeEvents = {
      broken: (queue, code, reason) =>
        postEvent<DeviceEvent>({ device: i, type: 'device-broken', queue, code, reason }),
      log: (level, message) => postLog(level, `${name}${message}`),
    };
    runtimes.push(new DeviceRuntime(o.model, o.runtime ?? { pollUs: 0 }, events));
  });
  return {
    ready: { devices: opened.map((o) => o.description) },
    handle: (cmd: DeviceCommand) => {
      const runtime = runtimes[cmd.device];
      if (runtime === undefined) throw new RangeError(`no device ${cmd.device} in this worker`);
      return runtime.handle(cmd);
    },
    shutdown: async () => {
      for (const r of runtimes) await r.close();
      // A model that threw may still hold handles it can no longer release (an
      // engine waiting for requests it lost count of) and would keep this
      // thread's loop alive for ever: end the thread instead (asked for, so
      // not reported as a failure).
      if (runtimes.some((r) => r.isFaulted)) process.exit(0);
    },
  };
});
