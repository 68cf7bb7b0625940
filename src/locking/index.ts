/** Shared-memory synchronisation between threads: locks, the SPSC byte ring, stat counters. */
export { StatCounters } from './counters.js';
export { LockError, type LockErrorCode } from './errors.js';
export * as layout from './layout.js';
export { DEFAULT_SPIN_LIMIT, type Lock, Mutex, type MutexOptions, NoopLock } from './mutex.js';
export { SpscByteRing, type SpscByteRingOptions } from './spsc-ring.js';
