/**
 * Latency histograms in shared memory (DESIGN rules 5, 6 and 10): a block of
 * `series` log-linear histograms (one per queue of a device), written by one
 * thread — a device worker — and read by the main thread only when
 * `/metrics` is scraped or `query-stats` asked.
 *
 * Buckets (HDR-style): [0, 1.024 µs], then 8 sub-buckets per power of two up
 * to 2^30 ns (1.07 s), then an overflow bucket. A bucket's width is at most
 * 1/8 of its lower bound, so any percentile read from the buckets between
 * 10 µs and 100 ms is within 12.5 % of the true value (HISTOGRAM_* in
 * layout.ts). Bucket upper bounds are inclusive, as Prometheus' `le`.
 *
 * Writer cost: {@link LatencyHistograms.record} touches only the writer's
 * private typed arrays (a bucket index from Math.clz32, three increments);
 * {@link LatencyHistograms.publish}, once per batch, copies the buckets that
 * changed into shared memory inside one seqlock section. No allocation, no
 * lock, no system call per request. The reader copies a series under the
 * seqlock and retries only if a publish overlapped it.
 */
import {
  seqlockReadBegin,
  seqlockReadValid,
  seqlockWriteBegin,
  seqlockWriteEnd,
} from './counters.js';
import { LockError } from './errors.js';
import {
  HISTOGRAM,
  HISTOGRAM_BUCKETS,
  HISTOGRAM_MAGIC_VALUE,
  HISTOGRAM_MAX_EXPONENT,
  HISTOGRAM_MIN_EXPONENT,
  HISTOGRAM_SUB_BUCKET_BITS,
  histogramByteLength,
  histogramSeriesStride,
} from './layout.js';

const TWO_32 = 2 ** 32;
const SUB = 1 << HISTOGRAM_SUB_BUCKET_BITS;
const FIRST_BOUND_NS = 2 ** HISTOGRAM_MIN_EXPONENT;
const LAST_BOUND_NS = 2 ** HISTOGRAM_MAX_EXPONENT;
/** Index of the overflow bucket (values above 2^30 ns). */
const OVERFLOW = HISTOGRAM_BUCKETS - 1;

/**
 * The bucket a latency of `ns` nanoseconds falls in: 0 for [0, 1024] (and
 * for NaN or negative values), the overflow bucket above 2^30 ns.
 */
export function latencyBucket(ns: number): number {
  if (!(ns > FIRST_BOUND_NS)) return 0;
  if (ns > LAST_BOUND_NS) return OVERFLOW;
  // u in [2^10, 2^30): its top bit is the power of two, the next 3 bits the
  // sub-bucket. Taking ceil(ns) - 1 makes each bucket's upper bound inclusive.
  const u = Math.ceil(ns) - 1;
  const e = 31 - Math.clz32(u);
  const sub = (u >>> (e - HISTOGRAM_SUB_BUCKET_BITS)) & (SUB - 1);
  return 1 + (e - HISTOGRAM_MIN_EXPONENT) * SUB + sub;
}

/** Inclusive upper bound of bucket `index` in nanoseconds; Infinity for the overflow bucket. */
export function latencyBucketUpperNs(index: number): number {
  if (!Number.isInteger(index) || index < 0 || index >= HISTOGRAM_BUCKETS)
    throw new RangeError(`latency bucket ${index} is outside 0..${HISTOGRAM_BUCKETS - 1}`);
  if (index === 0) return FIRST_BOUND_NS;
  if (index === OVERFLOW) return Number.POSITIVE_INFINITY;
  const e = HISTOGRAM_MIN_EXPONENT + Math.floor((index - 1) / SUB);
  const sub = (index - 1) % SUB;
  return (SUB + 1 + sub) * 2 ** (e - HISTOGRAM_SUB_BUCKET_BITS);
}

/** Every bucket's inclusive upper bound in nanoseconds, the last one Infinity. */
export const LATENCY_BUCKET_BOUNDS_NS: readonly number[] = Object.freeze(
  Array.from({ length: HISTOGRAM_BUCKETS }, (_, i) => latencyBucketUpperNs(i)),
);

