/**
 * Errors raised by the shared-memory primitives. Argument mistakes (a bad
 * capacity, a counter index out of range) are `RangeError`s naming the
 * argument; misuse of a primitive's state is a {@link LockError} with a
 * stable `code`.
 */
import { VhostRtError } from '../errors.js';

/** Stable codes of {@link LockError}. */
export type LockErrorCode =
  /** `unlock()` on a lock that nobody holds. */
  | 'LOCK_NOT_HELD'
  /** `lock()` on a single-owner lock its owner already holds: a real mutex would deadlock. */
  | 'LOCK_WOULD_DEADLOCK'
  /** `attach()` was given a SharedArrayBuffer that does not hold the expected structure. */
  | 'SHM_BAD_LAYOUT'
  /** A second `waitReadable()`/`waitWritable()` while one is pending: each side has one waiter. */
  | 'RING_ALREADY_WAITING'
  /** A counter reader kept seeing a write in progress (the writer died mid-update). */
  | 'COUNTERS_BUSY'
  /** A second counter update section was opened while one is open elsewhere. */
  | 'COUNTERS_SECOND_WRITER';

/** Misuse of a lock, ring or counter block. */
export class LockError extends VhostRtError {
  declare readonly code: LockErrorCode;

  constructor(code: LockErrorCode, message: string) {
    super(code, message);
  }
}
