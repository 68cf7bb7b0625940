/**
 * The driver (guest) side of a packed virtqueue, in guest RAM: the packed
 * counterpart of DriverQueue (driver-queue.ts), with the same surface, so
 * unit tests, the fuzzer and the project's own front end drive either
 * layout. It behaves like Linux's virtio_ring packed path through
 * `addChain` / `popUsed` (buffer ids from a free list, the head's flags
 * written last), and offers raw access (`writeSlot`, `writeDescriptorAt`,
 * `setWrap`) for hostile tests.
 */

import {
  EVENT_SUPPRESS_SIZE,
  PACKED_DESC_F_AVAIL,
  PACKED_DESC_F_INDIRECT,
  PACKED_DESC_F_NEXT,
  PACKED_DESC_F_USED,
  PACKED_DESC_F_WRITE,
  PACKED_DESC_SIZE,
  packedRingBytes,
  packedVringBase,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
} from '../../src/virtio/packed-ring.js';
import type { SplitQueueConfig } from '../../src/virtio/virtqueue.js';
import type { DriverBuffer } from './driver-queue.js';
import type { GuestRam } from './guest-ram.js';

/** A raw packed descriptor. */
export interface PackedDescriptor {
  addr: number;
  len: number;
  id: number;
  flags: number;
}

const FLAGS_U16 = 7;
const ID_U16 = 6;
const LEN_U32 = 2;

/** Mock packed-queue driver over {@link GuestRam}. */
export class PackedDriverQueue {
  readonly size: number;
  /** Guest-physical addresses: descriptor ring, driver area, device area (named as DriverQueue's). */
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;
  readonly eventIdx: boolean;
  /** Always true: tells the layouts apart. */
  readonly packed = true;

  private readonly ram: GuestRam;
  private readonly ring16: Uint16Array;
  private readonly ring32: Uint32Array;
  private readonly ringView: DataView;
  private readonly driverEvent: Uint16Array;
  private readonly deviceEvent: Uint16Array;
  private nextAvail = 0;
  private availWrap = 1;
  private lastUsed = 0;
  private usedWrap = 1;
  private added = 0;
  private taken = 0;
  /** Chains added at the last needsKick(). */
  private kickedAt = 0;
  /** Position (slot | wrap << 15) at the last needsKick(). */
  private kickedPos = 1 << 15;
  private readonly freeIds: number[];
  private readonly idSlots: Uint16Array;
  private freeSlots: number;
  private readonly indirectTables = new Map<
    number,
    { addr: number; entries: number; view: DataView }
  >();

  /** Allocates and zeroes the ring and both event areas. */
  constructor(ram: GuestRam, size: number, options: { eventIdx?: boolean } = {}) {
    this.ram = ram;
    this.size = size;
    this.eventIdx = options.eventIdx ?? false;
    this.descTable = this.zeroed(packedRingBytes(size), 16);
    this.availRing = this.zeroed(EVENT_SUPPRESS_SIZE, 4);
    this.usedRing = this.zeroed(EVENT_SUPPRESS_SIZE, 4);
    this.ring16 = ram.u16(this.descTable, packedRingBytes(size) / 2);
    this.ring32 = ram.u32(this.descTable, packedRingBytes(size) / 4);
    this.ringView = dataView(ram.view(this.descTable, packedRingBytes(size)));
    this.driverEvent = ram.u16(this.availRing, 2);
    this.deviceEvent = ram.u16(this.usedRing, 2);
    this.freeIds = Array.from({ length: size }, (_, i) => size - 1 - i);
    this.idSlots = new Uint16Array(size);
    this.freeSlots = size;
  }

  /** The device-side configuration of this queue. */
  config(options: { indirect?: boolean; notifyOnEmpty?: boolean } = {}): SplitQueueConfig {
    return {
      size: this.size,
      descTable: this.descTable,
      availRing: this.availRing,
      usedRing: this.usedRing,
      eventIdx: this.eventIdx,
      indirect: options.indirect ?? false,
      notifyOnEmpty: options.notifyOnEmpty ?? false,
      packed: true,
    };
  }

  /** Free ring slots. */
  get numFree(): number {
    return this.freeSlots;
  }

  /** Chains added, u16 free-running. */
  get availIdx(): number {
    return this.added;
  }

  /** The vhost-user ring base for a device starting where this driver stands. */
  get vringBase(): number {
    return packedVringBase(this.nextAvail, this.availWrap, this.lastUsed, this.usedWrap);
  }

  /**
   * Used elements taken, plus one if the next one is already there, u16: the
   * DriverQueue's used.idx for VmmQueue's "anything new?" test.
   */
  get usedIdx(): number {
    return (this.taken + (this.usedReady() ? 1 : 0)) & 0xffff;
  }

  /** The device area's flags (ENABLE / DISABLE / DESC). */
  get deviceFlags(): number {
    return Atomics.load(this.deviceEvent, 1);
  }

