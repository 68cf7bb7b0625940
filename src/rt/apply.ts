/**
 * Applies {@link RtOptions} to the CALLING thread through the native addon.
 * Device workers call {@link applyRtOptions} first thing, the logger thread
 * calls {@link lowerToBackground}; the main thread keeps its defaults.
 * On Linux scheduling policy, priority, nice value and affinity are
 * per-thread (tid 0 = the calling thread), so one worker's settings never
 * leak into another's. mlockall is the exception: it is process-wide.
 */
import { readFileSync } from 'node:fs';
import { ConfigError, SystemError } from '../errors.js';
import { native } from '../native.js';
import { RT_FLAGS, type RtOptions, type RtPolicy, validateRtOptions } from './options.js';

/** What the kernel says about one thread's real-time state. */
export interface ThreadRtState {
  /** Kernel thread id (gettid). */
  tid: number;
  /** Policy name as in {@link RtPolicy} ('deadline' or 'unknown(N)' for others). */
  policy: string;
  /** Static priority: 1..99 under fifo/rr, 0 otherwise. */
  priority: number;
  /** CPUs the thread may run on, ascending. */
  cpus: number[];
}

/** Which background setting {@link lowerToBackground} obtained. */
export type BackgroundMode = 'idle' | 'nice';

/** The nice value used when SCHED_IDLE is refused: the lowest there is. */
export const BACKGROUND_NICE = 19;
/** Per thread (module state is per isolate): the 'exit' listener of lockMemory is registered. */
let unlockOnExitInstalled = false;
/** Per thread: --mlock was asked for, so the guest RAM this thread serves gets locked. */
let guestMemoryLock = false;
/** sched_getscheduler may report this flag OR-ed into the policy. */
const SCHED_RESET_ON_FORK = 0x40000000;
/** SCHED_DEADLINE (set through sched_setattr, `--rt-policy deadline`). */
const SCHED_DEADLINE = 6;

/**
 * Validates `o` and applies it to the calling thread: affinity first (so the
 * thread is on its CPUs before it may outrank anything there), then the
 * scheduling policy. `mlock` is recorded: the device runtime of this thread
 * then locks every guest-memory region it is given ({@link lockGuestMemory}),
 * so the data path never page-faults on guest RAM. The process is NOT
 * mlockall'ed: V8 returns freed heap pages with madvise(MADV_DONTNEED),
 * which fails on locked pages, and V8 aborts the process on that failure
 * (seen here under load: a crash in the sweeper's DiscardUnusedMemory).
 * Returns the thread's resulting state.
 * A refusal by the kernel throws a {@link ConfigError} naming the option, with
 * the {@link SystemError} as `cause`.
 */
export function applyRtOptions(o: RtOptions): ThreadRtState {
  const v = validateRtOptions(o);
  const cpus = v.cpus;
  if (cpus !== undefined) {
    const what = `${RT_FLAGS.cpus} ${cpus.join(',')}`;
    kernel(what, 'sched_setaffinity', () => native.schedSetAffinity(0, cpus));
  }
  if (v.mlock === true) guestMemoryLock = true;
  const policy = v.policy;
  if (policy === 'deadline') {
    applyDeadline(v);
  } else if (policy !== undefined) {
    const what = `${RT_FLAGS.policy} ${policy}`;
    const number = policyNumber(policy);
    kernel(what, 'sched_setscheduler', () => native.schedSetScheduler(0, number, v.priority ?? 0));
  }
  return describeThread();
}

/**
 * sched_setattr(SCHED_DEADLINE, with SCHED_FLAG_RESET_ON_FORK so threads the
 * worker starts — a threads-engine pool — are ordinary ones). The kernel's
 * refusal (EBUSY: admission control found no bandwidth left; EPERM: no
 * CAP_SYS_NICE, or an affinity narrower than the root domain; EINVAL) is a
 * ConfigError naming the flags with the errno's name.
 */
function applyDeadline(v: RtOptions): void {
  const r = v.runtimeUs as number;
  const d = v.deadlineUs as number;
  const p = v.periodUs ?? d;
  const what = `${RT_FLAGS.policy} deadline ${RT_FLAGS.runtimeUs} ${r} ${RT_FLAGS.deadlineUs} ${d} ${RT_FLAGS.periodUs} ${p}`;
  kernel(what, 'sched_setattr', () => native.schedSetAttrDeadline(0, r * 1000, d * 1000, p * 1000));
}

/**
 * Whether the kernel lets this process submit I/O at priority `ioprio`
 * (ioprio_set(2) encoding): tries it on the calling thread and puts the
 * thread's own back. Null when allowed, else the errno's name (EPERM: the RT
 * class needs CAP_SYS_ADMIN or CAP_SYS_NICE). The kernel applies the same
 * check to each request's aio_reqprio / sqe->ioprio.
 */
export function probeIoprio(ioprio: number): string | null {
  const own = native.ioprioGet(0);
  try {
    native.ioprioSet(0, ioprio);
  } catch (err) {
    if (!(err instanceof SystemError)) throw err;
    return err.code;
  }
  native.ioprioSet(0, own);
  return null;
}

