/**
 * `vhost-rt console`: a virtio-console device over vhost-user (port 0 is the
 * console; more ports with MULTIPORT), its output through the decoupled
 * logging path.
 */
import type { ConsolePortOptions } from '../devices/console/options.js';
import { ConfigError } from '../errors.js';
import { describeSink, parseRingPolicy } from '../logger/index.js';
import type { SocketPermissions } from '../sockets/listen.js';
import { ConsoleService, type ConsoleSpec } from '../worker/console-service.js';
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
  SOCKET_FD_HELP,
  SOCKET_FLAG_OPTIONS,
  SOCKET_HELP,
} from './flags.js';
import { stderrLogger } from './log.js';
import {
  inputBufferFlag,
  LOG_FLAG_OPTIONS,
  LOG_HELP,
  logSinksFlag,
  ringSizeFlag,
} from './serial.js';
import { formatStats, ServerSet, serveUntilSignal } from './service.js';

const FLAGS = {
  'socket-path': { type: 'string' },
  'socket-fd': { type: 'string' },
  ports: { type: 'string' },
  port: { type: 'string', multiple: true },
  'port-input': { type: 'string', multiple: true },
  multiport: { type: 'boolean' },
  size: { type: 'string' },
  'queue-size': { type: 'string' },
  ...LOG_FLAG_OPTIONS,
  ...RT_FLAG_OPTIONS,
  ...SOCKET_FLAG_OPTIONS,
  quiet: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

const HELP = `vhost-rt console — virtio-console over vhost-user (console port 0, optional named ports)

Usage:
  vhost-rt console --socket-path SOCK [--log SINK] [--ports N] [--port NAME=SINK ...] [options]

  --socket-path SOCK   vhost-user socket to listen on
${SOCKET_FD_HELP}  --ports N            ports in all (default 1; more than 1 offers MULTIPORT)
  --port NAME=SINK     one more named port (guest: /dev/virtio-ports/NAME), its output
                       to SINK (same forms as --log); ports are numbered 1.. in order
  --port-input NAME=SOCK  an input socket for named port NAME
  --multiport          offer MULTIPORT (control queues) even with one port
  --size COLSxROWS     console size in the config space (default 80x25); SIGWINCH
                       resizes to the daemon's own terminal when stdout is a TTY
  --queue-size N       largest ring size, a power of two in 4..1024 (default 256)
${LOG_HELP}  (--log and --input belong to port 0, the console)

${RT_HELP}
${SOCKET_HELP}
  --quiet              log warnings and errors only
${CAPABILITIES_HELP}  --help               this text

Offers VERSION_1, EVENT_IDX, INDIRECT_DESC, F_SIZE, F_EMERG_WRITE (routed to port 0's
log) and, with several ports, F_MULTIPORT. SIGUSR1 prints per-port counters
(bytesIn, bytesOut, bytesDropped, ringHighWater, ...); SIGINT/SIGTERM drain and exit.
`;

function parseSize(value: unknown): { cols: number; rows: number } {
  if (value === undefined) return { cols: 80, rows: 25 };
  const m = typeof value === 'string' ? /^(\d+)x(\d+)$/.exec(value) : null;
  if (m === null) throw new ConfigError(`--size ${String(value)}: expected COLSxROWS, e.g. 80x25`);
  return { cols: Number(m[1]), rows: Number(m[2]) };
}

function pairs(flag: string, list: unknown): [string, string][] {
  return ((list as string[] | undefined) ?? []).map((text) => {
    const eq = text.indexOf('=');
    if (eq <= 0 || eq === text.length - 1)
      throw new ConfigError(`--${flag} ${text}: expected NAME=VALUE`);
    return [text.slice(0, eq), text.slice(eq + 1)];
  });
}

function portList(v: FlagValues): ConsolePortOptions[] {
  const named = pairs('port', v.port);
  const inputs = new Map(pairs('port-input', v['port-input']));
  const total = Math.max(integerFlag('ports', v.ports, 1, { min: 1, max: 31 }), 1 + named.length);
  const main = logSinksFlag(v);
  const ports: ConsolePortOptions[] = [
    { name: null, sinks: main, inputPath: optionalString(v.input) },
  ];
  for (const [name, sink] of named) {
    ports.push({ name, sinks: logSinksFlag(v, [sink]), inputPath: inputs.get(name) });
    inputs.delete(name);
  }
  for (const name of inputs.keys()) throw new ConfigError(`--port-input ${name}: no such --port`);
  while (ports.length < total) ports.push({ name: null, sinks: main });
  return ports;
}

/** Parses `vhost-rt console` arguments; exported for tests. */
export function parseConsoleArgs(args: string[]):
  | (ConsoleSpec & {
      socketPath: string;
      quiet: boolean;
      permissions: SocketPermissions;
      control: ReturnType<typeof parseControlFlags>;
    })
  | 'help' {
  const v = parseFlags('console', args, FLAGS);
  if (v.help === true) return 'help';
  const ports = portList(v);
  const size = parseSize(v.size);
  const permissions = parseSocketFlags(v);
  return {
    socketPath: deviceSocket(v),
    options: {
      ports,
      multiport: ports.length > 1 || v.multiport === true,
      cols: size.cols,
      rows: size.rows,
      policy: parseRingPolicy(optionalString(v.policy) ?? 'lossless'),
      ringBytes: ringSizeFlag(v['ring-size']),
      inputBufferBytes: inputBufferFlag(v),
      queueSize: integerFlag('queue-size', v['queue-size'], 256),
      socketPermissions: permissions,
    },
    rt: parseRtFlags(v),
    quiet: v.quiet === true,
    permissions,
    control: parseControlFlags(v),
  };
}

async function run(argv: string[]): Promise<number> {
  if (wantsCapabilities(argv)) return printCapabilities('console');
  const spec = parseConsoleArgs(argv);
  if (spec === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  const log = stderrLogger('vhost-rt[console]', spec.quiet);
  const service = await ConsoleService.start(spec, log);
  const servers = await ServerSet.listen(
    [{ path: spec.socketPath, device: service.device }],
    log,
    () => service.shutdown(),
    spec.permissions,
  );
  const onWinch = () => {
    if (!process.stdout.isTTY) return;
    service.resize(process.stdout.columns, process.stdout.rows).catch((err: Error) => {
      log('warn', `resize to the terminal's size failed: ${err.message}`);
    });
  };
  process.on('SIGWINCH', onWinch);
  const t = service.device.thread;
  const lt = service.loggerThread;
  const o = spec.options;
  await serveUntilSignal(
    {
      readyLines: () => [
        `ready: console socket ${spec.socketPath}, ${o.ports.length} port(s)` +
          `${o.multiport ? ' (multiport)' : ''}, size ${o.cols}x${o.rows}, policy ${o.policy}, ` +
          `ring ${o.ringBytes} bytes, worker tid ${t.tid} policy ${t.policy} priority ` +
          `${t.priority}, logger tid ${lt.thread.tid} ${lt.background}`,
        ...o.ports.map(
          (p, i) =>
            `port ${i}${p.name === null ? '' : ` '${p.name}'`}: log ` +
            `${p.sinks.map(describeSink).join(' + ')}${p.inputPath ? `, input ${p.inputPath}` : ''}`,
        ),
      ],
      statsLine: () =>
        [
          formatStats(service.deviceStats.snapshot()),
          ...o.ports.map((_, i) => `[port ${i}] ${formatStats(service.portSnapshot(i))}`),
        ].join(' | '),
      close: async () => {
        process.off('SIGWINCH', onWinch);
        await servers.close(log);
        await service.shutdown();
      },
      controlled: [
        {
          kind: 'console',
          socketPath: spec.socketPath,
          server: servers.servers[0],
          host: service.device,
          thread: t,
          setRt: (rt) => service.device.setRt(rt),
          stats: () => service.deviceStats.snapshot(),
          portStats: () => o.ports.map((_, i) => service.portSnapshot(i)),
        },
      ],
    },
    log,
    spec.control,
  );
  return 0;
}

/** `vhost-rt console`: serves one virtio-console device until SIGINT/SIGTERM. */
export const consoleCommand: CliCommand = {
  name: 'console',
  summary: 'serve a virtio-console device (ports, multiport) over vhost-user',
  help: HELP,
  run,
};
