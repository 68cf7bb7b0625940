/**
 * The control socket's command table: each command declares its arguments
 * (checked before it runs, QEMU's wording in the errors) and computes its
 * reply from what the daemon already holds. Only `set-rt` waits on a worker
 * (it changes the worker thread's scheduling there), and its reply is a promise.
 */
import { ConfigError } from '../errors.js';
import { type ThrottleLimits, validateThrottleLimits } from '../io/throttle.js';
import {
  type HistogramSnapshot,
  LATENCY_BUCKET_BOUNDS_NS,
  percentileNs,
} from '../locking/index.js';
import { RT_FLAGS, type RtOptions, type RtPolicy, validateRtOptions } from '../rt/options.js';
import {
  type BackupEmit,
  type DeviceBackups,
  MERGE_QUIET_MAX_MS,
  YIELD_MAX_MS,
} from '../worker/backup.js';
import { QmpCommandError } from './errors.js';
import type { ControlledDevice, ControlVersion, DeviceChanges } from './types.js';

/** What a command runs against: the daemon's devices, its version, and the way to stop it. */
export interface CommandContext {
  devices: readonly ControlledDevice[];
  version: ControlVersion;
  /** Asks the daemon to drain and exit, after the reply to this command has been sent. */
  quit(): void;
  /** Sends an event to every negotiated client (BLOCK_RESIZED); absent in unit tests. */
  emit?(name: string, data: Record<string, unknown>): void;
  /** `device-add` / `device-del`; absent when the daemon cannot change its devices. */
  changes?: DeviceChanges;
  /** Hooks (true) or unhooks (false) a device's events, as it is added or removed. */
  watch?(device: ControlledDevice, on: boolean): void;
}

/** One argument a command takes. */
export interface ArgumentSpec {
  type: 'integer' | 'string' | 'boolean' | 'integer-list';
  required: boolean;
}

/** Checked arguments, by name. */
export type CommandArguments = Record<string, number | string | boolean | number[] | undefined>;

/** One command of the table. */
export interface CommandSpec {
  /** What it does, for `query-commands`-style listings and the README. */
  summary: string;
  args: Record<string, ArgumentSpec>;
  /** The reply's `return` value, or a promise of it (a command that waits on a worker). */
  run(args: CommandArguments, ctx: CommandContext): unknown;
}

const DEVICE_ARG = { device: { type: 'integer', required: false } } as const;

/** The devices `args.device` selects: one (checked against the list) or all. */
function selected(args: CommandArguments, ctx: CommandContext): number[] {
  const all = ctx.devices.map((_, i) => i);
  if (args.device === undefined) return all;
  const i = args.device as number;
  if (i < 0 || i >= ctx.devices.length)
    throw new QmpCommandError(
      'GenericError',
      `Parameter 'device' must be 0..${ctx.devices.length - 1}, not ${i}`,
    );
  return [i];
}

/** Feature bits as a hex string ("0x150000000"). */
export function hexFeatures(bits: bigint): string {
  return `0x${bits.toString(16)}`;
}

/** One query-devices entry. */
function describeDevice(d: ControlledDevice, index: number): Record<string, unknown> {
  const t = d.thread;
  const negotiated = d.server?.negotiatedFeatures ?? null;
  return {
    device: index,
    kind: d.kind,
    socket: d.socketPath,
    connected: d.server === null ? null : d.server.connected,
    features: negotiated === null ? null : hexFeatures(negotiated),
    'device-features': d.host === null ? null : hexFeatures(d.host.deviceFeatures),
    queues: d.host?.numQueues ?? 0,
    'front-ends-served': d.server?.connections ?? 0,
    thread: { tid: t.tid, policy: t.policy, priority: t.priority, cpus: [...t.cpus] },
    'broken-rings': [...(d.host?.brokenRings ?? new Map()).entries()].map(([queue, r]) => ({
      queue,
      code: r.code,
      reason: r.reason,
      at: r.at,
    })),
    'ring-breaks': d.host?.ringBreaks ?? 0,
  };
}

/** One query-stats entry. */
function deviceStats(d: ControlledDevice, index: number): Record<string, unknown> {
  const entry: Record<string, unknown> = {
    device: index,
    kind: d.kind,
    socket: d.socketPath,
    stats: d.stats(),
  };
  if (d.portStats !== undefined) entry.ports = d.portStats();
  if (d.queueStats !== undefined || d.latency !== undefined) entry.queues = queueStats(d);
  return entry;
}

