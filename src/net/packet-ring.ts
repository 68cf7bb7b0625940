/**
 * A lock-free single-producer / single-consumer ring of Ethernet frames in a
 * SharedArrayBuffer: how a frame crosses from one switch port's worker thread
 * to another's. The switch keeps one ring per ordered pair of ports
 * (source → destination), so every ring has exactly one writer thread (the
 * source port) and one reader thread (the destination port) and needs no lock.
 *
 * Records are `[u32 length][frame, padded to 4 bytes]` and never wrap: when a
 * record does not fit before the end of the data area, the producer writes a
 * WRAP marker and starts again at offset 0. A frame is therefore always
 * contiguous, so the consumer copies it straight into guest memory (or hands
 * it to writev) with no staging copy, and the producer copies a frame straight
 * out of guest memory into {@link PacketRing.data}.
 *
 * Indexes are free-running u32 byte counts (HEAD written only by the
 * producer, TAIL only by the consumer); the capacity is a power of two, so
 * `index & mask` is the position and the u32 wrap-around is exact. The header
 * slots are named in src/locking/layout.ts (PACKET_RING): HEAD and DROPS on
 * the producer's cache line, TAIL on the consumer's, so the two threads never
 * write the same line.
 *
 * A full ring is the producer's to handle: {@link PacketRing.reserve} drops
 * the frame and counts it in DROPS (producer-written); {@link PacketRing.tryReserve}
 * only says the ring is full, so the producer can hold the frame and wait
 * for room (backpressure, switch-port.ts), raising the WAITING slot so the
 * consumer rings its doorbell once it has freed space.
 *
 * Batches: {@link PacketRing.commitDeferred} and {@link PacketRing.releaseDeferred}
 * move only the thread's private index; {@link PacketRing.publish} /
 * {@link PacketRing.publishTail} store HEAD / TAIL once per batch, after the
 * batch's frame bytes were copied (natively, in one call: frame-copy.ts).
 * One shared store per batch instead of one per frame, and the consumer's
 * cache line is touched once per batch.
 *
 * Offloads (issue 13): a frame that asks for work (a partial checksum, a
 * 64 KiB TCP frame to segment: offload.ts) travels with its 12-byte
 * virtio_net_hdr, as `[u32 length | VNET_HEADER][header][frame]`; every
 * other frame stays `[u32 length][frame]`. Why a flag rather than a header
 * in every record, or fixed slots chained for big frames: a 64-byte frame
 * without offloads — the packet-rate case — keeps exactly the bytes and the
 * one length word it had, while a 64 KiB frame is still one contiguous
 * record (variable-length records already fit any size up to
 * {@link PacketRing.maxFrame}), which the consumer checksums, segments or
 * hands to writev in place with no reassembly.
 *
 * The hot path (reserve, commit, peek, release) allocates nothing: it works
 * on views made once per handle and returns plain numbers. The switch's
 * native frame loop (native/net-burst.cc) reserves, commits, peeks and
 * releases records exactly this way, on the private indexes that
 * {@link PacketRing.producerState} / {@link PacketRing.consumerState} hand
 * it and take back; publishing stays here.
 */
import { VhostRtError } from '../errors.js';
import {
  PACKET_RING,
  PACKET_RING_HEADER_BYTES,
  PACKET_RING_MAGIC_VALUE,
  PACKET_RING_MAX_CAPACITY,
  PACKET_RING_MIN_CAPACITY,
} from '../locking/layout.js';

/** Length word of a record that only says "continue at offset 0". */
const WRAP = 0xffffffff;
/** Length-word bit: a 12-byte virtio_net_hdr precedes the frame (see the module comment). */
const VNET_HEADER = 0x80000000;
/** Bytes of the virtio_net_hdr a record may carry. */
export const RING_VNET_HDR_BYTES = 12;
const RECORD_HEADER = 4;
const HEADER_SLOTS = PACKET_RING_HEADER_BYTES / Int32Array.BYTES_PER_ELEMENT;

/** Errors of the packet ring; `code` is stable. */
export class PacketRingError extends VhostRtError {}

function align4(n: number): number {
  return (n + 3) & ~3;
}

