/**
 * The driver (guest) side of a split virtqueue, in guest RAM: the one mock
 * driver shared by unit tests, fuzzers, benchmarks and the project's own
 * front end. It behaves like a well-behaved Linux driver through `addChain` /
 * `popUsed`, and offers raw access (`writeDescriptor`, `publish`,
 * `setAvailIdx`) for hostile tests.
 */

import {
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  availRingBytes,
  availUsedEventOffset,
  DESC_SIZE,
  descTableBytes,
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
} from '../../src/virtio/split-ring.js';
import type { SplitQueueConfig } from '../../src/virtio/virtqueue.js';
import type { GuestRam } from './guest-ram.js';

/** One buffer of a chain, as the driver hands it over. */
export interface DriverBuffer {
  /** Guest-physical address. */
  addr: number;
  len: number;
  /** Device-writable (VIRTQ_DESC_F_WRITE). */
  write: boolean;
}

/** A raw descriptor (§2.7.5). */
export interface RawDescriptor {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

/** Mock split-queue driver over {@link GuestRam}. */
export class DriverQueue {
  readonly size: number;
  /** Guest-physical addresses of the three parts (allocated in the constructor). */
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;
  readonly eventIdx: boolean;

  private readonly ram: GuestRam;
  private readonly mask: number;
  /** avail ring as u16: flags, idx, ring[size], used_event. */
  private readonly avail: Uint16Array;
  /** used ring as u16 (flags, idx, ..., avail_event) and as u32 (elements from index 1). */
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  private nextAvail = 0;
  private lastUsed = 0;
  /** avail idx at the last needsKick(). */
  private kickedAt = 0;
  // The driver's private copy of chain links (like Linux's desc_extra): never
  // read back from guest-visible memory, which the device must not change.
  private readonly freeNext: Int32Array;
  private freeHead = 0;
  private freeCount: number;
  private readonly chainLength: Uint16Array;
  /** Live view of the descriptor table, for the fast path of well-behaved chains. */
  private readonly descView: DataView;
  private readonly indirectTables = new Map<
    number,
    { addr: number; entries: number; view: DataView }
  >();

  /** Allocates and zeroes the descriptor table and both rings (always with the EVENT_IDX fields). */
  constructor(ram: GuestRam, size: number, options: { eventIdx?: boolean } = {}) {
    this.ram = ram;
    this.size = size;
    this.mask = size - 1;
    this.eventIdx = options.eventIdx ?? false;
    this.descTable = this.zeroed(descTableBytes(size), 16);
    this.availRing = this.zeroed(availRingBytes(size, true), 2);
    this.usedRing = this.zeroed(usedRingBytes(size, true), 4);
    this.avail = ram.u16(this.availRing, availRingBytes(size, true) / 2);
    this.used16 = ram.u16(this.usedRing, usedRingBytes(size, true) / 2);
    this.used32 = ram.u32(this.usedRing, USED_RING / 4 + 2 * size);
    this.descView = dataView(ram.view(this.descTable, descTableBytes(size)));
    this.freeNext = Int32Array.from({ length: size }, (_, i) => i + 1);
    this.freeCount = size;
    this.chainLength = new Uint16Array(size);
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
    };
  }

  /** Free descriptors in the table. */
  get numFree(): number {
    return this.freeCount;
  }

  /** The driver's avail idx (next slot it will fill). */
  get availIdx(): number {
    return this.nextAvail;
  }

  /**
   * Puts `buffers` in free descriptors (or one descriptor and an indirect
   * table), publishes the head and returns it. Throws when the table is full.
   */
  addChain(buffers: DriverBuffer[], options: { indirect?: boolean } = {}): number {
    if (buffers.length === 0) throw new RangeError('a chain needs at least one buffer');
    const head = options.indirect ? this.addIndirect(buffers) : this.addDirect(buffers);
    this.publish(head);
    return head;
  }

  /** Takes the next used element, frees its descriptors; null when none is pending. */
  popUsed(): { id: number; len: number } | null {
    // Acquire: the element is read after used.idx, which the device stored after writing it.
    if (Atomics.load(this.used16, USED_IDX / 2) === this.lastUsed) return null;
    const slot = 1 + 2 * (this.lastUsed & this.mask);
    const id = this.used32[slot];
    const len = this.used32[slot + 1];
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    this.free(id);
    return { id, len };
  }

  /** Writes avail.used_event: "interrupt me once used.idx passes idx" (EVENT_IDX). */
  setUsedEvent(idx: number): void {
    Atomics.store(this.avail, availUsedEventOffset(this.size) / 2, idx & 0xffff);
  }

  /** Sets or clears VIRTQ_AVAIL_F_NO_INTERRUPT in avail.flags. */
  setNoInterrupt(on: boolean): void {
    Atomics.store(this.avail, AVAIL_FLAGS / 2, on ? VIRTQ_AVAIL_F_NO_INTERRUPT : 0);
  }

  /** used.avail_event as the device last wrote it. */
  get availEvent(): number {
    return Atomics.load(this.used16, usedAvailEventOffset(this.size) / 2);
  }

  /** used.flags as the device last wrote it. */
  get usedFlags(): number {
    return Atomics.load(this.used16, USED_FLAGS / 2);
  }

  /** used.idx as the device last published it. */
  get usedIdx(): number {
    return Atomics.load(this.used16, USED_IDX / 2);
  }