/** Per-queue counters and latency histograms of a blk device, as query-stats returns them. */
function queueStats(d: ControlledDevice): Record<string, unknown>[] {
  const counters = d.queueStats?.() ?? [];
  const latency = d.latency?.() ?? [];
  return Array.from({ length: Math.max(counters.length, latency.length) }, (_, queue) => ({
    queue,
    ...counters[queue],
    ...(latency[queue] === undefined ? {} : { latency: latencyJson(latency[queue]) }),
  }));
}

/**
 * A latency histogram as query-stats returns it: `buckets` maps each
 * non-empty bucket's inclusive upper bound in nanoseconds ("+Inf" for the
 * overflow) to its count (not cumulative: /metrics gives the running sums),
 * with the count, sum, largest value, values over the target and p50 / p99 /
 * p99.9 read from the buckets.
 */
export function latencyJson(h: HistogramSnapshot): Record<string, unknown> {
  const buckets: Record<string, number> = {};
  h.buckets.forEach((n, b) => {
    const le = LATENCY_BUCKET_BOUNDS_NS[b];
    if (n > 0) buckets[le === Number.POSITIVE_INFINITY ? '+Inf' : String(le)] = n;
  });
  const us = (q: number) => Math.round(percentileNs(h, q) / 100) / 10;
  return {
    count: h.count,
    'sum-ns': h.sumNs,
    'max-ns': h.maxNs,
    'over-target': h.over,
    'p50-us': us(0.5),
    'p99-us': us(0.99),
    'p99.9-us': us(0.999),
    buckets,
  };
}

/**
 * A ConfigError of rt/options or rt/apply, in the control socket's words:
 * the CLI flags it names (--rt-priority) become the arguments (priority).
 */
function rtError(err: unknown, refused: boolean): unknown {
  if (!(err instanceof ConfigError)) return err;
  const names = Object.entries(RT_FLAGS) as [string, string][];
  const hits = names
    .map(([name, flag]) => ({ name, at: err.message.indexOf(flag) }))
    .filter((h) => h.at >= 0)
    .sort((a, b) => a.at - b.at);
  let text = err.message;
  for (const [name, flag] of names) text = text.split(flag).join(name);
  const which = hits.length > 0 ? `Parameter '${hits[0].name}'` : 'set-rt';
  const prefix = refused ? `${which} refused` : `${which} is invalid`;
  return new QmpCommandError('GenericError', `${prefix}: ${text}`, { cause: err });
}

/** `set-rt`: checks the values, then has the device's worker apply them to its thread. */
async function setRt(args: CommandArguments, ctx: CommandContext): Promise<unknown> {
  const [index] = selected(args, ctx); // `device` is required: exactly one
  const d = ctx.devices[index];
  if (d.setRt === undefined)
    throw new QmpCommandError(
      'GenericError',
      `set-rt is not supported for this device (device ${index} is a ${d.kind} with no worker of its own)`,
    );
  const asked: RtOptions = {};
  if (args.policy !== undefined) asked.policy = args.policy as RtPolicy;
  if (args.priority !== undefined) asked.priority = args.priority as number;
  if (args.cpus !== undefined) asked.cpus = args.cpus as number[];
  // SCHED_DEADLINE's parameters (policy 'deadline', issue 14), named as RT_FLAGS names them.
  for (const k of ['runtimeUs', 'deadlineUs', 'periodUs'] as const)
    if (args[k] !== undefined) asked[k] = args[k] as number;
  let rt: RtOptions;
  try {
    rt = validateRtOptions(asked);
  } catch (err) {
    throw rtError(err, false);
  }
  try {
    const t = await d.setRt(rt);
    return { tid: t.tid, policy: t.policy, priority: t.priority, cpus: [...t.cpus] };
  } catch (err) {
    // Errors from the worker arrive as VhostRtErrors with the ConfigError's code.
    const e = err as Error & { code?: string };
    if (e.code === 'ERR_CONFIG' && !(err instanceof ConfigError))
      throw rtError(new ConfigError(e.message), true);
    throw rtError(err, true);
  }
}

