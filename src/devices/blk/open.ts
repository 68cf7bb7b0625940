/**
 * Opens one virtio-blk device inside a device worker: the image with its I/O
 * engine, then the model over it.
 */
import { closeSync, existsSync, openSync } from 'node:fs';
import { ConfigError } from '../../errors.js';
import { ChangedBlocks } from '../../io/backup-cbt.js';
import { DiskGuard } from '../../io/disk-guard.js';
import { lockedWhileOpen, lockImage } from '../../io/image-lock.js';
import {
  createEngine,
  formatIoprio,
  IoprioClass,
  IoprioPolicy,
  ioprioClass,
  ioprioValue,
} from '../../io/index.js';
import { recoverRedirect, redirectPath, redirectPending } from '../../io/redirect-file.js';
import { StatCounters } from '../../locking/index.js';
import { probeIoprio } from '../../rt/index.js';
import { type DeviceEnv, describeModel, type OpenedDevice } from '../device.js';
import { JOURNAL_READS_MAX } from './backup.js';
import { BlkDevice } from './device.js';
import type { BlkDeviceInit, BlkInfo } from './options.js';
import { REDIRECT_ENGINE_DEPTH } from './redirect.js';
import { BLK_STAT_NAMES, BlkAccounting } from './stats.js';

/** Opens the image of `init` and builds the device on it. */
export function openBlkDevice(init: BlkDeviceInit, env: DeviceEnv): OpenedDevice<'blk', BlkInfo> {
  const o = init.options;
  checkIoprioAllowed(o.ioprio, o.guestIoprio, env.warn);
  // Locked before the engine opens it (QEMU-style lock bytes, see image-lock.ts), held until the engine closes.
  const open = () => {
    if (o.aio !== 'nbd') mergeLeftOverlay(o.image, o.readonly, o.shareWrite === true, env.warn);
    return createEngine(o.aio, {
      path: o.image,
      readonly: o.readonly,
      direct: o.direct,
      // A live backup's journal reads or a redirect overlay's own operations (issue 12) share
      // the engine with the guest's requests.
      depth: o.queues * o.queueSize + Math.max(JOURNAL_READS_MAX, REDIRECT_ENGINE_DEPTH),
      maxIovs: o.queueSize * (o.queueSize + 2),
      warn: env.warn,
      uringSqpoll: o.uringSqpoll,
      aioThreads: o.aioThreads,
      aioThreadsPolicy: o.aioThreadsPolicy,
      nbdTimeoutMs: o.nbdTimeoutMs,
    });
  };
  // An NBD export is the server's to lock: only local images take lock bytes.
  const engine =
    o.aio === 'nbd'
      ? open()
      : lockedWhileOpen(
          lockImage(o.image, { readonly: o.readonly, shareWrite: o.shareWrite, warn: env.warn }),
          open,
        );
  // What the storage cannot do is not offered (nbd: what the server advertises).
  const caps = engine.capabilities;
  const model = new BlkDevice({
    engine,
    geometry: {
      imageBytes: engine.sizeBytes,
      blockSize: 512,
      numQueues: o.queues,
      segMax: o.queueSize - 2,
      readonly: o.readonly || caps?.readonly === true,
      flush: caps?.flush,
      discard: caps?.discard,
      writeZeroes: caps?.writeZeroes,
    },
    serial: o.serial,
    queueSize: o.queueSize,
    stats: StatCounters.attach(init.statsBuffer, BLK_STAT_NAMES),
    warn: env.warn,
    fault: env.fault,
    accounting:
      init.accounting === undefined
        ? undefined
        : new BlkAccounting({
            queues: o.queues,
            slotsPerQueue: o.queueSize,
            init: init.accounting,
            onExceeded: (e) =>
              env.notice?.('LATENCY_TARGET_EXCEEDED', {
                queue: e.queue,
                'latency-us': e.latencyUs,
                'target-us': e.targetUs,
                exceeded: e.exceeded,
                suppressed: e.suppressed,
              }),
          }),
    configChanged: env.configChanged,
    ioprio: new IoprioPolicy(o.guestIoprio, o.ioprio),
    throttle: o.throttle,
    guard: init.diskGuard === undefined ? undefined : DiskGuard.attach(init.diskGuard),
    // Changed-block tracking (issue 12): persisted next to a local, writable image only.
    cbt:
      o.aio === 'nbd' || o.readonly
        ? ChangedBlocks.inMemory(engine.sizeBytes)
        : ChangedBlocks.open(o.image, engine.sizeBytes, env.warn, o.shareWrite === true),
  });
  const pollUs = o.pollUs ?? 0;
  const info: BlkInfo = {
    sizeBytes: engine.sizeBytes,
    direct: engine.direct,
    alignment: engine.alignment,
    engine: engine.name,
    pollUs,
  };
  return {
    model,
    // A resize changes the capacity at run time: the front end is told (BACKEND_REQ).
    description: describeModel(model, 'blk', info, true),
    runtime: { pollUs, reap: engine.poll === undefined ? undefined : () => engine.poll?.() },
  };
}

/**
 * A redirect backup's overlay left by a daemon that stopped (or crashed) before
 * merging it holds the newest contents of some sectors: it is merged into the
 * image before the engine opens it (redirect-file.ts). Not by a read-only or
 * --share-write open (a migration's destination, whose source may still write
 * the overlay): those are refused, naming the overlay.
 */
function mergeLeftOverlay(
  image: string,
  readonly: boolean,
  shareWrite: boolean,
  warn: (message: string) => void,
): void {
  const path = redirectPath(image);
  if (!existsSync(path)) return;
  // A kept overlay with nothing redirected (keep-overlay, merged) owes nothing; a writable
  // open learns that from recoverRedirect itself (one read of the bitmap).
  if (readonly || shareWrite) {
    if (!redirectPending(image)) return;
    throw new ConfigError(
      `--image ${image}: ${path} holds writes of a redirect backup not merged yet; open the image writable, without --share-write, once to merge it`,
    );
  }
  const fd = openSync(image, 'r+');
  try {
    const r = recoverRedirect(image, fd);
    if (r !== null)
      warn(`--image ${image}: merged ${r.bytes} bytes (${r.runs} runs) left in ${r.path}`);
  } finally {
    closeSync(fd);
  }
}

/**
 * The RT I/O class needs CAP_SYS_ADMIN or CAP_SYS_NICE, and the kernel fails
 * each request asking for it without (EPERM). Found out once, here: an RT
 * `--ioprio` is refused with the errno; `--guest-ioprio honor` is warned about.
 */
function checkIoprioAllowed(
  ioprio: number | undefined,
  mode: string | undefined,
  warn: (message: string) => void,
): void {
  const rtDevice = ioprio !== undefined && ioprioClass(ioprio) === IoprioClass.RT;
  if (!rtDevice && mode !== 'honor') return;
  const refused = probeIoprio(rtDevice ? (ioprio as number) : ioprioValue(IoprioClass.RT, 7));
  if (refused === null) return;
  if (rtDevice)
    throw new ConfigError(
      `--ioprio ${formatIoprio(ioprio as number)}: the kernel refused the RT I/O class (${refused}; needs CAP_SYS_ADMIN or CAP_SYS_NICE)`,
    );
  warn(
    `--guest-ioprio honor: the kernel refuses the RT I/O class here (${refused}): guest RT requests will fail; use clamp`,
  );
}