/** One series (or several merged) as a reader sees it. */
export interface HistogramSnapshot {
  /** Per-bucket counts (not cumulative), {@link LATENCY_BUCKET_BOUNDS_NS} order. */
  buckets: number[];
  /** Values recorded: the sum of `buckets`. */
  count: number;
  /** Sum of the values recorded, nanoseconds. */
  sumNs: number;
  /** Values recorded above the writer's target (e.g. `--latency-target-us`). */
  over: number;
  /** Largest value recorded, nanoseconds (0 when none). */
  maxNs: number;
}

/** An empty snapshot. */
export function emptySnapshot(): HistogramSnapshot {
  return { buckets: new Array(HISTOGRAM_BUCKETS).fill(0), count: 0, sumNs: 0, over: 0, maxNs: 0 };
}

/** The sum of several series (a device's queues), as one snapshot. */
export function mergeSnapshots(parts: readonly HistogramSnapshot[]): HistogramSnapshot {
  const out = emptySnapshot();
  for (const p of parts) {
    for (let b = 0; b < HISTOGRAM_BUCKETS; b++) out.buckets[b] += p.buckets[b];
    out.count += p.count;
    out.sumNs += p.sumNs;
    out.over += p.over;
    out.maxNs = Math.max(out.maxNs, p.maxNs);
  }
  return out;
}

/**
 * The `q` quantile (0 < q <= 1; 0.999 for p99.9) in nanoseconds: the upper
 * bound of the bucket holding the ceil(q * count)-th value, capped at the
 * largest value recorded (so the overflow bucket reads as that maximum).
 * 0 when nothing was recorded.
 */
export function percentileNs(s: HistogramSnapshot, q: number): number {
  if (!(q > 0 && q <= 1)) throw new RangeError(`percentile ${q} is outside (0, 1]`);
  if (s.count === 0) return 0;
  const rank = Math.ceil(q * s.count);
  let seen = 0;
  for (let b = 0; b < HISTOGRAM_BUCKETS; b++) {
    seen += s.buckets[b];
    if (seen >= rank) return Math.min(LATENCY_BUCKET_BOUNDS_NS[b], s.maxNs);
  }
  return s.maxNs;
}

/**
 * A monotonic clock in nanoseconds since the calling thread first used it,
 * cheap enough for once per batch: process.hrtime() (~50 ns here, its
 * [seconds, nanoseconds] pair escape-analysed away once optimised) where
 * performance.now() and process.hrtime.bigint() allocate a heap number or a
 * BigInt per call (measured: 78 and 272 scavenges per 5 M calls against 1).
 * A double holds these exactly for 104 days of uptime of the thread.
 */
export function monotonicNs(): number {
  const t = process.hrtime();
  return (t[0] - clockBaseSeconds) * 1e9 + t[1];
}
const clockBaseSeconds = process.hrtime()[0];

/**
 * A block of latency histograms; one thread writes it (record/over, then
 * publish once per batch), any thread reads it (snapshot). See the module
 * comment.
 */
export class LatencyHistograms {
  readonly #buffer: SharedArrayBuffer;
  readonly #slots: Int32Array;
  readonly #series: number;
  readonly #stride = histogramSeriesStride();
  // Writer-private state: the truth the writer publishes (allocated once).
  /** Bucket counts, series * HISTOGRAM_BUCKETS + bucket. */
  readonly #counts: Float64Array;
  /** 1 when the bucket changed since the last publish. */
  readonly #dirtyFlag: Uint8Array;
  /** The buckets that changed since the last publish, #dirtyCount of them. */
  readonly #dirty: Int32Array;
  #dirtyCount = 0;
  /** Per series: sum (ns), values over target, largest value, changed since the last publish. */
  readonly #sum: Float64Array;
  readonly #over: Float64Array;
  readonly #max: Float64Array;
  /** Per series: `over` and `max` as last published (stored again only when they change). */
  readonly #overPublished: Float64Array;
  readonly #maxPublished: Float64Array;
  readonly #seriesDirty: Uint8Array;
  #anySeriesDirty = false;
  /** Reader scratch: one series' slots, copied under the seqlock. */
  readonly #scratch: Int32Array;

