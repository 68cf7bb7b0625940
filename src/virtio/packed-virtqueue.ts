/**
 * The device side of a packed virtqueue (VIRTIO_F_RING_PACKED, virtio 1.1+
 * "Packed Virtqueues"), behind the same {@link Virtqueue} interface as the
 * split ring, and hardened the same way against a hostile guest:
 *
 * - ring-level violations throw {@link QueueBrokenError}: a buffer id out of
 *   range or still held by the device, a chain running into slots the device
 *   has not returned (a NEXT loop, avail flags set ahead of the ring), rings
 *   outside guest memory or misaligned;
 * - chain-level violations never throw: `pop()` returns the buffer with
 *   `chain.error` set (an address outside guest memory, a readable buffer
 *   after a writable one, nested or malformed indirect tables, too many
 *   segments), and the device completes it with used length 0;
 * - every guest field is read once into a scalar, every address goes
 *   through GuestMemory's bounds checks, every walk is bounded by the ring.
 *
 * Buffers are returned in any order: a used element is written at the
 * device's next used slot, which then moves on by as many slots as the
 * buffer's chain took when it was made available (its slot count, kept per
 * buffer id, since the id is all the device hands back).
 *
 * Batching: {@link addUsed} writes id and len at once, {@link publishUsed}
 * writes the flags of the batch, the first element's last, with a seq-cst
 * store: a driver reads the ring in order and polls the first element's
 * flags, so it sees the whole batch, each element's id and len before its
 * flags. Notifications: the device area says ENABLE / DISABLE (kicks), the
 * driver area ENABLE / DISABLE / DESC (interrupts, DESC with EVENT_IDX).
 *
 * Dirty logging: the descriptors of a buffer in flight may be overwritten
 * (the used element of another buffer lands in its first slot), so a
 * buffer's writable (gpa, len) pairs — or its indirect table — are kept at
 * pop in a preallocated pool, one node per slot, until its used element is
 * published: {@link logBatch} marks them, and the descriptor-ring slots the
 * batch wrote. Those slots are marked before publishUsed stores their flags,
 * so when the ring stops (GET_VRING_BASE, before the front end's last look
 * at the bitmap) the whole descriptor ring is marked again
 * ({@link logRingAreas}), as the split ring's whole used ring is.
 *
 * Not kept: the inflight region (INFLIGHT_SHMFD has a packed layout this
 * ring does not write), so a packed ring never attaches one.
 */
import type { DescriptorChain } from './descriptor-chain.js';
import type { DirtyLog } from './dirty-log.js';
import { ChainErrorCode, QueueBrokenError, QueueErrorCode } from './errors.js';
import type { GuestMemory } from './guest-memory.js';
import {
  EVENT_SUPPRESS_ALIGN,
  EVENT_SUPPRESS_SIZE,
  isValidPackedQueueSize,
  PACKED_DESC_ADDR,
  PACKED_DESC_ALIGN,
  PACKED_DESC_F_AVAIL,
  PACKED_DESC_F_INDIRECT,
  PACKED_DESC_F_NEXT,
  PACKED_DESC_F_USED,
  PACKED_DESC_F_WRITE,
  PACKED_DESC_FLAGS,
  PACKED_DESC_ID,
  PACKED_DESC_LEN,
  PACKED_DESC_SIZE,
  PackedQueueErrorCode,
  packedRingBytes,
  packedVringBase,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
} from './packed-ring.js';
import { MAX_INDIRECT_ENTRIES } from './split-ring.js';
import { DEFAULT_MAX_SEGMENTS, type SplitQueueConfig, type Virtqueue } from './virtqueue.js';

const TWO_POW_32 = 2 ** 32;
const U32_MAX = 0xffffffff;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
/** u16 index of `flags` / `id` and u32 index of `len` inside a descriptor. */
const FLAGS_U16 = PACKED_DESC_FLAGS / 2;
const ID_U16 = PACKED_DESC_ID / 2;
const LEN_U32 = PACKED_DESC_LEN / 4;
const DESC_U16 = PACKED_DESC_SIZE / 2;
const DESC_U32 = PACKED_DESC_SIZE / 4;
/** Log node kinds. */
const NODE_BUFFER = 0;
const NODE_INDIRECT = 1;
/** idState values. */
const ID_FREE = 0;
const ID_POPPED = 1;
const ID_USED = 2;

