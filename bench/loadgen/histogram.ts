/**
 * An HDR-style latency histogram: log-bucketed with linear sub-buckets, so every recorded
 * value lands in a bucket whose width is under 1/128 of the value (worst-case relative error
 * of a reported percentile < 0.4 %, as it reports the bucket's midpoint). Values are
 * nanoseconds from 1 ns to 2^40 ns (~18 min); recording is allocation-free (one typed array,
 * sized once), so it can sit on a load generator's completion path.
 */

/** Significant bits kept per power of two: 2^7 = 128 linear sub-buckets. */
const SUB_BITS = 7;
const SUB_COUNT = 1 << SUB_BITS;
/** Values below this are recorded exactly (one bucket per nanosecond). */
const EXACT_LIMIT = 2 * SUB_COUNT;
/** Largest power of two covered; larger values are clamped into the last bucket. */
const MAX_EXPONENT = 40;
const BUCKETS = EXACT_LIMIT + (MAX_EXPONENT - SUB_BITS) * SUB_COUNT;
const TWO_32 = 2 ** 32;

/** Percentiles every report carries, in the order they are printed. */
export const REPORTED_PERCENTILES = [50, 90, 99, 99.9] as const;

/** The summary of a histogram, in microseconds. */
export interface LatencySummary {
  count: number;
  minUs: number;
  meanUs: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  p999Us: number;
  maxUs: number;
}

/** Index of the most significant set bit of a positive integer below 2^53. */
function msb(v: number): number {
  if (v < TWO_32) return 31 - Math.clz32(v);
  return 63 - Math.clz32(Math.floor(v / TWO_32));
}

/** Bucket index of an integer value >= 1 (clamped to the last bucket). */
export function bucketOf(value: number): number {
  if (value < EXACT_LIMIT) return value;
  const shift = msb(value) - SUB_BITS;
  // sub is in [SUB_COUNT, 2 * SUB_COUNT): the top SUB_BITS + 1 bits of the value.
  const sub = Math.floor(value / 2 ** shift);
  const index = EXACT_LIMIT + (shift - 1) * SUB_COUNT + (sub - SUB_COUNT);
  return index < BUCKETS ? index : BUCKETS - 1;
}

/** Lowest value of bucket `index` and its width. */
export function bucketRange(index: number): { low: number; width: number } {
  if (index < EXACT_LIMIT) return { low: index, width: 1 };
  const rel = index - EXACT_LIMIT;
  const shift = Math.floor(rel / SUB_COUNT) + 1;
  const sub = (rel % SUB_COUNT) + SUB_COUNT;
  return { low: sub * 2 ** shift, width: 2 ** shift };
}

/**
 * A histogram's recorded values in a JSON-friendly form: the non-empty buckets as
 * (index, count) pairs, and the exact count, sum, min and max (ns). What a bench keeps per
 * measured window so that windows can be pooled afterwards ({@link LatencyHistogram.fromSparse}).
 */
export interface SparseHistogram {
  buckets: [number, number][];
  count: number;
  sumNs: number;
  minNs: number;
  maxNs: number;
}

/** A latency histogram over nanoseconds. */
export class LatencyHistogram {
  private readonly counts = new Float64Array(BUCKETS);
  private total = 0;
  private sum = 0;
  private min = Number.POSITIVE_INFINITY;
  private max = 0;

  /** Records one latency in nanoseconds (rounded; below 1 ns counts as 1 ns). */
  record(ns: number): void {
    const v = ns < 1 ? 1 : Math.round(ns);
    this.counts[bucketOf(v)]++;
    this.total++;
    this.sum += v;
    if (v < this.min) this.min = v;
    if (v > this.max) this.max = v;
  }

  /** Values recorded. */
  get count(): number {
    return this.total;
  }

  /** Exact largest value recorded, ns (0 when empty). */
  get maxNs(): number {
    return this.max;
  }

  /** Exact smallest value recorded, ns (0 when empty). */
  get minNs(): number {
    return this.total === 0 ? 0 : this.min;
  }

  /** Mean, ns (0 when empty). */
  get meanNs(): number {
    return this.total === 0 ? 0 : this.sum / this.total;
  }

  /** Forgets everything (end of ramp-up). */
  reset(): void {
    this.counts.fill(0);
    this.total = 0;
    this.sum = 0;
    this.min = Number.POSITIVE_INFINITY;
    this.max = 0;
  }

  /** Adds every value of `other` (histograms of several queues or threads). */
  merge(other: LatencyHistogram): void {
    for (let i = 0; i < BUCKETS; i++) this.counts[i] += other.counts[i];
    this.total += other.total;
    this.sum += other.sum;
    if (other.total > 0) {
      this.min = Math.min(this.min, other.min);
      this.max = Math.max(this.max, other.max);
    }
  }

  /** The recorded values as non-empty buckets (see {@link SparseHistogram}). */
  toSparse(): SparseHistogram {
    const buckets: [number, number][] = [];
    for (let i = 0; i < BUCKETS; i++) if (this.counts[i] > 0) buckets.push([i, this.counts[i]]);
    return { buckets, count: this.total, sumNs: this.sum, minNs: this.minNs, maxNs: this.max };
  }

  /** A histogram holding what `sparse` describes (a window kept by {@link toSparse}). */
  static fromSparse(sparse: SparseHistogram): LatencyHistogram {
    const h = new LatencyHistogram();
    for (const [index, count] of sparse.buckets) {
      if (!(Number.isInteger(index) && index >= 0 && index < BUCKETS))
        throw new RangeError(`histogram bucket ${index} is outside 0..${BUCKETS - 1}`);
      h.counts[index] += count;
    }
    h.total = sparse.count;
    h.sum = sparse.sumNs;
    if (sparse.count > 0) {
      h.min = sparse.minNs;
      h.max = sparse.maxNs;
    }
    return h;
  }

  /**
   * The value at percentile `p` (0 < p <= 100), ns: the midpoint of the bucket holding the
   * ceil(p% · count)-th smallest value, clamped to the exact min and max; p100 is the exact
   * max. 0 when empty.
   */
  percentile(p: number): number {
    if (!(p > 0 && p <= 100)) throw new RangeError(`percentile must be in (0, 100], got ${p}`);
    if (this.total === 0) return 0;
    if (p === 100) return this.max;
    const rank = Math.max(1, Math.ceil((p / 100) * this.total));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i];
      if (seen >= rank) return this.clamp(midpoint(i));
    }
    return this.max;
  }

  /** p50 / p90 / p99 / p99.9 / min / mean / max in microseconds. */
  summary(): LatencySummary {
    const us = (ns: number) => ns / 1000;
    return {
      count: this.total,
      minUs: us(this.minNs),
      meanUs: us(this.meanNs),
      p50Us: us(this.percentile(50)),
      p90Us: us(this.percentile(90)),
      p99Us: us(this.percentile(99)),
      p999Us: us(this.percentile(99.9)),
      maxUs: us(this.max),
    };
  }

  private clamp(v: number): number {
    return Math.min(this.max, Math.max(this.min, v));
  }
}

function midpoint(index: number): number {
  const { low, width } = bucketRange(index);
  return width === 1 ? low : low + width / 2;
}
