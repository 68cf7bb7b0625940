/**
 * Shared memory between threads, lock-free: the SPSC byte ring, seqlock stat
 * counters, latency histograms, and the layout module naming every shared
 * slot. There are no locks on the data path (DESIGN rule 6): every slot has
 * exactly one writer.
 */
export { StatCounters } from './counters.js';
export { LockError, type LockErrorCode } from './errors.js';
export {
  emptySnapshot,
  type HistogramSnapshot,
  LATENCY_BUCKET_BOUNDS_NS,
  LatencyHistograms,
  latencyBucket,
  mergeSnapshots,
  monotonicNs,
  percentileNs,
} from './histogram.js';
export * as layout from './layout.js';
export { SpscByteRing, type SpscByteRingOptions } from './spsc-ring.js';
