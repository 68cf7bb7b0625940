/**
 * `vhost-rt serial`: the guest's 16550 UART through a stock QEMU's chardev
 * socket, its output through the decoupled logging path. Also the home of
 * the log flags that `vhost-rt console` shares.
 */

import { DEFAULT_INPUT_BUFFER_BYTES } from '../chardev/uart-options.js';
import { SerialService, type SerialSpec } from '../chardev/uart-service.js';
import { ConfigError } from '../errors.js';
import {
  DEFAULT_RING_BYTES,
  describeSink,
  parseRingPolicy,
  parseSinkSpec,
  type SinkSpec,
} from '../logger/index.js';
import type { CliCommand } from './command.js';
import {
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
  SOCKET_FLAG_OPTIONS,
  SOCKET_HELP,
} from './flags.js';
import { stderrLogger } from './log.js';
import { formatStats, serveUntilSignal } from './service.js';

/** Flags of the log path, shared by `serial` and `console`. */
export const LOG_FLAG_OPTIONS = {
  log: { type: 'string', multiple: true },
  'log-rotate': { type: 'string' },
  'log-rotate-keep': { type: 'string' },
  'log-timestamps': { type: 'boolean' },
  policy: { type: 'string' },
  'ring-size': { type: 'string' },
  input: { type: 'string' },
  'input-buffer': { type: 'string' },
} as const;

/** Help text of {@link LOG_FLAG_OPTIONS}, embedded in the `serial` and `console` help. */
export const LOG_HELP = `Output and input:
  --log SINK           where guest output goes; repeat for several: FILE or file:FILE
                       (appended), socket:PATH (readers attach live, e.g.
                       socat - UNIX-CONNECT:PATH), or stdout (default: stdout)
  --log-rotate BYTES   rotate a file sink when it would grow past BYTES (k/M/G suffix)
  --log-rotate-keep N  rotated files kept as FILE.1..FILE.N (default 5)
  --log-timestamps     prefix every line of a file sink with the time it was written
  --policy POLICY      when the log ring is full: lossless (default; the guest's write
                       waits, the host never does) or drop (newest bytes dropped,
                       counted, and a marker line written when output resumes)
  --ring-size BYTES    log ring per port, a power of two (default 1M)
  --input SOCK         Unix socket for host-to-guest input: vhost-rt attach SOCK, or
                       socat - UNIX-CONNECT:SOCK
  --input-buffer BYTES input held while the guest is not reading (default 64k); what
                       does not fit is refused, counted and announced to the writer
`;

const SIZE_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };

/** Parses `4096`, `64k`, `1M`, `2G`. */
export function sizeFlag(flag: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  const m = typeof value === 'string' ? /^(\d+)([kKmMgG]?)$/.exec(value) : null;
  if (m === null)
    throw new ConfigError(`--${flag} ${String(value)}: not a size (e.g. 4096, 64k, 1M)`);
  return Number(m[1]) * SIZE_UNITS[m[2].toLowerCase()];
}

/** Ring size: a power of two between 4 KiB and 1 GiB. */
export function ringSizeFlag(value: unknown): number {
  const n = sizeFlag('ring-size', value, DEFAULT_RING_BYTES);
  if (n < 4096 || n > 2 ** 30 || (n & (n - 1)) !== 0)
    throw new ConfigError(`--ring-size ${String(value)}: must be a power of two in 4k..1G`);
  return n;
}

/** Parses the `--log` sinks (default stdout) with the file sink options. */
export function logSinksFlag(v: FlagValues, list: unknown = v.log): SinkSpec[] {
  const keep = integerFlag('log-rotate-keep', v['log-rotate-keep'], 5);
  if (keep < 1 || keep > 1000) throw new ConfigError(`--log-rotate-keep ${keep}: must be 1..1000`);
  const defaults = {
    rotateBytes: sizeFlag('log-rotate', v['log-rotate'], 0),
    rotateKeep: keep,
    timestamps: v['log-timestamps'] === true,
  };
  const texts = (list as string[] | undefined) ?? ['stdout'];
  return texts.map((t) => parseSinkSpec(t, defaults));
}