/**
 * One packed virtqueue, used by a single thread (the device worker). The
 * config is the split ring's, read as: `descTable` the descriptor ring,
 * `availRing` the driver area, `usedRing` the device area (vhost-user's
 * SET_VRING_ADDR names them the same way); `packed` must be true.
 */
export class PackedVirtqueue implements Virtqueue {
  /** Queue size (ring slots). */
  readonly size: number;
  /** Guest-physical address of the descriptor ring. */
  readonly descRing: number;
  /** Guest-physical address of the driver event suppression area. */
  readonly driverArea: number;
  /** Guest-physical address of the device event suppression area. */
  readonly deviceArea: number;
  /** Negotiated ring features. */
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly notifyOnEmpty: boolean;

  private readonly maxSegments: number;
  private memory!: GuestMemory;
  private descView!: DataView;
  private descBase = 0;
  private descU16!: Uint16Array;
  private descU32!: Uint32Array;
  /** Driver area as u16: off_wrap, flags. */
  private driverEvent!: Uint16Array;
  /** Device area as u16: off_wrap, flags. */
  private deviceEvent!: Uint16Array;

  private nextAvail = 0;
  private availWrap = 1;
  private nextUsed = 0;
  private usedWrap = 1;
  /** Buffers popped, u16 free-running: what {@link lastAvailIdx} reports. */
  private popCount = 0;
  /** Used elements added, u16 free-running: what {@link usedIdx} reports. */
  private usedCount = 0;
  /** Ring slots of buffers popped whose used element is not published yet. */
  private slotsHeld = 0;
  /** Encoded used position (slot | wrap << 15) at the last needsInterrupt(). */
  private signalledPos = 0;
  private signalledValid = false;
  /** What the device area's flags hold (cached: no store when unchanged). */
  private deviceFlags = -1;

  /** Per buffer id: ID_FREE, ID_POPPED or ID_USED (added, not published). */
  private readonly idState: Uint8Array;
  /** Per buffer id: ring slots its chain took. */
  private readonly idSlots: Uint16Array;
  /** Per buffer id: first log node, -1 for none. */
  private readonly idNode: Int32Array;
  /** Pop history, indexed by popCount & mask: position before the pop and the id popped. */
  private readonly histPos: Uint16Array;
  private readonly histId: Uint16Array;
  private histCount = 0;
  /** The open batch: slot, flags and id of each used element added since the last publish. */
  private readonly batchSlot: Uint16Array;
  private readonly batchFlags: Uint16Array;
  private readonly batchId: Uint16Array;
  private readonly batchLen: Uint32Array;
  private batchCount = 0;
  /** Log node pool (one node per ring slot suffices: see pop). */
  private readonly nodeGpa: Float64Array;
  private readonly nodeLen: Uint32Array;
  private readonly nodeKind: Uint8Array;
  private readonly nodeNext: Int32Array;
  private freeNode = 0;
  /** Last node of the chain being walked, -1 for none. */
  private walkTail = -1;
  private walkHead = -1;

  // The descriptor being walked, as scalars.
  private dAddr = 0;
  private dLen = 0;
  private dId = 0;
  private dFlags = 0;
  private seenWritable = false;
  private segmentLimit = 0;

  /**
   * @param maxSegments upper bound on segments per chain (the chain's own capacity also applies).
   * @throws QueueBrokenError VIRTQ_BAD_SIZE, VIRTQ_RING_UNMAPPED or VIRTQ_RING_MISALIGNED.
   */
  constructor(memory: GuestMemory, config: SplitQueueConfig, maxSegments = DEFAULT_MAX_SEGMENTS) {
    if (!LITTLE_ENDIAN) throw new Error('PackedVirtqueue needs a little-endian host');
    if (!isValidPackedQueueSize(config.size)) {
      throw new QueueBrokenError(
        QueueErrorCode.BAD_SIZE,
        `queue size ${config.size} is not a power of two in 1..32768`,
      );
    }
    if (!Number.isInteger(maxSegments) || maxSegments < 1) {
      throw new RangeError(`maxSegments must be a positive integer, got ${maxSegments}`);
    }
    const size = config.size;
    this.size = size;
    this.descRing = config.descTable;
    this.driverArea = config.availRing;
    this.deviceArea = config.usedRing;
    this.eventIdx = config.eventIdx;
    this.indirect = config.indirect;
    this.notifyOnEmpty = config.notifyOnEmpty ?? false;
    this.maxSegments = maxSegments;
    this.idState = new Uint8Array(size);
    this.idSlots = new Uint16Array(size);
    this.idNode = new Int32Array(size).fill(-1);
    this.histPos = new Uint16Array(size);
    this.histId = new Uint16Array(size);
    this.batchSlot = new Uint16Array(size);
    this.batchFlags = new Uint16Array(size);
    this.batchId = new Uint16Array(size);
    this.batchLen = new Uint32Array(size);
    this.nodeGpa = new Float64Array(size);
    this.nodeLen = new Uint32Array(size);
    this.nodeKind = new Uint8Array(size);
    this.nodeNext = new Int32Array(size);
    for (let i = 0; i < size; i++) this.nodeNext[i] = i + 1 < size ? i + 1 : -1;
    this.mapRings(memory);
  }

