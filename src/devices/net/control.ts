/**
 * The virtio-net control virtqueue (virtio 1.x §5.1.6.5): receive mode
 * (promiscuous, all-multicast), MAC filter tables, the primary MAC, announce
 * acknowledgement and the number of queue pairs, and the receive filter that
 * follows from them.
 *
 * QEMU's virtio-net handles the control queue itself for vhost-user back ends
 * (it never hands that ring over), so this serves front ends that do, like
 * an embedding VMM or the project's own. Filtering starts only once the
 * driver has set a receive mode or a table: before that everything passes,
 * as when CTRL_RX is not negotiated.
 */
import { BURST_CTL } from '../../native.js';
import { isGroupAddress, macKey } from '../../net/mac-table.js';

/** Command classes and commands (§5.1.6.5). */
export const CtrlClass = { RX: 0, MAC: 1, ANNOUNCE: 3, MQ: 4 } as const;
/** Commands of class RX (VIRTIO_NET_CTRL_RX_*); payload one byte, 0 = off, 1 = on. */
export const CtrlRx = { PROMISC: 0, ALLMULTI: 1 } as const;
/** Commands of class MAC: TABLE_SET (unicast, then multicast table), ADDR_SET (primary MAC). */
export const CtrlMac = { TABLE_SET: 0, ADDR_SET: 1 } as const;
/** The one command of class ANNOUNCE: the driver acknowledges an announce request; no payload. */
export const CTRL_ANNOUNCE_ACK = 0;
/** The command of class MQ this device serves: payload le16 count of queue pairs to use. */
export const CTRL_MQ_VQ_PAIRS_SET = 0;
/** The ack byte the device writes for a command carried out (§5.1.6.5). */
export const CTRL_OK = 0;
/** The ack byte for a command that is malformed, out of range or not supported. */
export const CTRL_ERR = 1;
/** Most MAC addresses a filter table may list (QEMU's MAC_TABLE_ENTRIES is 64). */
export const MAX_FILTER_MACS = 64;

/** Receive-filter state of one port. */
export class RxFilter {
  /** Receive every frame (the reset state, as QEMU's). */
  promisc = true;
  allMulti = false;
  /** Pairs the driver enabled with VQ_PAIRS_SET. */
  activePairs = 1;
  private active = false;
  private readonly unicast = new Set<number>();
  private readonly multicast = new Set<number>();
  /** The primary MAC's high 16 and low 32 bits (as int32), for the per-frame test. */
  private primaryHigh = 0;
  private primaryLow = 0;

  constructor(
    mac: Uint8Array,
    private readonly maxPairs: number,
  ) {
    this.setPrimary(mac);
  }

  private setPrimary(mac: Uint8Array): void {
    this.primaryHigh = (mac[0] << 8) | mac[1];
    this.primaryLow = (mac[2] << 24) | (mac[3] << 16) | (mac[4] << 8) | mac[5];
  }

  /** Whether the frame at `bytes[off]` (its destination first) is for this port. */
  accepts(bytes: Uint8Array, off: number): boolean {
    if (!this.active || this.promisc) return true;
    // The common cases compare small integers; only a table lookup builds the
    // 48-bit key (a heap number: issue 13).
    const high = (bytes[off] << 8) | bytes[off + 1];
    const low =
      (bytes[off + 2] << 24) | (bytes[off + 3] << 16) | (bytes[off + 4] << 8) | bytes[off + 5];
    if (isGroupAddress(bytes, off)) {
      if ((high === 0xffff && low === -1) || this.allMulti) return true;
      return this.multicast.has(macKey(bytes, off));
    }
    if (high === this.primaryHigh && low === this.primaryLow) return true;
    return this.unicast.size > 0 && this.unicast.has(macKey(bytes, off));
  }

  /**
   * What the native frame loop needs to apply {@link accepts} on its own:
   * ctl[FILTER_ALL] 1 when every frame is accepted, else the primary
   * address and the all-multicast mode; frames the tables would decide it
   * leaves to {@link accepts}.
   */
  summarize(ctl: Float64Array): void {
    ctl[BURST_CTL.FILTER_ALL] = !this.active || this.promisc ? 1 : 0;
    ctl[BURST_CTL.PRIMARY_HIGH] = this.primaryHigh;
    ctl[BURST_CTL.PRIMARY_LOW] = this.primaryLow;
    ctl[BURST_CTL.ALL_MULTI] = this.allMulti ? 1 : 0;
  }

  /** Carries out one command; `data` is its payload. Returns the ack byte. */
  command(cls: number, cmd: number, data: Uint8Array, length: number): number {
    switch (cls) {
      case CtrlClass.RX:
        return this.rxMode(cmd, data, length);
      case CtrlClass.MAC:
        return cmd === CtrlMac.TABLE_SET
          ? this.tableSet(data, length)
          : this.addrSet(cmd, data, length);
      case CtrlClass.ANNOUNCE:
        return cmd === CTRL_ANNOUNCE_ACK ? CTRL_OK : CTRL_ERR;
      case CtrlClass.MQ:
        return this.pairsSet(cmd, data, length);
      default:
        return CTRL_ERR;
    }
  }

  private rxMode(cmd: number, data: Uint8Array, length: number): number {
    if (length !== 1 || (cmd !== CtrlRx.PROMISC && cmd !== CtrlRx.ALLMULTI)) return CTRL_ERR;
    if (cmd === CtrlRx.PROMISC) this.promisc = data[0] !== 0;
    else this.allMulti = data[0] !== 0;
    this.active = true;
    return CTRL_OK;
  }

  private addrSet(cmd: number, data: Uint8Array, length: number): number {
    if (cmd !== CtrlMac.ADDR_SET || length !== 6) return CTRL_ERR;
    this.setPrimary(data);
    return CTRL_OK;
  }

  /** Two tables, unicast then multicast, each `le32 entries` + 6 bytes per MAC. */
  private tableSet(data: Uint8Array, length: number): number {
    const uni = readTable(data, 0, length);
    if (uni < 0) return CTRL_ERR;
    const multiAt = 4 + uni * 6;
    const multi = readTable(data, multiAt, length);
    if (multi < 0 || multiAt + 4 + multi * 6 !== length) return CTRL_ERR;
    this.unicast.clear();
    this.multicast.clear();
    for (let i = 0; i < uni; i++) this.unicast.add(macKey(data, 4 + i * 6));
    for (let i = 0; i < multi; i++) this.multicast.add(macKey(data, multiAt + 4 + i * 6));
    this.active = true;
    return CTRL_OK;
  }

  private pairsSet(cmd: number, data: Uint8Array, length: number): number {
    if (cmd !== CTRL_MQ_VQ_PAIRS_SET || length !== 2) return CTRL_ERR;
    const pairs = data[0] | (data[1] << 8);
    if (pairs < 1 || pairs > this.maxPairs) return CTRL_ERR;
    this.activePairs = pairs;
    return CTRL_OK;
  }
}

/** Entry count of the table at `data[at]`, or -1 if it does not fit or is too long. */
function readTable(data: Uint8Array, at: number, length: number): number {
  if (at + 4 > length) return -1;
  const n = (data[at] | (data[at + 1] << 8) | (data[at + 2] << 16) | (data[at + 3] << 24)) >>> 0;
  if (n > MAX_FILTER_MACS || at + 4 + n * 6 > length) return -1;
  return n;
}
