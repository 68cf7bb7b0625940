/**
 * Device-independent feature bits (virtio 1.x §6, "Reserved Feature Bits").
 * Feature words are u64 on the wire, so they are `bigint` here.
 */

/** The driver can ask for a notification when the ring runs empty (legacy; §6). */
export const VIRTIO_F_NOTIFY_ON_EMPTY = 24;
/** Descriptors may refer to indirect descriptor tables (§2.7.5.3). */
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
/** used_event / avail_event suppress notifications (§2.7.7, §2.7.10). */
export const VIRTIO_RING_F_EVENT_IDX = 29;
/** A non-legacy (virtio 1.x) device. */
export const VIRTIO_F_VERSION_1 = 32;
/** Buffer addresses go through an IOMMU / platform translation. */
export const VIRTIO_F_ACCESS_PLATFORM = 33;
/** The packed virtqueue layout (§2.8): PackedVirtqueue (packed-virtqueue.ts); not offered together with INFLIGHT_SHMFD. */
export const VIRTIO_F_RING_PACKED = 34;

/** The mask of one feature bit, e.g. `featureBit(VIRTIO_F_VERSION_1) === 1n << 32n`. */
export function featureBit(bit: number): bigint {
  if (!Number.isInteger(bit) || bit < 0 || bit > 63) {
    throw new RangeError(`feature bit must be an integer in 0..63, got ${bit}`);
  }
  return 1n << BigInt(bit);
}

/** Whether `bit` is set in the u64 feature word `features`. */
export function hasFeature(features: bigint, bit: number): boolean {
  return (features & featureBit(bit)) !== 0n;
}
