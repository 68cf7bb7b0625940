/**
 * Flag parsing shared by every subcommand: a wrong flag or value becomes a
 * one-line ConfigError naming it.
 */
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { type MetricsAddress, parseMetricsAddress } from '../control/metrics.js';
import { ConfigError } from '../errors.js';
import {
  parseCpuList,
  RT_POLICIES,
  type RtOptions,
  type RtPolicy,
  validateRtOptions,
} from '../rt/options.js';
import { adoptListeningSocket, registerInherited } from '../sockets/activation.js';
import { parseSocketGroup, parseSocketMode, type SocketPermissions } from '../sockets/listen.js';
import { checkPidfile } from './pidfile.js';

/** Parsed flag values by flag name (without `--`), as `parseArgs` returns them. */
export type FlagValues = Record<string, string | boolean | string[] | boolean[] | undefined>;

/**
 * parseArgs with strict checking; its errors become ConfigErrors (the command
 * line's runner prefixes them with `vhost-rt COMMAND:` once).
 */
export function parseFlags(
  command: string,
  args: string[],
  options: ParseArgsConfig['options'],
): FlagValues {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values as FlagValues;
  } catch (err) {
    const reason = (err as Error).message.split('\n')[0].replace(/\. To specify .*$/, '');
    throw new ConfigError(`${reason} (see vhost-rt ${command} --help)`);
  }
}

/**
 * A non-negative whole-number flag (decimal digits only); `fallback` when the
 * flag is absent. With `range`, a value outside [min, max] is refused naming it.
 */
export function integerFlag(
  flag: string,
  value: unknown,
  fallback: number,
  range?: { min: number; max: number },
): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || !/^\d+$/.test(value))
    throw new ConfigError(`--${flag} ${String(value)}: not a whole number`);
  const n = Number(value);
  if (range !== undefined && (n < range.min || n > range.max))
    throw new ConfigError(`--${flag} ${value}: must be ${range.min}..${range.max}`);
  return n;
}

/** A string flag that must be given and non-empty; otherwise a ConfigError naming `--flag`. */
export function requiredFlag(flag: string, value: unknown): string {
  if (typeof value !== 'string' || value === '') throw new ConfigError(`--${flag} is required`);
  return value;
}

