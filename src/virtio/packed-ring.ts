/**
 * Wire layout of the packed virtqueue (virtio 1.1+ "Packed Virtqueues"),
 * shared by the device side (packed-virtqueue.ts) and the test driver
 * (test/support/packed-driver.ts). All fields are little-endian.
 *
 * One descriptor ring, written by both sides: the driver makes a descriptor
 * available by setting AVAIL to its wrap counter and USED to the inverse;
 * the device returns a buffer by writing id, len and then flags with AVAIL
 * and USED both equal to its own wrap counter. Two 4-byte event suppression
 * structures (driver area: written by the driver, read by the device;
 * device area: the other way round) replace avail/used flags and EVENT_IDX.
 */

// struct pvirtq_desc { le64 addr; le32 len; le16 id; le16 flags; }
/** Bytes per packed descriptor. */
export const PACKED_DESC_SIZE = 16;
/** Byte offset of `addr` (le64). */
export const PACKED_DESC_ADDR = 0;
/** Byte offset of `len` (le32). */
export const PACKED_DESC_LEN = 8;
/** Byte offset of the buffer `id` (le16). */
export const PACKED_DESC_ID = 12;
/** Byte offset of `flags` (le16). */
export const PACKED_DESC_FLAGS = 14;
/** Required alignment of the descriptor ring. */
export const PACKED_DESC_ALIGN = 16;

/** flags: the buffer continues in the next ring slot (not used inside indirect tables). */
export const PACKED_DESC_F_NEXT = 1;
/** flags: the buffer is device-writable. */
export const PACKED_DESC_F_WRITE = 2;
/** flags: the buffer holds a table of packed descriptors. */
export const PACKED_DESC_F_INDIRECT = 4;
/** flags bit 7: the driver's wrap counter when it made the slot available. */
export const PACKED_DESC_F_AVAIL = 1 << 7;
/** flags bit 15: the device's wrap counter when it marked the slot used. */
export const PACKED_DESC_F_USED = 1 << 15;

// struct pvirtq_event_suppress { le16 desc (off_wrap); le16 flags; }
/** Bytes of one event suppression structure. */
export const EVENT_SUPPRESS_SIZE = 4;
/** Required alignment of the driver and device areas. */
export const EVENT_SUPPRESS_ALIGN = 4;
/** Byte offset of `off_wrap`: ring offset in bits 0-14, wrap counter in bit 15. */
export const EVENT_OFF_WRAP = 0;
/** Byte offset of `flags`. */
export const EVENT_FLAGS = 2;
/** Event flags: notifications wanted. */
export const RING_EVENT_FLAGS_ENABLE = 0;
/** Event flags: no notifications. */
export const RING_EVENT_FLAGS_DISABLE = 1;
/** Event flags: a notification when the slot named by off_wrap is reached (EVENT_IDX only). */
export const RING_EVENT_FLAGS_DESC = 2;

/** Largest packed queue size (2^15: the ring offset has 15 bits). */
export const MAX_PACKED_QUEUE_SIZE = 32768;

/** Bytes of the descriptor ring of `size` slots. */
export function packedRingBytes(size: number): number {
  return PACKED_DESC_SIZE * size;
}

/**
 * Whether `size` is a usable packed queue size. The spec allows any size up
 * to 2^15; vhost-rt keeps the split ring's power-of-two rule (what every
 * front end here uses), so one SET_VRING_NUM check serves both layouts.
 */
export function isValidPackedQueueSize(size: number): boolean {
  return (
    Number.isInteger(size) &&
    size >= 1 &&
    size <= MAX_PACKED_QUEUE_SIZE &&
    (size & (size - 1)) === 0
  );
}

/**
 * The vhost-user ring base of a packed ring (SET_VRING_BASE /
 * GET_VRING_BASE): last avail slot in bits 0-14, avail wrap counter in bit
 * 15, and the used slot and used wrap counter in bits 16-30 and 31.
 */
export function packedVringBase(
  availSlot: number,
  availWrap: number,
  usedSlot: number,
  usedWrap: number,
): number {
  return (availSlot | (availWrap << 15) | ((usedSlot | (usedWrap << 15)) << 16)) >>> 0;
}

/** Codes of ring-level violations only a packed ring has (thrown as QueueBrokenError). */
export const PackedQueueErrorCode = {
  /** A chain's last descriptor names a buffer id >= queue size. */
  BAD_ID: 'VIRTQ_PACKED_BAD_ID',
  /** The driver made a buffer available under an id the device still holds. */
  ID_IN_USE: 'VIRTQ_PACKED_ID_IN_USE',
  /**
   * A chain runs into slots the device has not returned yet (more than the
   * queue size in flight): a NEXT loop, or avail flags set ahead of the ring.
   */
  RING_OVERRUN: 'VIRTQ_PACKED_RING_OVERRUN',
  /** A ring base (SET_VRING_BASE) naming a slot >= queue size. */
  BAD_BASE: 'VIRTQ_PACKED_BAD_BASE',
} as const;
