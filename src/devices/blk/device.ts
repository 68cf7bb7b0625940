/**
 * The virtio-blk device model (virtio 1.x §5.2). Transport-agnostic: it is
 * handed virtqueues, guest memory and an I/O engine, and signals the driver
 * through a callback, so a VMM can drive it without vhost-user.
 *
 * Each request occupies a preallocated slot from pop to completion; the slot
 * index travels through the engine as userData. Nothing is allocated per
 * request.
 */
import { type IoEngine, IoOp, type IoOpCode } from '../../io/engine.js';
import type { StatCounters } from '../../locking/index.js';
import { DescriptorChain, type GuestMemory, type SplitVirtqueue } from '../../virtio/index.js';
import type { QueueDevice } from '../queue-device.js';
import {
  breakRing,
  newRingState,
  notifyDirty,
  type RingState,
  ringAt,
  setRingsMemory,
  startRing,
} from '../rings.js';
import { type ChainCursor, copyFromChain, copyToChain, seek, stageIovecs } from './chain-io.js';
import {
  BLK_ID_BYTES,
  type BlkGeometry,
  BlkRequestType,
  BlkStatus,
  DISCARD_SEGMENT_SIZE,
  MAX_DISCARD_SECTORS,
  REQUEST_HEADER_SIZE,
  SECTOR_SIZE,
  WRITE_ZEROES_FLAG_UNMAP,
} from './config.js';
import { BlkStat } from './stats.js';

/** Signals the driver that queue `index` has new used buffers (the call eventfd). */
export type Notify = (queue: number) => void;

export interface BlkDeviceOptions {
  engine: IoEngine;
  geometry: BlkGeometry;
  /** Answer to GET_ID, at most 20 bytes. */
  serial: string;
  /** Slots per queue: the queue size. */
  queueSize: number;
  notify: Notify;
  stats: StatCounters;
  /** Reports guest protocol violations (rate limiting is the caller's business). */
  warn: (message: string) => void;
}

const U32 = 0x1_0000_0000;
/** Returned by the start functions when the engine owns the request until it completes. */
const STARTED = -1;
/** Returned for a chain that cannot even carry a status: used length 0, no status byte. */
const UNUSABLE = -2;

interface QueueState extends RingState {
  inFlight: number;
  /** Chains were left in the ring because every slot was busy: pop again when one frees. */
  starved: boolean;
  onIdle: (() => void) | null;
}

export class BlkDevice implements QueueDevice {
  private readonly engine: IoEngine;
  private readonly geometry: BlkGeometry;
  private readonly capacityBytes: number;
  private readonly serial: Uint8Array;
  private readonly slotsPerQueue: number;
  private readonly notify: Notify;
  private readonly stats: StatCounters;
  private readonly warn: (message: string) => void;
  private readonly queues: QueueState[];
  private readonly chain: DescriptorChain;
  private readonly cursor: ChainCursor = { segment: 0, within: 0 };
  private readonly header = new Uint8Array(REQUEST_HEADER_SIZE);
  private readonly headerView = new DataView(this.header.buffer);
  private readonly segment = new Uint8Array(DISCARD_SEGMENT_SIZE);
  private readonly segmentView = new DataView(this.segment.buffer);
  // Slot tables, indexed by queue * slotsPerQueue + slot.
  private readonly slotHead: Int32Array;
  private readonly slotDataLen: Float64Array;
  private readonly slotType: Uint8Array;
  /** Where each request's status byte lives: region index (-1: nowhere) and buffer offset. */
  private readonly statusRegion: Int32Array;
  private readonly statusOffset: Float64Array;
  private readonly freeSlots: Int32Array[];
  private readonly freeCount: Int32Array;
  private memory: GuestMemory | null = null;
  private bytes: readonly Uint8Array[] = [];
  private retired: GuestMemory[] = [];
  private inFlight = 0;

