/**
 * Device specs the in-process service tests share (BlkDeviceSet, NetSwitch started in the
 * test's own process): one queue, small rings, nothing timed.
 */
import type { NetOptions } from '../../src/devices/net/options.js';
import type { BlkDeviceSpec } from '../../src/worker/blk-service.js';

/** One queue pair of 256 entries, 1 MiB switch rings, addresses that do not age during a test. */
export const TEST_SWITCH_OPTIONS: NetOptions = {
  queuePairs: 1,
  queueSize: 256,
  ringBytes: 1 << 20,
  ageingMs: 300_000,
  macCapacity: 64,
  rt: {},
};

/** A blk device on `image`: one queue of 128, Linux AIO through the page cache, no RT options. */
export function testBlkSpec(image: string, serial: string): BlkDeviceSpec {
  return {
    options: {
      image,
      readonly: false,
      queues: 1,
      queueSize: 128,
      aio: 'linux-aio',
      direct: false,
      serial,
    },
    rt: {},
  };
}
