/**
 * I/O priorities (ioprio_set(2) encoding: class << 13 | level) as they travel
 * from the guest to the disk. A Linux guest puts its request's priority in the
 * 32-bit field after `type` of the virtio-blk request header (Linux fills it
 * from req_get_ioprio()); the device turns it into the priority the host
 * request is submitted with, per `--guest-ioprio honor|clamp|ignore` and the
 * device's `--ioprio CLASS[:LEVEL]` (its default and its ceiling).
 *
 * Pure: no system calls. The engines submit the result (Linux AIO
 * IOCB_FLAG_IOPRIO + aio_reqprio, io_uring sqe->ioprio, the threads engine's
 * ioprio_set on the pool thread before each preadv/pwritev).
 */
import { ConfigError } from '../errors.js';
import { scalePriority } from '../rt/priority.js';

/** I/O scheduling classes, as ionice(1) numbers them. */
export const IoprioClass = { NONE: 0, RT: 1, BE: 2, IDLE: 3 } as const;
/** Bits the class is shifted by in an ioprio value. */
export const IOPRIO_CLASS_SHIFT = 13;
/** Levels 0 (highest) .. 7 of the RT and BE classes. */
export const IOPRIO_LEVELS = 8;
/** The level a class gets when none is named (ionice's default, IOPRIO_NORM). */
export const IOPRIO_DEFAULT_LEVEL = 4;
/** `--ioprio` class names, ionice's. */
export const IOPRIO_CLASS_NAMES = ['rt', 'be', 'idle'] as const;
/** What `--guest-ioprio` accepts. */
export const GUEST_IOPRIO_MODES = ['honor', 'clamp', 'ignore'] as const;
/** How the guest's ioprio is used: as is, never above the device's ceiling, or not at all. */
export type GuestIoprioMode = (typeof GUEST_IOPRIO_MODES)[number];
/**
 * The ceiling of a device without `--ioprio`: best-effort level 0. A guest
 * cannot reach the RT class unless the operator grants it. (Such a device
 * submits requests that carry no priority with none: the worker's own.)
 */
export const DEFAULT_IOPRIO_CEILING = (IoprioClass.BE << IOPRIO_CLASS_SHIFT) | 0;

/** class << 13 | level. */
export function ioprioValue(cls: number, level: number): number {
  return (cls << IOPRIO_CLASS_SHIFT) | level;
}

/** The class of an ioprio value. */
export function ioprioClass(ioprio: number): number {
  return (ioprio >>> IOPRIO_CLASS_SHIFT) & 7;
}

/** The level of an ioprio value. */
export function ioprioLevel(ioprio: number): number {
  return ioprio & ((1 << IOPRIO_CLASS_SHIFT) - 1);
}

/** `rt:4`, `be:0`, `idle`, `none`: an ioprio value as ionice would name it. */
export function formatIoprio(ioprio: number): string {
  const cls = ioprioClass(ioprio);
  if (cls === IoprioClass.NONE) return 'none';
  const name = IOPRIO_CLASS_NAMES[cls - 1] ?? `class${cls}`;
  return cls === IoprioClass.IDLE ? name : `${name}:${ioprioLevel(ioprio)}`;
}

/**
 * Parses `--ioprio CLASS[:LEVEL]`: `rt`, `be` (level 0..7, default 4) or
 * `idle` (no level). Throws a ConfigError naming the flag.
 */
export function parseIoprio(text: string, flag = '--ioprio'): number {
  const m = /^(rt|be|idle)(?::(\d))?$/.exec(text);
  if (m === null)
    throw new ConfigError(`${flag} ${text}: expected rt[:0-7], be[:0-7] or idle (as ionice)`);
  const cls = IOPRIO_CLASS_NAMES.indexOf(m[1] as (typeof IOPRIO_CLASS_NAMES)[number]) + 1;
  if (cls === IoprioClass.IDLE) {
    if (m[2] !== undefined) throw new ConfigError(`${flag} ${text}: the idle class has no level`);
    return ioprioValue(cls, 0);
  }
  const level = m[2] === undefined ? IOPRIO_DEFAULT_LEVEL : Number(m[2]);
  if (level >= IOPRIO_LEVELS) throw new ConfigError(`${flag} ${text}: level must be 0..7`);
  return ioprioValue(cls, level);
}

