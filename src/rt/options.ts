/**
 * Real-time options of a thread (DESIGN rule 8): scheduling policy and
 * priority, CPU affinity and memory locking. Pure validation, no system
 * calls; src/rt/apply.ts applies them. Every message names the CLI flag the
 * value came from (see {@link RT_FLAGS}), so the CLI can pass errors through.
 */
import { availableParallelism, cpus } from 'node:os';
import { ConfigError } from '../errors.js';

/** The scheduling policies of sched(7), by their CLI names. */
export const RT_POLICIES = ['fifo', 'rr', 'other', 'batch', 'idle', 'deadline'] as const;
/** A scheduling policy: SCHED_FIFO, SCHED_RR, SCHED_OTHER, SCHED_BATCH, SCHED_IDLE, SCHED_DEADLINE. */
export type RtPolicy = (typeof RT_POLICIES)[number];

/** Highest real-time priority on Linux (MAX_RT_PRIO - 1 = sched_get_priority_max for fifo/rr). */
export const RT_PRIORITY_MAX = 99;

/** The command-line flag of each option; errors name these. */
export const RT_FLAGS = {
  policy: '--rt-policy',
  priority: '--rt-priority',
  cpus: '--cpus',
  mlock: '--mlock',
  runtimeUs: '--rt-runtime-us',
  deadlineUs: '--rt-deadline-us',
  periodUs: '--rt-period-us',
} as const;

/** The smallest runtime, deadline and period the kernel takes (1 << DL_SCALE ns), in ns. */
export const DEADLINE_MIN_NS = 1024;

/** Real-time knobs of one thread; absent fields leave that aspect as it is. */
export interface RtOptions {
  /** Scheduling policy; absent: keep the thread's current one. */
  policy?: RtPolicy;
  /** 1..99 for fifo/rr; 0 or absent for the other policies. */
  priority?: number;
  /** CPUs the thread may run on (affinity); absent: keep the current mask. */
  cpus?: number[];
  /** mlockall(MCL_CURRENT | MCL_FUTURE): process-wide, so page faults never stall a thread. */
  mlock?: boolean;
  /**
   * SCHED_DEADLINE (policy `deadline` only): the thread may run `runtimeUs`
   * of CPU time in every `periodUs`, by `deadlineUs` after each period's
   * start. runtime ≤ deadline ≤ period; period defaults to the deadline.
   */
  runtimeUs?: number;
  deadlineUs?: number;
  periodUs?: number;
}

/** Number of CPUs this machine has, i.e. the ids 0..n-1 that exist. */
export function cpuCount(): number {
  // os.cpus() lists every CPU the kernel knows; it may be empty in some
  // sandboxes, where availableParallelism (the affinity mask) is the best guess.
  return cpus().length || availableParallelism();
}

/**
 * Parses a Linux CPU list such as `0-1,3` into sorted, distinct CPU ids.
 * Throws a {@link ConfigError} naming `flag` on bad syntax or CPUs that do
 * not exist on this machine.
 */
export function parseCpuList(text: string, flag: string = RT_FLAGS.cpus): number[] {
  const bad = (why: string) => new ConfigError(`${flag} '${text}': ${why}`);
  if (typeof text !== 'string' || text.trim() === '') throw bad('expected a CPU list like 0-1,3');
  const found = new Set<number>();
  for (const item of text.split(',')) {
    const match = /^\s*(\d{1,4})\s*(?:-\s*(\d{1,4})\s*)?$/.exec(item);
    if (match === null) throw bad(`'${item}' is not a CPU number or range N-M`);
    const first = Number(match[1]);
    const last = match[2] === undefined ? first : Number(match[2]);
    if (last < first) throw bad(`range ${first}-${last} runs backwards`);
    for (let cpu = first; cpu <= last; cpu++) found.add(cpu);
  }
  const list = [...found].sort((a, b) => a - b);
  checkCpusExist(list, flag, `'${text}'`);
  return list;
}

/**
 * Checks `o` and returns a normalised copy (cpus sorted and distinct,
 * priority 0 filled in for the non-real-time policies). Throws a
 * {@link ConfigError} naming the offending flag.
 */
export function validateRtOptions(o: RtOptions): RtOptions {
  const policy = checkPolicy(o.policy);
  const priority = checkPriority(policy, o.priority);
  const out: RtOptions = {};
  if (policy !== undefined) out.policy = policy;
  if (priority !== undefined) out.priority = priority;
  if (o.cpus !== undefined) out.cpus = checkCpuArray(o.cpus);
  if (o.mlock !== undefined) out.mlock = checkMlock(o.mlock);
  Object.assign(out, checkDeadline(policy, o, out.cpus));
  return out;
}

/**
 * SCHED_DEADLINE's parameters: all three only with `--rt-policy deadline`,
 * runtime and deadline required, period defaulting to the deadline,
 * runtime ≤ deadline ≤ period and each at least {@link DEADLINE_MIN_NS};
 * no --cpus (the kernel admits deadline tasks only with an affinity
 * spanning their root domain).
 */
