/**
 * The RARP announcement a switch sends for a guest that moved (live
 * migration, vhost-user SEND_RARP): the frame QEMU's own announce sends
 * (net/announce.c; RFC 903 "reverse request"), broadcast from the guest's
 * MAC so that every switch port — and every bridge beyond a TAP — learns at
 * once where that address now lives.
 */

/** Bytes of the frame: the Ethernet minimum (60 without FCS), padded with zeros. */
export const RARP_FRAME_BYTES = 60;
/** EtherType of RARP. */
export const ETHERTYPE_RARP = 0x8035;
/** RARP opcode "reverse request" (RFC 903). */
const RARP_REQUEST_REVERSE = 3;

/**
 * Writes the announcement for `mac` (6 bytes) into `out[offset, offset + 60)`:
 * destination broadcast, source `mac`, EtherType 0x8035, Ethernet/IPv4
 * hardware and protocol types, opcode 3, sender and target hardware address
 * `mac`, both IPv4 addresses 0, zero padding.
 * @throws RangeError when `mac` is not 6 bytes or `out` has no room.
 */
export function writeRarpAnnouncement(mac: Uint8Array, out: Uint8Array, offset = 0): void {
  if (mac.length !== 6) throw new RangeError(`a MAC address has 6 bytes, got ${mac.length}`);
  if (!(offset >= 0) || offset + RARP_FRAME_BYTES > out.length)
    throw new RangeError(`no room for a ${RARP_FRAME_BYTES}-byte frame at ${offset}`);
  const f = out.subarray(offset, offset + RARP_FRAME_BYTES);
  f.fill(0);
  f.fill(0xff, 0, 6);
  f.set(mac, 6);
  const dv = new DataView(f.buffer, f.byteOffset, f.byteLength);
  dv.setUint16(12, ETHERTYPE_RARP);
  dv.setUint16(14, 1); // hardware type: Ethernet
  dv.setUint16(16, 0x0800); // protocol type: IPv4
  f[18] = 6; // hardware address length
  f[19] = 4; // protocol address length
  dv.setUint16(20, RARP_REQUEST_REVERSE);
  f.set(mac, 22); // sender hardware address; sender IPv4 24..27 stays 0
  f.set(mac, 32); // target hardware address; target IPv4 38..41 stays 0
}