  /** Where the next used element will be: slot and wrap counter. */
  get usedPosition(): { slot: number; wrap: number } {
    return { slot: this.lastUsed, wrap: this.usedWrap };
  }

  /** Where the next chain goes: slot and wrap counter. */
  get availPosition(): { slot: number; wrap: number } {
    return { slot: this.nextAvail, wrap: this.availWrap };
  }

  /**
   * Puts `buffers` in the next free slots (or one slot and an indirect
   * table) under a free buffer id, makes the chain available (head flags
   * last) and returns the id. Throws when the ring is full.
   */
  addChain(buffers: DriverBuffer[], options: { indirect?: boolean } = {}): number {
    if (buffers.length === 0) throw new RangeError('a chain needs at least one buffer');
    const slots = options.indirect ? 1 : buffers.length;
    const id = this.freeIds.pop();
    if (id === undefined || slots > this.freeSlots) {
      if (id !== undefined) this.freeIds.push(id);
      throw new RangeError(`queue full: ${slots} > ${this.freeSlots}`);
    }
    this.idSlots[id] = slots;
    this.freeSlots -= slots;
    if (options.indirect) this.addIndirect(id, buffers);
    else this.addDirect(id, buffers);
    this.added = (this.added + 1) & 0xffff;
    return id;
  }

  /** Takes the next used element, frees its slots and id; null when none is there. */
  popUsed(): { id: number; len: number } | null {
    if (!this.usedReady()) return null;
    const id = this.ring16[this.lastUsed * 8 + ID_U16];
    const len = this.ring32[this.lastUsed * 4 + LEN_U32];
    const slots = id < this.size ? this.idSlots[id] : 0;
    if (slots === 0)
      throw new RangeError(`device returned buffer id ${id}, which is not in flight`);
    this.idSlots[id] = 0;
    this.freeIds.push(id);
    this.freeSlots += slots;
    this.lastUsed += slots;
    if (this.lastUsed >= this.size) {
      this.lastUsed -= this.size;
      this.usedWrap ^= 1;
    }
    this.taken = (this.taken + 1) & 0xffff;
    return { id, len };
  }

  /**
   * Asks for an interrupt at the next used element: the driver area's
   * off_wrap and DESC with EVENT_IDX, else ENABLE. `_idx` is DriverQueue's
   * used index, implied here by the driver's own position.
   */
  setUsedEvent(_idx: number): void {
    if (!this.eventIdx) {
      Atomics.store(this.driverEvent, 1, RING_EVENT_FLAGS_ENABLE);
      return;
    }
    // off_wrap before flags; the seq-cst stores order them before the next ring read.
    Atomics.store(this.driverEvent, 0, this.lastUsed | (this.usedWrap << 15));
    Atomics.store(this.driverEvent, 1, RING_EVENT_FLAGS_DESC);
  }

  /** DISABLE (no interrupts) or ENABLE in the driver area. */
  setNoInterrupt(on: boolean): void {
    Atomics.store(this.driverEvent, 1, on ? RING_EVENT_FLAGS_DISABLE : RING_EVENT_FLAGS_ENABLE);
  }

  /** Raw write of the driver area (hostile tests). */
  setDriverEvent(offWrap: number, flags: number): void {
    Atomics.store(this.driverEvent, 0, offWrap);
    Atomics.store(this.driverEvent, 1, flags);
  }