/** An error of a device-side operation as a QMP GenericError (its message kept). */
function commandFailure(command: string, err: unknown): unknown {
  if (err instanceof QmpCommandError) return err;
  return new QmpCommandError('GenericError', `${command}: ${(err as Error).message}`, {
    cause: err,
  });
}

/** `block-resize`: grows/shrinks the image to `size`, or re-reads its size; BLOCK_RESIZED on a change. */
async function blockResize(args: CommandArguments, ctx: CommandContext): Promise<unknown> {
  const [index] = selected(args, ctx);
  const d = ctx.devices[index];
  if (d.resize === undefined)
    throw new QmpCommandError(
      'GenericError',
      `block-resize is not supported for this device (device ${index} is a ${d.kind})`,
    );
  const size = args.size as number | undefined;
  if (size !== undefined && (size < 0 || size % 512 !== 0))
    throw new QmpCommandError(
      'GenericError',
      `Parameter 'size' must be a non-negative multiple of 512, not ${size}`,
    );
  let r: { previous: number; size: number };
  try {
    r = await d.resize(size);
  } catch (err) {
    throw commandFailure('block-resize', err);
  }
  if (r.size !== r.previous)
    ctx.emit?.('BLOCK_RESIZED', {
      device: ctx.devices.indexOf(d),
      socket: d.socketPath,
      size: r.size,
      previous: r.previous,
    });
  return { size: r.size, previous: r.previous };
}

/** `block-set-io-throttle`'s arguments (QEMU's block_set_io_throttle names) and the limits they set. */
const THROTTLE_ARGS = {
  iops: 'iops',
  iops_rd: 'iopsRead',
  iops_wr: 'iopsWrite',
  bps: 'bps',
  bps_rd: 'bpsRead',
  bps_wr: 'bpsWrite',
  iops_max: 'iopsBurst',
  bps_max: 'bpsBurst',
} as const satisfies Record<string, keyof ThrottleLimits>;

/**
 * `block-set-io-throttle` (issue 14): new token-bucket limits for a blk
 * device, applied by its worker (a typed device command); an argument left
 * out is 0, no limit, as all 0 removes throttling. Replies with the limits in force.
 */
async function blockSetIoThrottle(args: CommandArguments, ctx: CommandContext): Promise<unknown> {
  const [index] = selected(args, ctx);
  const d = ctx.devices[index];
  if (d.kind !== 'blk' || d.host === null)
    throw new QmpCommandError(
      'GenericError',
      `block-set-io-throttle is not supported for this device (device ${index} is a ${d.kind})`,
    );
  const limits: ThrottleLimits = {};
  for (const [arg, key] of Object.entries(THROTTLE_ARGS)) {
    const v = args[arg] as number | undefined;
    if (v === undefined) continue;
    if (v < 0)
      throw new QmpCommandError('GenericError', `Parameter '${arg}' must be >= 0, not ${v}`);
    limits[key] = v;
  }
  try {
    validateThrottleLimits(limits);
    return await d.host.command({ type: 'set-io-throttle', limits });
  } catch (err) {
    throw commandFailure('block-set-io-throttle', err);
  }
}

/** The backups of blk device `args.device` (issue 12), or a refusal naming the command. */
function backupsOf(
  command: string,
  args: CommandArguments,
  ctx: CommandContext,
): { backups: DeviceBackups; emit: BackupEmit } {
  const [index] = selected(args, ctx);
  const d = ctx.devices[index];
  if (d.backup === undefined)
    throw new QmpCommandError(
      'GenericError',
      `${command} is not supported for this device (device ${index} is a ${d.kind})`,
    );
  const emit: BackupEmit = (name, data) =>
    ctx.emit?.(name, { device: ctx.devices.indexOf(d), socket: d.socketPath, ...data });
  return { backups: d.backup, emit };
}

/** An integer argument that must not be negative (undefined when absent). */
function nonNegative(args: CommandArguments, name: string): number | undefined {
  const v = args[name] as number | undefined;
  if (v !== undefined && v < 0)
    throw new QmpCommandError('GenericError', `Parameter '${name}' must be >= 0, not ${v}`);
  return v;
}

