/**
 * LatencyHistograms (src/locking/histogram.ts): bucket boundaries, the
 * writer's publish-once-per-batch, percentiles, attach checks, and a reader
 * on this thread against a writer on a worker that never sees half a batch.
 */
import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { LockError } from '../../src/locking/errors.js';
import {
  LATENCY_BUCKET_BOUNDS_NS,
  LatencyHistograms,
  latencyBucket,
  latencyBucketUpperNs,
  mergeSnapshots,
  monotonicNs,
  percentileNs,
} from '../../src/locking/histogram.js';
import { HISTOGRAM, HISTOGRAM_BUCKETS, histogramByteLength } from '../../src/locking/layout.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof LockError ? err.code : `not a LockError: ${String(err)}`;
  }
  return undefined;
}

describe('latency buckets', () => {
  it('are 1.024 µs, then 8 per power of two up to 2^30 ns, then +Inf', () => {
    expect(HISTOGRAM_BUCKETS).toBe(162);
    expect(LATENCY_BUCKET_BOUNDS_NS[0]).toBe(1024);
    expect(LATENCY_BUCKET_BOUNDS_NS.slice(1, 10)).toEqual([
      1152, 1280, 1408, 1536, 1664, 1792, 1920, 2048, 2304,
    ]);
    expect(LATENCY_BUCKET_BOUNDS_NS[HISTOGRAM_BUCKETS - 2]).toBe(2 ** 30);
    expect(LATENCY_BUCKET_BOUNDS_NS[HISTOGRAM_BUCKETS - 1]).toBe(Number.POSITIVE_INFINITY);
    expect(() => latencyBucketUpperNs(HISTOGRAM_BUCKETS)).toThrow(RangeError);
  });

  it('put every value in the bucket whose bounds hold it (upper bound inclusive)', () => {
    expect(latencyBucket(0)).toBe(0);
    expect(latencyBucket(-5)).toBe(0);
    expect(latencyBucket(Number.NaN)).toBe(0);
    expect(latencyBucket(1024)).toBe(0);
    expect(latencyBucket(1024.5)).toBe(1);
    expect(latencyBucket(1025)).toBe(1);
    expect(latencyBucket(1152)).toBe(1);
    expect(latencyBucket(1153)).toBe(2);
    expect(latencyBucket(2 ** 30)).toBe(HISTOGRAM_BUCKETS - 2);
    expect(latencyBucket(2 ** 30 + 1)).toBe(HISTOGRAM_BUCKETS - 1);
    expect(latencyBucket(1e12)).toBe(HISTOGRAM_BUCKETS - 1);
    // Every bound lands in its own bucket and one nanosecond more in the next.
    for (let b = 0; b < HISTOGRAM_BUCKETS - 1; b++) {
      const upper = LATENCY_BUCKET_BOUNDS_NS[b];
      expect(latencyBucket(upper)).toBe(b);
      expect(latencyBucket(upper + 1)).toBe(b + 1);
    }
  });

  it('are never wider than 1/8 of their lower bound from 10 µs to 100 ms', () => {
    for (let b = 1; b < HISTOGRAM_BUCKETS - 1; b++) {
      const lower = LATENCY_BUCKET_BOUNDS_NS[b - 1];
      const upper = LATENCY_BUCKET_BOUNDS_NS[b];
      if (upper < 10_000 || lower > 100_000_000) continue;
      expect((upper - lower) / lower).toBeLessThanOrEqual(1 / 8);
    }
  });
});

