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
 * - Backpressure, bounded (issue 13): a frame with one destination (a
 *   learnt unicast address; in a two-port switch, any frame) whose ring is
 *   full is held — {@link SwitchPort.reserve} returns {@link HOLD} and the
 *   peer leaves the frame where it was (the guest's TX ring) — and the port
 *   raises the ring's WAITING flag; the destination rings this port's
 *   doorbell once it has freed room, and the peer retries. If the
 *   destination makes no progress for `holdMs` (a guest that posts no
 *   receive buffers, a port that went away), its frames are dropped from
 *   then on, counted (the ring's DROPS, and {@link SwitchPort.stallDrops}),
 *   until it has room again: a dead receiver delays a sender at most
 *   `holdMs` once, never stalls it; a slow one loses nothing.
 *   Frames flooded to several ports (broadcast, multicast, unknown unicast)
 *   are never held: a full destination drops its copy, the others get theirs.
 * - Ring indexes are published once per batch ({@link SwitchPort.endBatch}):
 *   HEAD of every ring written, TAIL of every ring read, after the batch's
 *   frame copies (frame-copy.ts) are done.
 *
 * - The native frame loop ({@link SwitchPort.burst}, native/net-burst.cc)
 *   does the same per batch for bare frames of split rings: it routes by this
 *   port's table (read only), reserves and consumes records on the rings'
 *   private indexes, and stops for every decision with policy in it — a
 *   source address to learn (learnKey here, then it goes on), a full
 *   destination (reserve() decides hold or drop) — and every frame it does
 *   not take (the per-frame methods below take it).
 *
 * The port is what its peer (the virtio-net device, the TAP peer) sees of the
 * switch: it implements {@link NetBackendPort}, and rings, port numbers and
 * the table stay private to it.
 */

import { copyBytes } from '../locking/copy.js';
import { PACKET_RING, PACKET_RING_HEADER_BYTES } from '../locking/layout.js';
import { BURST_CTL, BURST_STATUS, type NetBurst, native } from '../native.js';
import { type NetBackendPort, type PortBurst, RESERVE_HOLD } from './backend-port.js';
import { isGroupAddress, MacTable, UNKNOWN_PORT } from './mac-table.js';
import { PacketRing, RING_VNET_HDR_BYTES } from './packet-ring.js';

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
  /**
   * How long (ms) a unicast frame for a full ring is held before the port
   * drops for that destination instead; 0 (the default) drops at once.
   */
  holdMs?: number;
  /**
   * Whether the port offers its native frame loop ({@link SwitchPort.burst};
   * default true). False keeps every frame on the TypeScript path.
   */
  nativeLoop?: boolean;
}

/** {@link SwitchPort.reserve}: the frame's destination is full; leave the frame, retry on the doorbell. */
export const HOLD = RESERVE_HOLD;

/** Default ageing time of learnt addresses (IEEE 802.1D's 300 s). */
export const DEFAULT_AGEING_MS = 300_000;
/** Default bound on learnt addresses per port. */
export const DEFAULT_MAC_CAPACITY = 4096;

const NO_BYTES = new Uint8Array(0);
/** No destination is blocked since this time. */
const NOT_BLOCKED = -1;

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
  /** The frame reserved last travels with its virtio_net_hdr. */
  private reservedHeader = false;
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
  private rxHeaderAt = -1;
  /** Largest record (header included) every out ring takes. */
  readonly maxFrame: number;
  /**
   * Every ring data area this port writes or reads, out rings first (by
   * destination, skipping itself), then in rings: what {@link txView} and
   * {@link rxView} index (the frame copier's first views).
   */
  readonly frameViews: readonly Uint8Array[];
  /** View index (in {@link frameViews}) of each out ring, by destination port; -1 on the diagonal. */
  private readonly outView: Int32Array;
  /** View index of each in ring (by position in inRings). */
  private readonly inView: Int32Array;
  /** View of the frame returned by peek(). */
  private rxViewAt = 0;
  /** Per in ring: released frames not yet handed back (publishTail due at endBatch). */
  private readonly inDirty: Uint8Array;
  private readonly holdMs: number;
  /**
   * Per destination whose ring is full (held or dropping): the batch time
   * of its consumer's last progress seen (TAIL moved), else NOT_BLOCKED.
   */
  private readonly blockedSince: Float64Array;
  /** Per blocked destination: its ring's TAIL when last looked at. */
  private readonly blockedTail: Int32Array;
  /** Unicast frames dropped because their destination stayed full past holdMs (plain count). */
  stallDrops = 0;
  /** Times a unicast frame was held for a full destination (plain count). */
  holds = 0;
  /** The native frame loop over this port's rings and table (see {@link burst}). */
  private readonly loop: NetBurst;
  /** Batches begun: what the learnt-address caches below are valid for. */
  private batch = 0;
  /**
   * The source address learnt last, as (batch, high, low): for tx at 0 (behind
   * this port), then per in ring i at 3 (i + 1) (behind its sender). The loop
   * skips learning an address learnt already in this batch (MacTable.learn
   * would do nothing with it).
   */
  private readonly learnt: Float64Array;
  /** The native loop, as the device sees it; undefined when the init turned it off. */
  readonly burst: PortBurst | undefined;

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
    const views: Uint8Array[] = [];
    this.outView = Int32Array.from(this.out, (r) => (r === null ? -1 : views.push(r.data) - 1));
    this.inView = Int32Array.from(this.inRings, (r) => views.push(r.data) - 1);
    this.frameViews = views;
    const outs = this.out.filter((r): r is PacketRing => r !== null);
    this.maxFrame = outs.length === 0 ? 0 : Math.min(...outs.map((r) => r.maxFrame));
    this.inDirty = new Uint8Array(this.inRings.length);
    const hold = init.holdMs ?? 0;
    if (!(hold >= 0)) throw new RangeError(`holdMs ${hold} must be >= 0`);
    this.holdMs = hold;
    this.blockedSince = new Float64Array(this.ports).fill(NOT_BLOCKED);
    this.blockedTail = new Int32Array(this.ports);
    this.learnt = new Float64Array(3 * (this.inRings.length + 1)).fill(-1);
    this.loop = new native.NetBurst();
    const t = this.table.arrays;
    this.loop.setSwitch(
      this.port,
      this.out.map((r) => (r === null ? null : new Uint8Array(r.buffer))),
      this.inRings.map((r) => new Uint8Array(r.buffer)),
      PACKET_RING.HEAD,
      PACKET_RING.TAIL,
      PACKET_RING_HEADER_BYTES,
      t.keyHigh,
      t.keyLow,
      t.ports,
      t.seen,
      t.buckets,
    );
    const port = this;
    this.burst =
      init.nativeLoop === false
        ? undefined
        : {
            setGuest: (views, starts, ends, biases) =>
              port.loop.setGuest(views, starts, ends, biases),
            get txReady(): boolean {
              return port.noneBlocked();
            },
            tx: (ctl) => port.burstTx(ctl),
            rx: (ctl) => port.burstRx(ctl),
          };
  }

  beginBatch(): void {
    // The clock is read once per batch rather than per frame.
    this.table.now = performance.now();
    this.batch++;
  }

  // --- the native frame loop (native/net-burst.cc) ---------------------------

  /** No destination is held for or dropped for: the native loop may transmit. */
  private noneBlocked(): boolean {
    for (let p = 0; p < this.ports; p++) if (this.blockedSince[p] !== NOT_BLOCKED) return false;
    return true;
  }

  /** {@link PortBurst.tx}: the native loop, learning what it asks for, over the out rings' indexes. */
  private burstTx(ctl: Float64Array): number {
    const C = BURST_CTL;
    const base = C.RING_STATE;
    for (let p = 0; p < this.ports; p++) {
      const ring = this.out[p];
      if (ring === null) continue;
      ring.producerState(ctl, base + 3 * p);
      ctl[base + 3 * p + 2] = 0;
    }
    ctl[C.NOW] = this.table.now;
    ctl[C.AGEING_MS] = this.table.ageingMs;
    let frames = 0;
    let bytes = 0;
    let status: number;
    for (;;) {
      this.offerLearnt(ctl, 0);
      status = this.loop.tx(ctl);
      const k = ctl[C.FRAMES];
      frames += k;
      bytes += ctl[C.BYTES];
      ctl[C.LAST_AVAIL] = (ctl[C.LAST_AVAIL] + k) & 0xffff;
      ctl[C.USED_IDX] = (ctl[C.USED_IDX] + k) & 0xffff;
      ctl[C.MAX] -= k;
      if (status !== BURST_STATUS.LEARN) break;
      // As route() does for every frame: the source is behind this port.
      this.learnAsked(ctl, 0, this.port);
    }
    for (let p = 0; p < this.ports; p++) {
      const ring = this.out[p];
      if (ring === null) continue;
      ring.setProducerState(ctl, base + 3 * p);
      // Published (HEAD) and rung in endBatch, as for frames committed here.
      if (ctl[base + 3 * p + 2] > 0) this.pending[p] = 1;
    }
    ctl[C.FRAMES] = frames;
    ctl[C.BYTES] = bytes;
    return status;
  }

  /** Tells the loop which source address (slot `at` of {@link learnt}) needs no learning in this batch. */
  private offerLearnt(ctl: Float64Array, at: number): void {
    const l = this.learnt;
    ctl[BURST_CTL.LEARNT_VALID] = l[at] === this.batch ? 1 : 0;
    ctl[BURST_CTL.LEARNT_HIGH] = l[at + 1];
    ctl[BURST_CTL.LEARNT_LOW] = l[at + 2];
  }

  /** Learns the address the loop stopped at as behind `port`, and remembers it in slot `at`. */
  private learnAsked(ctl: Float64Array, at: number, port: number): void {
    const l = this.learnt;
    l[at] = this.batch;
    l[at + 1] = ctl[BURST_CTL.LEARN_HIGH];
    l[at + 2] = ctl[BURST_CTL.LEARN_LOW];
    this.table.learnKey(l[at + 1], l[at + 2], port);
  }

  /** {@link PortBurst.rx}: the native loop over the in rings, in the turns peek() keeps. */
  private burstRx(ctl: Float64Array): number {
    const C = BURST_CTL;
    const rings = this.inRings;
    let frames = 0;
    let bytes = 0;
    let popped = 0;
    let status: number = BURST_STATUS.DONE;
    let idle = 0;
    const budget = ctl[C.MAX];
    ctl[C.FRAMES] = 0;
    ctl[C.BYTES] = 0;
    ctl[C.POPPED] = 0;
    // A frame peeked and not released stays the TypeScript path's.
    if (this.rxPeeked >= 0) return BURST_STATUS.DEFER;
    while (frames < budget && idle < rings.length) {
      const i = this.rxNext;
      const ring = rings[i];
      ring.consumerState(ctl, C.RING_STATE);
      ctl[C.IN_RING] = i;
      const limit = Math.min(budget - frames, RX_BURST - this.rxTaken);
      let moved = 0;
      for (;;) {
        this.offerLearnt(ctl, 3 * (i + 1));
        ctl[C.MAX] = limit - moved;
        status = this.loop.rx(ctl);
        const k = ctl[C.FRAMES];
        const chains = ctl[C.POPPED];
        moved += k;
        bytes += ctl[C.BYTES];
        popped += chains;
        ctl[C.LAST_AVAIL] = (ctl[C.LAST_AVAIL] + chains) & 0xffff;
        ctl[C.USED_IDX] = (ctl[C.USED_IDX] + chains) & 0xffff;
        if (status !== BURST_STATUS.LEARN) break;
        // As release() does for every frame: the source is behind the ring's sender.
        this.learnAsked(ctl, 3 * (i + 1), this.inSources[i]);
      }
      ring.setConsumerState(ctl, C.RING_STATE);
      frames += moved;
      this.rxTaken += moved;
      if (moved > 0) {
        // Handed back (TAIL) in endBatch, after the copies (done: they were synchronous).
        this.inDirty[i] = 1;
        idle = 0;
      }
      // The frame left stays first in line: peek() returns it.
      if (status !== BURST_STATUS.DONE) break;
      if (moved < limit || this.rxTaken >= RX_BURST) {
        // This ring is empty, or had its turn: the next source's.
        if (moved < limit) idle++;
        this.rxNext = i + 1 === rings.length ? 0 : i + 1;
        this.rxTaken = 0;
      }
    }
    ctl[C.FRAMES] = frames;
    ctl[C.BYTES] = bytes;
    ctl[C.POPPED] = popped;
    return status;
  }

  // --- transmit: this port's peer → other ports ------------------------------

  reserve(addresses: Uint8Array, offset: number, length: number, vnetHeader = false): number {
    const n = this.route(addresses, offset);
    this.reservedCount = 0;
    this.reservedLength = length;
    this.reservedHeader = vnetHeader;
    const bytes = vnetHeader ? length + RING_VNET_HDR_BYTES : length;
    // One destination (learnt unicast, or any frame in a two-port switch): backpressure.
    if (n === 1 && this.holdMs > 0) return this.reserveUnicast(this.targets[0], bytes);
    let count = 0;
    for (let t = 0; t < n; t++) {
      const ring = this.out[this.targets[t]];
      if (ring === null) continue;
      // A full ring counts its own drop; the other destinations still get the frame.
      const at = ring.reserve(bytes);
      if (at < 0) continue;
      this.addReservation(count++, this.targets[t], ring, at);
    }
    this.reservedCount = count;
    return count;
  }

  /** One destination with backpressure (`length`: record bytes): 1, {@link HOLD}, or 0 when dropped (counted). */
  private reserveUnicast(dst: number, length: number): number {
    const ring = this.out[dst];
    if (ring === null) return 0;
    let at = ring.tryReserve(length);
    if (at < 0) {
      const now = this.table.now;
      if (this.blockedSince[dst] === NOT_BLOCKED) {
        this.blockedSince[dst] = now;
        this.blockedTail[dst] = ring.consumed;
        // Raise WAITING, then look once more: the consumer may have freed room meanwhile.
        ring.setWaiting(true);
        at = ring.tryReserve(length);
      } else if (ring.consumed !== this.blockedTail[dst]) {
        // The consumer is alive, only slow: wait on.
        this.blockedTail[dst] = ring.consumed;
        this.blockedSince[dst] = now;
      }
      if (at < 0) {
        if (now - this.blockedSince[dst] < this.holdMs) {
          this.holds++;
          return HOLD;
        }
        // No progress for holdMs: the destination is dead to us until it drains.
        ring.countDrop();
        this.stallDrops++;
        return 0;
      }
    }
    if (this.blockedSince[dst] !== NOT_BLOCKED) {
      this.blockedSince[dst] = NOT_BLOCKED;
      ring.setWaiting(false);
    }
    this.addReservation(0, dst, ring, at);
    this.reservedCount = 1;
    return 1;
  }

  private addReservation(i: number, dst: number, ring: PacketRing, at: number): void {
    this.reservedDst[i] = dst;
    this.reservedRing[i] = ring;
    this.reservedAt[i] = at;
    if (i > 0) return;
    this.txData = ring.data;
    this.txAt = at;
  }

  /**
   * The longest a held frame may still wait (ms from the batch's clock)
   * before its destination is dropped for instead; -1 when none is held.
   * The peer retries at the latest then, even if no doorbell comes.
   */
  holdDeadline(): number {
    let deadline = -1;
    for (let p = 0; p < this.ports; p++) {
      const since = this.blockedSince[p];
      if (since === NOT_BLOCKED) continue;
      const left = Math.max(0, since + this.holdMs - this.table.now);
      if (deadline < 0 || left < deadline) deadline = left;
    }
    return deadline;
  }

  /** Reservations the last reserve took (destinations the frame goes to). */
  get reservations(): number {
    return this.reservedCount;
  }

  /** View index (in {@link frameViews}) of reservation `i` of the last reserve. */
  reservedView(i: number): number {
    return this.outView[this.reservedDst[i]];
  }

  /** Offset in its ring's data of reservation `i` of the last reserve. */
  reservedOffset(i: number): number {
    return this.reservedAt[i];
  }

  /** View index of the frame returned by the last peek (in {@link frameViews}). */
  get rxView(): number {
    return this.rxViewAt;
  }

  get txBytes(): Uint8Array {
    return this.txData;
  }

  get txOffset(): number {
    return this.txAt;
  }

  commit(): void {
    this.commitReserved(false);
  }

  /**
   * As {@link commit}, for a caller that writes (or has recorded the copy
   * of) the frame into every reservation itself ({@link reservedView} /
   * {@link reservedOffset}), so nothing is duplicated here. The bytes must
   * be in place before {@link endBatch}, which publishes them.
   */
  commitWritten(): void {
    this.commitReserved(true);
  }

  private commitReserved(written: boolean): void {
    const length = this.reservedLength;
    const header = this.reservedHeader;
    const bytes = header ? length + RING_VNET_HDR_BYTES : length;
    for (let i = this.reservedCount - 1; i >= 0; i--) {
      const ring = this.reservedRing[i] as PacketRing;
      // The caller wrote the frame into reservation 0 only: copy it into the others.
      if (i > 0 && !written)
        copyBytes(this.txData, this.txAt, ring.data, this.reservedAt[i], bytes);
      // Published (HEAD) once per batch, in endBatch.
      ring.commitDeferred(length, header);
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
        this.rxHeaderAt = rings[i].headerOffset;
        this.rxViewAt = this.inView[i];
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

  /** Offset of the peeked frame's virtio_net_hdr in {@link rxBytes}; -1: none. */
  get rxHeader(): number {
    return this.rxHeaderAt;
  }

  release(): void {
    const i = this.rxPeeked;
    if (i < 0) return;
    // The frame arrived from port inSources[i]: its source address lives there.
    this.table.learn(this.rxData, this.rxAt + 6, this.inSources[i]);
    // Handed back (TAIL) once per batch, in endBatch, after the frame was copied out.
    this.inRings[i].releaseDeferred();
    this.inDirty[i] = 1;
    this.rxPeeked = -1;
    if (++this.rxTaken < RX_BURST) return;
    // The next source's turn: a busy sender cannot starve the others.
    this.rxNext = i + 1 === this.inRings.length ? 0 : i + 1;
    this.rxTaken = 0;
  }

  /**
   * Ends a batch: publishes HEAD of every ring written and TAIL of every ring
   * read (the caller has finished every copy of the batch), then one doorbell
   * per destination that received frames and per source that waits for the
   * room this batch freed.
   */
  endBatch(): void {
    for (let i = 0; i < this.inRings.length; i++) {
      if (this.inDirty[i] === 0) continue;
      this.inDirty[i] = 0;
      const ring = this.inRings[i];
      // publishTail's seq-cst store of TAIL precedes this load of WAITING (see PacketRing.setWaiting).
      if (ring.publishTail() && ring.producerWaiting) this.pending[this.inSources[i]] = 1;
    }
    for (let p = 0; p < this.ports; p++) {
      if (this.pending[p] === 0) continue;
      this.pending[p] = 0;
      this.out[p]?.publish();
      // The eventfd write is a system call, a full barrier: the ring's HEAD
      // store (publish) precedes it, and the consumer reads HEAD after being woken.
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