/** Checks a `--guest-ioprio` value. */
export function parseGuestIoprioMode(text: string): GuestIoprioMode {
  if ((GUEST_IOPRIO_MODES as readonly string[]).includes(text)) return text as GuestIoprioMode;
  throw new ConfigError(`--guest-ioprio ${text}: choose one of ${GUEST_IOPRIO_MODES.join(', ')}`);
}

/** Sort rank of a class, 0 first: RT, then BE and NONE (the thread's own, BE by default), then IDLE. */
export const CLASS_RANK = Uint8Array.of(1, 0, 1, 2);
/** Number of distinct ranks in {@link CLASS_RANK}. */
export const CLASS_RANKS = 3;

/** True when `a` is a higher priority than `b` (both valid, not NONE). */
function above(a: number, b: number): boolean {
  const ra = CLASS_RANK[ioprioClass(a)];
  const rb = CLASS_RANK[ioprioClass(b)];
  return ra < rb || (ra === rb && ioprioLevel(a) < ioprioLevel(b));
}

/**
 * Clamp with order kept (DESIGN rule 8's p = ⌊p_guest · p_max / p_guest_max⌋):
 * a guest priority in the ceiling's own class is squeezed under the ceiling's
 * level rather than cut off at it, so two guest levels that differ still
 * differ where room allows (levels run 7 = lowest .. 0 = highest: priority 7 − level).
 */
function clampUnder(guest: number, ceiling: number): number {
  const gc = ioprioClass(guest);
  const cc = ioprioClass(ceiling);
  if (gc === cc && gc !== IoprioClass.IDLE) {
    const top = IOPRIO_LEVELS - 1;
    const p = scalePriority(top - ioprioLevel(guest), top - ioprioLevel(ceiling), top);
    return ioprioValue(gc, top - p);
  }
  return above(guest, ceiling) ? ceiling : guest;
}

/**
 * The device's ioprio policy as a table: a guest header value becomes the
 * host ioprio in one lookup (no branches per request beyond the range check).
 */
export class IoprioPolicy {
  readonly mode: GuestIoprioMode;
  /** The device's own priority (`--ioprio`; 0: none, the thread's): for requests that carry none. */
  readonly device: number;
  /** The highest a guest gets in `clamp` mode: `--ioprio`, else {@link DEFAULT_IOPRIO_CEILING}. */
  readonly ceiling: number;
  /** Host ioprio per guest class * 8 + level (classes 0..3). */
  private readonly table = new Uint16Array(4 * IOPRIO_LEVELS);

  constructor(mode: GuestIoprioMode = 'clamp', device?: number) {
    this.mode = mode;
    this.device = device ?? 0;
    this.ceiling = device ?? DEFAULT_IOPRIO_CEILING;
    for (let cls = 0; cls < 4; cls++) {
      for (let level = 0; level < IOPRIO_LEVELS; level++) {
        this.table[cls * IOPRIO_LEVELS + level] = this.resolve(ioprioValue(cls, level));
      }
    }
  }

  private resolve(guest: number): number {
    const cls = ioprioClass(guest);
    if (this.mode === 'ignore' || cls === IoprioClass.NONE) return this.device;
    // The idle class has no levels: the kernel takes any, we submit 0.
    const g = cls === IoprioClass.IDLE ? ioprioValue(cls, 0) : guest;
    return this.mode === 'honor' ? g : clampUnder(g, this.ceiling);
  }

  /**
   * The host ioprio for the 32-bit guest header field: unknown classes or
   * levels (a hostile or foreign guest) get the device's own priority.
   */
  hostIoprio(guest: number): number {
    if (guest >>> 0 >= 4 << IOPRIO_CLASS_SHIFT || ioprioLevel(guest) >= IOPRIO_LEVELS)
      return this.device;
    return this.table[ioprioClass(guest) * IOPRIO_LEVELS + ioprioLevel(guest)];
  }
}