/** One ring; each thread holds its own handle on the shared buffer. */
export class PacketRing {
  /** The data area: frames live at `data[frameOffset, frameOffset + length)`. */
  readonly data: Uint8Array;
  readonly capacity: number;
  private readonly header: Int32Array;
  private readonly words: DataView;
  private readonly mask: number;
  /** Producer: reservation in progress (position of its length word), -1 none. */
  private reservedPos = -1;
  /** Producer: HEAD including committed, unpublished records; and HEAD as last stored. */
  private head: number;
  private headPublished: number;
  /** Consumer: TAIL including released, unpublished records; and TAIL as last stored. */
  private tail: number;
  private tailPublished: number;
  private reservedAdvance = 0;
  /**
   * Producer: the last TAIL loaded. The consumer only moves TAIL forward, so
   * this under-states the free space; it is reloaded only when the ring looks
   * full, so a producer reads the consumer's cache line once per many frames.
   */
  private tailSeen: number;
  /** Consumer: where the frame returned by {@link peek} starts, and its record size. */
  frameOffset = 0;
  /**
   * Consumer: where the virtio_net_hdr of the frame returned by {@link peek}
   * starts ({@link RING_VNET_HDR_BYTES} bytes), -1 when it carries none.
   */
  headerOffset = -1;
  private peekedAdvance = 0;
  /** Consumer: the last HEAD loaded; reloaded only when everything before it is consumed. */
  private headSeen: number;

  private constructor(readonly buffer: SharedArrayBuffer) {
    this.header = new Int32Array(buffer, 0, HEADER_SLOTS);
    this.capacity = this.header[PACKET_RING.CAPACITY];
    this.mask = this.capacity - 1;
    this.data = new Uint8Array(buffer, PACKET_RING_HEADER_BYTES, this.capacity);
    this.words = new DataView(buffer, PACKET_RING_HEADER_BYTES, this.capacity);
    // Acquire loads: whatever the other side published before this handle
    // existed (nothing, unless a ring is re-attached) is visible.
    this.tailSeen = Atomics.load(this.header, PACKET_RING.TAIL);
    this.headSeen = Atomics.load(this.header, PACKET_RING.HEAD);
    this.head = this.headSeen;
    this.headPublished = this.headSeen;
    this.tail = this.tailSeen;
    this.tailPublished = this.tailSeen;
  }

  /** A new empty ring with `capacity` data bytes: a power of two in 4 KiB..256 MiB. */
  static create(capacity: number): PacketRing {
    if (
      !Number.isInteger(capacity) ||
      capacity < PACKET_RING_MIN_CAPACITY ||
      capacity > PACKET_RING_MAX_CAPACITY
    ) {
      throw new RangeError(`PacketRing capacity ${capacity} must be an integer in 4096..2^28`);
    }
    if ((capacity & (capacity - 1)) !== 0) {
      throw new RangeError(`PacketRing capacity ${capacity} must be a power of two`);
    }
    const buffer = new SharedArrayBuffer(PACKET_RING_HEADER_BYTES + capacity);
    const header = new Int32Array(buffer, 0, HEADER_SLOTS);
    header[PACKET_RING.CAPACITY] = capacity;
    // Plain stores: the buffer reaches another thread only through
    // postMessage, which orders them before the receiver's attach().
    header[PACKET_RING.MAGIC] = PACKET_RING_MAGIC_VALUE;
    return new PacketRing(buffer);
  }