  private constructor(buffer: SharedArrayBuffer) {
    this.#buffer = buffer;
    this.#slots = new Int32Array(buffer);
    this.#series = this.#slots[HISTOGRAM.SERIES];
    const n = this.#series;
    this.#counts = new Float64Array(n * HISTOGRAM_BUCKETS);
    this.#dirtyFlag = new Uint8Array(n * HISTOGRAM_BUCKETS);
    this.#dirty = new Int32Array(n * HISTOGRAM_BUCKETS);
    this.#sum = new Float64Array(n);
    this.#over = new Float64Array(n);
    this.#max = new Float64Array(n);
    this.#overPublished = new Float64Array(n);
    this.#maxPublished = new Float64Array(n);
    this.#seriesDirty = new Uint8Array(n);
    this.#scratch = new Int32Array(this.#stride);
  }

  /** A zeroed block of `series` histograms (1..1024). */
  static create(series: number): LatencyHistograms {
    if (!Number.isInteger(series) || series < 1 || series > 1024)
      throw new RangeError(`LatencyHistograms: series ${series} is outside 1..1024`);
    const buffer = new SharedArrayBuffer(histogramByteLength(series));
    const slots = new Int32Array(buffer);
    slots[HISTOGRAM.SERIES] = series;
    slots[HISTOGRAM.BUCKETS] = HISTOGRAM_BUCKETS;
    // Reaches other threads only through postMessage, which orders these
    // initial stores before the receiver's attach().
    slots[HISTOGRAM.MAGIC] = HISTOGRAM_MAGIC_VALUE;
    return new LatencyHistograms(buffer);
  }

  /**
   * A handle on a block made by {@link create} in another thread. The
   * writer must attach a fresh block (its private counts start at zero).
   */
  static attach(buffer: SharedArrayBuffer): LatencyHistograms {
    const slots = buffer instanceof SharedArrayBuffer ? new Int32Array(buffer) : null;
    const ok =
      slots !== null &&
      slots.length > HISTOGRAM.FIRST &&
      slots[HISTOGRAM.MAGIC] === HISTOGRAM_MAGIC_VALUE &&
      slots[HISTOGRAM.BUCKETS] === HISTOGRAM_BUCKETS &&
      buffer.byteLength === histogramByteLength(slots[HISTOGRAM.SERIES]);
    if (!ok)
      throw new LockError('SHM_BAD_LAYOUT', 'LatencyHistograms.attach: not a histogram block');
    return new LatencyHistograms(buffer);
  }

  /** The shared memory; post it to the other thread, which calls {@link attach}. */
  get buffer(): SharedArrayBuffer {
    return this.#buffer;
  }

  /** Number of series (queues) in the block. */
  get series(): number {
    return this.#series;
  }

  /** Writer: one value of `ns` nanoseconds in series `series` (private until {@link publish}). */
  record(series: number, ns: number): void {
    const b = series * HISTOGRAM_BUCKETS + latencyBucket(ns);
    this.#counts[b]++;
    if (this.#dirtyFlag[b] === 0) {
      this.#dirtyFlag[b] = 1;
      this.#dirty[this.#dirtyCount++] = b;
    }
    if (ns > 0) this.#sum[series] += ns;
    if (ns > this.#max[series]) this.#max[series] = ns;
    this.#seriesDirty[series] = 1;
    this.#anySeriesDirty = true;
  }

  /** Writer: one more value above the target in series `series` (private until {@link publish}). */
  over(series: number): void {
    this.#over[series]++;
    this.#seriesDirty[series] = 1;
    this.#anySeriesDirty = true;
  }

  /** Writer: values above the target recorded in series `series` so far (its own view). */
  overCount(series: number): number {
    return this.#over[series];
  }

