/**
 * `vhost-rt blk`: virtio-blk devices, each on its own vhost-user socket and
 * (unless --single-thread) its own worker thread.
 */

import { availableParallelism } from 'node:os';
import type { ControlledDevice } from '../control/index.js';
import {
  BLK_QOS_FLAG_OPTIONS,
  BLK_QOS_HELP,
  MAX_LATENCY_TARGET_US,
  MAX_POLL_US,
  parseBlkQosFlags,
  validateBlkOptions,
} from '../devices/blk/options.js';
import { splitQueueStats } from '../devices/blk/stats.js';
import { ConfigError } from '../errors.js';
import {
  parseEngineName,
  parseThreadPolicy,
  resolveEngine,
  validateAioThreads,
  validateEngineOptions,
} from '../io/index.js';
import type { Logger } from '../log.js';
import type { SocketPermissions } from '../sockets/listen.js';
import { VhostUserServer } from '../vhost-user/server.js';
import { type BlkDeviceHandle, BlkDeviceSet, type BlkDeviceSpec } from '../worker/blk-service.js';
import { CAPABILITIES_HELP, printCapabilities, wantsCapabilities } from './capabilities.js';
import type { CliCommand } from './command.js';
import {
  deviceSocket,
  type FlagValues,
  integerFlag,
  optionalString,
  parseControlFlags,
  parseFlags,
  parseRtFlags,
  parseSocketFlags,
  RT_FLAG_OPTIONS,
  RT_HELP,
  requiredFlag,
  SOCKET_FD_HELP,
  SOCKET_FLAG_OPTIONS,
  SOCKET_HELP,
  specToArgs,
} from './flags.js';
import { stderrLogger } from './log.js';
import { argumentsToFlags, asArgumentError, dropDevice } from './run-time.js';
import {
  describeWorker,
  formatStats,
  type RunningService,
  ServerSet,
  serveUntilSignal,
} from './service.js';

/**
 * Default `--queues`: as many as the machine has CPUs (at most 64). QEMU's
 * vhost-user-blk-pci asks for one queue per vCPU unless `num-queues` says
 * otherwise, and refuses a back end that serves fewer; unused queues cost
 * only their request slots.
 */
export const DEFAULT_BLK_QUEUES = Math.min(64, Math.max(1, availableParallelism()));

const DEVICE_FLAGS = {
  'socket-path': { type: 'string' },
  'socket-fd': { type: 'string' },
  image: { type: 'string' },
  'blk-file': { type: 'string' },
  readonly: { type: 'boolean' },
  'read-only': { type: 'boolean' },
  'share-rw': { type: 'boolean' },
  queues: { type: 'string' },
  'queue-size': { type: 'string' },
  aio: { type: 'string' },
  engine: { type: 'string' },
  'no-direct': { type: 'boolean' },
  serial: { type: 'string' },
  'uring-sqpoll': { type: 'boolean' },
  'aio-threads': { type: 'string' },
  'aio-threads-policy': { type: 'string' },
  'nbd-timeout-ms': { type: 'string' },
  'poll-us': { type: 'string' },
  'latency-target-us': { type: 'string' },
  'no-latency-histograms': { type: 'boolean' },
  ...BLK_QOS_FLAG_OPTIONS,
  ...RT_FLAG_OPTIONS,
  ...SOCKET_FLAG_OPTIONS,
} as const;