describe('LatencyHistograms on one thread', () => {
  it('shows nothing until publish, then everything of the batch', () => {
    const h = LatencyHistograms.create(2);
    const reader = LatencyHistograms.attach(h.buffer);
    h.record(0, 3_000);
    h.record(0, 3_000);
    h.record(1, 70_000);
    h.over(1);
    expect(reader.snapshot(0).count).toBe(0);
    h.publish();
    const s0 = reader.snapshot(0);
    expect(s0.count).toBe(2);
    expect(s0.buckets[latencyBucket(3_000)]).toBe(2);
    expect(s0.sumNs).toBe(6_000);
    expect(s0.maxNs).toBe(3_000);
    expect(s0.over).toBe(0);
    const s1 = reader.snapshot(1);
    expect(s1).toMatchObject({ count: 1, sumNs: 70_000, over: 1, maxNs: 70_000 });
    const slots = new Int32Array(h.buffer);
    expect(slots[HISTOGRAM.SEQ]).toBe(2); // one section per publish, even outside it
    h.publish(); // nothing new: no section
    expect(slots[HISTOGRAM.SEQ]).toBe(2);
    expect(mergeSnapshots([s0, s1])).toMatchObject({ count: 3, sumNs: 76_000, over: 1 });
  });

  it('holds counts and sums past 32 bits', () => {
    const h = LatencyHistograms.create(1);
    for (let i = 0; i < 5; i++) h.record(0, 2 ** 31); // the overflow bucket, sum 2^33.3
    h.publish();
    const s = h.snapshot(0);
    expect(s.sumNs).toBe(5 * 2 ** 31);
    expect(s.buckets[HISTOGRAM_BUCKETS - 1]).toBe(5);
  });

  it('reads percentiles as the bucket bound, capped at the largest value', () => {
    const h = LatencyHistograms.create(1);
    // 999 values of 20 µs and one of 5 ms: p50 and p99.9 at 20 µs's bucket, p100 the max.
    for (let i = 0; i < 999; i++) h.record(0, 20_000);
    h.record(0, 5_000_000);
    h.publish();
    const s = h.snapshot(0);
    const at20 = LATENCY_BUCKET_BOUNDS_NS[latencyBucket(20_000)];
    expect(at20).toBeGreaterThanOrEqual(20_000);
    expect(at20).toBeLessThanOrEqual(20_000 * 1.125);
    expect(percentileNs(s, 0.5)).toBe(at20);
    expect(percentileNs(s, 0.999)).toBe(at20);
    expect(percentileNs(s, 1)).toBe(5_000_000);
    h.record(0, 5_000_000); // now the 1000th value of 1001 is the slow one
    h.publish();
    expect(percentileNs(h.snapshot(0), 0.999)).toBe(5_000_000);
    expect(percentileNs(LatencyHistograms.create(1).snapshot(0), 0.99)).toBe(0);
    expect(() => percentileNs(s, 0)).toThrow(RangeError);
  });

  it('attaches only to a histogram block', () => {
    const h = LatencyHistograms.create(3);
    expect(LatencyHistograms.attach(h.buffer).series).toBe(3);
    const blank = new SharedArrayBuffer(histogramByteLength(3));
    expect(codeOf(() => LatencyHistograms.attach(blank))).toBe('SHM_BAD_LAYOUT');
    expect(codeOf(() => LatencyHistograms.attach(new SharedArrayBuffer(8)))).toBe('SHM_BAD_LAYOUT');
    expect(() => LatencyHistograms.create(0)).toThrow(RangeError);
    expect(() => h.snapshot(3)).toThrow(RangeError);
  });

  it('has a monotonic nanosecond clock', () => {
    const a = monotonicNs();
    const b = monotonicNs();
    expect(Number.isInteger(a)).toBe(true);
    expect(b).toBeGreaterThanOrEqual(a);
  });
});

describe('LatencyHistograms across threads', () => {
  it('never shows half a batch while a worker records and publishes', async () => {
    for (const name of ['histogram', 'counters', 'layout']) {
      const src = fileURLToPath(new URL(`../../src/locking/${name}.ts`, import.meta.url));
      const out = fileURLToPath(new URL(`../../dist/src/locking/${name}.js`, import.meta.url));
      const built = statSync(out, { throwIfNoEntry: false });
      if (built === undefined || built.mtimeMs < statSync(src).mtimeMs)
        throw new Error(`dist/src/locking/${name}.js is stale: run npx tsc -p tsconfig.json`);
    }
    const h = LatencyHistograms.create(2);
    const done = new Int32Array(new SharedArrayBuffer(4));
    const seen = new Int32Array(new SharedArrayBuffer(4));
    const limits = { rounds: 5_000, maxRounds: 5_000_000, minSeen: 5_000 };
    const worker = new Worker(new URL('../fixtures/histogram-writer.mjs', import.meta.url), {
      workerData: { buffer: h.buffer, done, seen, ...limits },
    });
    const finished = new Promise<{ rounds: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    const b5 = latencyBucket(5_000);
    const b50 = latencyBucket(50_000);
    let bad: unknown;
    let last = 0;
    let reads = 0;
    // Seq-cst load of the writer's done flag; reads after it see its final values.
    while (Atomics.load(done, 0) === 0) {
      const s = h.snapshot(1);
      const k = s.over;
      const ok =
        s.count === 10 * k &&
        s.buckets[b5] === 5 * k &&
        s.buckets[b50] === 5 * k &&
        s.sumNs === k * 275_000 &&
        k >= last &&
        h.snapshot(0).count === 0;
      if (!ok) bad ??= s;
      last = k;
      if (k > 0) Atomics.add(seen, 0, 1);
      if (++reads % 2_000 === 0) await new Promise((r) => setImmediate(r));
    }
    const { rounds } = await finished;
    expect(bad).toBeUndefined();
    expect(Atomics.load(seen, 0)).toBeGreaterThan(0);
    expect(h.snapshot(1)).toMatchObject({ count: 10 * rounds, over: rounds, maxNs: 50_000 });
  });
});
