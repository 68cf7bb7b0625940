/**
 * Entry point of a virtio-console worker thread: it applies the RT options,
 * builds the device with one output ring per port (it is their producer; the
 * logger thread drains them), listens on the ports' input sockets and serves
 * the queues. Commands that are not vhost-user requests (resize, emergency
 * writes, port hot-plug) arrive on a command ring announced by a doorbell
 * eventfd.
 */
import { workerData } from 'node:worker_threads';
import { SpscByteRing, StatCounters } from '../../locking/index.js';
import { OutputStream, PORT_STAT_NAMES, PortStat } from '../../logger/index.js';
import { native, POLL_READABLE } from '../../native.js';
import { applyRtOptions, describeThread } from '../../rt/index.js';
import { InputBuffer } from '../serial/input-buffer.js';
import { InputHub } from '../serial/input-hub.js';
import { DeviceRuntime, post, rateLimitedWarn, serveDevices } from '../worker-runtime.js';
import { COMMAND_RECORD_BYTES, ConsoleCommand } from './commands.js';
import { consoleQueueCount } from './config.js';
import { ConsoleDevice, type ConsolePortIo } from './device.js';
import type { ConsoleWorkerInit } from './options.js';
import { CONSOLE_STAT_NAMES } from './stats.js';

const encoder = new TextEncoder();

function portIo(init: ConsoleWorkerInit, i: number): ConsolePortIo {
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

/** Reads the command ring whenever the doorbell rings; returns a closer. */
function watchCommands(init: ConsoleWorkerInit, device: ConsoleDevice): () => void {
  const ring = SpscByteRing.attach(init.commands);
  const record = new Uint8Array(COMMAND_RECORD_BYTES);
  const view = new DataView(record.buffer);
  const watcher = new native.FdWatcher(init.doorbellFd, () => {
    // Reset the doorbell first: a command written after this read rings it again.
    native.eventfdRead(init.doorbellFd);
    while (ring.read(record) === COMMAND_RECORD_BYTES) {
      const op = view.getUint8(0);
      const a = view.getUint16(2, true);
      const b = view.getUint32(4, true);
      if (op === ConsoleCommand.RESIZE) device.resize(a, b);
      else if (op === ConsoleCommand.EMERG_WRITE) device.emergencyWrite(a);
      else if (op === ConsoleCommand.PORT_REMOVE) device.setPortPresent(a, false);
      else if (op === ConsoleCommand.PORT_ADD) device.setPortPresent(a, true);
    }
  });
  watcher.start(POLL_READABLE);
  return () => watcher.close();
}

function start(init: ConsoleWorkerInit): void {
  applyRtOptions(init.rt);
  const o = init.options;
  const ports = o.ports.map((_, i) => portIo(init, i));
  let runtime: DeviceRuntime | null = null;
  const device = new ConsoleDevice({
    ports,
    multiport: o.multiport,
    cols: o.cols,
    rows: o.rows,
    queueSize: o.queueSize,
    notify: (queue) => runtime?.notify(queue),
    stats: StatCounters.attach(init.deviceStats, CONSOLE_STAT_NAMES),
    warn: rateLimitedWarn(),
  });
  const hubs = o.ports.map((p, i) =>
    p.inputPath === undefined
      ? null
      : new InputHub(
          p.inputPath,
          `--input (port ${i})`,
          (b, off, len) => device.queueInput(i, b, off, len),
          (n) => ports[i].stats.add(PortStat.inputRefused, n),
        ),
  );
  const stopCommands = watchCommands(init, device);
  const base = new DeviceRuntime(
    device,
    consoleQueueCount(o.ports.length, o.multiport),
    o.queueSize + 16,
  );
  // On shutdown the sockets close too, so nothing keeps the thread's loop alive.
  const close = base.close.bind(base);
  base.close = async () => {
    for (const h of hubs) h?.close();
    stopCommands();
    await close();
    for (const p of ports) p.output.flush();
    // A stalled port's pending ring wait holds a keep-alive timer: end the thread once replied.
    setTimeout(() => process.exit(0), 50);
  };
  runtime = base;
  serveDevices([runtime]);
  post({ kind: 'ready', thread: describeThread(), info: { ports: o.ports.length } });
}

try {
  start(workerData as ConsoleWorkerInit);
} catch (err) {
  const code = (err as { code?: string }).code ?? 'ERR_WORKER_START';
  post({ kind: 'failed', code, message: err instanceof Error ? err.message : String(err) });
}
