/**
 * The device side of a split virtqueue (virtio 1.x §2.7), hardened against a
 * hostile guest:
 *
 * - ring-level violations (avail.idx running ahead, a head out of range, rings
 *   outside guest memory or misaligned) throw {@link QueueBrokenError}; the
 *   device stops the queue;
 * - chain-level violations never throw: `pop()` returns the head with
 *   `chain.error` set, and the device completes it with used length 0;
 * - every guest index is reduced mod size or range-checked before use, every
 *   guest address goes through GuestMemory's bounds checks, and every guest
 *   field is read exactly once, so a guest rewriting rings concurrently cannot
 *   make a value differ between its check and its use.
 *
 * Memory ordering: JS `Atomics.load` / `Atomics.store` are sequentially
 * consistent. A load is at least an acquire and a store at least a release,
 * and a store followed by a load of another location is ordered (a full
 * fence: xchg/mfence on x86, stlr+ldar on arm64). Each use below says which
 * guest access it orders against. Rings are little-endian; typed-array views
 * use host order, so the host must be little-endian (checked at construction).
 */
import type { DescriptorChain } from './descriptor-chain.js';
import type { DirtyLog } from './dirty-log.js';
import type { DrainableQueue } from './drain.js';
import { ChainErrorCode, QueueBrokenError, QueueErrorCode } from './errors.js';
import type { GuestMemory } from './guest-memory.js';
import type { InflightQueue, InflightRecovery } from './inflight.js';
import {
  AVAIL_ALIGN,
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  availRingBytes,
  availUsedEventOffset,
  DESC_ADDR,
  DESC_ALIGN,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  DESC_SIZE,
  descTableBytes,
  isValidQueueSize,
  MAX_INDIRECT_ENTRIES,
  USED_ALIGN,
  USED_FLAGS,
  USED_IDX,
  USED_RING,
  usedAvailEventOffset,
  usedRingBytes,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  vringNeedEvent,
} from './split-ring.js';

export { DescriptorChain } from './descriptor-chain.js';

/** Where the three parts of a split queue live (guest-physical) and what was negotiated. */
export interface SplitQueueConfig {
  /** Queue size: a power of two in 1..32768 (SET_VRING_NUM). */
  size: number;
  /** Guest-physical address of the descriptor table (16-byte aligned). */
  descTable: number;
  /** Guest-physical address of the avail ring (2-byte aligned). */
  availRing: number;
  /** Guest-physical address of the used ring (4-byte aligned). */
  usedRing: number;
  /** VIRTIO_RING_F_EVENT_IDX negotiated: used_event / avail_event replace the flags. */
  eventIdx: boolean;
  /** VIRTIO_RING_F_INDIRECT_DESC negotiated. */
  indirect: boolean;
  /** VIRTIO_F_NOTIFY_ON_EMPTY negotiated: interrupt when the ring runs empty despite suppression. */
  notifyOnEmpty?: boolean;
  /**
   * VIRTIO_F_RING_PACKED negotiated: the ring is a PackedVirtqueue
   * (packed-virtqueue.ts) and the three addresses are read as descriptor
   * ring, driver area and device area.
   */
  packed?: boolean;
}

/**
 * What devices, the drain loop, {@link Vring} and the worker runtime need
 * of a started ring, whichever its layout: {@link SplitVirtqueue} and
 * PackedVirtqueue (packed-virtqueue.ts) both have it. `head` is the split
 * ring's head descriptor index or the packed ring's buffer id.
 */
