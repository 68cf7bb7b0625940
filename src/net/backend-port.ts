import type { NetBurst } from '../native.js';

/**
 * A port's native per-batch frame loop (native/net-burst.cc, issue 13), for
 * a device whose queue is a split ring: the device fills the queue's part
 * of the control array ({@link BURST_CTL}: where its rings are, its
 * indexes, the receive filter) and the port the switch's part (the clock,
 * ring indexes, learnt addresses). Frames the loop leaves (DEFER,
 * NO_BUFFERS) go through {@link NetBackendPort}'s per-frame methods.
 */
export interface PortBurst extends Pick<NetBurst, 'setGuest'> {
  /** Whether a transmit batch may go native now (no destination is held or dropped for). */
  readonly txReady: boolean;
  /**
   * Moves frames from the queue in `ctl` into the rings until ctl[MAX], the
   * avail snapshot, or a frame the loop leaves; learns source addresses on
   * the way. ctl[FRAMES] / ctl[BYTES]: what moved (each frame's chain
   * popped and completed with used length 0). Returns a BURST_STATUS (not LEARN).
   */
  tx(ctl: Float64Array): number;
  /**
   * Moves frames from the incoming rings, in their turn, into the queue in
   * `ctl` until ctl[MAX], no frame is left, or one the loop leaves (peek()
   * then returns it). ctl[FRAMES] / ctl[BYTES] / ctl[POPPED]: frames
   * delivered, their bytes, chains popped and used elements added.
   */
  rx(ctl: Float64Array): number;
}

/**
 * What a network device model needs from whatever carries its frames: the
 * one interface between a frame's producer or consumer (the virtio-net device,
 * the TAP peer) and the switch. The device never sees a ring, a port number
 * or the forwarding table: learning MAC addresses, choosing destinations,
 * flooding and counting drops stay behind this interface (see SwitchPort).
 *
 * Shape of one batch (one wake-up of the port's worker):
 *
 * ```ts
 * port.beginBatch();
 * // transmit: one reservation per frame
 * if (port.reserve(addresses, 0, length) > 0) {
 *   copy(frame → port.txBytes at port.txOffset, length);
 *   port.commit();
 * }
 * // receive: frames wait until released
 * for (let len = port.peek(); len >= 0; len = port.peek()) {
 *   deliver(port.rxBytes, port.rxOffset, len); // or stop, leaving it queued
 *   port.release();
 * }
 * port.endBatch(); // doorbells of the ports that received frames
 * ```
 *
 * Nothing here allocates, and the caller copies a frame once: a frame for
 * several destinations is written into the first reservation only and the
 * port duplicates it into the others on {@link NetBackendPort.commit}, so a
 * flooded frame is read out of guest memory once, not once per destination.
 *
 * Used by one thread only (the port's worker); the methods are not reentrant.
 */
export interface NetBackendPort {
  /**
   * Starts a batch: samples the clock the port ages and learns addresses by,
   * once per batch rather than per frame. Call before any reserve or peek.
   */
  beginBatch(): void;

  /**
   * Routes a frame and reserves room for it at every destination.
   * `addresses[offset, offset + 12)` holds its destination and source MAC
   * addresses (the first 12 bytes of the Ethernet header; the source is
   * learnt as behind this port); `length` is the whole frame's size.
   *
   * Returns how many destinations took a reservation. 0: nothing to write —
   * the frame is filtered (its destination is behind this very port) or
   * every destination was full (each such drop is counted by the port).
   * {@link RESERVE_HOLD}: hold the frame (backpressure) and retry later.
   * Otherwise the caller writes the whole frame, once, to
   * {@link txBytes}`[txOffset, txOffset + length)` and calls {@link commit}
   * before the next reserve.
   *
   * `vnetHeader`: the frame travels with its 12-byte virtio_net_hdr (it asks
   * for a checksum or segmentation: src/net/offload.ts); the reservation is
   * then 12 + `length` bytes, the header first, the frame after it.
   */
  reserve(addresses: Uint8Array, offset: number, length: number, vnetHeader?: boolean): number;

