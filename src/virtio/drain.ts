/**
 * The one drain loop every device runs after a kick (blk requests, net
 * transmit, console output, control queues): pop chains with kicks off, hand
 * each to the device, and before going to sleep turn kicks back on and look
 * once more, because a chain published in between may have come with no kick.
 *
 * It only pops. Completing is the device's business and is batched (DESIGN
 * rule 4): the handler (or the I/O completion it starts) adds a used entry
 * per chain with `addUsed`, and the device publishes used.idx once, and
 * decides on one interrupt, at the end of the batch (`publishUsed` /
 * `Vring.flush`). Nothing here stores used.idx.
 *
 * No allocation per call: the handler is an object with a method (created
 * once per device or queue, not a closure per kick) and the outcome goes into
 * a preallocated {@link DrainResult}.
 */
import type { DescriptorChain } from './descriptor-chain.js';

/** Why {@link drainQueue} returned. */
export const DrainStop = {
  /** The ring is empty and kicks are back on (as far as the queue allows). */
  EMPTY: 0,
  /** `budget` chains were popped; kicks are still off: the caller must schedule the next run. */
  BUDGET: 1,
  /** The handler asked to stop; kicks are still off: the caller must run again once it can go on. */
  HANDLER: 2,
} as const;
/** One of the {@link DrainStop} values. */
export type DrainStopCode = (typeof DrainStop)[keyof typeof DrainStop];

/**
 * What the loop needs of a queue; `SplitVirtqueue` and `PackedVirtqueue`
 * have it. Any method may throw `QueueBrokenError`, which the loop
 * passes on.
 */
export interface DrainableQueue {
  /** Kicks on (true) or off (false). */
  setNotification(enabled: boolean): void;
  /** Pops the next chain into `chain`; false when the ring is empty. */
  pop(chain: DescriptorChain): boolean;
  /** Kicks back on; true when chains are available (pop again, do not sleep). */
  enableNotification(): boolean;
}

/**
 * The device's side of the loop. One object per device (or per queue, when
 * the handler must know which queue it serves), made once.
 */
export interface ChainHandler {
  /**
   * Handles one popped chain, also one with `chain.error` set (complete it
   * with used length 0). The chain is reused for the next pop: copy out or
   * re-point readers before returning. Return true to go on, false to stop
   * after this chain (no free request slot left; an output ring full, the
   * chain held to be resumed).
   */
  handleChain(chain: DescriptorChain): boolean;
}

/** Outcome of one {@link drainQueue} run, preallocated by the caller and overwritten per run. */
export class DrainResult {
  /** Chains popped (and handed to the handler) by the run, also when it threw. */
  popped = 0;
  /** Why the run returned (unchanged from EMPTY when it threw). */
  stop: DrainStopCode = DrainStop.EMPTY;
}

/**
 * Pops chains from `queue` into `chain` and hands each to `handler` until the
 * ring is empty, the handler says stop, or `budget` chains were popped:
 *
 * - EMPTY: nothing left. Kicks were turned back on and the ring re-checked
 *   after that (`enableNotification`), so the driver will kick for the next
 *   chain. (An adaptive poller overriding `setNotification` may keep kicks
 *   off; it then polls.)
 * - BUDGET: kicks stay off, so a busy queue does not kick while it waits. The
 *   caller must schedule another run (setImmediate) — with kicks off, nobody
 *   else will wake the queue. The ring may even be empty by then; the next
 *   run finds out and turns kicks back on.
 * - HANDLER: kicks stay off too. The caller must run again when what stopped
 *   the handler is over (a request slot frees, the output ring has room),
 *   unconditionally, not only if `pending()` says so: an empty ring with kicks
 *   off would otherwise never wake. A caller that cannot promise that calls
 *   `queue.enableNotification()` itself.
 *
 * A budget check comes after the handler, so the handler's stop wins when
 * both apply. A `QueueBrokenError` from the queue (or anything the handler
 * throws) propagates; `result.popped` counts the chains popped before it.
 *
 * @param budget most chains to pop in this run: a positive integer, or Infinity.
 * @returns `result.stop`.
 * @throws RangeError when `budget` is not a positive integer or Infinity.
 */
export function drainQueue(
  queue: DrainableQueue,
  chain: DescriptorChain,
  handler: ChainHandler,
  budget: number,
  result: DrainResult,
): DrainStopCode {
  if (!(Number.isInteger(budget) && budget > 0) && budget !== Number.POSITIVE_INFINITY) {
    throw new RangeError(`drain budget must be a positive integer or Infinity, got ${budget}`);
  }
  result.popped = 0;
  result.stop = DrainStop.EMPTY;
  do {
    queue.setNotification(false);
    while (queue.pop(chain)) {
      result.popped++;
      if (!handler.handleChain(chain)) return stopWith(result, DrainStop.HANDLER);
      if (result.popped >= budget) return stopWith(result, DrainStop.BUDGET);
    }
  } while (queue.enableNotification());
  return DrainStop.EMPTY;
}

function stopWith(result: DrainResult, stop: DrainStopCode): DrainStopCode {
  result.stop = stop;
  return stop;
}
