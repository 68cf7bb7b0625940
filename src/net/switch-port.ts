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
 */
import { native } from '../native.js';
import { isGroupAddress, MacTable, macKey, UNKNOWN_PORT } from './mac-table.js';
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

export class SwitchPort {
  readonly port: number;
  readonly ports: number;
  /** Rings by destination / by source; null on the diagonal. */
  readonly out: readonly (PacketRing | null)[];
  readonly in: readonly (PacketRing | null)[];
  /** Filled by {@link route}: destination ports of the current frame. */
  readonly targets: Int32Array;
  readonly table: MacTable;
  /** Time of the current batch (ms), read once per batch rather than per frame. */
  now = 0;
  private readonly doorbells: readonly number[];
  private readonly pending: Uint8Array;

  constructor(init: SwitchPortInit) {
    this.port = init.port;
    this.ports = init.doorbells.length;
    this.out = init.outRings.map((b) => (b === null ? null : PacketRing.attach(b)));
    this.in = init.inRings.map((b) => (b === null ? null : PacketRing.attach(b)));
    this.doorbells = init.doorbells;
    this.targets = new Int32Array(this.ports);
    this.pending = new Uint8Array(this.ports);
    this.table = new MacTable(init.macCapacity, init.ageingMs);
  }

  /** Starts a batch of frames: samples the clock once. */
  beginBatch(): void {
    this.now = performance.now();
  }

  /**
   * Learns the frame's source as this port's own and decides where it goes:
   * fills {@link targets} and returns their count (0: filtered, the
   * destination is behind this very port). `bytes[off, off + 12)` holds the
   * destination and source addresses.
   */
  route(bytes: Uint8Array, off: number): number {
    this.table.learn(macKey(bytes, off + 6), this.port, this.now);
    if (!isGroupAddress(bytes, off)) {
      const dst = this.table.lookup(macKey(bytes, off), this.now);
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

  /** Learns the source address of a frame that arrived on the ring from port `src`. */
  learnFrom(src: number, bytes: Uint8Array, frameOffset: number): void {
    this.table.learn(macKey(bytes, frameOffset + 6), src, this.now);
  }

  /** Notes that a frame was committed to the ring towards `dst`. */
  sent(dst: number): void {
    this.pending[dst] = 1;
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

  /**
   * Forwards one frame held in `src[off, off + length)` to every target of
   * {@link route}; returns how many rings took it (the others counted a drop).
   */
  forwardBytes(src: Uint8Array, off: number, length: number): number {
    const n = this.route(src, off);
    let taken = 0;
    for (let t = 0; t < n; t++) {
      const dst = this.targets[t];
      const ring = this.out[dst];
      if (ring === null) continue;
      const at = ring.reserve(length);
      if (at < 0) continue;
      if (length < 64) for (let i = 0; i < length; i++) ring.data[at + i] = src[off + i];
      else ring.data.set(src.subarray(off, off + length), at);
      ring.commit(length);
      this.sent(dst);
      taken++;
    }
    return taken;
  }
}

/** The rings of a switch of `ports` ports: `rings[src][dst]`, null where src === dst. */
export function createSwitchRings(ports: number, capacity: number): (PacketRing | null)[][] {
  return Array.from({ length: ports }, (_, src) =>
    Array.from({ length: ports }, (_, dst) => (src === dst ? null : PacketRing.create(capacity))),
  );
}