export interface Virtqueue extends DrainableQueue {
  /** Queue size. */
  readonly size: number;
  /** EVENT_IDX negotiated. */
  readonly eventIdx: boolean;
  /** Tells the layouts apart. */
  readonly packed: boolean;
  /**
   * Chains popped, u16: the split ring's last_avail_idx. Setting an earlier
   * value puts chains popped since then (and not yet returned) back.
   */
  lastAvailIdx: number;
  /** Used elements added, u16 free-running (the split ring's used idx). */
  readonly usedIdx: number;
  /** What GET_VRING_BASE hands back for this ring. */
  readonly vringBase: number;
  /** Bytes of the used ring (split) or device area (packed), logged whole at a ring stop. */
  readonly usedAreaBytes: number;
  /** More than 0 when chains are available (inflight resubmissions included). */
  pending(): number;
  /** Writes one used element without publishing it. */
  addUsed(head: number, len: number): void;
  /** Writes one used element and publishes it. */
  pushUsed(head: number, len: number): void;
  /** Publishes every used element added so far. */
  publishUsed(): void;
  /** Whether the driver wants an interrupt for what was published since the last call. */
  needsInterrupt(): boolean;
  /** Switches to a new memory table (re-validates the rings). */
  setMemory(memory: GuestMemory): void;
  /**
   * Marks in `log` what the used elements added since used index `from`
   * wrote (their writable buffers, up to the used length unless `whole`),
   * and the ring's own writes at `ringLogAddr` (-1: the ring is not logged).
   */
  logBatch(log: DirtyLog, from: number, ringLogAddr: number, whole: boolean): void;
  /**
   * Marks in `log`, whole, every ring area the device writes (a ring stop,
   * before the front end's last look at the bitmap): a batch marks the ring
   * before the store that publishes it, so a bitmap read and cleared between
   * the two misses that store. `ringLogAddr` as for {@link logBatch}.
   */
  logRingAreas(log: DirtyLog, ringLogAddr: number): void;
  /**
   * Where the first buffers of up to `max` chains the driver made available,
   * and the device has not popped, begin: (region, buffer offset) pairs in
   * `out`, so that a caller can prefetch them before it pops. Only reads; a
   * chain whose first buffer is indirect or unmapped is skipped, and nothing
   * is validated beyond what keeps the answer inside guest memory ({@link pop}
   * still checks everything). Returns the number of pairs written.
   */
  peekHeads(out: Float64Array, max: number): number;
}

/** Segment limit per chain when the constructor is not given one (QEMU's VIRTQUEUE_MAX_SIZE). */
export const DEFAULT_MAX_SEGMENTS = 1024;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const TWO_POW_32 = 2 ** 32;
const U32_MAX = 0xffffffff;
// Element indexes of the u16 / u32 views below (byte offsets / element size).
const AVAIL_FLAGS_U16 = AVAIL_FLAGS / 2;
const AVAIL_IDX_U16 = AVAIL_IDX / 2;
const AVAIL_RING_U16 = AVAIL_RING / 2;
const USED_FLAGS_U16 = USED_FLAGS / 2;
const USED_IDX_U16 = USED_IDX / 2;

/** Where a ring landed: region index and byte offset in that region's buffer. */
interface RingLocation {
  region: number;
  offset: number;
}

/**
 * One split virtqueue, used by a single thread (the device worker). Typical
 * loop after a kick:
 *
 * ```ts
 * do {
 *   q.setNotification(false);           // no kicks while draining
 *   while (q.pop(chain)) submit(chain);  // chain.error !== null: q.addUsed(chain.head, 0)
 * } while (q.enableNotification());     // a chain slipped in before kicks were back on
 * // (drainQueue() in drain.ts is this loop with a budget and a way to stop early)
 * // on completions: q.addUsed(head, written) per request, then once per batch:
 * q.publishUsed();
 * if (q.needsInterrupt()) signal(callFd);
 * ```
 */
export class SplitVirtqueue implements Virtqueue {
  /** Queue size (number of descriptors and ring slots). */
  readonly size: number;
  /** Guest-physical addresses of the three parts. */
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;
  /** Negotiated ring features. */
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly notifyOnEmpty: boolean;

  private readonly mask: number;
  private readonly maxSegments: number;
  private memory!: GuestMemory;
  // Views of the rings, rebuilt by mapRings() for every memory table.
  private descView!: DataView;
  private descBase = 0;
  /** avail ring as u16: flags, idx, ring[size], used_event. */
  private avail!: Uint16Array;
  /** used ring header as u16: flags, idx. */
  private usedHeader!: Uint16Array;
  /** used ring elements as u32 pairs: id, len. */
  private usedElems!: Uint32Array;
  /** used.avail_event (empty view without EVENT_IDX). */
  private availEvent!: Uint16Array;
  private usedEventIndex = 0;
  /** Where the three parts landed in the current memory table (for {@link burstLocation}). */
  private descAt: RingLocation = { region: 0, offset: 0 };
  private availAt: RingLocation = { region: 0, offset: 0 };
  private usedAt: RingLocation = { region: 0, offset: 0 };

