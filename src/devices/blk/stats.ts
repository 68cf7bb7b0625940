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
] as const;

/** Index of each counter in {@link BLK_STAT_NAMES}. */
export const BlkStat = Object.fromEntries(BLK_STAT_NAMES.map((name, i) => [name, i])) as {
  readonly [K in (typeof BLK_STAT_NAMES)[number]]: number;
};