/** Bounded input buffer size, 1..16M. */
export function inputBufferFlag(v: FlagValues): number {
  const n = sizeFlag('input-buffer', v['input-buffer'], DEFAULT_INPUT_BUFFER_BYTES);
  if (n < 1 || n > 16 * 1024 ** 2) throw new ConfigError(`--input-buffer ${n}: must be 1..16M`);
  return n;
}

const FLAGS = {
  'socket-path': { type: 'string' },
  ...LOG_FLAG_OPTIONS,
  ...RT_FLAG_OPTIONS,
  ...SOCKET_FLAG_OPTIONS,
  quiet: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

const HELP = `vhost-rt serial — the guest UART (16550) through a QEMU chardev socket

Usage:
  vhost-rt serial --socket-path SOCK [--log SINK ...] [--input SOCK] [options]
QEMU side (QEMU connects as the client; reconnect=1 survives a daemon restart):
  -chardev socket,id=s0,path=SOCK -serial chardev:s0   (kernel: console=ttyS0)

  --socket-path SOCK   Unix socket QEMU's chardev connects to
${LOG_HELP}
${RT_HELP}
${SOCKET_HELP}
  --quiet              log warnings and errors only
  --help               this text

Output reaches the sinks through a lock-free ring drained by a logger thread at
the lowest priority (SCHED_IDLE, else nice 19); the serial worker never writes
to a file. SIGUSR1 prints the counters; SIGINT/SIGTERM drain the ring and exit.
`;

/** Parses `vhost-rt serial` arguments; exported for tests. */
export function parseSerialArgs(
  args: string[],
): (SerialSpec & { quiet: boolean; control: ReturnType<typeof parseControlFlags> }) | 'help' {
  const v = parseFlags('serial', args, FLAGS);
  if (v.help === true) return 'help';
  return {
    options: {
      socketPath: requiredFlag('socket-path', v['socket-path']),
      inputPath: optionalString(v.input),
      policy: parseRingPolicy(optionalString(v.policy) ?? 'lossless'),
      inputBufferBytes: inputBufferFlag(v),
      socketPermissions: parseSocketFlags(v),
    },
    sinks: logSinksFlag(v),
    ringBytes: ringSizeFlag(v['ring-size']),
    rt: parseRtFlags(v),
    quiet: v.quiet === true,
    control: parseControlFlags(v),
  };
}

async function run(argv: string[]): Promise<number> {
  const spec = parseSerialArgs(argv);
  if (spec === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  const log = stderrLogger('vhost-rt[serial]', spec.quiet);
  const service = await SerialService.start(spec, log);
  const t = service.thread;
  const lt = service.loggerThread;
  await serveUntilSignal(
    {
      readyLines: () => [
        `ready: serial socket ${spec.options.socketPath}` +
          `${spec.options.inputPath ? `, input ${spec.options.inputPath}` : ''}, ` +
          `log ${spec.sinks.map(describeSink).join(' + ')}, policy ${spec.options.policy}, ` +
          `ring ${spec.ringBytes} bytes, worker tid ${t.tid} policy ${t.policy} priority ` +
          `${t.priority}, logger tid ${lt.thread.tid} ${lt.background}`,
      ],
      statsLine: () => formatStats(service.snapshot()),
      close: () => service.shutdown(),
      controlled: [
        {
          kind: 'serial',
          socketPath: spec.options.socketPath,
          server: null,
          host: null,
          thread: t,
          stats: () => service.snapshot(),
        },
      ],
    },
    log,
    spec.control,
  );
  return 0;
}

/** `vhost-rt serial`: serves a guest UART over QEMU's chardev socket until SIGINT/SIGTERM. */
export const serialCommand: CliCommand = {
  name: 'serial',
  summary: 'serve a guest UART over a QEMU chardev socket (-serial chardev:ID)',
  help: HELP,
  run,
};