/** Whether this thread was asked (--mlock) to lock the guest memory it serves. */
export function guestMemoryLockRequested(): boolean {
  return guestMemoryLock;
}

/**
 * Locks the pages of each buffer (guest RAM regions) into memory. A refusal
 * (RLIMIT_MEMLOCK without CAP_IPC_LOCK, say) is a ConfigError naming --mlock.
 */
export function lockGuestMemory(buffers: readonly SharedArrayBuffer[]): void {
  for (const b of buffers) kernel(RT_FLAGS.mlock, 'mlock', () => native.mlockBuffer(b));
}

/**
 * Not used by the daemon (see {@link applyRtOptions}); kept for embedders
 * that run no JavaScript on the locked process's hot threads.
 *
 * mlockall(MCL_CURRENT | MCL_FUTURE): every page of the process, now and
 * later, stays in RAM, so no thread stalls on a page fault. Process-wide.
 *
 * Hazard (Node 20 / V8 11): V8 aborts the whole process when it tears down
 * an isolate — a worker_thread ending, or the process exiting — while memory
 * is locked (its madvise(MADV_DONTNEED) fails with EINVAL and V8 CHECKs it).
 * So this also registers, once per calling thread, a `process` 'exit'
 * listener that calls {@link unlockMemory}: a thread that locked memory
 * unlocks it (for the whole process) as it ends normally. Not covered, and
 * the caller's duty: `worker.terminate()` runs no listener in the worker, so
 * call {@link unlockMemory} before terminating a worker while memory is
 * locked, and re-lock afterwards if other threads still want it.
 * Throws a {@link ConfigError} naming --mlock if the kernel refuses.
 */
export function lockMemory(): void {
  const flags = native.constants.MCL_CURRENT | native.constants.MCL_FUTURE;
  kernel(RT_FLAGS.mlock, 'mlockall', () => native.mlockall(flags));
  if (!unlockOnExitInstalled) {
    unlockOnExitInstalled = true;
    process.once('exit', unlockMemory);
  }
}

/** munlockall: releases the process-wide memory lock; see {@link lockMemory} for when. */
export function unlockMemory(): void {
  native.munlockall();
}

/** Whether any memory of this process is locked now (VmLck in /proc/self/status). */
export function isMemoryLocked(): boolean {
  const match = /^VmLck:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return match !== null && Number(match[1]) > 0;
}

/** The calling thread's tid, policy, priority and affinity, as the kernel reports them. */
export function describeThread(): ThreadRtState {
  const { policy, priority } = native.schedGetScheduler(0);
  return {
    tid: native.gettid(),
    policy: policyName(policy),
    priority,
    cpus: native.schedGetAffinity(0).sort((a, b) => a - b),
  };
}

/**
 * Makes the calling thread (the logger) yield to everything else: SCHED_IDLE,
 * or nice 19 if the kernel refuses that (e.g. a seccomp or container policy).
 * Returns which one it got. Lowering one's own priority is always allowed,
 * so a failure of the fallback too is thrown as the SystemError it is.
 */
export function lowerToBackground(): BackgroundMode {
  try {
    native.schedSetScheduler(0, native.constants.SCHED_IDLE, 0);
    return 'idle';
  } catch (err) {
    if (!(err instanceof SystemError)) throw err;
  }
  native.setNice(0, BACKGROUND_NICE);
  return 'nice';
}

/** Maps a CLI policy name to the kernel's SCHED_* number. */
export function policyNumber(policy: RtPolicy): number {
  const c = native.constants;
  const numbers: Record<RtPolicy, number> = {
    deadline: SCHED_DEADLINE,
    fifo: c.SCHED_FIFO,
    rr: c.SCHED_RR,
    other: c.SCHED_OTHER,
    batch: c.SCHED_BATCH,
    idle: c.SCHED_IDLE,
  };
  return numbers[policy];
}

/** Maps a kernel SCHED_* number (as sched_getscheduler returns it) to a policy name. */
export function policyName(policy: number): string {
  const c = native.constants;
  const base = policy & ~SCHED_RESET_ON_FORK;
  const names: Record<number, string> = {
    [c.SCHED_OTHER]: 'other',
    [c.SCHED_FIFO]: 'fifo',
    [c.SCHED_RR]: 'rr',
    [c.SCHED_BATCH]: 'batch',
    [c.SCHED_IDLE]: 'idle',
    [SCHED_DEADLINE]: 'deadline',
  };
  return names[base] ?? `unknown(${policy})`;
}

/** Runs one system call; an errno becomes a ConfigError naming the option `what`. */
function kernel(what: string, syscall: string, call: () => void): void {
  try {
    call();
  } catch (err) {
    if (!(err instanceof SystemError)) throw err;
    throw new ConfigError(`${what}: the kernel refused ${syscall} (${err.code})`, { cause: err });
  }
}
