/**
 * `vhost-rt net`: an L2 learning switch whose ports are virtio-net devices on
 * vhost-user sockets and, optionally, a TAP uplink; each port on its own
 * worker thread.
 */
import type { ControlledDevice } from '../control/index.js';
import { DEFAULT_HOLD_MS, type NetOptions, type NetPortSpec } from '../devices/net/options.js';
import { ConfigError } from '../errors.js';
import type { Logger } from '../log.js';
import { parseMac } from '../net/mac-table.js';
import { DEFAULT_AGEING_MS, DEFAULT_MAC_CAPACITY } from '../net/switch-port.js';
import type { SocketPermissions } from '../sockets/listen.js';
import { VhostUserServer } from '../vhost-user/server.js';
import { describePort, MAX_SPARE_PORTS, type NetPort, NetSwitch } from '../worker/net-service.js';
import { CAPABILITIES_HELP, printCapabilities, wantsCapabilities } from './capabilities.js';
import type { CliCommand } from './command.js';
import {
  integerFlag,
  optionalString,
  parseControlFlags,
  parseFlags,
  parseRtFlags,
  parseSocketFlags,
  RT_FLAG_OPTIONS,
  RT_HELP,
  SOCKET_FLAG_OPTIONS,
  SOCKET_HELP,
  socketFdPath,
} from './flags.js';
import { stderrLogger } from './log.js';
import { asArgumentError, dropDevice } from './run-time.js';
import {
  describeWorker,
  formatStats,
  type RunningService,
  ServerSet,
  serveUntilSignal,
} from './service.js';

const FLAGS = {
  'socket-path': { type: 'string', multiple: true },
  'socket-fd': { type: 'string', multiple: true },
  tap: { type: 'string' },
  queues: { type: 'string' },
  'queue-size': { type: 'string' },
  'mac-base': { type: 'string' },
  'ring-bytes': { type: 'string' },
  'ageing-ms': { type: 'string' },
  'hold-ms': { type: 'string' },
  'frame-loop': { type: 'string' },
  'poll-us': { type: 'string' },
  'spare-ports': { type: 'string' },
  quiet: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  ...RT_FLAG_OPTIONS,
  ...SOCKET_FLAG_OPTIONS,
} as const;

const HELP = `vhost-rt net — an L2 switch of virtio-net ports over vhost-user
              (QEMU: -netdev vhost-user,chardev=...  -device virtio-net-pci,netdev=...)

Usage:
  vhost-rt net --socket-path SOCK [--socket-path SOCK2 ...] [--tap NAME] [options]

Ports (each served by its own worker thread; frames cross between them through
lock-free per-pair rings; a full ring holds the sender (see --hold-ms) or drops, counted):
  --socket-path SOCK   one vhost-user port per flag (a stale socket file is replaced)
  --socket-fd N        one vhost-user port on the listening Unix socket inherited as
                       fd N (systemd, a parent process); repeatable
  --tap NAME           one more port bound to the TAP device NAME (created if
                       absent, brought up, IFF_VNET_HDR); needs CAP_NET_ADMIN
Options:
  --queues N           queue pairs per vhost-user port, 1..16 (default 1)
  --queue-size N       largest ring size, a power of two in 4..1024 (default 256)
  --mac-base MAC       MAC of the first port's config space; port i gets MAC + i
                       (default 52:54:00:12:34:00; QEMU uses its own -device mac=)
  --ring-bytes N       bytes of each port-to-port ring (default 1048576)
  --ageing-ms N        MAC ageing time (default 300000)
  --hold-ms N          backpressure: a frame for a port whose ring is full waits in its
                       sender's transmit ring until that port drains it, or drops once
                       that port made no progress for N ms (default ${DEFAULT_HOLD_MS}; 0: drop at once)
  --frame-loop native|typescript
                       who moves bare frames of split rings: one native call per batch
                       (default), or the TypeScript per-frame path (A/B measurements)
  --poll-us N          after a batch, keep polling the port's transmit rings for N µs
                       with the guest's kicks off (default 0: sleep until the next kick)
  --spare-ports N      port slots kept free for device-add on the control socket,
                       0..${MAX_SPARE_PORTS} (default 0; each costs a ring to and from every port)

${RT_HELP}
${SOCKET_HELP}
Process options:
  --quiet              log warnings and errors only
${CAPABILITIES_HELP}  --help               this text

No checksum or segmentation offloads are offered. The daemon prints a line
containing "ready" once its sockets listen; SIGUSR1 prints per-port counters
(packets, bytes, drops); SIGINT / SIGTERM remove the sockets and exit.
`;

