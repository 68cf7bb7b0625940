/**
 * virtio-blk feature bits, request types and the configuration space layout
 * (virtio 1.x §5.2.3 – §5.2.6).
 */

import { VIRTIO_F_RING_PACKED } from '../../virtio/features.js';

/** Device feature bits (§5.2.3). */
export const BlkFeature = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
} as const;

/** Request types (§5.2.6). */
export const BlkRequestType = {
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  GET_LIFETIME: 10,
  DISCARD: 11,
  WRITE_ZEROES: 13,
  SECURE_ERASE: 14,
} as const;

/** Status byte values (§5.2.6). */
export const BlkStatus = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

/** virtio-blk always counts in 512-byte sectors, whatever blk_size says. */
export const SECTOR_SIZE = 512;
/** log2 of {@link SECTOR_SIZE}: a sector number shifted left by this is a byte offset. */
export const SECTOR_SHIFT = 9;
/** Size of the request header {type u32, reserved u32, sector u64}. */
export const REQUEST_HEADER_SIZE = 16;
/** Size of one discard / write-zeroes segment {sector u64, num_sectors u32, flags u32}. */
export const DISCARD_SEGMENT_SIZE = 16;
/** Bit 0 of a write-zeroes segment's flags: the device may unmap. */
export const WRITE_ZEROES_FLAG_UNMAP = 1;
/** GET_ID answers with at most this many bytes (§5.2.6.1). */
export const BLK_ID_BYTES = 20;

/** Byte offsets in struct virtio_blk_config (§5.2.4). */
export const BlkConfigOffset = {
  capacity: 0,
  sizeMax: 8,
  segMax: 12,
  geometry: 16,
  blkSize: 20,
  physicalBlockExp: 24,
  alignmentOffset: 25,
  minIoSize: 26,
  optIoSize: 28,
  writeback: 32,
  numQueues: 34,
  maxDiscardSectors: 36,
  maxDiscardSeg: 40,
  discardSectorAlignment: 44,
  maxWriteZeroesSectors: 48,
  maxWriteZeroesSeg: 52,
  writeZeroesMayUnmap: 56,
  maxSecureEraseSectors: 60,
  maxSecureEraseSeg: 64,
  secureEraseSectorAlignment: 68,
} as const;
/** Size of the configuration space with every field up to secure erase. */
export const BLK_CONFIG_SIZE = 72;

/** What the device model needs to describe itself. */
export interface BlkGeometry {
  /** Image size in bytes; the usable capacity is rounded down to whole sectors. */
  imageBytes: number;
  /** Logical block size the guest should use (512 or 4096). */
  blockSize: number;
  numQueues: number;
  /** Longest chain the guest may send, in data segments. */
  segMax: number;
  readonly: boolean;
  /** The storage can flush / discard / write zeroes (absent: yes); false: the feature is not offered. */
  flush?: boolean;
  discard?: boolean;
  writeZeroes?: boolean;
}

/** Largest discard / write-zeroes a single segment may cover (sectors): 1 GiB. */
export const MAX_DISCARD_SECTORS = (1 << 30) >>> SECTOR_SHIFT;

/** The virtio-blk device feature bits this implementation honours for `g`. */
export function blkDeviceFeatures(g: BlkGeometry): bigint {
  let f = 0n;
  for (const bit of [
    BlkFeature.SEG_MAX,
    BlkFeature.BLK_SIZE,
    BlkFeature.FLUSH,
    BlkFeature.TOPOLOGY,
    BlkFeature.CONFIG_WCE,
  ]) {
    f |= 1n << BigInt(bit);
  }
  if (g.numQueues > 1) f |= 1n << BigInt(BlkFeature.MQ);
  // Packed rings (src/virtio/packed-virtqueue.ts); the vhost-user backend
  // withholds the bit while it offers INFLIGHT_SHMFD (packed rings keep no inflight region).
  f |= 1n << BigInt(VIRTIO_F_RING_PACKED);
  // Storage that cannot flush has no cache for the driver to control either.
  if (g.flush === false)
    f &= ~((1n << BigInt(BlkFeature.FLUSH)) | (1n << BigInt(BlkFeature.CONFIG_WCE)));
  if (g.readonly) f |= 1n << BigInt(BlkFeature.RO);
  else {
    if (g.discard !== false) f |= 1n << BigInt(BlkFeature.DISCARD);
    if (g.writeZeroes !== false) f |= 1n << BigInt(BlkFeature.WRITE_ZEROES);
  }
  return f;
}

/** The cache mode in the `writeback` byte (§5.2.4, with VIRTIO_BLK_F_CONFIG_WCE). */
export const BlkCacheMode = { WRITETHROUGH: 0, WRITEBACK: 1 } as const;

/** Whole sectors of an image of `bytes` bytes, as bytes: the capacity a driver sees. */
export function capacityOf(bytes: number): number {
  return Math.floor(bytes / SECTOR_SIZE) * SECTOR_SIZE;
}

/** Writes the capacity field (in sectors) of an encoded config for an image of `bytes` bytes. */
export function writeCapacity(config: Uint8Array, bytes: number): void {
  const v = new DataView(config.buffer, config.byteOffset, config.byteLength);
  v.setBigUint64(BlkConfigOffset.capacity, BigInt(Math.floor(bytes / SECTOR_SIZE)), true);
}

/**
 * Encodes struct virtio_blk_config for `g` (little-endian, §5.2.4). The
 * `writeback` byte starts at writeback (VIRTIO_BLK_F_CONFIG_WCE lets the
 * driver switch it to writethrough with a config write).
 */
export function encodeBlkConfig(g: BlkGeometry): Uint8Array {
  const bytes = new Uint8Array(BLK_CONFIG_SIZE);
  const v = new DataView(bytes.buffer);
  const o = BlkConfigOffset;
  writeCapacity(bytes, g.imageBytes);
  v.setUint32(o.segMax, g.segMax, true);
  v.setUint32(o.blkSize, g.blockSize, true);
  v.setUint8(o.physicalBlockExp, 0);
  v.setUint16(o.minIoSize, 1, true);
  v.setUint32(o.optIoSize, 0, true);
  v.setUint8(o.writeback, BlkCacheMode.WRITEBACK);
  v.setUint16(o.numQueues, g.numQueues, true);
  if (!g.readonly) {
    const alignSectors = g.blockSize / SECTOR_SIZE;
    v.setUint32(o.maxDiscardSectors, MAX_DISCARD_SECTORS, true);
    v.setUint32(o.maxDiscardSeg, 1, true);
    v.setUint32(o.discardSectorAlignment, alignSectors, true);
    v.setUint32(o.maxWriteZeroesSectors, MAX_DISCARD_SECTORS, true);
    v.setUint32(o.maxWriteZeroesSeg, 1, true);
    v.setUint8(o.writeZeroesMayUnmap, 1);
  }
  return bytes;
}
