/**
 * Entry point of one switch port's worker thread: a vhost-user virtio-net
 * device or the TAP uplink. It applies the RT options to itself and builds a
 * {@link PortRuntime} (the port's rings and doorbell watcher), then hosts the
 * port's peer on it: the virtio-net device, served as a device like any
 * other, or the TAP peer, which has no queues and only ever gets `shutdown`.
 * The main thread only sends it control commands.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { StatCounters } from '../../locking/index.js';
import { PortRuntime } from '../../net/port-runtime.js';
import { TapPeer } from '../../net/tap-peer.js';
import { applyRtOptions, describeThread } from '../../rt/index.js';
import type { WorkerCommand } from '../messages.js';
import { DeviceRuntime, post, rateLimitedWarn, serveDevices } from '../worker-runtime.js';
import { netQueueCount } from './config.js';
import { NetDevice } from './device.js';
import type { NetWorkerInit } from './options.js';
import { NET_STAT_NAMES, NetStat } from './stats.js';

/** Hosts the virtio-net device on the port; the generic device runtime serves its commands. */
function serveVhostUser(init: NetWorkerInit, ports: PortRuntime, stats: StatCounters): void {
  const o = init.options;
  if (init.spec.kind !== 'vhost-user') throw new TypeError('not a vhost-user port');
  let runtime: DeviceRuntime | null = null;
  const device = new NetDevice({
    queuePairs: o.queuePairs,
    mac: init.spec.mac,
    queueSize: o.queueSize,
    port: ports.port,
    notify: (queue) => runtime?.notify(queue),
    stats,
    warn: rateLimitedWarn(),
    // The doorbell watcher keeps the thread's loop alive: it stops when the device closes.
    onClose: () => ports.close(),
  });
  runtime = new DeviceRuntime(device, netQueueCount(o.queuePairs), o.queueSize + 16);
  ports.host(device);
  serveDevices([runtime]);
  post({ kind: 'ready', thread: describeThread(), info: {} });
}

/** Hosts the TAP peer on the port; the thread answers `shutdown` by closing it. */
function serveTap(name: string, ports: PortRuntime, stats: StatCounters): void {
  const tap = new TapPeer({
    name,
    port: ports.port,
    stats,
    counters: NetStat,
    warn: rateLimitedWarn(),
    onClose: () => ports.close(),
  });
  ports.host(tap);
  parentPort?.on('message', (cmd: WorkerCommand) => {
    if (cmd.op !== 'shutdown') {
      const message = `a TAP port has no device to take '${cmd.op}'`;
      post({ kind: 'reply', id: cmd.id, ok: false, code: 'ERR_DEVICE_INDEX', message });
      return;
    }
    // close() is idempotent: a repeated shutdown is answered the same way.
    void tap.close().then(() => {
      post({ kind: 'reply', id: cmd.id, ok: true, value: 0 });
      parentPort?.close();
    });
  });
  post({ kind: 'ready', thread: describeThread(), info: { tap: tap.name } });
}

function start(init: NetWorkerInit): void {
  // applyRtOptions' lockMemory unlocks on this thread's exit: V8 aborts if a thread ends with memory locked.
  applyRtOptions(init.options.rt);
  const ports = new PortRuntime(init.switchPort);
  const stats = StatCounters.attach(init.statsBuffer, NET_STAT_NAMES);
  try {
    if (init.spec.kind === 'tap') serveTap(init.spec.name, ports, stats);
    else serveVhostUser(init, ports, stats);
  } catch (err) {
    ports.close();
    throw err;
  }
}

try {
  start(workerData as NetWorkerInit);
} catch (err) {
  const code = (err as { code?: string }).code ?? 'ERR_WORKER_START';
  post({ kind: 'failed', code, message: err instanceof Error ? err.message : String(err) });
}
