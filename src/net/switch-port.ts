/**
 * One port's view of the L2 learning switch, used only by that port's worker
 * thread.
 *
 * Design — why there is no global lock: the switch has no shared state that
 * two threads write.
 * - Frames cross threads only through {@link PacketRing}s, one per ordered
 *   pair of ports (source → destination): each ring has exactly one producer
 *   thread and one consumer thread, so it is lock-free SPSC.
 * - Forwarding is decided by the sending port, from its own private
 *   {@link MacTable}. A port learns "MAC m is behind port p" from the source
 *   address of every frame it receives on the ring from p (and "m is mine"
 *   from what its own peer sends). Replies to a flooded frame teach both ends
 *   at once, as in a hardware switch; an entry not refreshed within the
 *   ageing time is forgotten and its frames are flooded again.
 * - A port wakes a destination by writing the destination's doorbell eventfd
 *   once per batch; the destination drains its incoming rings on its own loop.
 * - A full ring drops the frame on the producer side (counted in the ring):
 *   a stalled port loses its own traffic and never blocks a sender.
 *
 * The port is what its peer (the virtio-net device, the TAP peer) sees of the
 * switch: it implements {@link NetBackendPort}, and rings, port numbers and
 * the table stay private to it.
 */

import { copyBytes } from '../locking/copy.js';
import { native } from '../native.js';
import type { NetBackendPort } from './backend-port.js';
import { isGroupAddress, MacTable, UNKNOWN_PORT } from './mac-table.js';
import { PacketRing } from './packet-ring.js';

/** What a port worker is handed at start: its rings and the doorbells of all ports. */
export interface SwitchPortInit {
  /** This port's index. */
  port: number;
  /** Ring buffers this port produces into, by destination port (null for itself). */
  outRings: (SharedArrayBuffer | null)[];
  /** Ring buffers this port consumes, by source port (null for itself). */
  inRings: (SharedArrayBuffer | null)[];
  /** Doorbell eventfd of every port, by port index. */
  doorbells: number[];
  /** MAC ageing time in ms. */
  ageingMs: number;
  /** Most MAC addresses one port's table holds. */
  macCapacity: number;
}

/** Default ageing time of learnt addresses (IEEE 802.1D's 300 s). */
export const DEFAULT_AGEING_MS = 300_000;
/** Default bound on learnt addresses per port. */
export const DEFAULT_MAC_CAPACITY = 4096;

const NO_BYTES = new Uint8Array(0);

/**
 * Frames taken from one incoming ring before the next source's turn: long
 * enough that looking at idle rings costs little per frame, short enough that
 * a busy sender cannot starve the others (the batch budget of a peer is larger).
 */
export const RX_BURST = 32;

/** One port of the switch, as its own worker sees it; see the module comment. */
export class SwitchPort implements NetBackendPort {
  /** This port's index. */
  readonly port: number;
  /** Ports in the switch. */
  readonly ports: number;
  /** This port's private MAC learning table. */
  readonly table: MacTable;
  private readonly doorbells: readonly number[];
  /** 1 for every port sent a frame since the last doorbells. */
  private readonly pending: Uint8Array;
  /** Rings by destination port; null on the diagonal. */
  private readonly out: readonly (PacketRing | null)[];
  /** Destination ports of the frame being routed. */
  private readonly targets: Int32Array;
  /** The reservations of the frame being transmitted: destination, ring, offset. */
  private readonly reservedDst: Int32Array;
  private readonly reservedRing: (PacketRing | null)[];
  private readonly reservedAt: Int32Array;
  private reservedCount = 0;
  private reservedLength = 0;
  /** Incoming rings (the non-null ones) and the port each comes from. */
  private readonly inRings: readonly PacketRing[];
  private readonly inSources: Int32Array;
  /** Incoming ring peek() looks at first, and frames taken from it in a row. */
  private rxNext = 0;
  private rxTaken = 0;
  /** Incoming ring of the frame returned by peek(); -1 none. */
  private rxPeeked = -1;
  private txData: Uint8Array = NO_BYTES;
  private txAt = 0;
  private rxData: Uint8Array = NO_BYTES;
  private rxAt = 0;

  constructor(init: SwitchPortInit) {
    this.port = init.port;
    this.ports = init.doorbells.length;
    this.out = init.outRings.map((b) => (b === null ? null : PacketRing.attach(b)));
    const sources = init.inRings.flatMap((b, src) => (b === null ? [] : [src]));
    this.inRings = sources.map((src) => PacketRing.attach(init.inRings[src] as SharedArrayBuffer));
    this.inSources = Int32Array.from(sources);
    this.doorbells = init.doorbells;
    this.targets = new Int32Array(this.ports);
    this.reservedDst = new Int32Array(this.ports);
    this.reservedRing = Array.from({ length: this.ports }, () => null);
    this.reservedAt = new Int32Array(this.ports);
    this.pending = new Uint8Array(this.ports);
    this.table = new MacTable(init.macCapacity, init.ageingMs);
  }