  /** Always true: tells the two ring layouts apart. */
  get packed(): true {
    return true;
  }

  /** Switches to a new memory table; re-validates and re-maps the rings (throws like the constructor). */
  setMemory(memory: GuestMemory): void {
    this.mapRings(memory);
  }

  /**
   * Buffers popped, u16 free-running. Setting it to an earlier count (at
   * most the buffers still held, none of them returned) puts those buffers
   * back into the ring, as the split ring's rewind of last_avail_idx does:
   * the next pops see them again.
   * @throws RangeError for a count that is not such a rewind.
   */
  get lastAvailIdx(): number {
    return this.popCount;
  }

  set lastAvailIdx(value: number) {
    const back = (this.popCount - value) & 0xffff;
    if (!Number.isInteger(value) || value < 0 || value > 0xffff || back > this.histCount) {
      throw new RangeError(
        `packed lastAvailIdx can only rewind to one of the last ${this.histCount} pops, got ${value}`,
      );
    }
    for (let k = 0; k < back; k++) this.unpopLast();
  }

  /** Used elements added, u16 free-running. */
  get usedIdx(): number {
    return this.usedCount;
  }

  /**
   * The vhost-user ring base: avail slot | wrap << 15 in bits 0-15, used slot
   * | wrap << 15 in bits 16-31 (GET_VRING_BASE of a packed ring).
   */
  get vringBase(): number {
    return packedVringBase(this.nextAvail, this.availWrap, this.nextUsed, this.usedWrap);
  }

  /**
   * Sets both positions from a ring base (SET_VRING_BASE). Bits 16-31 zero
   * mean "used where avail is" (a front end that sends only the avail half;
   * nothing is in flight across a ring stop here).
   * @throws QueueBrokenError VIRTQ_PACKED_BAD_BASE for a slot >= size.
   */
  set vringBase(value: number) {
    if (!Number.isInteger(value) || value < 0 || value > U32_MAX) {
      throw new RangeError(`packed ring base must be a u32, got ${value}`);
    }
    const avail = value & 0xffff;
    const used = value >>> 16 === 0 ? avail : value >>> 16;
    if ((avail & 0x7fff) >= this.size || (used & 0x7fff) >= this.size) {
      throw new QueueBrokenError(
        PackedQueueErrorCode.BAD_BASE,
        `packed ring base 0x${value.toString(16)} names a slot beyond queue size ${this.size}`,
      );
    }
    this.nextAvail = avail & 0x7fff;
    this.availWrap = avail >>> 15;
    this.nextUsed = used & 0x7fff;
    this.usedWrap = used >>> 15;
    this.signalledValid = false;
  }

  /** Bytes of the device area, logged whole when the ring stops. */
  get usedAreaBytes(): number {
    return EVENT_SUPPRESS_SIZE;
  }

  /** 1 when the next slot holds an available buffer, else 0 (a packed ring cannot count cheaply). */
  pending(): number {
    return this.slotAvailable(this.loadFlags(this.nextAvail)) ? 1 : 0;
  }

