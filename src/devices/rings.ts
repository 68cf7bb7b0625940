/**
 * The per-queue ring state every device model keeps, and what they all do
 * with it: find a queue (bounded index), hand rings a new memory table, restart
 * a ring, stop one the guest broke, and decide the interrupts of a batch. The
 * device models add their own per-queue fields to {@link RingState}.
 */
import { type GuestMemory, QueueBrokenError, type SplitVirtqueue } from '../virtio/index.js';

export interface RingState {
  vq: SplitVirtqueue | null;
  enabled: boolean;
  /** Used entries pushed since the last notification decision. */
  dirty: boolean;
  /** The guest broke this ring (QueueBrokenError): it is no longer served. */
  broken: boolean;
}

/** A ring not started yet. */
export function newRingState(): RingState {
  return { vq: null, enabled: false, dirty: false, broken: false };
}

/** Queue `index`, or a RangeError naming the valid range. */
export function ringAt<Q>(queues: readonly Q[], index: number): Q {
  const q = queues[index];
  if (q === undefined)
    throw new RangeError(`queue index ${index} is outside 0..${queues.length - 1}`);
  return q;
}

/** Whether queue `index` exists, is started and enabled, and was not broken. */
export function ringUsable(queues: readonly RingState[], index: number): boolean {
  const q = queues[index];
  return q !== undefined && q.vq !== null && q.enabled && !q.broken;
}

/** Gives every started ring the new memory table. */
export function setRingsMemory(queues: readonly RingState[], memory: GuestMemory): void {
  for (const q of queues) q.vq?.setMemory(memory);
}

/** (Re)starts `q` on `vq`: a restarted ring is served again even if the guest broke the old one. */
export function startRing(q: RingState, vq: SplitVirtqueue): void {
  q.vq = vq;
  q.broken = false;
  q.dirty = false;
}

/**
 * Stops queue `index` if `err` says the guest broke its ring, warning once;
 * anything else is a bug of ours and is rethrown.
 */
export function breakRing(
  q: RingState,
  index: number,
  err: unknown,
  warn: (message: string) => void,
): void {
  if (!(err instanceof QueueBrokenError)) throw err;
  q.broken = true;
  warn(`queue ${index} stopped: ${err.message} (${err.code})`);
}

/**
 * One interrupt per queue per batch, and only when the driver asked for it
 * (EVENT_IDX / NO_INTERRUPT). Returns how many were sent.
 */
export function notifyDirty(queues: readonly RingState[], notify: (queue: number) => void): number {
  let sent = 0;
  for (let i = 0; i < queues.length; i++) {
    const q = queues[i];
    if (!q.dirty || q.vq === null) continue;
    q.dirty = false;
    if (q.vq.needsInterrupt()) {
      notify(i);
      sent++;
    }
  }
  return sent;
}