const COMMAND_FLAGS = {
  ...DEVICE_FLAGS,
  device: { type: 'string', multiple: true },
  'single-thread': { type: 'boolean' },
  quiet: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

const HELP = `vhost-rt blk — virtio-blk devices over vhost-user (QEMU: -device vhost-user-blk-pci)

Usage:
  vhost-rt blk --socket-path SOCK --image FILE [options]
  vhost-rt blk --device socket-path=SOCK,image=FILE[,option...] [--device ...] [options]

Device options (as flags for one device, or as key[=value] inside --device):
  --socket-path SOCK   Unix socket to listen on (a stale socket file is replaced;
                       any other existing file is an error)
${SOCKET_FD_HELP}  --image FILE         disk image (regular file or block device) to serve
  --blk-file FILE      the same as --image (vhost-user backend convention)
  --readonly           refuse writes (the guest sees VIRTIO_BLK_F_RO)
  --read-only          the same as --readonly (vhost-user backend convention)
  --share-rw           let other writers open the image too (QEMU's share-rw=on): for
                       shared storage, e.g. the destination of a live migration on
                       the same host; the guests must coordinate their writes
  --queues N           request queues, 1..64 (default: one per CPU, ${DEFAULT_BLK_QUEUES} here,
                       as QEMU's -smp N asks for N queues unless num-queues says less)
  --queue-size N       largest ring size, a power of two in 4..1024 (default 256)
  --aio ENGINE         I/O engine (default linux-aio; --engine ENGINE is the same):
                         linux-aio  Linux AIO (io_submit), eventfd completions
                         io_uring   io_uring (liburing), registered eventfd; flush,
                                    discard and write-zeroes go through the ring too
                         threads    a pool of threads doing preadv/pwritev ("threaded
                                    AIO"); completions can queue up behind each other
                         sync       preadv/pwritev on the device worker itself: BLOCKS
                                    the worker on every I/O; a baseline for benchmarks
                         null       no I/O: reads return zeroes, the rest completes at
                                    once (through an eventfd, as the others): measures
                                    the back end's own overhead (QEMU's null-co)
                         nbd        a disk on an NBD server through libnbd; chosen by
                                    an NBD URI as --image: nbd://HOST[:PORT]/EXPORT or
                                    nbd+unix:///EXPORT?socket=PATH
  --nbd-timeout-ms N   nbd: how long requests wait for a lost server to come back
                       (reconnecting with back-off) before they fail, and how
                       long the first connection may take (default 15000)
  --uring-sqpoll       io_uring: a kernel thread polls the submission ring
                       (IORING_SETUP_SQPOLL); an error names this flag if the
                       kernel refuses
  --aio-threads N      threads: pool size, 1..256 (default 4)
  --aio-threads-policy POLICY[:PRIO]
                       threads: scheduling of the pool threads: fifo:PRIO or
                       rr:PRIO (PRIO 1..99), other, batch or idle (default:
                       the device worker's, which --rt-policy sets); pools
                       are shared by the devices of one worker thread
  --poll-us N          after each batch keep polling the rings for up to N
                       microseconds before sleeping on the kick eventfd (kicks
                       off meanwhile); trades CPU for latency; 0..${MAX_POLL_US} (default 0)
  --latency-target-us N
                       count requests whose kick-to-completion latency exceeds
                       N µs (latencyTargetExceeded) and report them, at most once
                       a second (LATENCY_TARGET_EXCEEDED event and log line);
                       0..${MAX_LATENCY_TARGET_US} (default 0: no target)
  --no-latency-histograms
                       keep no per-queue counters and latency histograms (the
                       switch for A/B benchmarks of their cost; /metrics and
                       query-stats then show zeros for them)
  --no-direct          do not open the image with O_DIRECT
  --serial ID          answer to VIRTIO_BLK_T_GET_ID, up to 20 bytes (default vhost-rt)

${BLK_QOS_HELP}
${RT_HELP}
${SOCKET_HELP}
Process options:
  --device SPEC        one more device; flags given outside --device are its defaults
  --single-thread      serve every device from one worker thread (a VMM main loop,
                       for comparison); the first device's RT options apply to it
  --quiet              log warnings and errors only
${CAPABILITIES_HELP}  --help               this text

The daemon prints a line containing "ready" once its sockets listen, and on
SIGINT or SIGTERM completes in-flight requests, removes its sockets and prints
its counters. SIGUSR1 prints the counters at any time; SIGHUP re-reads every
image's size (telling the guest when it changed) and reopens log files. With
--control-socket: block-resize, device-add and device-del at run time.
Under systemd it reports readiness (NOTIFY_SOCKET: READY=1, STATUS=, STOPPING=1)
and serves the sockets systemd passes (LISTEN_FDS) at the paths they match. Each
image is locked as QEMU locks its images: a second writer (vhost-rt, QEMU,
qemu-storage-daemon) is refused; --readonly users share.
`;

/** The engine flags of one device, checked against the chosen engine. */
function engineFlags(
  v: FlagValues,
): Pick<
  BlkDeviceSpec['options'],
  'aio' | 'uringSqpoll' | 'aioThreads' | 'aioThreadsPolicy' | 'nbdTimeoutMs'
> {
  if (v.aio !== undefined && v.engine !== undefined)
    throw new ConfigError('--aio and --engine are the same option: give one');
  const given = optionalString(v.aio) ?? optionalString(v.engine);
  // An NBD URI as --image picks the nbd engine; --aio nbd needs one.
  const aio = resolveEngine(imageFlag(v), given === undefined ? undefined : parseEngineName(given));
  const policy = optionalString(v['aio-threads-policy']);
  const o = {
    aio,
    uringSqpoll: v['uring-sqpoll'] === true,
    aioThreads:
      v['aio-threads'] === undefined
        ? undefined
        : validateAioThreads(integerFlag('aio-threads', v['aio-threads'], 0)),
    aioThreadsPolicy: policy === undefined ? undefined : parseThreadPolicy(policy),
    nbdTimeoutMs:
      v['nbd-timeout-ms'] === undefined
        ? undefined
        : integerFlag('nbd-timeout-ms', v['nbd-timeout-ms'], 0),
  };
  validateEngineOptions(aio, o);
  return o;
}

/** `--image`, or its alias `--blk-file`; giving both is refused. */
function imageFlag(v: FlagValues): string {
  if (v.image !== undefined && v['blk-file'] !== undefined)
    throw new ConfigError('--image and --blk-file are the same option: give one');
  return v.image !== undefined
    ? requiredFlag('image', v.image)
    : requiredFlag('image', v['blk-file']);
}

function deviceSpec(v: FlagValues, fallbackSerial: string): BlkDeviceSpec {
  return {
    options: {
      image: imageFlag(v),
      readonly: v.readonly === true || v['read-only'] === true,
      shareWrite: v['share-rw'] === true,
      queues: integerFlag('queues', v.queues, DEFAULT_BLK_QUEUES),
      queueSize: integerFlag('queue-size', v['queue-size'], 256),
      ...engineFlags(v),
      direct: v['no-direct'] !== true,
      serial: optionalString(v.serial) ?? fallbackSerial,
      pollUs: integerFlag('poll-us', v['poll-us'], 0),
      latencyHistograms: v['no-latency-histograms'] !== true,
      latencyTargetUs: integerFlag('latency-target-us', v['latency-target-us'], 0, {
        min: 0,
        max: MAX_LATENCY_TARGET_US,
      }),
      ...parseBlkQosFlags(v),
    },
    rt: parseRtFlags(v),
  };
}

interface BlkPlan {
  devices: { socketPath: string; spec: BlkDeviceSpec }[];
  singleThread: boolean;
  quiet: boolean;
  permissions: SocketPermissions;
  /** `--control-socket` and its permissions. */
  control: ReturnType<typeof parseControlFlags>;
}

/** Parses `vhost-rt blk` arguments; exported for tests. */
export function parseBlkArgs(args: string[]): BlkPlan | 'help' {
  const v = parseFlags('blk', args, COMMAND_FLAGS);
  if (v.help === true) return 'help';
  const specs = (v.device as string[] | undefined) ?? [];
  const defaults = Object.fromEntries(Object.entries(v).filter(([k]) => k in DEVICE_FLAGS));
  const perDevice =
    specs.length === 0
      ? [v]
      : specs.map((s) => ({
          ...defaults,
          ...parseFlags('blk --device', specToArgs(s), DEVICE_FLAGS),
        }));
  const devices = perDevice.map((d, i) => ({
    socketPath: deviceSocket(d),
    spec: deviceSpec(d, specs.length > 1 ? `vhost-rt-${i}` : 'vhost-rt'),
  }));
  const sockets = new Set(devices.map((d) => d.socketPath));
  if (sockets.size !== devices.length)
    throw new ConfigError('--socket-path: two devices share one socket');
  return {
    devices,
    singleThread: v['single-thread'] === true,
    quiet: v.quiet === true,
    permissions: parseSocketFlags(v),
    control: parseControlFlags(v),
  };
}

/** The control socket's view of one blk device. */
function controlledBlk(
  dev: BlkDeviceHandle,
  server: VhostUserServer,
  set: BlkDeviceSet,
): ControlledDevice {
  return {
    kind: 'blk',
    socketPath: server.path,
    server,
    host: dev.host,
    thread: dev.host.thread,
    setRt: (rt) => dev.host.setRt(rt),
    stats: () => dev.stats.snapshot(),
    queueStats: () => splitQueueStats(dev.queueStats.snapshot(), dev.latency.series),
    latency: () => dev.latency.snapshots(),
    resize: (bytes) => set.resize(set.devices.indexOf(dev), bytes),
    backup: dev.backups,
  };
}

/**
 * device-add / device-del / SIGHUP of `vhost-rt blk`: a device added gets a
 * worker and a socket of its own; one removed is drained (server closed:
 * in-flight requests complete, the front end is disconnected, the socket
 * removed), then its worker ends.
 */
function blkChanges(
  set: BlkDeviceSet,
  servers: ServerSet,
  controlled: ControlledDevice[],
  permissions: SocketPermissions,
  log: Logger,
): Pick<RunningService, 'changes' | 'hangup'> {
  return {
    changes: {
      kinds: ['blk'],
      add: async (args) => {
        let d: { socketPath: string; spec: BlkDeviceSpec };
        try {
          const v = parseFlags('blk --device', argumentsToFlags(args), DEVICE_FLAGS);
          if (v.image === undefined) throw new ConfigError('--image is required');
          d = {
            socketPath: requiredFlag('socket-path', v['socket-path']),
            spec: deviceSpec(v, 'vhost-rt'),
          };
          validateBlkOptions(d.spec.options);
        } catch (err) {
          throw asArgumentError(err);
        }
        const dev = await set.add(d.spec);
        let server: VhostUserServer;
        try {
          server = new VhostUserServer(d.socketPath, dev.host, log, permissions);
        } catch (err) {
          await set.remove(set.devices.indexOf(dev));
          throw asArgumentError(err);
        }
        servers.servers.push(server);
        const c = controlledBlk(dev, server, set);
        controlled.push(c);
        log(
          'info',
          `device-add: socket ${d.socketPath}, image ${d.spec.options.image} (${dev.sizeBytes} bytes), ${describeWorker(dev.host.thread)}`,
        );
        return c;
      },
      remove: async (index) => {
        const c = controlled[index];
        const server = c.server as VhostUserServer;
        const dev = set.devices.find((h) => h.host === c.host);
        if (dev === undefined) throw new RangeError(`no blk device ${index}`);
        if (dev.sharedWorker)
          throw new ConfigError(
            'the device shares its worker thread with others (--single-thread)',
          );
        await server.close();
        servers.servers.splice(servers.servers.indexOf(server), 1);
        dropDevice(controlled, c);
        await set.remove(set.devices.indexOf(dev));
        log('info', `device-del: socket ${c.socketPath} removed`);
      },
    },
    hangup: async (emit) => {
      for (const r of await set.rereadSizes()) {
        const c = controlled.find((x) => x.host === set.devices[r.device].host);
        log(
          'info',
          `SIGHUP: ${set.devices[r.device].options.image}: ${r.previous} -> ${r.size} bytes`,
        );
        if (c !== undefined)
          emit('BLOCK_RESIZED', {
            device: controlled.indexOf(c),
            socket: c.socketPath,
            size: r.size,
            previous: r.previous,
          });
      }
    },
  };
}

async function run(argv: string[]): Promise<number> {
  if (wantsCapabilities(argv)) return printCapabilities('block');
  const plan = parseBlkArgs(argv);
  if (plan === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  const log = stderrLogger('vhost-rt[blk]', plan.quiet);
  const set = await BlkDeviceSet.start(
    plan.devices.map((d) => d.spec),
    plan.singleThread,
    log,
  );
  const servers = await ServerSet.listen(
    plan.devices.map((d, i) => ({ path: d.socketPath, device: set.devices[i].host })),
    log,
    () => set.shutdown(),
    plan.permissions,
  );
  const controlled = set.devices.map((dev, i) => controlledBlk(dev, servers.servers[i], set));
  const service: RunningService = {
    readyLines: () =>
      set.devices.map((dev, i) => {
        const e = dev.info;
        return (
          `ready: socket ${plan.devices[i].socketPath}, image ${dev.options.image} (${e.sizeBytes} bytes, ${e.engine}, ` +
          `${e.direct ? 'O_DIRECT' : 'buffered'}), ${dev.host.numQueues} queue(s), ${describeWorker(dev.host.thread)}`
        );
      }),
    statsLine: () =>
      set.devices
        .map(
          (dev, i) =>
            `${set.devices.length > 1 ? `[${i}] ` : ''}${formatStats(dev.stats.snapshot())}`,
        )
        .join(' | '),
    close: async () => {
      set.stopAdding();
      await servers.close(log);
      await set.shutdown();
    },
    controlled,
    ...blkChanges(set, servers, controlled, plan.permissions, log),
  };
  await serveUntilSignal(service, log, plan.control);
  return 0;
}

/** `vhost-rt blk`: serves virtio-blk devices until SIGINT/SIGTERM. */
export const blkCommand: CliCommand = {
  name: 'blk',
  summary: 'serve virtio-blk devices (QEMU: -device vhost-user-blk-pci)',
  help: HELP,
  run,
};