  /**
   * Pops the next buffer into `chain` (`chain.head` is its buffer id).
   * Returns false when the next slot is not available. A chain-level
   * violation still returns true, with `chain.error` set.
   * @throws QueueBrokenError VIRTQ_PACKED_BAD_ID, VIRTQ_PACKED_ID_IN_USE or VIRTQ_PACKED_RING_OVERRUN.
   */
  pop(chain: DescriptorChain): boolean {
    // Acquire: the descriptor's other fields (and the chain's further
    // descriptors) were written by the driver before these flags.
    const headFlags = this.loadFlags(this.nextAvail);
    if (!this.slotAvailable(headFlags)) return false;
    const slots = this.walk(chain, headFlags);
    const id = this.dId;
    if (id >= this.size) {
      this.freeNodes(this.walkHead);
      throw new QueueBrokenError(
        PackedQueueErrorCode.BAD_ID,
        `packed slot ${this.nextAvail} names buffer id ${id}, queue size ${this.size}`,
      );
    }
    if (this.idState[id] !== ID_FREE) {
      this.freeNodes(this.walkHead);
      throw new QueueBrokenError(
        PackedQueueErrorCode.ID_IN_USE,
        `packed slot ${this.nextAvail} reuses buffer id ${id}, which the device still holds`,
      );
    }
    const h = this.popCount & (this.size - 1);
    this.histPos[h] = this.nextAvail | (this.availWrap << 15);
    this.histId[h] = id;
    if (this.histCount < this.size) this.histCount++;
    this.popCount = (this.popCount + 1) & 0xffff;
    this.advanceAvail(slots);
    this.idState[id] = ID_POPPED;
    this.idSlots[id] = slots;
    this.slotsHeld += slots;
    if (chain.error !== null) {
      this.freeNodes(this.walkHead);
      this.walkHead = -1;
    }
    this.idNode[id] = this.walkHead;
    chain.head = id;
    return true;
  }

  peekHeads(out: Float64Array, max: number): number {
    const limit = Math.min(max, out.length >> 1);
    const memory = this.memory;
    const view = this.descView;
    let slot = this.nextAvail;
    let wrap = this.availWrap;
    let k = 0;
    // At most the slots the device does not hold: a chain without end stops here, as in pop.
    for (let steps = this.size - this.slotsHeld; k < limit && steps > 0; ) {
      // Acquire per chain head, as in pop.
      const flags = Atomics.load(this.descU16, slot * DESC_U16 + FLAGS_U16);
      const avail = (flags & PACKED_DESC_F_AVAIL) !== 0 ? 1 : 0;
      const used = (flags & PACKED_DESC_F_USED) !== 0 ? 1 : 0;
      if (avail !== wrap || used === wrap) break;
      if ((flags & PACKED_DESC_F_INDIRECT) === 0) {
        const gpa = readAddr(view, this.descBase + slot * PACKED_DESC_SIZE);
        const region = memory.regionAt(gpa);
        if (region >= 0) {
          out[2 * k] = region;
          out[2 * k + 1] = memory.bufferOffset(region, gpa);
          k++;
        }
      }
      // Past this chain: its further descriptors follow slot by slot.
      let f = flags;
      for (;;) {
        steps--;
        slot++;
        if (slot === this.size) {
          slot = 0;
          wrap ^= 1;
        }
        if ((f & PACKED_DESC_F_NEXT) === 0 || steps === 0) break;
        f = this.descU16[slot * DESC_U16 + FLAGS_U16];
      }
    }
    return k;
  }

  /** Writes one used element and publishes it. */
  pushUsed(id: number, len: number): void {
    this.addUsed(id, len);
    this.publishUsed();
  }

  /**
   * Writes the id and len of a used element at the next used slot; its
   * flags wait for {@link publishUsed}, which ends the batch.
   * @throws RangeError when `id` is not a buffer the device holds, or `len` is not a u32.
   */
  addUsed(id: number, len: number): void {
    if (id >>> 0 !== id || id >= this.size || this.idState[id] !== ID_POPPED) {
      throw new RangeError(`used id ${id} is not a buffer the device holds`);
    }
    if (len >>> 0 !== len) throw new RangeError(`used len must be a u32, got ${len}`);
    const slot = this.nextUsed;
    // Plain stores: the slot is the device's until its flags say used, and
    // the seq-cst store of publishUsed() orders them before those flags.
    this.descU16[slot * DESC_U16 + ID_U16] = id;
    this.descU32[slot * DESC_U32 + LEN_U32] = len;
    const n = this.batchCount++;
    this.batchSlot[n] = slot;
    this.batchFlags[n] = this.usedWrap === 1 ? PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED : 0;
    this.batchId[n] = id;
    this.batchLen[n] = len;
    this.idState[id] = ID_USED;
    this.usedCount = (this.usedCount + 1) & 0xffff;
    let next = slot + this.idSlots[id];
    if (next >= this.size) {
      next -= this.size;
      this.usedWrap ^= 1;
    }
    this.nextUsed = next;
  }

