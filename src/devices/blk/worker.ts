/**
 * Entry point of a virtio-blk device worker thread. It applies the RT options
 * to itself, opens the image with the chosen engine and serves the queues;
 * the main thread only sends it control commands.
 */
import { workerData } from 'node:worker_threads';
import { createEngine } from '../../io/index.js';
import { StatCounters } from '../../locking/index.js';
import { applyRtOptions, describeThread } from '../../rt/index.js';
import { post, rateLimitedWarn, WorkerRuntime } from '../worker-runtime.js';
import { BlkDevice } from './device.js';
import type { BlkWorkerInit } from './options.js';
import { BLK_STAT_NAMES } from './stats.js';

function start(init: BlkWorkerInit): void {
  applyRtOptions(init.rt);
  const warn = rateLimitedWarn();
  const o = init.options;
  const engine = createEngine(o.aio, {
    path: o.image,
    readonly: o.readonly,
    direct: o.direct,
    depth: o.queues * o.queueSize,
    maxIovs: o.queueSize * (o.queueSize + 2),
    warn: (message) => post({ kind: 'log', level: 'warn', message }),
  });
  const geometry = {
    imageBytes: engine.sizeBytes,
    blockSize: 512,
    numQueues: o.queues,
    segMax: o.queueSize - 2,
    readonly: o.readonly,
  };
  const stats = StatCounters.attach(init.statsBuffer, BLK_STAT_NAMES);
  let runtime: WorkerRuntime | null = null;
  const device = new BlkDevice({
    engine,
    geometry,
    serial: o.serial,
    queueSize: o.queueSize,
    notify: (queue) => runtime?.notify(queue),
    stats,
    warn,
  });
  // applyRtOptions' lockMemory unlocks on this thread's exit: V8 aborts if a thread ends with memory locked.
  runtime = new WorkerRuntime(device, o.queues, o.queueSize + 16);
  runtime.listen();
  const info = {
    sizeBytes: engine.sizeBytes,
    direct: engine.direct,
    alignment: engine.alignment,
    engine: engine.name,
  };
  post({ kind: 'ready', thread: describeThread(), info });
}

try {
  start(workerData as BlkWorkerInit);
} catch (err) {
  const code = (err as { code?: string }).code ?? 'ERR_WORKER_START';
  post({ kind: 'failed', code, message: err instanceof Error ? err.message : String(err) });
}