  private lastAvail = 0;
  /** Last avail.idx read from the guest; entries up to it are already ordered by that read. */
  private shadowAvail = 0;
  private used = 0;
  /** used idx at the last needsInterrupt(); invalid after a reset of the indexes. */
  private signalledUsed = 0;
  private signalledValid = false;
  private notifyEnabled = true;
  /** The inflight region (INFLIGHT_SHMFD), or null when the transport keeps none. */
  private inflight: InflightQueue | null = null;

  // The descriptor being walked, as scalars, so reading one allocates nothing.
  private dAddr = 0;
  private dLen = 0;
  private dFlags = 0;
  private dNext = 0;
  private seenWritable = false;
  private segmentLimit = 0;

  /**
   * @param maxSegments upper bound on segments per chain (the chain's own capacity also applies).
   * @throws QueueBrokenError VIRTQ_BAD_SIZE, VIRTQ_RING_UNMAPPED or VIRTQ_RING_MISALIGNED.
   */
  constructor(memory: GuestMemory, config: SplitQueueConfig, maxSegments = DEFAULT_MAX_SEGMENTS) {
    if (!LITTLE_ENDIAN) throw new Error('SplitVirtqueue needs a little-endian host');
    if (!isValidQueueSize(config.size)) {
      throw new QueueBrokenError(
        QueueErrorCode.BAD_SIZE,
        `queue size ${config.size} is not a power of two in 1..32768`,
      );
    }
    if (!Number.isInteger(maxSegments) || maxSegments < 1) {
      throw new RangeError(`maxSegments must be a positive integer, got ${maxSegments}`);
    }
    this.size = config.size;
    this.mask = config.size - 1;
    this.descTable = config.descTable;
    this.availRing = config.availRing;
    this.usedRing = config.usedRing;
    this.eventIdx = config.eventIdx;
    this.indirect = config.indirect;
    this.notifyOnEmpty = config.notifyOnEmpty ?? false;
    this.maxSegments = maxSegments;
    this.mapRings(memory);
  }

  /** Switches to a new memory table; re-validates and re-maps the rings (throws like the constructor). */
  setMemory(memory: GuestMemory): void {
    this.mapRings(memory);
  }

  /** The device's next avail index, u16 free-running (SET_VRING_BASE / GET_VRING_BASE). */
  get lastAvailIdx(): number {
    return this.lastAvail;
  }

  set lastAvailIdx(value: number) {
    this.lastAvail = checkU16('lastAvailIdx', value);
    this.shadowAvail = this.lastAvail;
  }

  /** Always false: tells the two ring layouts apart. */
  get packed(): false {
    return false;
  }

  /** GET_VRING_BASE of a split ring: last_avail_idx. */
  get vringBase(): number {
    return this.lastAvail;
  }

  /** Bytes of the used ring. */
  get usedAreaBytes(): number {
    return usedRingBytes(this.size, this.eventIdx);
  }

  /** Marks the batch `[from, usedIdx)` in `log` (DirtyLog.logBatch). */
  logBatch(log: DirtyLog, from: number, ringLogAddr: number, whole: boolean): void {
    log.logBatch(this, from, ringLogAddr, whole);
  }

  /** The used ring, whole: used.idx (what publishes a batch) and the elements are there. */
  logRingAreas(log: DirtyLog, ringLogAddr: number): void {
    log.markRange(ringLogAddr, this.usedAreaBytes);
  }

  /** The device's next used index, u16 free-running; setting it forgets the interrupt history. */
  get usedIdx(): number {
    return this.used;
  }

