/** Switch options the in-process net tests share: one queue pair, small rings, nothing timed. */
import type { NetOptions } from '../../src/devices/net/options.js';

/** One queue pair of 256 entries, 1 MiB switch rings, addresses that do not age during a test. */
export const TEST_SWITCH_OPTIONS: NetOptions = {
  queuePairs: 1,
  queueSize: 256,
  ringBytes: 1 << 20,
  ageingMs: 300_000,
  macCapacity: 64,
  rt: {},
};