/** A string argument that must be one of `values` (the first is the default). */
function oneOf<T extends string>(args: CommandArguments, name: string, values: readonly T[]): T {
  const v = (args[name] as string | undefined) ?? values[0];
  if (!(values as readonly string[]).includes(v))
    throw new QmpCommandError(
      'GenericError',
      `Parameter '${name}' must be one of ${values.join(', ')}, not ${v}`,
    );
  return v as T;
}

/**
 * `blockdev-backup` (issue 12): a point-in-time copy of blk `device` to
 * `target` (a raw file, or an NBD URI), `sync` full or incremental (the
 * changed blocks since the last completed backup), `speed` in bytes/s (0:
 * none), `method` how the old contents are kept (see src/worker/backup.ts).
 * Replies once the start instant passed (BACKUP_STARTED); a `prefill-overlay`
 * backup whose overlay needs its pass replies at once (`prefilling: true`) and
 * sends BACKUP_STARTED after the pass. BACKUP_PROGRESS, BACKUP_COMPLETED /
 * BACKUP_FAILED / BACKUP_CANCELLED follow.
 */
async function blockdevBackup(args: CommandArguments, ctx: CommandContext): Promise<unknown> {
  const { backups, emit } = backupsOf('blockdev-backup', args, ctx);
  const sync = oneOf(args, 'sync', ['full', 'incremental'] as const);
  const priority = oneOf(args, 'priority', ['idle', 'batch'] as const);
  const method = oneOf(args, 'method', ['auto', 'clone', 'journal', 'redirect'] as const);
  const speed = nonNegative(args, 'speed') ?? 0;
  const mergeSpeed = nonNegative(args, 'merge-speed');
  const mergeQuietMs = args['merge-quiet-ms'] as number | undefined;
  if (mergeQuietMs !== undefined && (mergeQuietMs < 0 || mergeQuietMs > MERGE_QUIET_MAX_MS))
    throw new QmpCommandError(
      'GenericError',
      `Parameter 'merge-quiet-ms' must be in 0..${MERGE_QUIET_MAX_MS}, not ${mergeQuietMs}`,
    );
  const yieldMs = (args['yield-ms'] as number | undefined) ?? 0;
  if (yieldMs < 0 || yieldMs > YIELD_MAX_MS)
    throw new QmpCommandError(
      'GenericError',
      `Parameter 'yield-ms' must be in 0..${YIELD_MAX_MS}, not ${yieldMs}`,
    );
  try {
    return await backups.start(
      {
        target: args.target as string,
        sync,
        speed,
        journalBytes: args['journal-size'] as number | undefined,
        priority,
        method,
        yieldMs,
        readAround: args['read-around'] === true,
        maxChunk: args['max-chunk'] as number | undefined,
        keepOverlay: args['keep-overlay'] === true,
        prefillOverlay: args['prefill-overlay'] === true,
        mergeSpeed,
        mergeQuietMs,
      },
      emit,
    );
  } catch (err) {
    throw commandFailure('blockdev-backup', err);
  }
}

/** `blockdev-snapshot` (issue 12): a reflink clone of the image (FICLONE), else a full backup. */
async function blockdevSnapshot(args: CommandArguments, ctx: CommandContext): Promise<unknown> {
  const { backups, emit } = backupsOf('blockdev-snapshot', args, ctx);
  try {
    return await backups.snapshot(args.target as string, emit);
  } catch (err) {
    throw commandFailure('blockdev-snapshot', err);
  }
}

/** `device-add`: starts a blk export or a net port on a worker of its own. */
async function deviceAdd(args: CommandArguments, ctx: CommandContext): Promise<unknown> {
  const changes = ctx.changes;
  if (changes === undefined || !changes.kinds.includes(args.kind as string))
    throw new QmpCommandError(
      'GenericError',
      `Parameter 'kind' must be one of ${changes?.kinds.join(', ') || '(none: this daemon cannot add devices)'}, not ${String(args.kind)}`,
    );
  let d: ControlledDevice;
  try {
    d = await changes.add(args);
  } catch (err) {
    throw commandFailure('device-add', err);
  }
  ctx.watch?.(d, true);
  return { device: ctx.devices.indexOf(d), kind: d.kind, socket: d.socketPath };
}

