/** Names of the device-wide counters a console worker keeps (per-port ones: PORT_STAT_NAMES). */
export const CONSOLE_STAT_NAMES = [
  'kicks',
  'interrupts',
  'controlIn',
  'controlOut',
  'badControl',
  'controlDropped',
  'emergWrites',
  'badChains',
  'brokenQueues',
] as const;

/** Index of each counter in {@link CONSOLE_STAT_NAMES}. */
export const ConsoleStat = Object.fromEntries(CONSOLE_STAT_NAMES.map((name, i) => [name, i])) as {
  readonly [K in (typeof CONSOLE_STAT_NAMES)[number]]: number;
};