  /** A handle on a ring created by {@link create} (in this or another thread). */
  static attach(buffer: SharedArrayBuffer): PacketRing {
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength < PACKET_RING_HEADER_BYTES) {
      throw new PacketRingError('PACKET_RING_BAD_LAYOUT', 'not a packet ring buffer');
    }
    const header = new Int32Array(buffer, 0, HEADER_SLOTS);
    const capacity = header[PACKET_RING.CAPACITY];
    if (
      header[PACKET_RING.MAGIC] !== PACKET_RING_MAGIC_VALUE ||
      buffer.byteLength !== PACKET_RING_HEADER_BYTES + capacity
    ) {
      throw new PacketRingError('PACKET_RING_BAD_LAYOUT', 'packet ring header is inconsistent');
    }
    return new PacketRing(buffer);
  }

  /** Largest frame a ring of this capacity can take. */
  get maxFrame(): number {
    return this.capacity / 4;
  }

  /** Frames dropped because the ring was full (any thread; a snapshot). */
  get drops(): number {
    // Pairs with the producer's store in reserve(): a statistic, no data depends on it.
    return Atomics.load(this.header, PACKET_RING.DROPS) >>> 0;
  }

  /** TAIL as the consumer last published it (any thread; a snapshot: moves when the consumer progresses). */
  get consumed(): number {
    // A load of the other side's index, used only to see that it moved.
    return Atomics.load(this.header, PACKET_RING.TAIL);
  }

  /** Bytes in use (any thread; a snapshot). */
  get fill(): number {
    // Two loads, each of the other side's published index: a snapshot only.
    return (
      (Atomics.load(this.header, PACKET_RING.HEAD) -
        Atomics.load(this.header, PACKET_RING.TAIL)) >>>
      0
    );
  }

  /**
   * Producer: reserves room for a frame of `length` bytes and returns the
   * offset in {@link data} to copy it to, or -1 when the ring is full (the
   * drop is counted). Follow with {@link commit}.
   */
  reserve(length: number): number {
    const at = this.tryReserve(length);
    return at < 0 ? this.drop() : at;
  }

  /**
   * Producer: as {@link reserve}, but a full ring (or a frame longer than
   * {@link maxFrame}) returns -1 without counting a drop: the caller decides
   * (hold the frame, or {@link countDrop}).
   */
  tryReserve(length: number): number {
    if (length > this.maxFrame || length < 0) return -1;
    // Our own private index (committed records, published or not).
    const head = this.head;
    const pos = head & this.mask;
    const record = RECORD_HEADER + align4(length);
    const pad = pos + record > this.capacity ? this.capacity - pos : 0;
    if (((head - this.tailSeen) >>> 0) + pad + record > this.capacity) {
      // Acquire: the consumer finished reading every byte before TAIL ahead
      // of its seq-cst store in release(), so that space is really free.
      // (Space freed by an older TAIL was ordered by the load that saw it.)
      this.tailSeen = Atomics.load(this.header, PACKET_RING.TAIL);
      if (((head - this.tailSeen) >>> 0) + pad + record > this.capacity) return -1;
    }
    if (pad > 0) this.words.setUint32(pos, WRAP, true);
    const at = pad > 0 ? 0 : pos;
    this.reservedPos = at;
    this.reservedAdvance = pad + record;
    return at + RECORD_HEADER;
  }

  /** Producer: publishes the frame reserved last, `length` bytes long. */
  commit(length: number): void {
    this.commitDeferred(length);
    this.publish();
  }

  /**
   * Producer: ends the frame reserved last, `length` bytes long, without
   * publishing it: the consumer sees it after the next {@link publish}, which
   * must follow the copy of its bytes. With `vnetHeader`, the reservation
   * (of `length` + {@link RING_VNET_HDR_BYTES} bytes) holds a virtio_net_hdr
   * and then the frame.
   */
  commitDeferred(length: number, vnetHeader = false): void {
    if (this.reservedPos < 0) {
      throw new PacketRingError('PACKET_RING_NO_RESERVATION', 'commit without reserve');
    }
    this.words.setUint32(
      this.reservedPos,
      vnetHeader ? (length | VNET_HEADER) >>> 0 : length,
      true,
    );
    this.head = (this.head + this.reservedAdvance) | 0;
    this.reservedPos = -1;
  }

  /** Producer: publishes every committed frame (one store of HEAD); false when there was none. */
  publish(): boolean {
    if (this.head === this.headPublished) return false;
    // Release: the frames' bytes (copied by this thread, natively or not),
    // their length words and any WRAP marker were written before this seq-cst
    // store; the consumer's load of HEAD in peek() that sees it sees them.
    Atomics.store(this.header, PACKET_RING.HEAD, this.head);
    this.headPublished = this.head;
    return true;
  }

  /**
   * Producer: writes its private indexes (HEAD with committed, unpublished
   * records; the TAIL last loaded) to `out[at]`, `out[at + 1]`, for the
   * native frame loop (native/net-burst.cc), which reserves and commits
   * records the same way; {@link setProducerState} takes them back.
   */
  producerState(out: Float64Array, at: number): void {
    if (this.reservedPos >= 0)
      throw new PacketRingError('PACKET_RING_RESERVED', 'a reservation is open');
    out[at] = this.head;
    out[at + 1] = this.tailSeen;
  }

  /** Producer: takes back the indexes of {@link producerState}, moved on by committed records. */
  setProducerState(state: Float64Array, at: number): void {
    this.head = state[at] | 0;
    this.tailSeen = state[at + 1] | 0;
  }

  /** Consumer: writes its private TAIL and the HEAD last loaded to `out[at]`, `out[at + 1]` (see producerState). */
  consumerState(out: Float64Array, at: number): void {
    out[at] = this.tail;
    out[at + 1] = this.headSeen;
  }

  /** Consumer: takes back the indexes of {@link consumerState}, moved on past released records. */
  setConsumerState(state: Float64Array, at: number): void {
    this.tail = state[at] | 0;
    this.headSeen = state[at + 1] | 0;
    this.peekedAdvance = 0;
  }

  /** Producer: counts one frame dropped because the ring was full. */
  countDrop(): void {
    this.drop();
  }

  /**
   * Producer: says whether it waits for room (WAITING). Raise it, then look
   * at the free space once more with {@link tryReserve}: the consumer
   * publishes TAIL and then reads WAITING, the producer stores WAITING and
   * then reloads TAIL (both seq-cst), so one of them sees the other's store
   * and a wake-up is never lost.
   */
  setWaiting(waiting: boolean): void {
    // Seq-cst store, ordered before the TAIL reload of the next tryReserve.
    Atomics.store(this.header, PACKET_RING.WAITING, waiting ? 1 : 0);
    // Forget the cached TAIL so the next tryReserve reloads it.
    if (waiting) this.tailSeen = (this.head - this.capacity) | 0;
  }

  /** Consumer: whether the producer waits for room (read after {@link publishTail}). */
  get producerWaiting(): boolean {
    // Seq-cst load after the seq-cst TAIL store of publishTail: see setWaiting.
    return Atomics.load(this.header, PACKET_RING.WAITING) !== 0;
  }

  private drop(): number {
    // Producer-only counter: load+store cannot race with another writer.
    // The store publishes the count to readers of `drops`.
    Atomics.store(
      this.header,
      PACKET_RING.DROPS,
      (Atomics.load(this.header, PACKET_RING.DROPS) + 1) | 0,
    );
    return -1;
  }

  /**
   * Consumer: the length of the oldest frame (it starts at
   * {@link frameOffset}), or -1 when the ring is empty. The frame stays until
   * {@link release}.
   */
  peek(): number {
    let tail = this.tail; // our own private index
    if (tail === this.headSeen) {
      // Acquire: pairs with the seq-cst store of HEAD in commit(); every
      // record before that index is fully written. (Records before an older
      // HEAD were ordered by the load that saw it.)
      this.headSeen = Atomics.load(this.header, PACKET_RING.HEAD);
      if (tail === this.headSeen) return -1;
    }
    let pos = tail & this.mask;
    let word = this.words.getUint32(pos, true);
    let skip = 0;
    if (word === WRAP) {
      skip = this.capacity - pos;
      tail = (tail + skip) | 0;
      pos = 0;
      word = this.words.getUint32(0, true);
    }
    if (word < VNET_HEADER) {
      this.headerOffset = -1;
      this.frameOffset = pos + RECORD_HEADER;
      this.peekedAdvance = skip + RECORD_HEADER + align4(word);
      return word;
    }
    const length = word - VNET_HEADER;
    this.headerOffset = pos + RECORD_HEADER;
    this.frameOffset = pos + RECORD_HEADER + RING_VNET_HDR_BYTES;
    this.peekedAdvance = skip + RECORD_HEADER + align4(RING_VNET_HDR_BYTES + length);
    return length;
  }

  /** Consumer: frees the frame returned by the last {@link peek}. */
  release(): void {
    this.releaseDeferred();
    this.publishTail();
  }

  /**
   * Consumer: moves past the frame returned by the last {@link peek} without
   * handing its space back: that happens at the next {@link publishTail},
   * which must follow every read (copy) of the frame.
   */
  releaseDeferred(): void {
    this.tail = (this.tail + this.peekedAdvance) | 0;
    this.peekedAdvance = 0;
  }

  /** Consumer: hands back the space of every released frame (one store of TAIL); false when none. */
  publishTail(): boolean {
    if (this.tail === this.tailPublished) return false;
    // Release: our reads of the frames (native copies included) happen before
    // this seq-cst store; the producer reuses the space only after its load
    // of TAIL in tryReserve() sees it.
    Atomics.store(this.header, PACKET_RING.TAIL, this.tail);
    this.tailPublished = this.tail;
    return true;
  }
}