/** `device-del`: drains device `device`, disconnects its front end, removes its socket. */
async function deviceDel(args: CommandArguments, ctx: CommandContext): Promise<unknown> {
  const [index] = selected(args, ctx);
  const changes = ctx.changes;
  if (changes === undefined)
    throw new QmpCommandError('GenericError', 'device-del: this daemon cannot remove devices');
  const d = ctx.devices[index];
  ctx.watch?.(d, false);
  try {
    await changes.remove(index);
  } catch (err) {
    if (ctx.devices.includes(d)) ctx.watch?.(d, true);
    throw commandFailure('device-del', err);
  }
  return { device: index, kind: d.kind, socket: d.socketPath };
}

/** The arguments of `device-add`: the CLI's device options, by the same names. */
const DEVICE_ADD_ARGS: Record<string, ArgumentSpec> = {
  kind: { type: 'string', required: true },
  'socket-path': { type: 'string', required: true },
  image: { type: 'string', required: false },
  readonly: { type: 'boolean', required: false },
  'share-rw': { type: 'boolean', required: false },
  queues: { type: 'integer', required: false },
  'queue-size': { type: 'integer', required: false },
  aio: { type: 'string', required: false },
  direct: { type: 'boolean', required: false },
  serial: { type: 'string', required: false },
  'poll-us': { type: 'integer', required: false },
  mac: { type: 'string', required: false },
  'uring-sqpoll': { type: 'boolean', required: false },
  'aio-threads': { type: 'integer', required: false },
  'aio-threads-policy': { type: 'string', required: false },
  ioprio: { type: 'string', required: false },
  'guest-ioprio': { type: 'string', required: false },
  'iops-limit': { type: 'integer', required: false },
  'iops-read-limit': { type: 'integer', required: false },
  'iops-write-limit': { type: 'integer', required: false },
  'bps-limit': { type: 'integer', required: false },
  'bps-read-limit': { type: 'integer', required: false },
  'bps-write-limit': { type: 'integer', required: false },
  'iops-burst': { type: 'integer', required: false },
  'bps-burst': { type: 'integer', required: false },
  // The RT guard (issue 14, src/io/disk-guard.ts), as the CLI's --rt-guard-* / --no-rt-guard.
  'rt-guard-requests': { type: 'integer', required: false },
  'rt-guard-bytes': { type: 'integer', required: false },
  'rt-guard-window-us': { type: 'integer', required: false },
  'rt-guard-bps': { type: 'integer', required: false },
  'no-rt-guard': { type: 'boolean', required: false },
  'latency-target-us': { type: 'integer', required: false },
  'rt-policy': { type: 'string', required: false },
  'rt-priority': { type: 'integer', required: false },
  cpus: { type: 'string', required: false },
  mlock: { type: 'boolean', required: false },
};