/** `value` if it is a string, else undefined (absent, or a boolean flag). */
export function optionalString(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

/** The RT flags every device command accepts. */
export const RT_FLAG_OPTIONS = {
  'rt-policy': { type: 'string' },
  'rt-priority': { type: 'string' },
  cpus: { type: 'string' },
  mlock: { type: 'boolean' },
  'rt-runtime-us': { type: 'string' },
  'rt-deadline-us': { type: 'string' },
  'rt-period-us': { type: 'string' },
} as const;

/** Help text of {@link RT_FLAG_OPTIONS}, embedded in every device command's help. */
export const RT_HELP = `Real-time options (apply to the device's worker thread):
  --rt-policy POLICY   scheduling policy: fifo, rr, other, batch, idle or deadline
  --rt-runtime-us R, --rt-deadline-us D, --rt-period-us P
                       deadline: R µs of CPU in every P µs, by D µs into each
                       period (R <= D <= P, period default D; sched_setattr)
  --rt-priority N      priority for fifo/rr, 1..99
  --cpus LIST          CPU affinity, e.g. 0 or 0-1,3
  --mlock              lock the guest RAM this device serves (mlock), so the data
                       path never page-faults on it
`;

/** The socket flags every daemon command accepts (deployment: libvirt's QEMU runs as another user). */
export const SOCKET_FLAG_OPTIONS = {
  'socket-mode': { type: 'string' },
  'socket-group': { type: 'string' },
  'control-socket': { type: 'string' },
  pidfile: { type: 'string' },
  metrics: { type: 'string' },
} as const;

/** Help text of {@link SOCKET_FLAG_OPTIONS}. */
export const SOCKET_HELP = `Socket options (every socket the daemon creates: vhost-user, chardev, input):
  --socket-mode MODE   chmod of the sockets, e.g. 0660
  --socket-group GROUP chgrp of the sockets, e.g. libvirt-qemu (name or gid)
  --control-socket SOCK  a QMP control socket (query-devices, query-stats, quit,
                       events): socat - UNIX-CONNECT:SOCK, then
                       {"execute": "qmp_capabilities"}
  --pidfile PATH       write the daemon's pid to PATH once it is ready, remove it
                       on exit; refused if PATH names a running process
  --metrics ADDR       serve /metrics (Prometheus text format) on 127.0.0.1:PORT,
                       [::1]:PORT or unix:PATH (port 0: any free port, logged)
`;

/** Help line of `--socket-fd` (blk, net, console). */
export const SOCKET_FD_HELP = `  --socket-fd N        serve the listening Unix socket inherited as fd N (from
                       systemd or a parent process) instead of --socket-path;
                       its file is left in place on exit
`;

/**
 * `--socket-fd N`: checks that fd N is a listening Unix stream socket, adopts
 * it and returns the path the device is known by (the socket's bound path, or
 * `fd:N` when it has none); listenUnix then serves the fd under that path.
 */
export function socketFdPath(value: unknown): string {
  const fd = integerFlag('socket-fd', value, 0, { min: 0, max: 0x7fffffff });
  const socket = adoptListeningSocket(fd, `--socket-fd ${fd}`);
  const path =
    socket.boundPath !== '' && !socket.boundPath.startsWith('@') ? socket.boundPath : `fd:${fd}`;
  registerInherited(path, socket);
  return path;
}

/** A device's socket: `--socket-path` or `--socket-fd`, exactly one. */
export function deviceSocket(v: FlagValues): string {
  if (v['socket-fd'] === undefined) return requiredFlag('socket-path', v['socket-path']);
  if (v['socket-path'] !== undefined)
    throw new ConfigError('--socket-path and --socket-fd: give one of them');
  return socketFdPath(v['socket-fd']);
}

/** Reads `--socket-mode` / `--socket-group`. */
export function parseSocketFlags(v: FlagValues): SocketPermissions {
  const mode = optionalString(v['socket-mode']);
  const group = optionalString(v['socket-group']);
  return {
    mode: mode === undefined ? undefined : parseSocketMode(mode),
    gid: group === undefined ? undefined : parseSocketGroup(group),
  };
}

/**
 * Reads `--control-socket` with the socket permissions, `--pidfile` and
 * `--metrics` (a bad address is refused naming the flag), as
 * serveUntilSignal takes them. A pid file naming a running process is
 * refused here, before the daemon opens anything.
 */
export function parseControlFlags(v: FlagValues): {
  path: string | undefined;
  permissions: SocketPermissions;
  pidfile: string | undefined;
  metrics: MetricsAddress | undefined;
} {
  const pidfile = optionalString(v.pidfile);
  if (v.pidfile !== undefined && (pidfile === undefined || pidfile === ''))
    throw new ConfigError('--pidfile needs a path');
  if (pidfile !== undefined) checkPidfile(pidfile);
  const metrics = optionalString(v.metrics);
  return {
    path: optionalString(v['control-socket']),
    permissions: parseSocketFlags(v),
    pidfile,
    metrics: metrics === undefined ? undefined : parseMetricsAddress(metrics),
  };
}

/** Reads the RT flags out of parsed values; a value the kernel would refuse is caught later, naming the flag. */
export function parseRtFlags(v: FlagValues): RtOptions {
  const policy = optionalString(v['rt-policy']);
  if (policy !== undefined && !(RT_POLICIES as readonly string[]).includes(policy)) {
    throw new ConfigError(`--rt-policy ${policy}: choose one of ${RT_POLICIES.join(', ')}`);
  }
  const rt: RtOptions = {};
  if (policy !== undefined) rt.policy = policy as RtPolicy;
  if (v['rt-priority'] !== undefined) rt.priority = integerFlag('rt-priority', v['rt-priority'], 0);
  const cpus = optionalString(v.cpus);
  if (cpus !== undefined) rt.cpus = parseCpuList(cpus, '--cpus');
  if (v.mlock === true) rt.mlock = true;
  for (const [key, flag] of [
    ['runtimeUs', 'rt-runtime-us'],
    ['deadlineUs', 'rt-deadline-us'],
    ['periodUs', 'rt-period-us'],
  ] as const)
    if (v[flag] !== undefined) rt[key] = integerFlag(flag, v[flag], 0);
  return validateRtOptions(rt);
}

/**
 * Splits a `key=value,key,...` device spec into flag values, so the same
 * parser checks `--device` specs and plain flags.
 */
export function specToArgs(spec: string): string[] {
  const args: string[] = [];
  for (const part of spec.split(',')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    if (eq < 0) args.push(`--${part}`);
    else args.push(`--${part.slice(0, eq)}`, part.slice(eq + 1));
  }
  return args;
}
