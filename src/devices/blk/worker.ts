/**
 * Entry point of a virtio-blk worker thread. It applies the RT options to
 * itself, opens each image with its engine and serves the queues; the main
 * thread only sends it control commands. Normally a worker holds one device;
 * in --single-thread mode it holds all of them, like a VMM's main loop.
 */
import { workerData } from 'node:worker_threads';
import { createEngine } from '../../io/index.js';
import { StatCounters } from '../../locking/index.js';
import { applyRtOptions, describeThread } from '../../rt/index.js';
import { DeviceRuntime, post, rateLimitedWarn, serveDevices } from '../worker-runtime.js';
import { BlkDevice } from './device.js';
import type { BlkDeviceInit, BlkWorkerInit } from './options.js';
import { BLK_STAT_NAMES } from './stats.js';

function openDevice(
  init: BlkDeviceInit,
  name: string,
): { runtime: DeviceRuntime; info: Record<string, number | string | boolean> } {
  const o = init.options;
  const engine = createEngine(o.aio, {
    path: o.image,
    readonly: o.readonly,
    direct: o.direct,
    depth: o.queues * o.queueSize,
    maxIovs: o.queueSize * (o.queueSize + 2),
    warn: (message) => post({ kind: 'log', level: 'warn', message: `${name}: ${message}` }),
    uringSqpoll: o.uringSqpoll,
    aioThreads: o.aioThreads,
    aioThreadsPolicy: o.aioThreadsPolicy,
  });
  let runtime: DeviceRuntime | null = null;
  const device = new BlkDevice({
    engine,
    geometry: {
      imageBytes: engine.sizeBytes,
      blockSize: 512,
      numQueues: o.queues,
      segMax: o.queueSize - 2,
      readonly: o.readonly,
    },
    serial: o.serial,
    queueSize: o.queueSize,
    notify: (queue) => runtime?.notify(queue),
    stats: StatCounters.attach(init.statsBuffer, BLK_STAT_NAMES),
    warn: rateLimitedWarn(),
  });
  runtime = new DeviceRuntime(device, o.queues, o.queueSize + 16, {
    pollUs: o.pollUs ?? 0,
    reap: engine.poll === undefined ? undefined : () => engine.poll?.(),
  });
  return {
    runtime,
    info: {
      sizeBytes: engine.sizeBytes,
      direct: engine.direct,
      alignment: engine.alignment,
      engine: engine.name,
      pollUs: o.pollUs ?? 0,
    },
  };
}

function start(init: BlkWorkerInit): void {
  // applyRtOptions' lockMemory unlocks on this thread's exit: V8 aborts if a thread ends with memory locked.
  applyRtOptions(init.rt);
  const opened = init.devices.map((d, i) =>
    openDevice(d, init.devices.length > 1 ? `device ${i}` : 'device'),
  );
  serveDevices(opened.map((o) => o.runtime));
  const info: Record<string, number | string | boolean> = {};
  opened.forEach((o, i) => {
    for (const [k, v] of Object.entries(o.info)) info[`${i}.${k}`] = v;
  });
  post({ kind: 'ready', thread: describeThread(), info });
}

try {
  start(workerData as BlkWorkerInit);
} catch (err) {
  const code = (err as { code?: string }).code ?? 'ERR_WORKER_START';
  post({ kind: 'failed', code, message: err instanceof Error ? err.message : String(err) });
}