  set usedIdx(value: number) {
    this.used = checkU16('usedIdx', value);
    this.signalledUsed = this.used;
    this.signalledValid = false;
  }

  /** Heads the driver made available that the device has not popped (inflight resubmissions included). */
  pending(): number {
    const resubmit = this.inflight === null ? 0 : this.inflight.resubmitLeft;
    return ((this.loadAvailIdx() - this.lastAvail) & 0xffff) + resubmit;
  }

  /**
   * Tracks this ring in `inflight` from now on (§"Inflight I/O tracking",
   * see inflight.ts): recovers what a previous back end left there and, unless
   * the region is fresh, resumes popping at used.idx + the heads still
   * inflight, which {@link pop} hands out again first, in counter order.
   * Call once at ring start, after the indexes are set.
   * @throws InflightError when the region cannot be used.
   */
  attachInflight(inflight: InflightQueue): InflightRecovery {
    const found = inflight.recover(this.used, this.size);
    if (!found.fresh) this.lastAvailIdx = (this.used + found.resubmit) & 0xffff;
    this.inflight = inflight;
    return found;
  }

  /**
   * Pops the next chain into `chain`. Returns false when the ring is empty. A
   * chain-level violation still returns true, with `chain.error` set.
   * @throws QueueBrokenError VIRTQ_AVAIL_AHEAD or VIRTQ_BAD_HEAD.
   */
  pop(chain: DescriptorChain): boolean {
    const inflight = this.inflight;
    if (inflight !== null && inflight.resubmitLeft > 0) {
      // A request a previous back end popped and never returned: marked and counted already.
      this.walk(inflight.nextResubmit(), chain);
      return true;
    }
    if (!this.hasAvailable()) return false;
    // Plain read: ordered after the Atomics.load of avail.idx that covered this slot.
    const head = this.avail[AVAIL_RING_U16 + (this.lastAvail & this.mask)];
    if (head >= this.size) {
      throw new QueueBrokenError(
        QueueErrorCode.BAD_HEAD,
        `avail ring slot ${this.lastAvail & this.mask} names head ${head}, queue size ${this.size}`,
      );
    }
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    // Inflight before the device can submit it (the caller gets the chain only after this).
    inflight?.begin(head);
    this.walk(head, chain);
    return true;
  }

  peekHeads(out: Float64Array, max: number): number {
    if (this.inflight !== null && this.inflight.resubmitLeft > 0) return 0;
    const limit = Math.min(max, out.length >> 1);
    // Acquire, as in loadAvailIdx; a lying idx is bounded by the ring size here
    // and refused by pop.
    const ahead = (Atomics.load(this.avail, AVAIL_IDX_U16) - this.lastAvail) & 0xffff;
    const n = Math.min(ahead, this.size, limit);
    const memory = this.memory;
    let k = 0;
    for (let i = 0; i < n; i++) {
      const head = this.avail[AVAIL_RING_U16 + ((this.lastAvail + i) & this.mask)];
      if (head >= this.size) break;
      const at = this.descBase + head * DESC_SIZE;
      const view = this.descView;
      if ((view.getUint16(at + DESC_FLAGS, true) & VIRTQ_DESC_F_INDIRECT) !== 0) continue;
      const gpa =
        view.getUint32(at + DESC_ADDR + 4, true) * TWO_POW_32 +
        view.getUint32(at + DESC_ADDR, true);
      const region = memory.regionAt(gpa);
      if (region < 0) continue;
      out[2 * k] = region;
      out[2 * k + 1] = memory.bufferOffset(region, gpa);
      k++;
    }
    return k;
  }

  /**
   * For a native batch loop (native/net-burst.cc): writes into `out` from
   * `at` the region and buffer offset of the descriptor table, the avail
   * ring and the used ring, then the queue size, last_avail_idx, avail.idx
   * (loaded as {@link pending} loads it, so a lying index throws
   * QueueBrokenError here) and used idx. Only with no inflight region.
   * @throws QueueBrokenError VIRTQ_AVAIL_AHEAD.
   */
  burstLocation(out: Float64Array, at: number): void {
    if (this.inflight !== null)
      throw new Error('burstLocation: the queue keeps an inflight region');
    out[at] = this.descAt.region;
    out[at + 1] = this.descAt.offset;
    out[at + 2] = this.availAt.region;
    out[at + 3] = this.availAt.offset;
    out[at + 4] = this.usedAt.region;
    out[at + 5] = this.usedAt.offset;
    out[at + 6] = this.size;
    out[at + 7] = this.lastAvail;
    out[at + 8] = this.loadAvailIdx();
    out[at + 9] = this.used;
  }

