/**
 * Main thread → console worker commands that are not vhost-user requests
 * (a resize, an emergency-write byte, a port hot-(un)plug): fixed 8-byte
 * records in an SpscByteRing (the main thread produces, the worker consumes),
 * announced by writing a doorbell eventfd that the worker watches on its loop.
 * Record: u8 op, u8 pad, le16 a, le32 b.
 */
export const ConsoleCommand = {
  /** a = cols, b = rows. */
  RESIZE: 1,
  /** a = the byte the driver wrote to emerg_wr. */
  EMERG_WRITE: 2,
  /** a = port id. */
  PORT_REMOVE: 3,
  /** a = port id. */
  PORT_ADD: 4,
} as const;

export const COMMAND_RECORD_BYTES = 8;
/** 512 records: far more than a control plane produces between two worker turns. */
export const COMMAND_RING_BYTES = 4096;

/** Writes one record into `out` (8 bytes). */
export function encodeCommand(out: Uint8Array, op: number, a: number, b: number): void {
  const v = new DataView(out.buffer, out.byteOffset, COMMAND_RECORD_BYTES);
  v.setUint8(0, op);
  v.setUint8(1, 0);
  v.setUint16(2, a, true);
  v.setUint32(4, b, true);
}
