/**
 * Shared memory between threads, lock-free: the SPSC byte ring, seqlock stat
 * counters, and the layout module naming every shared slot. There are no
 * locks on the data path (DESIGN rule 6): every slot has exactly one writer.
 */
export { StatCounters } from './counters.js';
export { LockError, type LockErrorCode } from './errors.js';
export * as layout from './layout.js';
export { SpscByteRing, type SpscByteRingOptions } from './spsc-ring.js';