  /**
   * A native batch loop popped `popped` chains from the avail snapshot of
   * {@link burstLocation} and wrote `used` used elements after used idx;
   * moves both indexes on (publishing is still {@link publishUsed}'s).
   * @throws RangeError when `popped` exceeds that snapshot or either is not a count.
   */
  advanceBurst(popped: number, used: number): void {
    const ahead = (this.shadowAvail - this.lastAvail) & 0xffff;
    if (!(Number.isInteger(popped) && popped >= 0 && popped <= ahead))
      throw new RangeError(`advanceBurst: ${popped} popped, ${ahead} were available`);
    if (!(Number.isInteger(used) && used >= 0 && used <= this.size))
      throw new RangeError(`advanceBurst: ${used} used elements, queue size ${this.size}`);
    this.lastAvail = (this.lastAvail + popped) & 0xffff;
    this.used = (this.used + used) & 0xffff;
  }

  /** Writes one used element and publishes used.idx. */
  pushUsed(head: number, len: number): void {
    this.addUsed(head, len);
    this.publishUsed();
  }

  /** Writes one used element without publishing it; {@link publishUsed} ends a batch. */
  addUsed(head: number, len: number): void {
    if (head >>> 0 !== head || head >= this.size) {
      throw new RangeError(`used head must be an integer in 0..${this.size - 1}, got ${head}`);
    }
    if (len >>> 0 !== len) throw new RangeError(`used len must be a u32, got ${len}`);
    const slot = (this.used & this.mask) * 2;
    this.usedElems[slot] = head;
    this.usedElems[slot + 1] = len;
    this.used = (this.used + 1) & 0xffff;
    // Into the inflight batch list before used.idx can expose the entry.
    this.inflight?.used(head);
  }

  /** Publishes every element added so far by storing used.idx. */
  publishUsed(): void {
    // Release: the used elements written above become visible to a driver that
    // reads used.idx before them. Seq-cst, so it is also the store half of the
    // store→load fence needsInterrupt() relies on.
    Atomics.store(this.usedHeader, USED_IDX_U16, this.used);
    // After the store: the batch's inflight marks are cleared only once the driver can see it.
    this.inflight?.published(this.used);
  }

