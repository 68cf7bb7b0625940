/**
 * virtio-console layouts (virtio 1.x §5.3): feature bits, the config space,
 * queue numbering and the multiport control messages. All little-endian.
 */
import { featureBit, VIRTIO_F_RING_PACKED } from '../../virtio/index.js';

/** Device feature bits, §5.3.3. */
export const ConsoleFeature = {
  /** cols/rows in the config space are valid. */
  SIZE: 0,
  /** max_nr_ports is valid; control queues exist. */
  MULTIPORT: 1,
  /** The emerg_wr register works. */
  EMERG_WRITE: 2,
} as const;

/** struct virtio_console_config, §5.3.4: le16 cols, le16 rows, le32 max_nr_ports, le32 emerg_wr. */
export const CONSOLE_CONFIG_SIZE = 12;
/** Byte offsets of the fields of struct virtio_console_config (§5.3.4). */
export const ConsoleConfigOffset = { COLS: 0, ROWS: 2, MAX_NR_PORTS: 4, EMERG_WR: 8 } as const;

/** Control events, §5.3.6.2 (`value` meanings in the comments). */
export const ControlEvent = {
  /** Driver → device: value 1 = ready, 0 = driver failed. */
  DEVICE_READY: 0,
  /** Device → driver: a port `id` exists (the spec's VIRTIO_CONSOLE_DEVICE_ADD). */
  PORT_ADD: 1,
  /** Device → driver: port `id` is gone (VIRTIO_CONSOLE_DEVICE_REMOVE). */
  PORT_REMOVE: 2,
  /** Driver → device: port `id` set up (value 1) or failed (0). */
  PORT_READY: 3,
  /** Device → driver: port `id` is a console. */
  CONSOLE_PORT: 4,
  /** Device → driver: console size changed; struct virtio_console_resize follows. */
  RESIZE: 5,
  /** Both ways: port `id` opened (value 1) or closed (0) on the sender's side. */
  PORT_OPEN: 6,
  /** Device → driver: the port's name follows the header. */
  PORT_NAME: 7,
} as const;

/** Spec name of a control event, for logs. */
export function controlEventName(event: number): string {
  const entry = Object.entries(ControlEvent).find(([, v]) => v === event);
  return entry === undefined ? `UNKNOWN(${event})` : entry[0];
}

/** struct virtio_console_control: le32 id, le16 event, le16 value. */
export const CONTROL_HEADER_SIZE = 8;
/** struct virtio_console_resize (after the header): le16 cols, le16 rows. */
export const RESIZE_PAYLOAD_SIZE = 4;
/** Longest port name sent in PORT_NAME. */
export const MAX_PORT_NAME_BYTES = 255;

/** receiveq0, transmitq0, control receiveq, control transmitq, then receiveqN/transmitqN (§5.3.2). */
export const CONTROL_RX_QUEUE = 2;
/** The control transmitq (driver → device control messages); multiport only, like queue 2. */
export const CONTROL_TX_QUEUE = 3;

/** Receive (host→guest) queue of `port`. */
export function rxQueueOf(port: number): number {
  return port === 0 ? 0 : 2 * (port + 1);
}

/** Transmit (guest→host) queue of `port`. */
export function txQueueOf(port: number): number {
  return rxQueueOf(port) + 1;
}

/** The port a data queue belongs to, or -1 for the control queues. */
export function portOfQueue(queue: number): number {
  if (queue < 2) return 0;
  if (queue < 4) return -1;
  return (queue >> 1) - 1;
}

/** Number of virtqueues for `ports` ports (multiport needs the two control queues). */
export function consoleQueueCount(ports: number, multiport: boolean): number {
  return multiport ? 2 * (ports + 1) : 2;
}

/** The features the device offers (transport bits are added by the vhost-user backend). */
export function consoleDeviceFeatures(multiport: boolean): bigint {
  // Packed rings (src/virtio/packed-virtqueue.ts) as well as split ones.
  const base =
    featureBit(ConsoleFeature.SIZE) |
    featureBit(ConsoleFeature.EMERG_WRITE) |
    featureBit(VIRTIO_F_RING_PACKED);
  return multiport ? base | featureBit(ConsoleFeature.MULTIPORT) : base;
}

/** Encodes the config space; emerg_wr reads as 0. */
export function encodeConsoleConfig(cols: number, rows: number, maxPorts: number): Uint8Array {
  const out = new Uint8Array(CONSOLE_CONFIG_SIZE);
  const v = new DataView(out.buffer);
  v.setUint16(ConsoleConfigOffset.COLS, cols, true);
  v.setUint16(ConsoleConfigOffset.ROWS, rows, true);
  v.setUint32(ConsoleConfigOffset.MAX_NR_PORTS, maxPorts, true);
  return out;
}