  constructor(options: BlkDeviceOptions) {
    this.engine = options.engine;
    this.geometry = options.geometry;
    this.capacityBytes = Math.floor(options.geometry.imageBytes / SECTOR_SIZE) * SECTOR_SIZE;
    this.serial = new TextEncoder().encode(options.serial).subarray(0, BLK_ID_BYTES);
    this.slotsPerQueue = options.queueSize;
    this.notify = options.notify;
    this.stats = options.stats;
    this.warn = options.warn;
    const n = options.geometry.numQueues;
    const slots = n * this.slotsPerQueue;
    this.slotHead = new Int32Array(slots);
    this.slotDataLen = new Float64Array(slots);
    this.slotType = new Uint8Array(slots);
    this.statusRegion = new Int32Array(slots);
    this.statusOffset = new Float64Array(slots);
    this.freeCount = new Int32Array(n);
    this.freeSlots = [];
    this.queues = [];
    for (let q = 0; q < n; q++) {
      this.freeSlots.push(Int32Array.from({ length: this.slotsPerQueue }, (_, i) => i));
      this.freeCount[q] = this.slotsPerQueue;
      this.queues.push({ ...newRingState(), inFlight: 0, starved: false, onIdle: null });
    }
    // A chain may be split at region boundaries: allow a few more segments than descriptors.
    this.chain = new DescriptorChain(options.geometry.segMax + 2 + 16);
    this.engine.onComplete(
      (userData, result) => this.complete(userData, result),
      () => this.endCompletionBatch(),
    );
  }

  /** Installs a new guest memory table; the old one stays referenced until nothing is in flight. */
  setMemory(memory: GuestMemory): void {
    if (this.memory !== null && this.inFlight > 0) this.retired.push(this.memory);
    this.memory = memory;
    this.bytes = memory.bytes;
    this.engine.setBuffers(memory.buffers);
    setRingsMemory(this.queues, memory);
  }

  /** Starts serving queue `index` with `vq`; processing waits for {@link setEnabled}. */
  startQueue(index: number, vq: SplitVirtqueue): void {
    startRing(this.queue(index), vq);
  }

  setEnabled(index: number, enabled: boolean): void {
    const q = this.queue(index);
    q.enabled = enabled;
    if (enabled) this.kick(index);
  }

  /** Resolves once queue `index` has no request in flight, then forgets its ring. */
  stopQueue(index: number): Promise<number> {
    const q = this.queue(index);
    const vq = q.vq;
    const finish = () => {
      q.vq = null;
      q.onIdle = null;
      return vq?.lastAvailIdx ?? 0;
    };
    if (q.inFlight === 0) return Promise.resolve(finish());
    return new Promise((resolve) => {
      q.onIdle = () => resolve(finish());
    });
  }

  /** The driver kicked queue `index`: pop everything available, submit it as one batch. */
  kick(index: number): void {
    const q = this.queues[index];
    if (q === undefined || q.vq === null || !q.enabled || q.broken) return;
    try {
      this.drain(index, q, q.vq);
    } catch (err) {
      breakRing(q, index, err, this.warn);
      this.stats.add(BlkStat.brokenQueues, 1);
    }
    this.engine.submit();
    this.flushNotifications();
  }

  /**
   * Pops until the ring is empty with notifications off, then turns them back
   * on and looks once more: a buffer published between the last pop and the
   * re-enable would otherwise wait for a kick that never comes.
   */
  private drain(index: number, q: QueueState, vq: SplitVirtqueue): void {
    let popped = 0;
    for (;;) {
      vq.setNotification(false);
      while (this.freeCount[index] > 0 && vq.pop(this.chain)) {
        this.dispatch(index, q);
        popped++;
      }
      vq.setNotification(true);
      if (this.freeCount[index] === 0 || vq.pending() === 0) break;
    }
    q.starved = this.freeCount[index] === 0 && vq.pending() > 0;
    if (popped > 0) {
      this.stats.add(BlkStat.requests, popped);
      this.stats.add(BlkStat.kicks, 1);
    }
  }

  private dispatch(queue: number, q: QueueState): void {
    const slot = this.takeSlot(queue);
    const id = queue * this.slotsPerQueue + slot;
    this.slotHead[id] = this.chain.head;
    this.locateStatus(id);
    q.inFlight++;
    this.inFlight++;
    const status = this.start(id);
    if (status !== STARTED)
      this.finish(id, status, status === BlkStatus.OK ? this.slotDataLen[id] : 0);
  }

