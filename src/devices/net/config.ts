/**
 * virtio-net feature bits and config space (virtio 1.x §5.1.3, §5.1.4), and
 * the header every frame carries (§5.1.6).
 */
import { featureBit, VIRTIO_F_RING_PACKED } from '../../virtio/index.js';

/** Device feature bits (§5.1.3). */
export const NetFeature = {
  CSUM: 0,
  GUEST_CSUM: 1,
  MTU: 3,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  CTRL_RX: 18,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
  CTRL_MAC_ADDR: 23,
} as const;

/** struct virtio_net_hdr with num_buffers: the header size whenever VERSION_1 is negotiated. */
export const NET_HDR_SIZE = 12;
/** Offset of num_buffers (le16) inside the header. */
export const NET_HDR_NUM_BUFFERS = 10;
/** virtio_net_hdr.flags bit: the driver left a checksum to complete (needs CSUM). */
export const NET_HDR_F_NEEDS_CSUM = 1;
/** virtio_net_hdr.gso_type value of a frame that needs no segmentation. */
export const NET_HDR_GSO_NONE = 0;
/** config.status bit: the link is up (§5.1.4). */
export const NET_S_LINK_UP = 1;
/** Bytes of the config space served: mac[6], status, max_virtqueue_pairs, mtu. */
export const NET_CONFIG_SIZE = 12;

/** Smallest Ethernet frame the device accepts from a driver: a bare header. */
export const MIN_FRAME = 14;
/** The MTU in the config space (VIRTIO_NET_F_MTU, offered): frames up to {@link MAX_FRAME}. */
export const NET_MTU = 1500;
/** Largest frame without offloads: 1500-byte MTU + Ethernet header + one VLAN tag. */
export const MAX_FRAME = 1518;

/** What the config space and the features describe. */
export interface NetGeometry {
  mac: Uint8Array;
  queuePairs: number;
  linkUp: boolean;
  /**
   * The switch carries 64 KiB frames (its rings take them): HOST_TSO4/6 are
   * offered. Absent: false.
   */
  gso?: boolean;
}

/**
 * Offered device features. Offloads (src/net/offload.ts): the driver may
 * send partial checksums (CSUM) and, when the switch's rings take 64 KiB
 * frames, TCP frames to segment (HOST_TSO4/6); it may be sent them
 * (GUEST_CSUM, GUEST_TSO4/6). Whatever a receiving driver did not take, the
 * switch finishes in software for it. MQ only with several pairs. The control queue
 * (CTRL_VQ, CTRL_RX, CTRL_MAC_ADDR) is the last queue, 2 * pairs; QEMU keeps
 * these bits and that queue to itself for vhost-user, other front ends use ours.
 */
export function netDeviceFeatures(g: NetGeometry): bigint {
  let f = featureBit(NetFeature.MAC) | featureBit(NetFeature.MRG_RXBUF);
  f |= featureBit(NetFeature.CSUM) | featureBit(NetFeature.GUEST_CSUM);
  f |= featureBit(NetFeature.GUEST_TSO4) | featureBit(NetFeature.GUEST_TSO6);
  if (g.gso === true) f |= featureBit(NetFeature.HOST_TSO4) | featureBit(NetFeature.HOST_TSO6);
  f |= featureBit(NetFeature.STATUS) | featureBit(NetFeature.CTRL_VQ);
  f |= featureBit(NetFeature.CTRL_RX) | featureBit(NetFeature.CTRL_MAC_ADDR);
  // The config space says mtu 1500, the largest payload the switch carries
  // (MAX_FRAME) other than frames to segment.
  f |= featureBit(NetFeature.MTU);
  if (g.queuePairs > 1) f |= featureBit(NetFeature.MQ);
  // Packed rings (src/virtio/packed-virtqueue.ts), as DPDK's virtio_user packed_vq=1 asks.
  f |= featureBit(VIRTIO_F_RING_PACKED);
  return f;
}

/** Virtqueues of a device with `pairs` queue pairs: receive/transmit pairs, then the control queue. */
export function netQueueCount(pairs: number): number {
  return 2 * pairs + 1;
}

/** Encodes struct virtio_net_config (little-endian). */
export function encodeNetConfig(g: NetGeometry): Uint8Array {
  const out = new Uint8Array(NET_CONFIG_SIZE);
  const v = new DataView(out.buffer);
  out.set(g.mac, 0);
  v.setUint16(6, g.linkUp ? NET_S_LINK_UP : 0, true);
  v.setUint16(8, g.queuePairs, true);
  v.setUint16(10, NET_MTU, true);
  return out;
}