  /**
   * Whether the driver wants an interrupt for the used elements published since
   * the last call (§2.7.10): EVENT_IDX's used_event, else avail.flags'
   * NO_INTERRUPT. Call once after a batch; nothing new published means false.
   */
  needsInterrupt(): boolean {
    const newIdx = this.used;
    const oldIdx = this.signalledUsed;
    const valid = this.signalledValid;
    this.signalledUsed = newIdx;
    this.signalledValid = true;
    if (newIdx === oldIdx) return false;
    if (this.notifyOnEmpty && this.pending() === 0) return true;
    // Both loads below follow the seq-cst store of used.idx in publishUsed():
    // the full fence that pairs with the driver writing used_event / flags and
    // then reading used.idx, so one side always sees the other's update.
    if (!this.eventIdx) {
      return (Atomics.load(this.avail, AVAIL_FLAGS_U16) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    }
    // Without a trustworthy old index (after a reset) interrupt to be safe.
    return !valid || vringNeedEvent(Atomics.load(this.avail, this.usedEventIndex), newIdx, oldIdx);
  }

  /**
   * Asks the driver to kick (true) or not to bother (false): used.flags
   * NO_NOTIFY, or with EVENT_IDX avail_event. After enabling, call
   * {@link pending} again: a chain published just before may have sent no kick.
   */
  setNotification(enabled: boolean): void {
    this.notifyEnabled = enabled;
    if (this.eventIdx) {
      // With EVENT_IDX, disabling leaves avail_event behind the driver, which then stops kicking.
      if (enabled) this.publishAvailEvent();
      return;
    }
    // Seq-cst store: ordered before the next Atomics.load of avail.idx (full
    // fence), pairing with the driver's store of avail.idx then load of flags.
    Atomics.store(this.usedHeader, USED_FLAGS_U16, enabled ? 0 : VIRTQ_USED_F_NO_NOTIFY);
  }

  /**
   * Turns kicks back on and says whether more work arrived meanwhile: true
   * when chains are available, and the caller must pop again rather than
   * sleep, because a chain the driver published while kicks were off may have
   * come with no kick. The end of every drain:
   *
   * ```ts
   * do {
   *   q.setNotification(false);
   *   while (q.pop(chain)) handle(chain);
   * } while (q.enableNotification());
   * ```
   *
   * Goes through {@link setNotification}, so a subclass that overrides it
   * (the worker runtime's adaptive poller keeps kicks off) still decides.
   *
   * Memory ordering: setNotification(true) ends in a seq-cst store (used.flags,
   * or avail_event with EVENT_IDX) and pending() starts with the seq-cst load
   * of avail.idx: a full fence between them. The driver does the mirror image
   * (store avail.idx, fence, load used.flags / avail_event), so either it sees
   * kicks enabled and kicks, or this load sees its new avail.idx.
   * @throws QueueBrokenError VIRTQ_AVAIL_AHEAD, as pending() does.
   */
  enableNotification(): boolean {
    this.setNotification(true);
    return this.pending() > 0;
  }

  /** used.idx as stored in guest memory (for reconnects: the device's view may be behind). */
  readUsedIdx(): number {
    return Atomics.load(this.usedHeader, USED_IDX_U16);
  }

  /**
   * Walks chain `head` again from the descriptor table into `chain`, with
   * every check {@link pop} makes (a chain-level violation sets
   * `chain.error`). For dirty logging: between pop and the publication of its
   * used entry a chain still belongs to the device, so its writable buffers
   * are where the device wrote.
   * @throws RangeError when `head` is not below the queue size.
   */
  walkHead(head: number, chain: DescriptorChain): void {
    if (head >>> 0 !== head || head >= this.size) {
      throw new RangeError(`head must be an integer in 0..${this.size - 1}, got ${head}`);
    }
    this.walk(head, chain);
  }

  /** The head of used element `idx` (u16, reduced mod size) as stored in guest memory. */
  usedHeadAt(idx: number): number {
    return this.usedElems[(idx & this.mask) * 2];
  }

  /** The length of used element `idx` (u16, reduced mod size) as stored in guest memory. */
  usedLenAt(idx: number): number {
    return this.usedElems[(idx & this.mask) * 2 + 1];
  }

  /** avail.idx as stored in guest memory, unchecked (for diagnostics and inflight recovery). */
  readAvailIdx(): number {
    return Atomics.load(this.avail, AVAIL_IDX_U16);
  }

  /** Whether a chain is available, publishing avail_event before reporting the ring empty. */
  private hasAvailable(): boolean {
    if (this.lastAvail !== this.shadowAvail) return true;
    if (this.loadAvailIdx() !== this.lastAvail) return true;
    if (!this.eventIdx || !this.notifyEnabled) return false;
    // With EVENT_IDX avail_event must name the next slot before the device
    // sleeps, or the driver never kicks again; then look once more.
    this.publishAvailEvent();
    return this.loadAvailIdx() !== this.lastAvail;
  }

  private publishAvailEvent(): void {
    // Seq-cst store then the seq-cst load of avail.idx that follows (full
    // fence): pairs with the driver storing avail.idx then loading avail_event.
    Atomics.store(this.availEvent, 0, this.lastAvail);
  }

  /** Reads avail.idx into the shadow. @throws QueueBrokenError VIRTQ_AVAIL_AHEAD. */
  private loadAvailIdx(): number {
    // Acquire: avail ring entries and descriptors are read after this load,
    // and the driver wrote them before storing avail.idx.
    const idx = Atomics.load(this.avail, AVAIL_IDX_U16);
    if (((idx - this.lastAvail) & 0xffff) > this.size) {
      throw new QueueBrokenError(
        QueueErrorCode.AVAIL_AHEAD,
        `avail.idx ${idx} is more than ${this.size} ahead of last_avail_idx ${this.lastAvail}`,
      );
    }
    this.shadowAvail = idx;
    return idx;
  }

  private walk(head: number, chain: DescriptorChain): void {
    chain.reset(head);
    this.seenWritable = false;
    this.segmentLimit = Math.min(this.maxSegments, chain.capacity);
    const error = this.walkTable(chain, this.descView, this.descBase, this.size, head, false);
    if (error !== null) chain.fail(error);
  }

  /**
   * Follows a chain through one descriptor table (`entries` long, at buffer
   * offset `base` of `view`). More steps than entries means a loop.
   */
  private walkTable(
    chain: DescriptorChain,
    view: DataView,
    base: number,
    entries: number,
    first: number,
    inIndirect: boolean,
  ): string | null {
    let index = first;
    for (let count = 1; ; count++) {
      if (count > entries) return ChainErrorCode.CHAIN_TOO_LONG;
      this.readDescriptor(view, base + index * DESC_SIZE);
      chain.descriptors++;
      const flags = this.dFlags;
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        return inIndirect ? ChainErrorCode.NESTED_INDIRECT : this.walkIndirect(chain, flags);
      }
      const error = this.addBuffer(chain, (flags & VIRTQ_DESC_F_WRITE) !== 0);
      if (error !== null) return error;
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) return null;
      if (this.dNext >= entries) return ChainErrorCode.NEXT_OUT_OF_RANGE;
      index = this.dNext;
    }
  }

  /**
   * Enters the indirect table the current descriptor points at (§2.7.5.3). Its
   * WRITE flag is ignored, as the spec requires; NEXT with INDIRECT is refused.
   * The table must lie inside one region (drivers allocate it contiguously).
   */
  private walkIndirect(chain: DescriptorChain, flags: number): string | null {
    const len = this.dLen;
    if (!this.indirect || (flags & VIRTQ_DESC_F_NEXT) !== 0) return ChainErrorCode.BAD_INDIRECT;
    if (len === 0 || len % DESC_SIZE !== 0 || len / DESC_SIZE > MAX_INDIRECT_ENTRIES) {
      return ChainErrorCode.BAD_INDIRECT;
    }
    const region = this.memory.findRegion(this.dAddr, len);
    if (region < 0) return ChainErrorCode.DESC_UNMAPPED;
    const base = this.memory.bufferOffset(region, this.dAddr);
    return this.walkTable(chain, this.memory.views[region], base, len / DESC_SIZE, 0, true);
  }

  /**
   * Reads the descriptor at byte `offset` of `view` (the caller bounds-checked
   * it). Each field is read once into a scalar: a guest rewriting it meanwhile
   * cannot make a checked value differ from a used one.
   */
  private readDescriptor(view: DataView, offset: number): void {
    const lo = view.getUint32(offset + DESC_ADDR, true);
    const hi = view.getUint32(offset + DESC_ADDR + 4, true);
    // Above 2^53 the sum rounds, but it then lies beyond every region (GuestMemory
    // caps region ends at 2^53 - 1), so translation rejects it all the same.
    this.dAddr = hi * TWO_POW_32 + lo;
    this.dLen = view.getUint32(offset + DESC_LEN, true);
    this.dFlags = view.getUint16(offset + DESC_FLAGS, true);
    this.dNext = view.getUint16(offset + DESC_NEXT, true);
  }

  /** Checks order and total length, then translates the current descriptor's buffer. */
  private addBuffer(chain: DescriptorChain, writable: boolean): string | null {
    if (writable) this.seenWritable = true;
    else if (this.seenWritable) return ChainErrorCode.READ_AFTER_WRITE;
    if (chain.readableBytes + chain.writableBytes + this.dLen > U32_MAX) {
      return ChainErrorCode.LEN_OVERFLOW;
    }
    return this.translate(chain, writable);
  }

  /**
   * Appends the current descriptor's `[dAddr, dAddr + dLen)` as segments, one
   * per region it crosses. A zero length adds nothing and touches no memory,
   * so its address is not checked. The address is read from the field, not
   * passed: a guest address above 2^31 (any virtio-user front end's, whose
   * "guest" addresses are its own virtual ones; a guest's RAM above 2 GiB) is
   * a double, and V8 boxes a double passed to a call it does not inline (this
   * one) — a heap allocation per descriptor, ~50 MB/s of scavenges per switch
   * worker at 64-byte frames from dpdk-testpmd.
   */
  private translate(chain: DescriptorChain, writable: boolean): string | null {
    let at = this.dAddr;
    let left = this.dLen;
    while (left > 0) {
      const region = this.memory.regionAt(at);
      if (region < 0) return ChainErrorCode.DESC_UNMAPPED;
      if (chain.segments >= this.segmentLimit) return ChainErrorCode.CHAIN_TOO_LONG;
      const n = Math.min(left, this.memory.regionEnd(region) - at);
      chain.addSegment(region, this.memory.bufferOffset(region, at), n, writable);
      at += n;
      left -= n;
    }
    return null;
  }

  /** Validates all three rings against `memory`, then (only then) switches the views. */
  private mapRings(memory: GuestMemory): void {
    const size = this.size;
    const desc = locateRing(memory, this.descTable, descTableBytes(size), DESC_ALIGN, 'desc');
    const availBytes = availRingBytes(size, this.eventIdx);
    const avail = locateRing(memory, this.availRing, availBytes, AVAIL_ALIGN, 'avail');
    const usedBytes = usedRingBytes(size, this.eventIdx);
    const used = locateRing(memory, this.usedRing, usedBytes, USED_ALIGN, 'used');
    this.memory = memory;
    this.descAt = desc;
    this.availAt = avail;
    this.usedAt = used;
    this.descView = memory.views[desc.region];
    this.descBase = desc.offset;
    this.avail = new Uint16Array(memory.buffers[avail.region], avail.offset, availBytes / 2);
    this.usedEventIndex = availUsedEventOffset(size) / 2;
    const usedBuffer = memory.buffers[used.region];
    this.usedHeader = new Uint16Array(usedBuffer, used.offset, USED_RING / 2);
    this.usedElems = new Uint32Array(usedBuffer, used.offset + USED_RING, 2 * size);
    const eventOffset = used.offset + usedAvailEventOffset(size);
    this.availEvent = new Uint16Array(usedBuffer, eventOffset, this.eventIdx ? 1 : 0);
  }
}

