/**
 * Entry point of one switch port's worker thread: a vhost-user virtio-net
 * device or the TAP uplink. It applies the RT options to itself, attaches
 * its packet rings, watches its doorbell and serves the port; the main
 * thread only sends it control commands.
 */
import { workerData } from 'node:worker_threads';
import { StatCounters } from '../../locking/index.js';
import { native, POLL_READABLE } from '../../native.js';
import { SwitchPort } from '../../net/switch-port.js';
import { TapPort } from '../../net/tap-port.js';
import { applyRtOptions, describeThread } from '../../rt/index.js';
import { DeviceRuntime, post, rateLimitedWarn, serveDevices } from '../worker-runtime.js';
import { netQueueCount } from './config.js';
import { NetDevice } from './device.js';
import type { NetWorkerInit } from './options.js';
import { NET_STAT_NAMES } from './stats.js';

interface OpenedPort {
  runtime: DeviceRuntime;
  doorbell: () => void;
  info: Record<string, number | string | boolean>;
}

function openVhostUser(
  init: NetWorkerInit,
  sp: SwitchPort,
  stats: StatCounters,
  onClose: () => void,
): OpenedPort {
  const o = init.options;
  let runtime: DeviceRuntime | null = null;
  if (init.spec.kind !== 'vhost-user') throw new TypeError('not a vhost-user port');
  const device = new NetDevice({
    queuePairs: o.queuePairs,
    mac: init.spec.mac,
    queueSize: o.queueSize,
    switchPort: sp,
    notify: (queue) => runtime?.notify(queue),
    stats,
    warn: rateLimitedWarn(),
    onClose,
  });
  runtime = new DeviceRuntime(device, netQueueCount(o.queuePairs), o.queueSize + 16);
  return { runtime, doorbell: () => device.doorbell(), info: {} };
}

function openTap(
  name: string,
  sp: SwitchPort,
  stats: StatCounters,
  onClose: () => void,
): OpenedPort {
  const tap = new TapPort(name, sp, stats, rateLimitedWarn(), onClose);
  return {
    runtime: new DeviceRuntime(tap, 0, 1),
    doorbell: () => tap.doorbell(),
    info: { tap: tap.name },
  };
}

function start(init: NetWorkerInit): void {
  // applyRtOptions' lockMemory unlocks on this thread's exit: V8 aborts if a thread ends with memory locked.
  applyRtOptions(init.options.rt);
  const sp = new SwitchPort(init.switchPort);
  const stats = StatCounters.attach(init.statsBuffer, NET_STAT_NAMES);
  const bell = init.switchPort.doorbells[init.switchPort.port];
  let port: OpenedPort | null = null;
  const watcher = new native.FdWatcher(bell, () => {
    // Reading resets the counter before the rings are drained: a frame
    // committed after this read rings again, so none is left unnoticed.
    native.eventfdRead(bell);
    port?.doorbell();
  });
  // The watcher keeps the thread's loop alive: it stops when the port closes.
  const onClose = () => watcher.close();
  port =
    init.spec.kind === 'tap'
      ? openTap(init.spec.name, sp, stats, onClose)
      : openVhostUser(init, sp, stats, onClose);
  watcher.start(POLL_READABLE);
  serveDevices([port.runtime]);
  post({ kind: 'ready', thread: describeThread(), info: port.info });
}

try {
  start(workerData as NetWorkerInit);
} catch (err) {
  const code = (err as { code?: string }).code ?? 'ERR_WORKER_START';
  post({ kind: 'failed', code, message: err instanceof Error ? err.message : String(err) });
}
