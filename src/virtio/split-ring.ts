/**
 * Wire layout of the split virtqueue (virtio 1.x §2.7), shared by the device
 * side (virtqueue.ts) and the test driver (test/support/driver-queue.ts), so
 * every shared-memory slot is named once. All fields are little-endian.
 */

/** Largest split queue size; sizes are powers of two (§2.7). */
export const MAX_QUEUE_SIZE = 32768;
/** Largest indirect table the device accepts, in descriptors (2^15, like the queue size). */
export const MAX_INDIRECT_ENTRIES = 32768;

// §2.7.5 struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }
/** Bytes per descriptor. */
export const DESC_SIZE = 16;
/** Byte offset of `addr` (le64) in a descriptor. */
export const DESC_ADDR = 0;
/** Byte offset of `len` (le32) in a descriptor. */
export const DESC_LEN = 8;
/** Byte offset of `flags` (le16) in a descriptor. */
export const DESC_FLAGS = 12;
/** Byte offset of `next` (le16) in a descriptor. */
export const DESC_NEXT = 14;
/** The buffer continues via the `next` field. */
export const VIRTQ_DESC_F_NEXT = 1;
/** The buffer is device-writable (otherwise device-readable). */
export const VIRTQ_DESC_F_WRITE = 2;
/** The buffer holds an indirect descriptor table (§2.7.5.3). */
export const VIRTQ_DESC_F_INDIRECT = 4;

// §2.7.6 struct virtq_avail { le16 flags; le16 idx; le16 ring[size]; le16 used_event; }
/** Byte offset of avail `flags`. */
export const AVAIL_FLAGS = 0;
/** Byte offset of avail `idx`. */
export const AVAIL_IDX = 2;
/** Byte offset of avail `ring[0]`. */
export const AVAIL_RING = 4;
/** avail.flags: the driver does not want interrupts (ignored with EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;

// §2.7.8 struct virtq_used { le16 flags; le16 idx; virtq_used_elem ring[size]; le16 avail_event; }
/** Byte offset of used `flags`. */
export const USED_FLAGS = 0;
/** Byte offset of used `idx`. */
export const USED_IDX = 2;
/** Byte offset of used `ring[0]`. */
export const USED_RING = 4;
/** Bytes per used element: struct virtq_used_elem { le32 id; le32 len; }. */
export const USED_ELEM_SIZE = 8;
/** used.flags: the device does not want kicks (ignored with EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

// §2.7 table "Virtqueue Part Alignment".
/** Required alignment of the descriptor table. */
export const DESC_ALIGN = 16;
/** Required alignment of the avail ring. */
export const AVAIL_ALIGN = 2;
/** Required alignment of the used ring. */
export const USED_ALIGN = 4;

/** Byte offset of avail `used_event` (only meaningful with EVENT_IDX). */
export function availUsedEventOffset(size: number): number {
  return AVAIL_RING + 2 * size;
}

/** Byte offset of used `avail_event` (only meaningful with EVENT_IDX). */
export function usedAvailEventOffset(size: number): number {
  return USED_RING + USED_ELEM_SIZE * size;
}

/** Bytes of the descriptor table. */
export function descTableBytes(size: number): number {
  return DESC_SIZE * size;
}

/** Bytes of the avail ring; the trailing used_event exists only with EVENT_IDX. */
export function availRingBytes(size: number, eventIdx: boolean): number {
  return availUsedEventOffset(size) + (eventIdx ? 2 : 0);
}

/** Bytes of the used ring; the trailing avail_event exists only with EVENT_IDX. */
export function usedRingBytes(size: number, eventIdx: boolean): number {
  return usedAvailEventOffset(size) + (eventIdx ? 2 : 0);
}

/** Whether `size` is a usable split queue size: a power of two in 1..32768. */
export function isValidQueueSize(size: number): boolean {
  return Number.isInteger(size) && size >= 1 && size <= MAX_QUEUE_SIZE && (size & (size - 1)) === 0;
}

/**
 * `vring_need_event` of §2.7.10: true when moving an index from `oldIdx` to
 * `newIdx` steps over `eventIdx`, i.e. the other side asked to be told once the
 * entry at `eventIdx` is published. All three are u16 and wrap around.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