  /** Publishes every used element added since the last call: flags, the batch's first last. */
  publishUsed(): void {
    const n = this.batchCount;
    if (n === 0) return;
    const u16 = this.descU16;
    for (let k = 1; k < n; k++) u16[this.batchSlot[k] * DESC_U16 + FLAGS_U16] = this.batchFlags[k];
    // Release (seq-cst): every id/len/flags above is visible to a driver that
    // sees this element used; it reads the ring in order from here. Also the
    // store half of the store→load fence needsInterrupt() relies on.
    Atomics.store(u16, this.batchSlot[0] * DESC_U16 + FLAGS_U16, this.batchFlags[0]);
    for (let k = 0; k < n; k++) {
      const id = this.batchId[k];
      this.idState[id] = ID_FREE;
      this.slotsHeld -= this.idSlots[id];
      this.freeNodes(this.idNode[id]);
      this.idNode[id] = -1;
    }
    this.batchCount = 0;
  }

  /**
   * Whether the driver wants an interrupt for what was published since the
   * last call: the driver area's flags, and with DESC (EVENT_IDX) whether
   * the used position stepped over its off_wrap.
   */
  needsInterrupt(): boolean {
    const pos = this.nextUsed | (this.usedWrap << 15);
    const oldPos = this.signalledPos;
    const valid = this.signalledValid;
    this.signalledPos = pos;
    this.signalledValid = true;
    if (pos === oldPos && valid) return false;
    if (this.notifyOnEmpty && this.pending() === 0) return true;
    // Seq-cst loads after the seq-cst flags store of publishUsed(): a full
    // fence pairing with the driver writing its event structure and then
    // reading the ring's flags, so one side sees the other's update.
    const flags = Atomics.load(this.driverEvent, 1);
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC || !this.eventIdx || !valid) return true;
    const offWrap = Atomics.load(this.driverEvent, 0);
    if ((offWrap & 0x7fff) >= this.size) return true;
    // Positions on a cycle of 2 * size slots (the wrap counter is the upper half).
    const span = 2 * this.size;
    const event = this.linear(offWrap);
    const now = this.linear(pos);
    const old = this.linear(oldPos);
    return (now - event - 1 + span) % span < (now - old + span) % span;
  }

  /**
   * Asks the driver to kick (true) or not (false) through the device area's
   * flags (ENABLE / DISABLE; the DESC mode is not used for kicks).
   */
  setNotification(enabled: boolean): void {
    const flags = enabled ? RING_EVENT_FLAGS_ENABLE : RING_EVENT_FLAGS_DISABLE;
    if (flags === this.deviceFlags) return;
    this.deviceFlags = flags;
    // Seq-cst store: ordered before the next Atomics.load of a descriptor's
    // flags (full fence), pairing with the driver's store of those flags then
    // load of the device area.
    Atomics.store(this.deviceEvent, 1, flags);
  }

  /**
   * Turns kicks back on and says whether a buffer arrived meanwhile (pop
   * again rather than sleep). Ordering as the split ring's: the seq-cst
   * store of the device area, then the seq-cst load of the next slot's flags.
   * Always stores, so a driver that overwrote the device area sees kicks on.
   */
  enableNotification(): boolean {
    this.deviceFlags = -1;
    this.setNotification(true);
    return this.pending() > 0;
  }

  /**
   * Marks what the open batch wrote before {@link publishUsed} exposes it
   * (the `from` of the split ring is not needed: the batch is kept here):
   * each buffer's writable part, up to its used length unless `whole`, and
   * the descriptor-ring slots of the used elements when `ringLogAddr` >= 0
   * (the ring is logged; the slots are marked at the descriptor ring's own
   * guest-physical address).
   */
  logBatch(log: DirtyLog, _from: number, ringLogAddr: number, whole: boolean): void {
    for (let k = 0; k < this.batchCount; k++) {
      const len = this.batchLen[k];
      if (len > 0 || whole)
        this.markWritable(log, this.idNode[this.batchId[k]], whole ? U32_MAX : len);
      if (ringLogAddr >= 0)
        log.markRange(this.descRing + this.batchSlot[k] * PACKED_DESC_SIZE, PACKED_DESC_SIZE);
    }
  }

  /**
   * The device area (at `ringLogAddr`, its event fields written without a
   * batch) and the whole descriptor ring, at its own guest-physical address:
   * {@link logBatch} marks a batch's slots before {@link publishUsed} stores
   * their flags, so a bitmap read and cleared in between would miss those
   * stores; at the stop the front end reads the bitmap once more.
   */
  logRingAreas(log: DirtyLog, ringLogAddr: number): void {
    log.markRange(ringLogAddr, this.usedAreaBytes);
    log.markRange(this.descRing, packedRingBytes(this.size));
  }

  // --- the walk ---------------------------------------------------------------

  /**
   * Walks the chain starting at the next avail slot into `chain`; returns
   * the slots it takes. The buffer id is left in dId (the last descriptor's).
   * After a chain-level error the rest of the chain is still followed (its
   * slots must be skipped) but not translated.
   */
  private walk(chain: DescriptorChain, headFlags: number): number {
    chain.reset(0);
    this.seenWritable = false;
    this.segmentLimit = Math.min(this.maxSegments, chain.capacity);
    this.walkHead = -1;
    this.walkTail = -1;
    const room = this.size - this.slotsHeld;
    let slot = this.nextAvail;
    let flags = headFlags;
    let error: string | null = null;
    for (let count = 1; ; count++) {
      if (count > room) {
        this.freeNodes(this.walkHead);
        throw new QueueBrokenError(
          PackedQueueErrorCode.RING_OVERRUN,
          `packed chain at slot ${this.nextAvail} runs past the ${room} slot(s) the device does not hold`,
        );
      }
      this.readDescriptor(slot, flags);
      chain.descriptors++;
      if (error === null) error = this.addDescriptor(chain, count);
      if ((this.dFlags & PACKED_DESC_F_NEXT) === 0) {
        if (error !== null) chain.fail(error);
        return count;
      }
      slot = slot + 1 === this.size ? 0 : slot + 1;
      // Plain read: the head's Atomics.load ordered the whole chain.
      flags = this.descU16[slot * DESC_U16 + FLAGS_U16];
    }
  }

  private addDescriptor(chain: DescriptorChain, count: number): string | null {
    const flags = this.dFlags;
    if ((flags & PACKED_DESC_F_INDIRECT) !== 0) {
      // Packed indirect: alone in its chain (no NEXT, nothing before it).
      if (!this.indirect || count !== 1 || (flags & PACKED_DESC_F_NEXT) !== 0) {
        return ChainErrorCode.BAD_INDIRECT;
      }
      return this.walkIndirect(chain);
    }
    const writable = (flags & PACKED_DESC_F_WRITE) !== 0;
    const error = this.addBuffer(chain, writable);
    if (error === null && writable && this.dLen > 0)
      this.addNode(NODE_BUFFER, this.dAddr, this.dLen);
    return error;
  }

  /** Walks the indirect table the current descriptor points at: len / 16 entries, no NEXT. */
  private walkIndirect(chain: DescriptorChain): string | null {
    const tableGpa = this.dAddr;
    const tableLen = this.dLen;
    if (tableLen === 0 || tableLen % PACKED_DESC_SIZE !== 0) return ChainErrorCode.BAD_INDIRECT;
    const entries = tableLen / PACKED_DESC_SIZE;
    if (entries > MAX_INDIRECT_ENTRIES) return ChainErrorCode.BAD_INDIRECT;
    const region = this.memory.findRegion(tableGpa, tableLen);
    if (region < 0) return ChainErrorCode.DESC_UNMAPPED;
    const view = this.memory.views[region];
    const base = this.memory.bufferOffset(region, tableGpa);
    for (let i = 0; i < entries; i++) {
      const at = base + i * PACKED_DESC_SIZE;
      const addr = readAddr(view, at);
      const len = view.getUint32(at + PACKED_DESC_LEN, true);
      const flags = view.getUint16(at + PACKED_DESC_FLAGS, true);
      chain.descriptors++;
      if ((flags & PACKED_DESC_F_INDIRECT) !== 0) return ChainErrorCode.NESTED_INDIRECT;
      this.dAddr = addr;
      this.dLen = len;
      const error = this.addBuffer(chain, (flags & PACKED_DESC_F_WRITE) !== 0);
      if (error !== null) return error;
    }
    if (chain.writableBytes > 0) this.addNode(NODE_INDIRECT, tableGpa, tableLen);
    return null;
  }

  /** Reads the descriptor at `slot` into the scalars; `flags` was read already. */
  private readDescriptor(slot: number, flags: number): void {
    const at = this.descBase + slot * PACKED_DESC_SIZE;
    const view = this.descView;
    this.dAddr = readAddr(view, at);
    this.dLen = view.getUint32(at + PACKED_DESC_LEN, true);
    this.dId = view.getUint16(at + PACKED_DESC_ID, true);
    this.dFlags = flags;
  }

  /** Checks order and total length, then translates the current buffer. */
  private addBuffer(chain: DescriptorChain, writable: boolean): string | null {
    if (writable) this.seenWritable = true;
    else if (this.seenWritable) return ChainErrorCode.READ_AFTER_WRITE;
    if (chain.readableBytes + chain.writableBytes + this.dLen > U32_MAX) {
      return ChainErrorCode.LEN_OVERFLOW;
    }
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

  // --- positions and notifications ------------------------------------------------

  private loadFlags(slot: number): number {
    return Atomics.load(this.descU16, slot * DESC_U16 + FLAGS_U16);
  }

  /** Available: AVAIL equals the avail wrap counter and USED does not. */
  private slotAvailable(flags: number): boolean {
    const avail = (flags & PACKED_DESC_F_AVAIL) !== 0 ? 1 : 0;
    const used = (flags & PACKED_DESC_F_USED) !== 0 ? 1 : 0;
    return avail === this.availWrap && used !== this.availWrap;
  }

  private advanceAvail(slots: number): void {
    let next = this.nextAvail + slots;
    if (next >= this.size) {
      next -= this.size;
      this.availWrap ^= 1;
    }
    this.nextAvail = next;
  }

  /** Puts the last popped buffer back (see {@link lastAvailIdx}). */
  private unpopLast(): void {
    this.popCount = (this.popCount - 1) & 0xffff;
    const h = this.popCount & (this.size - 1);
    const id = this.histId[h];
    if (this.idState[id] !== ID_POPPED) {
      this.popCount = (this.popCount + 1) & 0xffff;
      throw new RangeError(`cannot rewind past buffer id ${id}: it was returned already`);
    }
    this.histCount--;
    const pos = this.histPos[h];
    this.nextAvail = pos & 0x7fff;
    this.availWrap = pos >>> 15;
    this.idState[id] = ID_FREE;
    this.slotsHeld -= this.idSlots[id];
    this.freeNodes(this.idNode[id]);
    this.idNode[id] = -1;
  }

  /** An encoded position (slot | wrap << 15) on the 2 * size cycle, wrap 1 first. */
  private linear(pos: number): number {
    return (pos & 0x7fff) + (pos >>> 15 === 1 ? 0 : this.size);
  }

  // --- the log node pool ----------------------------------------------------------

  /**
   * Keeps (gpa, len) for the chain being walked. At most one node per
   * descriptor in the ring and the walk stops at the slots the device does
   * not hold, so `size` nodes never run out; if they did, logging would
   * miss a range, so that is a bug and throws.
   */
  private addNode(kind: number, gpa: number, len: number): void {
    const node = this.freeNode;
    if (node < 0) throw new Error('packed virtqueue: dirty-log node pool exhausted');
    this.freeNode = this.nodeNext[node];
    this.nodeGpa[node] = gpa;
    this.nodeLen[node] = len;
    this.nodeKind[node] = kind;
    this.nodeNext[node] = -1;
    if (this.walkTail < 0) this.walkHead = node;
    else this.nodeNext[this.walkTail] = node;
    this.walkTail = node;
  }

  private freeNodes(first: number): void {
    let node = first;
    while (node >= 0) {
      const next = this.nodeNext[node];
      this.nodeNext[node] = this.freeNode;
      this.freeNode = node;
      node = next;
    }
  }

  /** Marks the first `limit` bytes of the writable buffers kept from `node` on. */
  private markWritable(log: DirtyLog, first: number, limit: number): void {
    let left = limit;
    for (let node = first; node >= 0 && left > 0; node = this.nodeNext[node]) {
      if (this.nodeKind[node] === NODE_BUFFER) {
        const n = Math.min(this.nodeLen[node], left);
        log.markRange(this.nodeGpa[node], n);
        left -= n;
      } else {
        left = this.markIndirect(log, this.nodeGpa[node], this.nodeLen[node], left);
      }
    }
  }

  /**
   * Marks the writable entries of an indirect table, read again: the table
   * is the device's until the buffer is returned. A table no longer mapped
   * marks nothing (the guest rewrote it; the marks are only for its sake).
   */
  private markIndirect(log: DirtyLog, gpa: number, len: number, limit: number): number {
    const region = this.memory.findRegion(gpa, len);
    if (region < 0) return 0;
    const view = this.memory.views[region];
    const base = this.memory.bufferOffset(region, gpa);
    let left = limit;
    for (let i = 0; i < len / PACKED_DESC_SIZE && left > 0; i++) {
      const at = base + i * PACKED_DESC_SIZE;
      if ((view.getUint16(at + PACKED_DESC_FLAGS, true) & PACKED_DESC_F_WRITE) === 0) continue;
      const n = Math.min(view.getUint32(at + PACKED_DESC_LEN, true), left);
      log.markRange(readAddr(view, at), n);
      left -= n;
    }
    return left;
  }

  /** Validates the three areas against `memory`, then (only then) switches the views. */
  private mapRings(memory: GuestMemory): void {
    const ring = locate(
      memory,
      this.descRing,
      packedRingBytes(this.size),
      PACKED_DESC_ALIGN,
      'descriptor',
    );
    const drv = locate(
      memory,
      this.driverArea,
      EVENT_SUPPRESS_SIZE,
      EVENT_SUPPRESS_ALIGN,
      'driver',
    );
    const dev = locate(
      memory,
      this.deviceArea,
      EVENT_SUPPRESS_SIZE,
      EVENT_SUPPRESS_ALIGN,
      'device',
    );
    this.memory = memory;
    this.descView = memory.views[ring.region];
    this.descBase = ring.offset;
    const words = packedRingBytes(this.size);
    this.descU16 = new Uint16Array(memory.buffers[ring.region], ring.offset, words / 2);
    this.descU32 = new Uint32Array(memory.buffers[ring.region], ring.offset, words / 4);
    this.driverEvent = new Uint16Array(memory.buffers[drv.region], drv.offset, 2);
    this.deviceEvent = new Uint16Array(memory.buffers[dev.region], dev.offset, 2);
    this.deviceFlags = -1;
  }
}