  /** Whether the driver must kick for what it added since the last call: the device area. */
  needsKick(): boolean {
    const oldPos = this.kickedPos;
    const pos = this.nextAvail | (this.availWrap << 15);
    const added = this.added !== this.kickedAt;
    this.kickedAt = this.added;
    this.kickedPos = pos;
    if (!added) return false;
    const flags = Atomics.load(this.deviceEvent, 1);
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC) return true;
    const span = 2 * this.size;
    const lin = (p: number) => (p & 0x7fff) + (p >>> 15 === 1 ? 0 : this.size);
    const event = lin(Atomics.load(this.deviceEvent, 0));
    return (lin(pos) - event - 1 + span) % span < (lin(pos) - lin(oldPos) + span) % span;
  }

  /** Raw write of ring slot `slot` (hostile tests); flags are stored last. */
  writeSlot(slot: number, d: PackedDescriptor): void {
    const at = slot * PACKED_DESC_SIZE;
    putAddr(this.ringView, at, d.addr);
    this.ringView.setUint32(at + 8, d.len, true);
    this.ringView.setUint16(at + 12, d.id, true);
    Atomics.store(this.ring16, slot * 8 + FLAGS_U16, d.flags);
  }

  /** Raw write of a packed descriptor at any guest address (indirect tables). */
  writeDescriptorAt(gpa: number, d: PackedDescriptor): void {
    const bytes = new Uint8Array(PACKED_DESC_SIZE);
    const view = new DataView(bytes.buffer);
    putAddr(view, 0, d.addr);
    view.setUint32(8, d.len, true);
    view.setUint16(12, d.id, true);
    view.setUint16(14, d.flags, true);
    this.ram.write(gpa, bytes);
  }

  /** The AVAIL/USED bits that make a slot available under wrap counter `wrap`. */
  availBits(wrap: number): number {
    return wrap === 1 ? PACKED_DESC_F_AVAIL : PACKED_DESC_F_USED;
  }

  /** Flags of ring slot `slot` as stored. */
  slotFlags(slot: number): number {
    return Atomics.load(this.ring16, slot * 8 + FLAGS_U16);
  }

  /**
   * Starts a fresh ring (`idx` must be 0: a packed ring's positions are not
   * one index): zeroed ring, both wrap counters 1, every id and slot free.
   */
  startAt(idx: number): void {
    if (idx !== 0) throw new RangeError('a packed driver starts at position 0 only');
    this.ram.write(this.descTable, new Uint8Array(packedRingBytes(this.size)));
    this.nextAvail = 0;
    this.availWrap = 1;
    this.lastUsed = 0;
    this.usedWrap = 1;
    this.added = 0;
    this.taken = 0;
    this.kickedAt = 0;
    this.kickedPos = 1 << 15;
    this.freeIds.length = 0;
    for (let i = this.size - 1; i >= 0; i--) this.freeIds.push(i);
    this.idSlots.fill(0);
    this.freeSlots = this.size;
  }

  private usedReady(): boolean {
    // Acquire: id and len are read after the flags, which the device stored last.
    const flags = Atomics.load(this.ring16, this.lastUsed * 8 + FLAGS_U16);
    const avail = (flags & PACKED_DESC_F_AVAIL) !== 0 ? 1 : 0;
    const used = (flags & PACKED_DESC_F_USED) !== 0 ? 1 : 0;
    return avail === this.usedWrap && used === this.usedWrap;
  }

  private addDirect(id: number, buffers: DriverBuffer[]): void {
    const head = this.nextAvail;
    let headFlags = 0;
    buffers.forEach((b, i) => {
      const last = i === buffers.length - 1;
      const flags =
        (b.write ? PACKED_DESC_F_WRITE : 0) |
        (last ? 0 : PACKED_DESC_F_NEXT) |
        this.availBits(this.availWrap);
      if (i === 0) {
        headFlags = flags;
        this.putFields(this.nextAvail, b.addr, b.len, id);
      } else {
        this.writeSlot(this.nextAvail, { addr: b.addr, len: b.len, id, flags });
      }
      this.step();
    });
    // Release: every descriptor of the chain before the head's flags.
    Atomics.store(this.ring16, head * 8 + FLAGS_U16, headFlags);
  }

  private addIndirect(id: number, buffers: DriverBuffer[]): void {
    const table = this.indirectTable(id, buffers.length);
    buffers.forEach((b, i) => {
      const flags = b.write ? PACKED_DESC_F_WRITE : 0;
      putAddr(table.view, i * PACKED_DESC_SIZE, b.addr);
      table.view.setUint32(i * PACKED_DESC_SIZE + 8, b.len, true);
      table.view.setUint16(i * PACKED_DESC_SIZE + 12, 0, true);
      table.view.setUint16(i * PACKED_DESC_SIZE + 14, flags, true);
    });
    const slot = this.nextAvail;
    const flags = PACKED_DESC_F_INDIRECT | this.availBits(this.availWrap);
    this.putFields(slot, table.addr, buffers.length * PACKED_DESC_SIZE, id);
    this.step();
    Atomics.store(this.ring16, slot * 8 + FLAGS_U16, flags);
  }

  private putFields(slot: number, addr: number, len: number, id: number): void {
    const at = slot * PACKED_DESC_SIZE;
    putAddr(this.ringView, at, addr);
    this.ringView.setUint32(at + 8, len, true);
    this.ringView.setUint16(at + 12, id, true);
  }

  private step(): void {
    this.nextAvail++;
    if (this.nextAvail === this.size) {
      this.nextAvail = 0;
      this.availWrap ^= 1;
    }
  }

  /** An indirect table for `id`, reused while big enough. */
  private indirectTable(id: number, entries: number): { addr: number; view: DataView } {
    const known = this.indirectTables.get(id);
    if (known !== undefined && known.entries >= entries) return known;
    const addr = this.ram.alloc(entries * PACKED_DESC_SIZE, 16);
    const table = {
      addr,
      entries,
      view: dataView(this.ram.view(addr, entries * PACKED_DESC_SIZE)),
    };
    this.indirectTables.set(id, table);
    return table;
  }

  private zeroed(bytes: number, align: number): number {
    const gpa = this.ram.alloc(bytes, align);
    this.ram.write(gpa, new Uint8Array(bytes));
    return gpa;
  }
}

function dataView(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function putAddr(view: DataView, at: number, addr: number): void {
  view.setUint32(at, addr % 2 ** 32, true);
  view.setUint32(at + 4, Math.floor(addr / 2 ** 32) % 2 ** 32, true);
}
