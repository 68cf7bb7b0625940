/**
 * The background copies' pacer (src/io/rate-pacer.ts), driven with explicit
 * clocks: the wait it asks for keeps a stream at its rate, and a pause (a
 * prefill pass before the start instant, a merge's fdatasync) earns at most
 * the burst, never an unpaced run of everything the pause would have allowed.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DEFAULT_PACE_BURST_MS, QuietWatch, RatePacer } from '../../src/io/rate-pacer.js';

const MiB = 1024 * 1024;

describe('RatePacer', () => {
  it('asks for no wait without a rate', () => {
    const p = new RatePacer(0, DEFAULT_PACE_BURST_MS, 0);
    expect(p.add(1024 * MiB, 0)).toBe(0);
    expect(p.aheadMs(0)).toBe(0);
  });

  it('keeps a stream at its rate: a second of bytes at once is a second of wait', () => {
    const p = new RatePacer(32 * MiB, 100, 0);
    expect(p.add(32 * MiB, 0)).toBeCloseTo(1000);
    expect(p.aheadMs(400)).toBeCloseTo(600);
    expect(p.aheadMs(1000)).toBe(0);
  });

  it('forgets a pause beyond the burst: 64 s before the first byte is no credit for 64 s of bytes', () => {
    // The copier's case: its thread starts, a prefill pass takes 64 s, then the disk pass runs.
    const p = new RatePacer(32 * MiB, 100, 0);
    const wait = p.add(32 * MiB, 64_000);
    // One second of bytes, less the 100 ms of credit the burst keeps.
    expect(wait).toBeCloseTo(900);
  });

  it('restart drops what was done and any credit', () => {
    const p = new RatePacer(MiB, 100, 0);
    p.add(10 * MiB, 0);
    p.restart(5000);
    expect(p.aheadMs(5000)).toBe(0);
    expect(p.add(MiB, 5000)).toBeCloseTo(1000);
  });

  it('never lets more through than rate × time + burst + one step, whatever the pauses', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 256 }).map((m) => m * MiB),
        fc.integer({ min: 0, max: 500 }),
        fc.array(
          fc.record({
            bytes: fc.integer({ min: 1, max: 4 * MiB }),
            pauseMs: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 20_000 })),
          }),
          { minLength: 1, maxLength: 200 },
        ),
        (rate, burstMs, steps) => {
          const p = new RatePacer(rate, burstMs, 0);
          let now = 0;
          // Bytes done since the last pause that could have earned credit, and when it ended.
          let windowStart = 0;
          let windowBytes = 0;
          let largest = 0;
          for (const s of steps) {
            if (s.pauseMs > 0) {
              now += s.pauseMs;
              windowStart = now;
              windowBytes = 0;
            }
            windowBytes += s.bytes;
            largest = Math.max(largest, s.bytes);
            // The copier waits as long as asked before the next step.
            now += p.add(s.bytes, now);
            const allowed = (rate * (now - windowStart + burstMs)) / 1000 + largest;
            expect(windowBytes).toBeLessThanOrEqual(allowed + 1);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('QuietWatch', () => {
  it('counts quiet time from the last sample that saw a new request or one in flight', () => {
    const w = new QuietWatch();
    // Never seen busy: quiet since forever.
    expect(w.quietFor(0, 0, 100)).toBe(Number.POSITIVE_INFINITY);
    // A request started (the counter moved): busy now.
    expect(w.quietFor(1, 0, 200)).toBe(0);
    expect(w.quietFor(1, 0, 250)).toBe(50);
    // One in flight keeps it busy although no new one started.
    expect(w.quietFor(1, 1, 300)).toBe(0);
    expect(w.quietFor(1, 0, 340)).toBe(40);
    // The counter wraps (Int32) and is compared, not ordered.
    expect(w.quietFor(-2147483648, 0, 400)).toBe(0);
    expect(w.quietFor(-2147483648, 0, 1400)).toBe(1000);
  });
});