function checkDeadline(
  policy: RtPolicy | undefined,
  o: RtOptions,
  cpus: number[] | undefined,
): Pick<RtOptions, 'runtimeUs' | 'deadlineUs' | 'periodUs'> {
  const F = RT_FLAGS;
  const given = (['runtimeUs', 'deadlineUs', 'periodUs'] as const).filter(
    (k) => o[k] !== undefined,
  );
  if (policy !== 'deadline') {
    if (given.length > 0)
      throw new ConfigError(`${F[given[0]]} applies only to ${F.policy} deadline`);
    return {};
  }
  for (const k of given) {
    const v = o[k] as number;
    if (!Number.isInteger(v) || v < 0)
      throw new ConfigError(`${F[k]} ${v} is not a whole number of µs`);
    if (v * 1000 < DEADLINE_MIN_NS)
      throw new ConfigError(`${F[k]} ${v}: the kernel needs at least ${DEADLINE_MIN_NS} ns (2 µs)`);
  }
  if (o.runtimeUs === undefined || o.deadlineUs === undefined)
    throw new ConfigError(`${F.policy} deadline needs ${F.runtimeUs} and ${F.deadlineUs}`);
  const periodUs = o.periodUs ?? o.deadlineUs;
  if (o.runtimeUs > o.deadlineUs)
    throw new ConfigError(`${F.runtimeUs} ${o.runtimeUs} exceeds ${F.deadlineUs} ${o.deadlineUs}`);
  if (o.deadlineUs > periodUs)
    throw new ConfigError(`${F.deadlineUs} ${o.deadlineUs} exceeds ${F.periodUs} ${periodUs}`);
  if (cpus !== undefined)
    throw new ConfigError(
      `${F.cpus} with ${F.policy} deadline: the kernel admits deadline threads only with the whole root domain's CPUs`,
    );
  return { runtimeUs: o.runtimeUs, deadlineUs: o.deadlineUs, periodUs };
}

/** True for the policies whose priority is 1..99. */
export function isRealTimePolicy(policy: RtPolicy | undefined): policy is 'fifo' | 'rr' {
  return policy === 'fifo' || policy === 'rr';
}

function checkPolicy(policy: unknown): RtPolicy | undefined {
  if (policy === undefined || (RT_POLICIES as readonly unknown[]).includes(policy)) {
    return policy as RtPolicy | undefined;
  }
  throw new ConfigError(
    `${RT_FLAGS.policy} ${String(policy)} is not one of ${RT_POLICIES.join(', ')}`,
  );
}

function checkPriority(policy: RtPolicy | undefined, priority: unknown): number | undefined {
  const flag = RT_FLAGS.priority;
  if (priority !== undefined && !Number.isInteger(priority)) {
    throw new ConfigError(`${flag} ${String(priority)} is not an integer`);
  }
  const p = priority as number | undefined;
  if (isRealTimePolicy(policy)) {
    if (p === undefined) {
      throw new ConfigError(`${RT_FLAGS.policy} ${policy} needs ${flag} 1..${RT_PRIORITY_MAX}`);
    }
    if (p < 1 || p > RT_PRIORITY_MAX) {
      throw new ConfigError(
        `${flag} ${p} is outside 1..${RT_PRIORITY_MAX} for ${RT_FLAGS.policy} ${policy}`,
      );
    }
    return p;
  }
  if (p !== undefined && p !== 0) {
    const given = policy === undefined ? 'without --rt-policy' : `for ${RT_FLAGS.policy} ${policy}`;
    throw new ConfigError(`${flag} ${p} must be 0 or absent ${given} (only fifo and rr take one)`);
  }
  return policy === undefined ? undefined : 0;
}

function checkCpuArray(list: unknown): number[] {
  const flag = RT_FLAGS.cpus;
  if (!Array.isArray(list) || list.length === 0) {
    throw new ConfigError(`${flag} must list at least one CPU`);
  }
  for (const cpu of list) {
    if (!Number.isInteger(cpu) || cpu < 0) {
      throw new ConfigError(`${flag}: ${String(cpu)} is not a CPU number`);
    }
  }
  const sorted = [...new Set(list as number[])].sort((a, b) => a - b);
  checkCpusExist(sorted, flag, sorted.join(','));
  return sorted;
}

function checkCpusExist(sorted: number[], flag: string, shown: string): void {
  const count = cpuCount();
  const missing = sorted.filter((cpu) => cpu >= count);
  if (missing.length > 0) {
    throw new ConfigError(
      `${flag} ${shown}: CPU ${missing.join(', ')} does not exist (this machine has CPUs 0-${count - 1})`,
    );
  }
}

function checkMlock(mlock: unknown): boolean {
  if (typeof mlock !== 'boolean') {
    throw new ConfigError(`${RT_FLAGS.mlock} must be true or false, not ${String(mlock)}`);
  }
  return mlock;
}
