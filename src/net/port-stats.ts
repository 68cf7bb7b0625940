/** Names of the counters every switch port keeps in shared memory (one writer: the port's worker). */
export const NET_STAT_NAMES = [
  /** Frames and bytes the port's peer sent into the switch. */
  'txPackets',
  'txBytes',
  /** Frames and bytes the switch delivered to the port's peer. */
  'rxPackets',
  'rxBytes',
  'kicks',
  'interrupts',
  /** Frames from the peer dropped as malformed (short, too long, bad header, bad chain). */
  'malformed',
  /** Frames for the peer dropped because it had no enabled receive queue (link down). */
  'rxDropsDown',
  /** Frames for the peer dropped because its receive buffers were unusable. */
  'rxDropsBadBuffers',
  /** Frames the peer could not take (TAP queue full). */
  'rxDropsFull',
  /** Frames for the peer its receive filter refused (control queue RX mode / MAC table). */
  'rxFiltered',
  /** Control-queue commands handled, and those answered with an error. */
  'ctrlCommands',
  'ctrlErrors',
  'brokenQueues',
  /** Times a unicast frame was held in the peer's transmit ring because its destination was full (backpressure). */
  'txHolds',
  /** Unicast frames dropped because their destination stayed full longer than the hold time. */
  'txStallDrops',
  /**
   * Frames for the peer dropped because their headers do not match the
   * checksum or segmentation their virtio_net_hdr asks for (offload.ts).
   */
  'rxDropsOffload',
  /** Frames for the peer whose partial checksum the switch completed (the peer lacks GUEST_CSUM). */
  'rxChecksummed',
  /** Frames for the peer the switch segmented (the peer lacks GUEST_TSO4/6), and the segments made. */
  'rxSegmented',
  'rxSegments',
] as const;

/** Index of each counter in {@link NET_STAT_NAMES}. */
export const NetStat = Object.fromEntries(NET_STAT_NAMES.map((name, i) => [name, i])) as {
  readonly [K in (typeof NET_STAT_NAMES)[number]]: number;
};
