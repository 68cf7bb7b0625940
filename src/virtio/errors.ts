/**
 * Errors of the virtio layer. Guest memory and ring violations are what a
 * hostile or broken guest (or front end) produces, so each has a stable code
 * that the device layer can count and log.
 */
import { VhostRtError } from '../errors.js';

/**
 * A guest-physical range that is not wholly mapped, or a memory table that
 * cannot be used (overlapping regions, zero sizes, buffers too small).
 */
export class GuestMemoryError extends VhostRtError {}

/**
 * A ring-level violation: the queue cannot be trusted any further. The device
 * stops the queue (and logs) until the front end resets it.
 */
export class QueueBrokenError extends VhostRtError {}

/** Codes of {@link GuestMemoryError}. */
export const GuestMemoryErrorCode = {
  /** A copy helper was asked to touch bytes outside every region. */
  UNMAPPED: 'GUEST_MEM_UNMAPPED',
  /** A region descriptor with a bad field (size 0, negative, not an integer, buffer too small). */
  BAD_REGION: 'GUEST_MEM_BAD_REGION',
  /** Two regions claim the same guest-physical bytes. */
  OVERLAP: 'GUEST_MEM_OVERLAP',
} as const;

/** Codes of {@link QueueBrokenError} (ring-level violations). */
export const QueueErrorCode = {
  /** avail.idx ran more than the queue size ahead of the device's position. */
  AVAIL_AHEAD: 'VIRTQ_AVAIL_AHEAD',
  /** The avail ring named a head descriptor index >= queue size. */
  BAD_HEAD: 'VIRTQ_BAD_HEAD',
  /** A ring (descriptor table, avail or used ring) is not wholly inside one region. */
  RING_UNMAPPED: 'VIRTQ_RING_UNMAPPED',
  /** A ring address breaks the natural alignment of §2.7 (desc 16, avail 2, used 4). */
  RING_MISALIGNED: 'VIRTQ_RING_MISALIGNED',
  /** The queue size is not a power of two in 1..32768 (§2.7). */
  BAD_SIZE: 'VIRTQ_BAD_SIZE',
} as const;

/**
 * Codes of chain-level violations, reported in `DescriptorChain.error`. They do
 * not throw: the device completes the chain with used length 0 and goes on.
 */
export const ChainErrorCode = {
  /** A buffer (or indirect table) is not wholly inside guest memory. */
  DESC_UNMAPPED: 'VIRTQ_DESC_UNMAPPED',
  /** More descriptors than the queue (or indirect table) holds, i.e. a loop; or too many segments. */
  CHAIN_TOO_LONG: 'VIRTQ_CHAIN_TOO_LONG',
  /** An indirect table entry that itself has the INDIRECT flag. */
  NESTED_INDIRECT: 'VIRTQ_NESTED_INDIRECT',
  /** Indirect not negotiated, table length zero / not a multiple of 16 / over 2^15 entries, or INDIRECT with NEXT. */
  BAD_INDIRECT: 'VIRTQ_BAD_INDIRECT',
  /** A `next` field outside the descriptor table (or the indirect table). */
  NEXT_OUT_OF_RANGE: 'VIRTQ_NEXT_OUT_OF_RANGE',
  /** A device-readable descriptor after a device-writable one (§2.7.4.2). */
  READ_AFTER_WRITE: 'VIRTQ_READ_AFTER_WRITE',
  /** The chain's total length does not fit in u32 (§2.7.4.2). */
  LEN_OVERFLOW: 'VIRTQ_LEN_OVERFLOW',
} as const;

/** One of the {@link ChainErrorCode} values. */
export type ChainError = (typeof ChainErrorCode)[keyof typeof ChainErrorCode];