  /** The status byte is the chain's last device-writable byte (§5.2.6). */
  private locateStatus(id: number): void {
    const chain = this.chain;
    if (chain.error !== null || chain.writableBytes < 1) {
      this.statusRegion[id] = -1;
      return;
    }
    seek(chain, chain.firstWritable, chain.segments, chain.writableBytes - 1, this.cursor);
    this.statusRegion[id] = chain.region[this.cursor.segment];
    this.statusOffset[id] = chain.offset[this.cursor.segment] + this.cursor.within;
  }

  /** Starts request `id`; returns a status (or UNUSABLE) when it finished at once, STARTED when the engine has it. */
  private start(id: number): number {
    const chain = this.chain;
    if (chain.error !== null) return this.badChain(chain.error);
    if (chain.writableBytes < 1) return this.badChain('VIRTQ_NO_STATUS_BYTE');
    if (!copyFromChain(chain, this.bytes, 0, this.header, this.cursor)) return BlkStatus.IOERR;
    const type = this.headerView.getUint32(0, true);
    const sector = this.headerView.getUint32(8, true) + this.headerView.getUint32(12, true) * U32;
    this.slotType[id] = type;
    this.slotDataLen[id] = 0;
    switch (type) {
      case BlkRequestType.IN:
        return this.startReadWrite(id, IoOp.READ, sector);
      case BlkRequestType.OUT:
        return this.startReadWrite(id, IoOp.WRITE, sector);
      case BlkRequestType.FLUSH:
        this.engine.queueSlowOp(IoOp.FLUSH, 0, 0, id);
        return STARTED;
      case BlkRequestType.GET_ID:
        return this.getId(id);
      case BlkRequestType.DISCARD:
        return this.startDiscard(id, IoOp.DISCARD);
      case BlkRequestType.WRITE_ZEROES:
        return this.startDiscard(id, IoOp.WRITE_ZEROES);
      default:
        this.stats.add(BlkStat.unsupported, 1);
        return BlkStatus.UNSUPP;
    }
  }

  private badChain(code: string): number {
    this.stats.add(BlkStat.badChains, 1);
    this.warn(`malformed request dropped: ${code}`);
    return UNUSABLE;
  }

  private startReadWrite(id: number, op: IoOpCode, sector: number): number {
    const chain = this.chain;
    const write = op === IoOp.WRITE;
    const bytes = write ? chain.readableBytes - REQUEST_HEADER_SIZE : chain.writableBytes - 1;
    const offset = sector * SECTOR_SIZE;
    if (bytes % SECTOR_SIZE !== 0 || offset + bytes > this.capacityBytes) return this.ioError();
    if (write && this.geometry.readonly) return this.ioError();
    if (bytes === 0) return BlkStatus.OK;
    if (write) seek(chain, 0, chain.firstWritable, REQUEST_HEADER_SIZE, this.cursor);
    else seek(chain, chain.firstWritable, chain.segments, 0, this.cursor);
    const end = write ? chain.firstWritable : chain.segments;
    const firstIov = this.engine.stagedIovs;
    let count = stageIovecs(chain, this.engine, this.cursor, end, bytes);
    if (count < 0) {
      this.engine.submit();
      count = stageIovecs(chain, this.engine, this.cursor, end, bytes);
      if (count < 0) return this.ioError();
    }
    this.slotDataLen[id] = bytes;
    const first = count === 0 ? firstIov : this.engine.stagedIovs - count;
    if (!this.engine.queueReadWrite(op, offset, first, count, id)) {
      this.engine.submit();
      return this.startReadWrite(id, op, sector);
    }
    return STARTED;
  }

