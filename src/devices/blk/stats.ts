/** Names of the per-device counters a blk worker keeps in shared memory. */
export const BLK_STAT_NAMES = [
  'requests',
  'kicks',
  'interrupts',
  'bytesRead',
  'bytesWritten',
  'ioErrors',
  'unsupported',
  'badChains',
  'brokenQueues',
  // issue 14: the class of the ioprio field in the guest's request headers (unknown classes count as none).
  'ioprioNone',
  'ioprioRt',
  'ioprioBe',
  'ioprioIdle',
  // issue 14: requests that waited for the device's token buckets, and for how long the device held its queues.
  'throttledRequests',
  'throttledUs',
] as const;

/** Index of each counter in {@link BLK_STAT_NAMES}. */
export const BlkStat = Object.fromEntries(BLK_STAT_NAMES.map((name, i) => [name, i])) as {
  readonly [K in (typeof BLK_STAT_NAMES)[number]]: number;
};
