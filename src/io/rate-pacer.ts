/**
 * Pacing of a background copy (a backup's disk pass, a redirect overlay's
 * merge) to a rate in bytes per second, with bounded credit.
 *
 * Why bounded: a pace measured as "bytes so far over time since the start"
 * turns every pause into credit, and credit into an unpaced burst once the
 * pause is over. The backup copier's pace once started when its thread did,
 * before a `prefill-overlay` pass of the whole image (64 s at 32 MiB/s for
 * 2 GiB): the disk pass then had the whole image as credit and read it
 * unpaced in the guest's first measured window (bench/results/backup-redirect.md,
 * "the first round of every run is the worst"). Here time not used beyond
 * {@link RatePacer}'s burst is forgotten, as a token bucket's level stops at
 * its size. Why not IoThrottle (src/io/throttle.ts): that admits requests
 * per device and queue against several buckets; a copy loop needs one number,
 * how long to wait.
 */

/** Credit a pacer keeps by default: a tenth of a second at its rate, as IoThrottle's bursts. */
export const DEFAULT_PACE_BURST_MS = 100;

/** One paced stream of bytes; pure arithmetic over a clock the caller reads. */
export class RatePacer {
  /** When a stream with no credit and nothing done would have started (ms). */
  private origin: number;
  private bytes = 0;

  /**
   * @param bytesPerSecond the rate; 0 or less: no pace (every wait is 0)
   * @param burstMs the most time unused in the past that the stream may make up for at once
   * @param now the clock's value at the start (ms, performance.now() unless a test gives its own)
   */
  constructor(
    private readonly bytesPerSecond: number,
    private readonly burstMs = DEFAULT_PACE_BURST_MS,
    now = performance.now(),
  ) {
    this.origin = now;
  }

  /** Starts again at `now`, with no credit: what was done before no longer counts. */
  restart(now = performance.now()): void {
    this.origin = now;
    this.bytes = 0;
  }

  /**
   * Counts `n` bytes done at `now` and returns how long to wait before the next (ms; 0: go
   * on). Time the stream left unused beyond the burst is forgotten first.
   */
  add(n: number, now = performance.now()): number {
    if (!(this.bytesPerSecond > 0)) return 0;
    const due = (this.bytes / this.bytesPerSecond) * 1000;
    if (now - this.origin - due > this.burstMs) this.origin = now - due - this.burstMs;
    this.bytes += n;
    return this.aheadMs(now);
  }

  /** How far the stream is ahead of its rate at `now` (ms; 0: not ahead). */
  aheadMs(now = performance.now()): number {
    if (!(this.bytesPerSecond > 0)) return 0;
    return Math.max(0, (this.bytes / this.bytesPerSecond) * 1000 - (now - this.origin));
  }
}

/**
 * How long a device's guest has done nothing, from two counters the device keeps:
 * requests started (free-running, wrapping) and requests in flight. A background copy
 * reads it to keep out of the guest's way: the backup copier's `yield-ms` waits for a
 * quiet guest, a redirect overlay's merge goes at its quiet pace while the guest is
 * quiet (`merge-quiet-ms`). Sampled, not signalled: a guest that started and finished a
 * request between two samples is seen by its count.
 */
export class QuietWatch {
  private seenStarted = 0;
  /** When the guest was last seen busy (ms); -Infinity: never, quiet since forever. */
  private busyAt = Number.NEGATIVE_INFINITY;

  /**
   * Takes a sample at `now` (the device's counters as read now) and returns for how long
   * the guest has been quiet (ms; 0 when it is busy now).
   */
  quietFor(started: number, inFlight: number, now = performance.now()): number {
    if (started !== this.seenStarted || inFlight > 0) {
      this.seenStarted = started;
      this.busyAt = now;
    }
    return now - this.busyAt;
  }
}