  /**
   * Whether the driver must kick for what it published since the last call
   * (§2.7.10): avail_event with EVENT_IDX, else used.flags NO_NOTIFY.
   */
  needsKick(): boolean {
    const old = this.kickedAt;
    this.kickedAt = this.nextAvail;
    if (this.eventIdx) return vringNeedEvent(this.availEvent, this.nextAvail, old);
    return (this.usedFlags & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /** Raw write of descriptor `index` of the table (hostile tests). */
  writeDescriptor(index: number, d: RawDescriptor): void {
    if (index >= 0 && index < this.size) putDescriptor(this.descView, index * DESC_SIZE, d);
    else this.writeDescriptorAt(this.descTable + index * DESC_SIZE, d);
  }

  /** Raw write of a descriptor at any guest address (indirect tables in hostile tests). */
  writeDescriptorAt(gpa: number, d: RawDescriptor): void {
    const bytes = new Uint8Array(DESC_SIZE);
    putDescriptor(new DataView(bytes.buffer), 0, d);
    this.ram.write(gpa, bytes);
  }

  /** Appends `head` to the avail ring and bumps avail.idx (release). */
  publish(head: number): void {
    this.avail[AVAIL_RING / 2 + (this.nextAvail & this.mask)] = head;
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    // Release: the ring entry and the descriptors were written before avail.idx.
    Atomics.store(this.avail, AVAIL_IDX / 2, this.nextAvail);
  }

  /** Raw store of avail.idx (hostile tests: running ahead, going back). */
  setAvailIdx(idx: number): void {
    this.nextAvail = idx & 0xffff;
    Atomics.store(this.avail, AVAIL_IDX / 2, this.nextAvail);
  }

  /**
   * Starts both indexes at `idx`, as if a previous session had left them there:
   * avail.idx and used.idx in memory, and the driver's own counters. Pair with
   * the device's `lastAvailIdx = usedIdx = idx` (SET_VRING_BASE).
   */
  startAt(idx: number): void {
    this.setAvailIdx(idx);
    this.kickedAt = idx & 0xffff;
    this.lastUsed = idx & 0xffff;
    Atomics.store(this.used16, USED_IDX / 2, idx & 0xffff);
  }

  private addDirect(buffers: DriverBuffer[]): number {
    const count = buffers.length;
    if (count > this.freeCount) throw new RangeError(`queue full: ${count} > ${this.freeCount}`);
    const head = this.freeHead;
    buffers.forEach((b, i) => {
      const index = this.freeHead;
      this.freeHead = this.freeNext[index];
      const last = i === count - 1;
      const flags = (b.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
      this.writeDescriptor(index, {
        addr: b.addr,
        len: b.len,
        flags,
        next: last ? 0 : this.freeHead,
      });
    });
    this.freeCount -= count;
    this.chainLength[head] = count;
    return head;
  }

  private addIndirect(buffers: DriverBuffer[]): number {
    if (this.freeCount === 0) throw new RangeError('queue full');
    const head = this.freeHead;
    this.freeHead = this.freeNext[head];
    this.freeCount--;
    this.chainLength[head] = 1;
    const table = this.indirectTable(head, buffers.length);
    buffers.forEach((b, i) => {
      const last = i === buffers.length - 1;
      const flags = (b.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
      const d = { addr: b.addr, len: b.len, flags, next: last ? 0 : i + 1 };
      putDescriptor(table.view, i * DESC_SIZE, d);
    });
    const len = buffers.length * DESC_SIZE;
    const d = { addr: table.addr, len, flags: VIRTQ_DESC_F_INDIRECT, next: 0 };
    this.writeDescriptor(head, d);
    return head;
  }

  /** An indirect table for `head`, reused while big enough so long runs do not exhaust RAM. */
  private indirectTable(head: number, entries: number): { addr: number; view: DataView } {
    const known = this.indirectTables.get(head);
    if (known !== undefined && known.entries >= entries) return known;
    const addr = this.ram.alloc(entries * DESC_SIZE, 16);
    const table = { addr, entries, view: dataView(this.ram.view(addr, entries * DESC_SIZE)) };
    this.indirectTables.set(head, table);
    return table;
  }

  /** Returns the chain at `head` to the free list (heads published raw own nothing). */
  private free(head: number): void {
    if (head >= this.size || this.chainLength[head] === 0) return;
    // addDirect linked each descriptor to the free-list successor it took
    // next, so freeNext still holds the chain's links: walk them to the tail.
    let index = head;
    for (let i = 1; i < this.chainLength[head]; i++) index = this.freeNext[index];
    this.freeNext[index] = this.freeHead;
    this.freeHead = head;
    this.freeCount += this.chainLength[head];
    this.chainLength[head] = 0;
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

/** Stores a descriptor little-endian at `offset`; `addr` is split without BigInt. */
function putDescriptor(view: DataView, offset: number, d: RawDescriptor): void {
  view.setUint32(offset, d.addr % 2 ** 32, true);
  view.setUint32(offset + 4, Math.floor(d.addr / 2 ** 32) % 2 ** 32, true);
  view.setUint32(offset + 8, d.len, true);
  view.setUint16(offset + 12, d.flags, true);
  view.setUint16(offset + 14, d.next, true);
}
