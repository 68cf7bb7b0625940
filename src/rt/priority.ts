/**
 * Guest-to-host priority mapping (DESIGN rule 8): a guest task's real-time
 * priority p_guest in 0..99 becomes the host priority
 * p = ⌊p_guest · p_max / 99⌋, so the guest's whole range is squeezed under
 * the ceiling p_max the host grants the VM's threads, order preserved.
 */
import { RT_PRIORITY_MAX } from './options.js';

/** Top of the guest's priority range (a Linux guest's SCHED_FIFO/RR 1..99), the formula's 99. */
export const GUEST_PRIORITY_MAX = 99;

/**
 * Maps a guest priority (integer 0..99) under a host ceiling `pMax`
 * (integer 1..{@link RT_PRIORITY_MAX}). 0 maps to 0, which is not a fifo/rr priority: callers
 * treat it as "not real-time". Throws RangeError naming the argument.
 */
export function mapGuestPriority(pGuest: number, pMax: number): number {
  checkPriority('pGuest', pGuest, 0, GUEST_PRIORITY_MAX);
  checkPriority('pMax', pMax, 1, RT_PRIORITY_MAX);
  return scalePriority(pGuest, pMax, GUEST_PRIORITY_MAX);
}

/**
 * The same formula over any range: ⌊pGuest · pMax / guestMax⌋, for guest
 * priorities 0..guestMax (higher = more urgent) under a host ceiling
 * 0..guestMax. Used for I/O priority levels (src/io/ioprio.ts: guestMax 7,
 * priority 7 − level), where the guest's levels in the ceiling's class are
 * squeezed under the ceiling with their order kept. Throws RangeError.
 */
export function scalePriority(pGuest: number, pMax: number, guestMax: number): number {
  checkPriority('guestMax', guestMax, 1, GUEST_PRIORITY_MAX);
  checkPriority('pGuest', pGuest, 0, guestMax);
  checkPriority('pMax', pMax, 0, guestMax);
  return Math.floor((pGuest * pMax) / guestMax);
}

function checkPriority(name: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`guest priority mapping: ${name} ${value} is outside ${min}..${max}`);
  }
}