/** The commands the control socket answers (qmp_capabilities is the session's own). */
export const COMMANDS: ReadonlyMap<string, CommandSpec> = new Map<string, CommandSpec>([
  [
    'query-version',
    {
      summary: "the daemon's version, in QEMU's shape",
      args: {},
      run: (_args, ctx) => ({
        qemu: { major: ctx.version.major, minor: ctx.version.minor, micro: ctx.version.micro },
        package: ctx.version.package,
      }),
    },
  ],
  [
    'query-devices',
    {
      summary:
        'every device/port: kind, socket, connected, negotiated features, queues, worker thread, broken rings',
      args: DEVICE_ARG,
      run: (args, ctx) => selected(args, ctx).map((i) => describeDevice(ctx.devices[i], i)),
    },
  ],
  [
    'query-stats',
    {
      summary: 'the counters of the SIGUSR1 stats line, per device/port',
      args: DEVICE_ARG,
      run: (args, ctx) => selected(args, ctx).map((i) => deviceStats(ctx.devices[i], i)),
    },
  ],
  [
    'query-commands',
    {
      summary: 'the commands this socket answers',
      args: {},
      run: () => [{ name: 'qmp_capabilities' }, ...[...COMMANDS.keys()].map((name) => ({ name }))],
    },
  ],
  [
    'set-rt',
    {
      summary:
        "change the scheduling (policy, priority, cpus; runtimeUs, deadlineUs, periodUs for policy 'deadline') of the worker thread serving 'device', at run time",
      args: {
        device: { type: 'integer', required: true },
        policy: { type: 'string', required: false },
        priority: { type: 'integer', required: false },
        cpus: { type: 'integer-list', required: false },
        runtimeUs: { type: 'integer', required: false },
        deadlineUs: { type: 'integer', required: false },
        periodUs: { type: 'integer', required: false },
      },
      run: setRt,
    },
  ],
  [
    'block-set-io-throttle',
    {
      summary:
        "token-bucket limits of blk 'device' (iops, iops_rd, iops_wr, bps, bps_rd, bps_wr, iops_max, bps_max: bursts; 0 or absent: none), applied at once by its worker",
      args: {
        device: { type: 'integer', required: true },
        ...Object.fromEntries(
          Object.keys(THROTTLE_ARGS).map((a) => [a, { type: 'integer', required: false } as const]),
        ),
      },
      run: blockSetIoThrottle,
    },
  ],
  [
    'block-resize',
    {
      summary:
        "grow or shrink 'device''s image to 'size' bytes (ftruncate), or re-read its size without 'size'; the guest is told",
      args: {
        device: { type: 'integer', required: true },
        size: { type: 'integer', required: false },
      },
      run: blockResize,
    },
  ],
  [
    'blockdev-backup',
    {
      summary:
        "live point-in-time backup of blk 'device' to 'target' (raw file or NBD URI); 'sync' full|incremental, 'speed' bytes/s, 'journal-size' bytes, 'priority' idle|batch, 'method' auto|clone|journal|redirect (auto: a reflink clone where the file system has it, else the journal; redirect: guest writes go to an overlay next to the image while the copier reads the untouched image, merged back afterwards, BACKUP_MERGED; 'keep-overlay' keeps the merged overlay's allocated blocks for the next redirect backup; 'prefill-overlay' writes the kept overlay's whole data area once, at 'speed', before the start instant, so that no redirected write allocates; the reply then comes at once with 'prefilling': true, and BACKUP_STARTED marks the instant; 'merge-speed' bytes/s the merge after a redirect backup goes at while the guest does I/O, default 'speed' up to 4 MiB/s, 0 unpaced; 'merge-quiet-ms' the merge goes at 'speed' once the guest has started no request for this long, default 1000, 0 never), 'yield-ms' the guest's quiet time each disk-pass read waits for (0: none), 'read-around' a chunk's second write saves the rest of the chunk (default false), 'max-chunk' the copier's largest read or write in bytes (a multiple of 65536 up to 1 MiB, default 256 KiB); events BACKUP_STARTED, BACKUP_PROGRESS, BACKUP_COMPLETED, BACKUP_FAILED, BACKUP_CANCELLED, BACKUP_MERGED (redirect)",
      args: {
        device: { type: 'integer', required: true },
        target: { type: 'string', required: true },
        sync: { type: 'string', required: false },
        speed: { type: 'integer', required: false },
        'journal-size': { type: 'integer', required: false },
        priority: { type: 'string', required: false },
        method: { type: 'string', required: false },
        'yield-ms': { type: 'integer', required: false },
        'read-around': { type: 'boolean', required: false },
        'max-chunk': { type: 'integer', required: false },
        'keep-overlay': { type: 'boolean', required: false },
        'prefill-overlay': { type: 'boolean', required: false },
        'merge-speed': { type: 'integer', required: false },
        'merge-quiet-ms': { type: 'integer', required: false },
      },
      run: blockdevBackup,
    },
  ],
  [
    'query-backups',
    {
      summary: "the running and the last finished backup of each blk device (or of 'device')",
      args: DEVICE_ARG,
      run: async (args, ctx) =>
        (
          await Promise.all(
            selected(args, ctx).map(async (i) =>
              ((await ctx.devices[i].backup?.query()) ?? []).map((b) => ({ device: i, ...b })),
            ),
          )
        ).flat(),
    },
  ],
  [
    'backup-cancel',
    {
      summary: "stop the running backup of 'device' (BACKUP_CANCELLED)",
      args: { device: { type: 'integer', required: true } },
      run: async (args, ctx) => ({
        cancelled: await backupsOf('backup-cancel', args, ctx).backups.cancel(),
      }),
    },
  ],
  [
    'backup-pause',
    {
      summary:
        "pause the disk pass of the running backup of 'device' before its next read (the journal is still drained, so the guest is never held), or a redirect backup's merge after its copy in flight (BACKUP_PAUSED; 'paused': false if it was paused already)",
      args: { device: { type: 'integer', required: true } },
      run: async (args, ctx) => {
        const { backups } = backupsOf('backup-pause', args, ctx);
        return { paused: await backups.setPaused(true) };
      },
    },
  ],
  [
    'backup-resume',
    {
      summary:
        "resume the paused disk pass of the running backup of 'device', or its paused merge (BACKUP_RESUMED; 'resumed': false if it was not paused)",
      args: { device: { type: 'integer', required: true } },
      run: async (args, ctx) => {
        const { backups } = backupsOf('backup-resume', args, ctx);
        return { resumed: await backups.setPaused(false) };
      },
    },
  ],
  [
    'backup-set-speed',
    {
      summary:
        "change the running backup of 'device''s 'speed' (bytes/s, 0: unpaced) from the copier's next write (a redirect backup's quiet merge pace follows), or, once a redirect backup has ended, its merge's 'merge-speed' from its next copy; answers which it set",
      args: {
        device: { type: 'integer', required: true },
        speed: { type: 'integer', required: true },
      },
      run: (args, ctx) => {
        const { backups } = backupsOf('backup-set-speed', args, ctx);
        return backups.setSpeed(nonNegative(args, 'speed') ?? 0);
      },
    },
  ],
  [
    'blockdev-snapshot',
    {
      summary:
        "instant copy of blk 'device''s image to 'target' by reflink (FICLONE: XFS, btrfs), else a full backup to it",
      args: {
        device: { type: 'integer', required: true },
        target: { type: 'string', required: true },
      },
      run: blockdevSnapshot,
    },
  ],
  [
    'device-add',
    {
      summary:
        "add a blk export ('image', 'socket-path', options as the CLI's) or a net port ('socket-path', 'mac') on a worker of its own",
      args: DEVICE_ADD_ARGS,
      run: deviceAdd,
    },
  ],
  [
    'device-del',
    {
      summary:
        "remove 'device': complete its in-flight requests, disconnect its front end, remove its socket",
      args: { device: { type: 'integer', required: true } },
      run: deviceDel,
    },
  ],
  [
    'quit',
    {
      summary: 'reply, then drain and exit as SIGTERM does (DRAIN_COMPLETE before exiting)',
      args: {},
      run: (_args, ctx) => {
        ctx.quit();
        return {};
      },
    },
  ],
]);