  private startDiscard(id: number, op: IoOpCode): number {
    if (this.geometry.readonly) return this.ioError();
    const payload = this.chain.readableBytes - REQUEST_HEADER_SIZE;
    // max_discard_seg and max_write_zeroes_seg are 1 in our config space.
    if (payload !== DISCARD_SEGMENT_SIZE) return BlkStatus.UNSUPP;
    copyFromChain(this.chain, this.bytes, REQUEST_HEADER_SIZE, this.segment, this.cursor);
    const v = this.segmentView;
    const sector = v.getUint32(0, true) + v.getUint32(4, true) * U32;
    const sectors = v.getUint32(8, true);
    const flags = v.getUint32(12, true);
    const offset = sector * SECTOR_SIZE;
    const length = sectors * SECTOR_SIZE;
    if (flags & ~WRITE_ZEROES_FLAG_UNMAP || (op === IoOp.DISCARD && flags !== 0))
      return BlkStatus.UNSUPP;
    if (sectors > MAX_DISCARD_SECTORS || offset + length > this.capacityBytes)
      return this.ioError();
    if (length === 0) return BlkStatus.OK;
    const unmap = flags & WRITE_ZEROES_FLAG_UNMAP;
    this.engine.queueSlowOp(unmap ? IoOp.DISCARD : op, offset, length, id);
    return STARTED;
  }

  private getId(id: number): number {
    const room = this.chain.writableBytes - 1;
    const n = copyToChain(
      this.chain,
      this.bytes,
      0,
      this.serial.subarray(0, Math.min(room, BLK_ID_BYTES)),
      this.cursor,
    );
    // The spec asks for a NUL-padded 20-byte answer; pad whatever room is left.
    const pad = Math.min(room, BLK_ID_BYTES) - n;
    if (pad > 0) copyToChain(this.chain, this.bytes, n, new Uint8Array(pad), this.cursor);
    this.slotDataLen[id] = Math.min(room, BLK_ID_BYTES);
    return BlkStatus.OK;
  }

  private ioError(): number {
    this.stats.add(BlkStat.ioErrors, 1);
    return BlkStatus.IOERR;
  }

  private complete(id: number, result: number): void {
    const type = this.slotType[id];
    const expected =
      type === BlkRequestType.IN || type === BlkRequestType.OUT ? this.slotDataLen[id] : 0;
    if (result < 0 || result !== expected) {
      this.stats.add(BlkStat.ioErrors, 1);
      this.finish(id, BlkStatus.IOERR, 0);
      return;
    }
    if (type === BlkRequestType.IN) this.stats.add(BlkStat.bytesRead, result);
    else if (type === BlkRequestType.OUT) this.stats.add(BlkStat.bytesWritten, result);
    this.finish(id, BlkStatus.OK, type === BlkRequestType.IN ? result : 0);
  }

  /**
   * Writes the status byte (the last device-writable byte) and returns the
   * chain. `status` UNUSABLE means the chain could not carry one: used length 0.
   */
  private finish(id: number, status: number, dataWritten: number): void {
    const queue = Math.floor(id / this.slotsPerQueue);
    const q = this.queues[queue];
    let used = 0;
    if (status >= 0 && this.statusRegion[id] >= 0) {
      this.bytes[this.statusRegion[id]][this.statusOffset[id]] = status;
      used = dataWritten + 1;
    }
    q.vq?.pushUsed(this.slotHead[id], used);
    q.dirty = true;
    this.releaseSlot(queue, id % this.slotsPerQueue);
    q.inFlight--;
    this.inFlight--;
    if (q.inFlight === 0) q.onIdle?.();
  }

  private endCompletionBatch(): void {
    if (this.inFlight === 0 && this.retired.length > 0) this.retired = [];
    this.flushNotifications();
    for (let i = 0; i < this.queues.length; i++) {
      if (this.queues[i].starved) this.kick(i);
    }
  }

  private flushNotifications(): void {
    const sent = notifyDirty(this.queues, this.notify);
    if (sent > 0) this.stats.add(BlkStat.interrupts, sent);
  }

  private takeSlot(queue: number): number {
    this.freeCount[queue]--;
    return this.freeSlots[queue][this.freeCount[queue]];
  }

  private releaseSlot(queue: number, slot: number): void {
    this.freeSlots[queue][this.freeCount[queue]] = slot;
    this.freeCount[queue]++;
  }

  private queue(index: number): QueueState {
    return ringAt(this.queues, index);
  }

  /** Completes everything in flight, stops every queue and closes the engine. */
  async close(): Promise<void> {
    for (let i = 0; i < this.queues.length; i++) await this.stopQueue(i);
    this.engine.close();
  }

  /** Requests in flight on every queue. */
  get requestsInFlight(): number {
    return this.inFlight;
  }
}