  beginBatch(): void {
    // The clock is read once per batch rather than per frame.
    this.table.now = performance.now();
  }

  // --- transmit: this port's peer → other ports ------------------------------

  reserve(addresses: Uint8Array, offset: number, length: number): number {
    const n = this.route(addresses, offset);
    let count = 0;
    for (let t = 0; t < n; t++) {
      const ring = this.out[this.targets[t]];
      if (ring === null) continue;
      // A full ring counts its own drop; the other destinations still get the frame.
      const at = ring.reserve(length);
      if (at < 0) continue;
      this.reservedDst[count] = this.targets[t];
      this.reservedRing[count] = ring;
      this.reservedAt[count] = at;
      count++;
    }
    this.reservedCount = count;
    this.reservedLength = length;
    if (count > 0) {
      this.txData = (this.reservedRing[0] as PacketRing).data;
      this.txAt = this.reservedAt[0];
    }
    return count;
  }

  get txBytes(): Uint8Array {
    return this.txData;
  }

  get txOffset(): number {
    return this.txAt;
  }

  commit(): void {
    const length = this.reservedLength;
    for (let i = this.reservedCount - 1; i >= 0; i--) {
      const ring = this.reservedRing[i] as PacketRing;
      // The caller wrote the frame into reservation 0 only: copy it into the others.
      if (i > 0) copyBytes(this.txData, this.txAt, ring.data, this.reservedAt[i], length);
      ring.commit(length);
      this.reservedRing[i] = null;
      this.pending[this.reservedDst[i]] = 1;
    }
    this.reservedCount = 0;
  }

  /**
   * Learns the frame's source as this port's own and decides where it goes:
   * fills {@link targets} and returns their count (0: filtered, the
   * destination is behind this very port). `bytes[off, off + 12)` holds the
   * destination and source addresses.
   */
  private route(bytes: Uint8Array, off: number): number {
    this.table.learn(bytes, off + 6, this.port);
    if (!isGroupAddress(bytes, off)) {
      const dst = this.table.lookup(bytes, off);
      if (dst === this.port) return 0;
      if (dst !== UNKNOWN_PORT) {
        this.targets[0] = dst;
        return 1;
      }
    }
    return this.flood();
  }

  /** Every port but this one: broadcast, multicast and unknown unicast (no loop back). */
  private flood(): number {
    let n = 0;
    for (let p = 0; p < this.ports; p++) if (p !== this.port) this.targets[n++] = p;
    return n;
  }

  // --- receive: other ports → this port's peer -------------------------------

  peek(): number {
    const rings = this.inRings;
    for (let k = 0; k < rings.length; k++) {
      const i = this.rxNext;
      const length = rings[i].peek();
      if (length >= 0) {
        this.rxPeeked = i;
        this.rxData = rings[i].data;
        this.rxAt = rings[i].frameOffset;
        return length;
      }
      this.rxNext = i + 1 === rings.length ? 0 : i + 1;
      this.rxTaken = 0;
    }
    this.rxPeeked = -1;
    return -1;
  }

  get rxBytes(): Uint8Array {
    return this.rxData;
  }

  get rxOffset(): number {
    return this.rxAt;
  }

  release(): void {
    const i = this.rxPeeked;
    if (i < 0) return;
    // The frame arrived from port inSources[i]: its source address lives there.
    this.table.learn(this.rxData, this.rxAt + 6, this.inSources[i]);
    this.inRings[i].release();
    this.rxPeeked = -1;
    if (++this.rxTaken < RX_BURST) return;
    // The next source's turn: a busy sender cannot starve the others.
    this.rxNext = i + 1 === this.inRings.length ? 0 : i + 1;
    this.rxTaken = 0;
  }

  /** Ends a batch: one doorbell per destination that received frames. */
  endBatch(): void {
    for (let p = 0; p < this.ports; p++) {
      if (this.pending[p] === 0) continue;
      this.pending[p] = 0;
      // The eventfd write is a system call, a full barrier: the ring's HEAD
      // store (commit) precedes it, and the consumer reads HEAD after being woken.
      native.eventfdWrite(this.doorbells[p], 1);
    }
  }
}

/** The rings of a switch of `ports` ports: `rings[src][dst]`, null where src === dst. */
export function createSwitchRings(ports: number, capacity: number): (PacketRing | null)[][] {
  return Array.from({ length: ports }, (_, src) =>
    Array.from({ length: ports }, (_, dst) => (src === dst ? null : PacketRing.create(capacity))),
  );
}
