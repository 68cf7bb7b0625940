/**
 * Counters of one serial or console port, kept by the device worker in a
 * StatCounters block (single writer) and read by the main thread's stats.
 * The ring's high-water mark lives in the ring itself (SpscByteRing.highWater).
 */
export const PORT_STAT_NAMES = [
  /** Host-to-guest bytes delivered to the guest. */
  'bytesIn',
  /** Guest-to-host bytes accepted into the output ring. */
  'bytesOut',
  /** Guest-to-host bytes dropped by the 'drop' policy. */
  'bytesDropped',
  /** Host-to-guest bytes refused because the bounded input buffer was full. */
  'inputRefused',
  /** Times the output ring was full ('lossless': the port stopped consuming). */
  'ringFull',
  /** Transmit chains (or socket reads) consumed. */
  'transmits',
  /** Receive chains filled. */
  'receives',
] as const;

/** Index of each counter in {@link PORT_STAT_NAMES}. */
export const PortStat = Object.fromEntries(PORT_STAT_NAMES.map((name, i) => [name, i])) as {
  readonly [K in (typeof PORT_STAT_NAMES)[number]]: number;
};