function readAddr(view: DataView, at: number): number {
  const lo = view.getUint32(at + PACKED_DESC_ADDR, true);
  const hi = view.getUint32(at + PACKED_DESC_ADDR + 4, true);
  // Above 2^53 the sum rounds, but it then lies beyond every region.
  return hi * TWO_POW_32 + lo;
}

/** Finds the region wholly holding a ring area and checks its alignment (guest and mapping). */
function locate(
  memory: GuestMemory,
  gpa: number,
  bytes: number,
  align: number,
  what: string,
): { region: number; offset: number } {
  const region = Number.isSafeInteger(gpa) ? memory.findRegion(gpa, bytes) : -1;
  if (Number.isSafeInteger(gpa) && gpa % align !== 0) misaligned(what, gpa, align);
  if (region < 0) {
    throw new QueueBrokenError(
      QueueErrorCode.RING_UNMAPPED,
      `packed ${what} area at 0x${gpa.toString(16)} (${bytes} bytes) is not inside one memory region`,
    );
  }
  const offset = memory.bufferOffset(region, gpa);
  if (offset % align !== 0) misaligned(what, gpa, align);
  return { region, offset };
}

function misaligned(what: string, gpa: number, align: number): never {
  throw new QueueBrokenError(
    QueueErrorCode.RING_MISALIGNED,
    `packed ${what} area at 0x${gpa.toString(16)} is not ${align}-byte aligned (in guest or in the mapping)`,
  );
}
