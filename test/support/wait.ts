/**
 * The one way tests wait for something to happen: poll a condition until it
 * holds, with a deadline that names what was awaited. Tests synchronise on
 * events, never on sleeps; to prove that something did NOT happen, send a
 * sentinel after it and wait for the sentinel instead.
 */

/** What {@link waitFor} throws when its deadline passes. */
export class WaitTimeoutError extends Error {
  override readonly name = 'WaitTimeoutError';
}

/** How often {@link waitFor} re-evaluates its predicate. */
export const WAIT_POLL_MS = 5;

/**
 * Resolves with the first truthy value `predicate` returns, evaluating it now
 * and then every {@link WAIT_POLL_MS} ms (an async predicate is awaited before
 * the next evaluation starts). Rejects with a {@link WaitTimeoutError} naming
 * `what` and `timeoutMs` once the deadline passes, or with whatever `predicate`
 * throws.
 *
 * @param predicate the condition; may return a value (e.g. the line it found) to hand back
 * @param what what is awaited, for the timeout message ("the stats line", "frame 3 at B"); a
 *   function is called at the timeout, so the message can tell the state things were left in
 * @param timeoutMs how long to wait before giving up
 */
export async function waitFor<T>(
  predicate: () => T | Promise<T>,
  what: string | (() => string),
  timeoutMs = 10_000,
): Promise<NonNullable<T>> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value as NonNullable<T>;
    if (performance.now() >= deadline) {
      const awaited = typeof what === 'string' ? what : what();
      throw new WaitTimeoutError(`timed out after ${timeoutMs} ms waiting for ${awaited}`);
    }
    await new Promise((resolve) => setTimeout(resolve, WAIT_POLL_MS));
  }
}