/**
 * Finds the region wholly holding a ring part and checks the §2.7 alignment,
 * both of the guest address and of the offset in the mapping (typed views
 * need the latter).
 */
function locateRing(
  memory: GuestMemory,
  gpa: number,
  bytes: number,
  align: number,
  what: string,
): RingLocation {
  if (Number.isSafeInteger(gpa) && gpa % align !== 0) misaligned(what, gpa, align);
  const region = Number.isSafeInteger(gpa) ? memory.findRegion(gpa, bytes) : -1;
  if (region < 0) {
    throw new QueueBrokenError(
      QueueErrorCode.RING_UNMAPPED,
      `${what} ring at 0x${gpa.toString(16)} (${bytes} bytes) is not inside one memory region`,
    );
  }
  const offset = memory.bufferOffset(region, gpa);
  if (offset % align !== 0) misaligned(what, gpa, align);
  return { region, offset };
}

function misaligned(what: string, gpa: number, align: number): never {
  throw new QueueBrokenError(
    QueueErrorCode.RING_MISALIGNED,
    `${what} ring at 0x${gpa.toString(16)} is not ${align}-byte aligned (in guest or in the mapping)`,
  );
}

function checkU16(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) {
    throw new RangeError(`${name} must be an integer in 0..65535, got ${value}`);
  }
  return value;
}
