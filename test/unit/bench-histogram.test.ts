import { describe, expect, it } from 'vitest';
import { bucketOf, bucketRange, LatencyHistogram } from '../../bench/loadgen/histogram.js';

describe('LatencyHistogram buckets', () => {
  it('keeps values below 256 ns exact', () => {
    for (const v of [1, 2, 100, 255]) {
      expect(bucketOf(v)).toBe(v);
      expect(bucketRange(v)).toEqual({ low: v, width: 1 });
    }
  });

  it('puts every value inside its bucket, each bucket narrower than 1/128 of its values', () => {
    for (let v = 256; v < 2 ** 36; v = Math.floor(v * 1.37) + 1) {
      const { low, width } = bucketRange(bucketOf(v));
      expect(v).toBeGreaterThanOrEqual(low);
      expect(v).toBeLessThan(low + width);
      expect(width / low).toBeLessThanOrEqual(1 / 128);
    }
  });

  it('numbers buckets contiguously across a power of two', () => {
    // 256..511 are in buckets 2 ns wide, 512..1023 in buckets 4 ns wide.
    expect(bucketOf(511)).toBe(bucketOf(510));
    expect(bucketOf(512)).toBe(bucketOf(511) + 1);
    expect(bucketOf(516)).toBe(bucketOf(512) + 1);
    expect(bucketRange(bucketOf(512)).low).toBe(512);
  });

  it('clamps values beyond the range into the last bucket', () => {
    expect(bucketOf(2 ** 45)).toBe(bucketOf(2 ** 50));
  });
});

describe('LatencyHistogram percentiles', () => {
  it('reports exact small values and exact min / max / mean', () => {
    const h = new LatencyHistogram();
    for (let v = 1; v <= 100; v++) h.record(v);
    expect(h.count).toBe(100);
    expect(h.percentile(50)).toBe(50);
    expect(h.percentile(99)).toBe(99);
    expect(h.percentile(100)).toBe(100);
    expect(h.minNs).toBe(1);
    expect(h.maxNs).toBe(100);
    expect(h.meanNs).toBeCloseTo(50.5, 10);
  });

  it('stays within 1 % of the true percentile over 1 µs .. 10 s', () => {
    const h = new LatencyHistogram();
    const values: number[] = [];
    let x = 12345;
    for (let i = 0; i < 20_000; i++) {
      x = (x * 1103515245 + 12345) % 2 ** 31;
      // Log-uniform between 1 µs and 10 s.
      const v = Math.round(1000 * 10 ** ((x / 2 ** 31) * 7));
      values.push(v);
      h.record(v);
    }
    values.sort((a, b) => a - b);
    for (const p of [50, 90, 99, 99.9]) {
      const truth = values[Math.ceil((p / 100) * values.length) - 1];
      expect(Math.abs(h.percentile(p) - truth) / truth).toBeLessThan(0.01);
    }
    expect(h.percentile(100)).toBe(values[values.length - 1]);
  });

  it('summarises in microseconds and resets', () => {
    const h = new LatencyHistogram();
    h.record(1500);
    h.record(2500);
    const s = h.summary();
    expect(s.count).toBe(2);
    expect(s.minUs).toBe(1.5);
    expect(s.maxUs).toBe(2.5);
    expect(s.p50Us).toBeGreaterThan(1.49);
    expect(s.p50Us).toBeLessThan(1.51);
    h.reset();
    expect(h.count).toBe(0);
    expect(h.percentile(99)).toBe(0);
    expect(h.summary().maxUs).toBe(0);
  });

  it('merges histograms as if every value had been recorded in one', () => {
    const a = new LatencyHistogram();
    const b = new LatencyHistogram();
    const all = new LatencyHistogram();
    for (let v = 1000; v < 50_000; v += 7) {
      (v % 2 ? a : b).record(v);
      all.record(v);
    }
    a.merge(b);
    expect(a.count).toBe(all.count);
    for (const p of [1, 50, 99.9, 100]) expect(a.percentile(p)).toBe(all.percentile(p));
    expect(a.minNs).toBe(all.minNs);
  });

  it('survives a JSON round trip of its sparse form, and pools windows through it', () => {
    const a = new LatencyHistogram();
    const b = new LatencyHistogram();
    const all = new LatencyHistogram();
    for (let v = 900; v < 2_000_000; v = Math.floor(v * 1.01) + 3) {
      (v % 3 ? a : b).record(v);
      all.record(v);
    }
    const back = (h: LatencyHistogram) =>
      LatencyHistogram.fromSparse(JSON.parse(JSON.stringify(h.toSparse())));
    const pooled = back(a);
    pooled.merge(back(b));
    expect(pooled.count).toBe(all.count);
    expect(pooled.summary()).toEqual(all.summary());
    expect(back(new LatencyHistogram()).summary()).toEqual(new LatencyHistogram().summary());
    expect(() =>
      LatencyHistogram.fromSparse({ buckets: [[-1, 1]], count: 1, sumNs: 1, minNs: 1, maxNs: 1 }),
    ).toThrow(/bucket -1/);
  });

  it('rejects percentiles outside (0, 100]', () => {
    const h = new LatencyHistogram();
    expect(() => h.percentile(0)).toThrow(RangeError);
    expect(() => h.percentile(101)).toThrow(RangeError);
  });
});