/** What `vhost-rt net` was asked to run. */
export interface NetPlan {
  ports: NetPortSpec[];
  options: NetOptions;
  quiet: boolean;
  /** `--socket-mode` / `--socket-group`. */
  permissions: SocketPermissions;
  /** `--control-socket` and its permissions. */
  control: ReturnType<typeof parseControlFlags>;
  /** `--spare-ports`: free port slots for device-add. */
  spare: number;
  /** `--mac-base`: port slot i's default MAC is this + i. */
  macBase: Uint8Array;
}

/** Port `i`'s MAC: the base plus `i` in the low 24 bits. */
function macFor(base: Uint8Array, i: number): Uint8Array {
  const mac = Uint8Array.from(base);
  const low = (((mac[3] << 16) | (mac[4] << 8) | mac[5]) + i) & 0xffffff;
  mac[3] = low >> 16;
  mac[4] = (low >> 8) & 0xff;
  mac[5] = low & 0xff;
  return mac;
}

/** `--frame-loop`: native (the default) or typescript; ConfigError naming the flag otherwise. */
function frameLoopFlag(value: string | undefined): 'native' | 'typescript' {
  if (value === undefined || value === 'native' || value === 'typescript') return value ?? 'native';
  throw new ConfigError(`--frame-loop ${value}: must be native or typescript`);
}

/** Parses `vhost-rt net` arguments; exported for tests. */
export function parseNetArgs(args: string[]): NetPlan | 'help' {
  const v = parseFlags('net', args, FLAGS);
  if (v.help === true) return 'help';
  const sockets = [
    ...((v['socket-path'] as string[] | undefined) ?? []),
    ...((v['socket-fd'] as string[] | undefined) ?? []).map(socketFdPath),
  ];
  const tap = optionalString(v.tap);
  if (sockets.length === 0 && tap === undefined)
    throw new ConfigError('--socket-path (or --tap) is required');
  if (new Set(sockets).size !== sockets.length)
    throw new ConfigError('--socket-path: two ports share one socket');
  const base = parseMac(optionalString(v['mac-base']) ?? '52:54:00:12:34:00', '--mac-base');
  if ((base[0] & 1) !== 0) throw new ConfigError('--mac-base: a multicast address');
  const ports: NetPortSpec[] = sockets.map((socketPath, i) => ({
    kind: 'vhost-user',
    socketPath,
    mac: macFor(base, i),
  }));
  if (tap !== undefined) ports.push({ kind: 'tap', name: tap });
  return {
    ports,
    options: {
      queuePairs: integerFlag('queues', v.queues, 1),
      queueSize: integerFlag('queue-size', v['queue-size'], 256),
      ringBytes: integerFlag('ring-bytes', v['ring-bytes'], 1 << 20),
      ageingMs: integerFlag('ageing-ms', v['ageing-ms'], DEFAULT_AGEING_MS),
      holdMs: integerFlag('hold-ms', v['hold-ms'], DEFAULT_HOLD_MS, { min: 0, max: 60_000 }),
      frameLoop: frameLoopFlag(optionalString(v['frame-loop'])),
      pollUs: integerFlag('poll-us', v['poll-us'], 0, { min: 0, max: 1_000_000 }),
      macCapacity: DEFAULT_MAC_CAPACITY,
      rt: parseRtFlags(v),
    },
    quiet: v.quiet === true,
    permissions: parseSocketFlags(v),
    control: parseControlFlags(v),
    spare: integerFlag('spare-ports', v['spare-ports'], 0, { min: 0, max: MAX_SPARE_PORTS }),
    macBase: base,
  };
}

/** A port's counters with the totals the stats line leads with (packets, bytes, drops). */
function portStats(sw: NetSwitch, port: number): Record<string, number> {
  const s = sw.snapshot(port);
  const drops =
    s.ringDrops +
    s.malformed +
    s.rxDropsDown +
    s.rxDropsBadBuffers +
    s.rxDropsFull +
    s.txStallDrops +
    s.rxDropsOffload;
  return { packets: s.txPackets + s.rxPackets, bytes: s.txBytes + s.rxBytes, drops, ...s };
}

function statsLine(sw: NetSwitch): string {
  return sw.ports
    .map((p) => {
      const { packets, bytes, drops, ...s } = portStats(sw, p.index);
      return `[${p.index}] packets=${packets} bytes=${bytes} drops=${drops} ${formatStats(s)}`;
    })
    .join(' | ');
}

/** One port as the control socket reports it. */
function controlledPort(sw: NetSwitch, servers: ServerSet, p: NetPort): ControlledDevice {
  const socketPath = p.spec.kind === 'vhost-user' ? p.spec.socketPath : p.spec.name;
  const host = p.device;
  return {
    kind: p.spec.kind === 'vhost-user' ? 'net' : 'tap',
    socketPath,
    server:
      p.spec.kind === 'vhost-user'
        ? (servers.servers.find((s) => s.path === socketPath) ?? null)
        : null,
    host: p.device,
    thread: p.thread,
    // A TAP port's worker is no device worker: it takes no set-rt.
    setRt: host === null ? undefined : (rt) => host.setRt(rt),
    stats: () => portStats(sw, p.index),
  };
}

