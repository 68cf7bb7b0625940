/**
 * Errors raised by the shared-memory primitives. Argument mistakes (a bad
 * capacity, a counter index out of range) are `RangeError`s naming the
 * argument; misuse of a primitive's state is a {@link LockError} with a
 * stable `code`.
 */
import { VhostRtError } from '../errors.js';

/** Stable codes of {@link LockError}. */
export type LockErrorCode =
  /** `StatCounters.endBatch()` with no batch open. */
  | 'LOCK_NOT_HELD'
  /** `attach()` was given a SharedArrayBuffer that does not hold the expected structure. */
  | 'SHM_BAD_LAYOUT'
  /** A second `waitReadable()`/`waitWritable()` while one is pending: each side has one waiter. */
  | 'RING_ALREADY_WAITING'
  /** A counter reader kept seeing a write in progress (the writer died mid-update). */
  | 'COUNTERS_BUSY'
  /** A second counter update section was opened while one is open elsewhere. */
  | 'COUNTERS_SECOND_WRITER';

/** Misuse of a shared-memory ring or counter block. */
export class LockError extends VhostRtError {
  declare readonly code: LockErrorCode;

  constructor(code: LockErrorCode, message: string) {
    super(code, message);
  }
}
