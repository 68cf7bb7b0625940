/**
 * Flush, discard and write-zeroes for the engines that have no native form of
 * them (sync): fdatasync / fallocate on libuv's thread pool, completing
 * through the engine's handler like any other operation.
 */
import { native } from '../native.js';
import { IoOp, type IoOpCode } from './engine.js';
import { errnoOf } from './staging.js';

/** Runs `op` on `fd` off this thread; `done(result)` gets 0 or -errno on this thread's loop. */
export function runSlowOp(
  fd: number,
  op: IoOpCode,
  offset: number,
  length: number,
  done: (result: number) => void,
): void {
  const callback = (err: Error | null) => done(err ? -errnoOf(err) : 0);
  const c = native.constants;
  if (op === IoOp.FLUSH) native.fdatasyncAsync(fd, callback);
  else if (op === IoOp.DISCARD)
    native.fallocateAsync(
      fd,
      c.FALLOC_FL_PUNCH_HOLE | c.FALLOC_FL_KEEP_SIZE,
      offset,
      length,
      callback,
    );
  else native.fallocateAsync(fd, c.FALLOC_FL_ZERO_RANGE, offset, length, callback);
}