/** The ports as the control socket reports them. */
function controlledPorts(sw: NetSwitch, servers: ServerSet): ControlledDevice[] {
  return sw.ports.map((p) => controlledPort(sw, servers, p));
}

/** Arguments device-add takes for a net port (the others are blk's). */
const NET_ADD_ARGS = new Set(['kind', 'socket-path', 'mac']);

/**
 * device-add / device-del of `vhost-rt net`: a vhost-user port added in a
 * free slot (--spare-ports) on a worker of its own; one removed is drained
 * (server closed: in-flight work completes, the front end is disconnected,
 * the socket removed), then its worker ends and its slot is free again.
 */
function netChanges(
  sw: NetSwitch,
  servers: ServerSet,
  controlled: ControlledDevice[],
  plan: NetPlan,
  log: Logger,
): RunningService['changes'] {
  return {
    kinds: ['net'],
    add: async (args) => {
      for (const [name, value] of Object.entries(args))
        if (value !== undefined && !NET_ADD_ARGS.has(name))
          throw new ConfigError(`Parameter '${name}' is unexpected for a net port`);
      let mac: Uint8Array | undefined;
      try {
        if (args.mac !== undefined) mac = parseMac(String(args.mac), '--mac');
      } catch (err) {
        throw asArgumentError(err);
      }
      const slot = sw.freeSlots()[0];
      if (slot === undefined)
        throw new ConfigError(
          'no free port slot: start the daemon with --spare-ports N to add ports at run time',
        );
      mac ??= macFor(plan.macBase, slot);
      const socketPath = String(args['socket-path']);
      const p = await sw.add(slot, { kind: 'vhost-user', socketPath, mac });
      let server: VhostUserServer;
      try {
        server = new VhostUserServer(
          socketPath,
          p.device as NonNullable<NetPort['device']>,
          log,
          plan.permissions,
        );
      } catch (err) {
        await sw.remove(slot);
        throw asArgumentError(err);
      }
      servers.servers.push(server);
      const c = controlledPort(sw, servers, p);
      controlled.push(c);
      log('info', `device-add: port ${slot} ${describePort(p)}, ${describeWorker(p.thread)}`);
      return c;
    },
    remove: async (index) => {
      const c = controlled[index];
      const p = sw.ports.find((x) => x.device !== null && x.device === c.host);
      if (p === undefined || c.server === null)
        throw new ConfigError(
          `Parameter 'device': ${index} is a TAP port, which cannot be removed`,
        );
      await c.server.close();
      servers.servers.splice(servers.servers.indexOf(c.server), 1);
      dropDevice(controlled, c);
      await sw.remove(p.index);
      log('info', `device-del: port ${p.index} ${describePort(p)} removed`);
    },
  };
}

async function run(argv: string[]): Promise<number> {
  if (wantsCapabilities(argv)) return printCapabilities('net');
  const plan = parseNetArgs(argv);
  if (plan === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  const log = stderrLogger('vhost-rt[net]', plan.quiet);
  const sw = await NetSwitch.start(plan.ports, plan.options, log, plan.spare);
  const servers = await ServerSet.listen(
    sw.ports.flatMap((p) =>
      p.device !== null && p.spec.kind === 'vhost-user'
        ? [{ path: p.spec.socketPath, device: p.device }]
        : [],
    ),
    log,
    () => sw.shutdown(),
    plan.permissions,
  );
  const controlled = controlledPorts(sw, servers);
  const service: RunningService = {
    readyLines: () =>
      sw.ports.map(
        (p) =>
          `ready: port ${p.index} ${describePort(p)}, ${plan.options.queuePairs} queue pair(s), ` +
          describeWorker(p.thread),
      ),
    statsLine: () => statsLine(sw),
    close: async () => {
      sw.stopAdding();
      await servers.close(log);
      await sw.shutdown();
    },
    controlled,
    changes: netChanges(sw, servers, controlled, plan, log),
  };
  await serveUntilSignal(service, log, plan.control);
  return 0;
}

/** `vhost-rt net`: serves a switch of virtio-net ports (and a TAP uplink) until SIGINT/SIGTERM. */
export const netCommand: CliCommand = {
  name: 'net',
  summary: 'serve an L2 switch of virtio-net ports (QEMU: -netdev vhost-user) and a TAP uplink',
  help: HELP,
  run,
};