  /**
   * Largest frame (virtio_net_hdr included) every destination ring of the
   * port can take: segmentation offloads (64 KiB frames) are offered only
   * when it is at least {@link MAX_GSO_FRAME} + 12.
   */
  readonly maxFrame: number;

  /** Where to write the frame reserved last (valid until {@link commit}). */
  readonly txBytes: Uint8Array;

  /** Offset of the reserved frame in {@link txBytes}. */
  readonly txOffset: number;

  /**
   * Publishes the frame reserved last to every destination that took a
   * reservation (copying it into the others) and notes their doorbells for
   * {@link endBatch}. Does nothing when the last reserve returned 0.
   */
  commit(): void;

  /**
   * The length of the next frame waiting for this port's peer, or -1 when
   * none waits. The frame is at {@link rxBytes}`[rxOffset, rxOffset + length)`
   * and stays there — a second peek returns it again — until {@link release}.
   * Frames from one source keep their order; sources take turns.
   */
  peek(): number;

  /** Bytes holding the frame returned by the last {@link peek} (valid until {@link release}). */
  readonly rxBytes: Uint8Array;

  /** Offset of that frame in {@link rxBytes}. */
  readonly rxOffset: number;

  /**
   * Offset in {@link rxBytes} of that frame's 12-byte virtio_net_hdr, -1
   * when it carries none (nothing to complete or segment). The header and
   * the frame are the receiver's to rewrite in place until {@link release}.
   */
  readonly rxHeader: number;

  /**
   * Consumes the frame returned by the last {@link peek} (delivered, filtered
   * or dropped: the caller counts which) and frees its space for the sender.
   */
  release(): void;

  /**
   * Ends a batch: publishes the batch's frames and freed space, and rings the
   * doorbell of every port that was sent frames since {@link beginBatch} (or
   * waits for the room freed), once each. Every copy into a reservation and
   * out of a peeked frame must be done before.
   */
  endBatch(): void;

  // --- batched native copies (frame-copy.ts) --------------------------------

  /**
   * The data areas of every ring the port writes or reads: a peer that
   * copies frames natively names them as views `0..frameViews.length - 1`.
   */
  readonly frameViews: readonly Uint8Array[];

  /** Destinations the last {@link reserve} took (its return value when positive). */
  readonly reservations: number;

  /** View index (in {@link frameViews}) of reservation `i` of the last reserve. */
  reservedView(i: number): number;

  /** Offset in that view of reservation `i`. */
  reservedOffset(i: number): number;

  /**
   * As {@link commit}, when the caller copies the frame into EVERY
   * reservation itself (nothing is duplicated); the copies must be done
   * before {@link endBatch}.
   */
  commitWritten(): void;

  /** View index (in {@link frameViews}) of the frame returned by the last {@link peek}. */
  readonly rxView: number;

  // --- backpressure ----------------------------------------------------------

  /**
   * ms (from this batch's clock) until a held destination is given up on,
   * -1 when nothing is held: retry transmitting by then at the latest.
   */
  holdDeadline(): number;

  /** Unicast frames dropped after their destination stayed full too long (a plain running count). */
  readonly stallDrops: number;

  /** Times a frame was held for a full destination (a plain running count). */
  readonly holds: number;

  /** The native frame loop, when this port has one (a switch port does; a test double need not). */
  readonly burst?: PortBurst;
}

/**
 * {@link NetBackendPort.reserve}'s answer for a unicast frame whose
 * destination is full: the peer leaves the frame where it is (the guest's
 * transmit ring), stops transmitting, and retries on its doorbell or at
 * {@link NetBackendPort.holdDeadline}.
 */
export const RESERVE_HOLD = -1;

/** See {@link NetBackendPort.maxFrame}. */
export { MAX_GSO_FRAME } from './offload.js';