  /**
   * Writer, once per batch: makes everything recorded since the last publish
   * visible to readers, all at once (one seqlock section). Cheap when
   * nothing was recorded.
   */
  publish(): void {
    if (this.#dirtyCount === 0 && !this.#anySeriesDirty) return;
    const slots = this.#slots;
    seqlockWriteBegin(slots, HISTOGRAM.SEQ, 'LatencyHistograms');
    for (let i = 0; i < this.#dirtyCount; i++) {
      const b = this.#dirty[i];
      this.#dirtyFlag[b] = 0;
      const series = Math.floor(b / HISTOGRAM_BUCKETS);
      const bucket = b - series * HISTOGRAM_BUCKETS;
      this.#store(this.#base(series) + HISTOGRAM.BUCKET + bucket * 2, this.#counts[b]);
    }
    this.#dirtyCount = 0;
    if (this.#anySeriesDirty) {
      for (let s = 0; s < this.#series; s++) {
        if (this.#seriesDirty[s] === 0) continue;
        this.#seriesDirty[s] = 0;
        const base = this.#base(s);
        this.#store(base + HISTOGRAM.SUM, Math.round(this.#sum[s]));
        if (this.#over[s] !== this.#overPublished[s]) {
          this.#overPublished[s] = this.#over[s];
          this.#store(base + HISTOGRAM.OVER, this.#over[s]);
        }
        if (this.#max[s] !== this.#maxPublished[s]) {
          this.#maxPublished[s] = this.#max[s];
          this.#store(base + HISTOGRAM.MAX, Math.round(this.#max[s]));
        }
      }
      this.#anySeriesDirty = false;
    }
    seqlockWriteEnd(slots, HISTOGRAM.SEQ);
  }

  /** Any thread: series `series` as last published, consistent (never half a batch). */
  snapshot(series: number): HistogramSnapshot {
    if (!Number.isInteger(series) || series < 0 || series >= this.#series)
      throw new RangeError(`LatencyHistograms: series ${series} is outside 0..${this.#series - 1}`);
    const slots = this.#slots;
    const scratch = this.#scratch;
    const base = this.#base(series);
    for (;;) {
      const before = seqlockReadBegin(slots, HISTOGRAM.SEQ, 'LatencyHistograms');
      // Atomics loads so they cannot move across the sequence loads around them.
      for (let i = 0; i < scratch.length; i++) scratch[i] = Atomics.load(slots, base + i);
      if (seqlockReadValid(slots, HISTOGRAM.SEQ, before)) break;
    }
    const buckets = new Array<number>(HISTOGRAM_BUCKETS);
    let count = 0;
    for (let b = 0; b < HISTOGRAM_BUCKETS; b++) {
      buckets[b] = read64(scratch, HISTOGRAM.BUCKET + b * 2);
      count += buckets[b];
    }
    return {
      buckets,
      count,
      sumNs: read64(scratch, HISTOGRAM.SUM),
      over: read64(scratch, HISTOGRAM.OVER),
      maxNs: read64(scratch, HISTOGRAM.MAX),
    };
  }

  /** Any thread: every series, in order. */
  snapshots(): HistogramSnapshot[] {
    return Array.from({ length: this.#series }, (_, s) => this.snapshot(s));
  }

  #base(series: number): number {
    return HISTOGRAM.FIRST + series * this.#stride;
  }

  /** A 64-bit value as two halves, inside the section publish() opened; the high half only when it changes. */
  #store(index: number, value: number): void {
    const hi = Math.floor(value / TWO_32);
    // Atomics stores, inside the odd-sequence window: ordered after its opening
    // CAS and before its closing increment. The plain read is of this writer's own store.
    Atomics.store(this.#slots, index + HISTOGRAM.LO, (value - hi * TWO_32) | 0);
    if (this.#slots[index + HISTOGRAM.HI] !== hi)
      Atomics.store(this.#slots, index + HISTOGRAM.HI, hi);
  }
}

function read64(slots: Int32Array, index: number): number {
  return slots[index + HISTOGRAM.HI] * TWO_32 + (slots[index + HISTOGRAM.LO] >>> 0);
}