const TYPE_OF: Record<ArgumentSpec['type'], (v: unknown) => boolean> = {
  integer: (v) => Number.isSafeInteger(v),
  string: (v) => typeof v === 'string',
  boolean: (v) => typeof v === 'boolean',
  'integer-list': (v) => Array.isArray(v) && v.every((x) => Number.isSafeInteger(x)),
};

/** Checks `raw` (the `arguments` member, maybe absent) against `spec`, in QEMU's words. */
export function checkArguments(
  spec: Record<string, ArgumentSpec>,
  raw: Record<string, unknown>,
): CommandArguments {
  const out: CommandArguments = {};
  for (const name of Object.keys(raw)) {
    if (!Object.hasOwn(spec, name))
      throw new QmpCommandError('GenericError', `Parameter '${name}' is unexpected`);
  }
  for (const [name, a] of Object.entries(spec)) {
    const v = raw[name];
    if (v === undefined) {
      if (a.required) throw new QmpCommandError('GenericError', `Parameter '${name}' is missing`);
      continue;
    }
    if (!TYPE_OF[a.type](v))
      throw new QmpCommandError(
        'GenericError',
        `Invalid parameter type for '${name}', expected: ${a.type}`,
      );
    out[name] = v as number | string | boolean | number[];
  }
  return out;
}

/**
 * Runs command `name` with raw arguments; throws a {@link QmpCommandError}
 * on refusal. The result may be a promise (set-rt), which rejects likewise.
 */
export function executeCommand(
  name: string,
  raw: Record<string, unknown>,
  ctx: CommandContext,
): unknown {
  const command = COMMANDS.get(name);
  if (command === undefined)
    throw new QmpCommandError('CommandNotFound', `The command ${name} has not been found`);
  return command.run(checkArguments(command.args, raw), ctx);
}
