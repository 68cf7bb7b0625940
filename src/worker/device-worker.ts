/**
 * Entry point of every device worker thread (blk, net, console). It applies
 * the RT options to itself, opens each device it was given (normally one; all
 * of them in --single-thread mode, like a VMM's main loop), wraps each in a
 * {@link DeviceRuntime} and serves the main thread's commands. The main thread
 * sends only control commands; kicks, completions and interrupts stay here.
 */
import { type DeviceEnv, openDevice } from '../devices/index.js';
import { applyRtOptions } from '../rt/index.js';
import { postEvent, rateLimitedWarn, runWorker } from '../thread/index.js';
import type {
  DeviceCommand,
  DeviceEvent,
  DeviceWorkerInit,
  DeviceWorkerReady,
} from './messages.js';
import { DeviceRuntime } from './runtime.js';

runWorker<DeviceWorkerInit, DeviceWorkerReady, DeviceCommand>((init) => {
  // applyRtOptions' lockMemory unlocks on this thread's exit: V8 aborts if a thread ends with memory locked.
  applyRtOptions(init.rt);
  const warn = rateLimitedWarn();
  const opened = init.devices.map((d, i) => {
    const name = init.devices.length > 1 ? `device ${i}: ` : '';
    const env: DeviceEnv = {
      warn: (message) => warn(`${name}${message}`),
      configChanged: () => postEvent<DeviceEvent>({ device: i, type: 'config-changed' }),
    };
    return openDevice(d, env);
  });
  const runtimes = opened.map((o) => new DeviceRuntime(o.model, o.runtime));
  return {
    ready: { devices: opened.map((o) => o.description) },
    handle: (cmd: DeviceCommand) => {
      const runtime = runtimes[cmd.device];
      if (runtime === undefined) throw new RangeError(`no device ${cmd.device} in this worker`);
      return runtime.handle(cmd);
    },
    shutdown: async () => {
      for (const r of runtimes) await r.close();
    },
  };
});
