/**
 * The split-ring inflight region of VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD
 * (QEMU docs/interop/vhost-user.rst, §"Inflight I/O tracking"): a record, in
 * a memfd that the front end keeps across back-end restarts, of every request
 * the device popped and has not yet returned. A restarted back end finds in
 * it exactly the requests its predecessor took and never completed, and
 * resubmits them in their original order before it takes new ones.
 *
 * Layout of one queue's region (little-endian, §"Inflight I/O tracking"):
 *
 * ```
 * struct QueueRegionSplit {          struct DescStateSplit {   (16 bytes, per head)
 *   u64 features;       // 0            u8  inflight;   // +0
 *   u16 version;        // 8            u8  padding[5];
 *   u16 desc_num;       // 10           u16 next;       // +6
 *   u16 last_batch_head;// 12           u64 counter;    // +8
 *   u16 used_idx;       // 14         }
 *   DescStateSplit desc[desc_num];  // 16
 * }
 * ```
 *
 * The regions of queues 0..N-1 follow each other every
 * {@link inflightQueueBytes} bytes (the back end chooses the layout: the
 * front end treats the memfd as opaque).
 *
 * Bookkeeping (the spec's order), plain stores into the shared mapping, no
 * system call and no allocation:
 * - pop: `desc[head].counter = counter++`, then `desc[head].inflight = 1`,
 *   before the request is handed to the engine ({@link InflightQueue.begin});
 * - each used entry: `desc[head].next = last_batch_head`,
 *   `last_batch_head = head` ({@link InflightQueue.used}), before used.idx is
 *   published;
 * - after used.idx is published, once per batch: clear `inflight` of the
 *   batch's heads (walking the list from last_batch_head), then
 *   `used_idx = used.idx` ({@link InflightQueue.published}).
 *
 * Who reads it: only a later back end, after this one is gone, and the front
 * end never while a ring runs. So the stores need no fence among themselves;
 * what matters is program order around the guest-visible used.idx store
 * (seq-cst, so V8 reorders no store across it) and around the engine submit
 * (a native call).
 *
 * Reconnect ({@link InflightQueue.recover}): when the ring's used.idx differs
 * from the region's used_idx, the back end died between publishing a batch and
 * clearing its flags: the last `used.idx - used_idx` heads of the batch list
 * are cleared and used_idx set. Every head still marked is then a request
 * popped and never returned: it is resubmitted, in counter order, and the ring
 * resumes popping at `used.idx + inflight` (every popped head is either used
 * or still inflight), whatever SET_VRING_BASE said (QEMU rewinds it to
 * used.idx when the back end vanished).
 */
import { VhostRtError } from '../errors.js';

/** The region version this code writes and reads; 0 marks a region nobody has initialised. */
export const INFLIGHT_VERSION = 1;
/** Bytes of QueueRegionSplit's header (features, version, desc_num, last_batch_head, used_idx). */
export const INFLIGHT_HEADER_SIZE = 16;
/** Bytes of one DescStateSplit. */
export const INFLIGHT_DESC_SIZE = 16;
/** Alignment of each queue's region (a cache line, as libvhost-user's). */
export const INFLIGHT_ALIGN = 64;
/** Largest queue size a region describes (the split ring's limit). */
export const INFLIGHT_MAX_QUEUE_SIZE = 32768;

// Byte offsets in the header and in one DescStateSplit.
const VERSION = 8;
const DESC_NUM = 10;
const LAST_BATCH_HEAD = 12;
const USED_IDX = 14;
const D_INFLIGHT = 0;
const D_NEXT = 6;
const D_COUNTER = 8;
const TWO_POW_32 = 2 ** 32;

/** Bytes of one queue's region for `queueSize` descriptors, padded to {@link INFLIGHT_ALIGN}. */
export function inflightQueueBytes(queueSize: number): number {
  const raw = INFLIGHT_HEADER_SIZE + INFLIGHT_DESC_SIZE * queueSize;
  return Math.ceil(raw / INFLIGHT_ALIGN) * INFLIGHT_ALIGN;
}

/** Bytes of the whole inflight area: `numQueues` regions of `queueSize` descriptors. */
export function inflightAreaBytes(numQueues: number, queueSize: number): number {
  return numQueues * inflightQueueBytes(queueSize);
}

/**
 * One queue's part of a mapped inflight area, as the transport hands it to
 * the ring (the vhost-user back end maps the memfd of SET_INFLIGHT_FD).
 */
export interface InflightArea {
  /** The mapping of the whole area (MAP_SHARED: the front end keeps the file). */
  buffer: SharedArrayBuffer;
  /** Byte offset of this queue's region in `buffer` (a multiple of 8). */
  offset: number;
  /** desc_num of the area: the queue size the front end announced; at least the ring's size. */
  queueSize: number;
}

/** The inflight region cannot be used: wrong version, size or layout. */
export class InflightError extends VhostRtError {}

/** Codes of {@link InflightError}. */
export const InflightErrorCode = {
  /** The region's version is neither 0 (fresh) nor {@link INFLIGHT_VERSION}. */
  BAD_VERSION: 'INFLIGHT_BAD_VERSION',
  /** desc_num differs from the queue size announced, or the ring is larger than the region. */
  BAD_SIZE: 'INFLIGHT_BAD_SIZE',
  /** The region does not lie inside the mapping, or is misaligned. */
  OUT_OF_RANGE: 'INFLIGHT_OUT_OF_RANGE',
  /** More heads marked inflight, or a longer last batch, than the ring can hold. */
  CORRUPT: 'INFLIGHT_CORRUPT',
} as const;

/** What {@link InflightQueue.recover} found. */
export interface InflightRecovery {
  /** The region was fresh (version 0): nothing to resubmit, SET_VRING_BASE stands. */
  fresh: boolean;
  /** Heads of the last batch whose flags a crash left set, cleared now (used.idx ran ahead of used_idx). */
  reconciled: number;
  /** Requests to resubmit, in counter order (also {@link InflightQueue.resubmitLeft}). */
  resubmit: number;
}

/**
 * One queue's inflight region, driven by the split virtqueue that owns it on
 * the device's thread; see the module comment.
 */
export class InflightQueue {
  /** desc_num: descriptors the region tracks. */
  readonly queueSize: number;
  private readonly u8: Uint8Array;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  /** The next counter value; above every counter found at recovery. */
  private counter = 1;
  /** Shadow of last_batch_head (never read back from the shared region on the data path). */
  private lastBatchHead = 0;
  /** Used entries added since the last {@link published}. */
  private batched = 0;
  /** Heads to resubmit, in counter order, filled by {@link recover}. */
  private readonly resubmitHeads: Uint16Array;
  private resubmitCount = 0;
  private resubmitNext = 0;

  /** @throws InflightError OUT_OF_RANGE when the region does not fit `area.buffer` or is misaligned. */
  constructor(area: InflightArea) {
    const { buffer, offset, queueSize } = area;
    if (!Number.isInteger(queueSize) || queueSize < 1 || queueSize > INFLIGHT_MAX_QUEUE_SIZE)
      throw new InflightError(
        InflightErrorCode.BAD_SIZE,
        `inflight queue size ${queueSize} is outside 1..${INFLIGHT_MAX_QUEUE_SIZE}`,
      );
    const bytes = inflightQueueBytes(queueSize);
    if (
      !Number.isInteger(offset) ||
      offset < 0 ||
      offset % 8 !== 0 ||
      offset + bytes > buffer.byteLength
    )
      throw new InflightError(
        InflightErrorCode.OUT_OF_RANGE,
        `inflight region at ${offset} (+${bytes}) is misaligned or outside the ${buffer.byteLength}-byte mapping`,
      );
    this.queueSize = queueSize;
    this.u8 = new Uint8Array(buffer, offset, bytes);
    this.u16 = new Uint16Array(buffer, offset, bytes / 2);
    this.u32 = new Uint32Array(buffer, offset, bytes / 4);
    this.resubmitHeads = new Uint16Array(queueSize);
  }

  /** Requests {@link recover} found that are still to be handed out by {@link nextResubmit}. */
  get resubmitLeft(): number {
    return this.resubmitCount - this.resubmitNext;
  }

  /** The next head to resubmit (call only while {@link resubmitLeft} > 0); it keeps its mark and counter. */
  nextResubmit(): number {
    return this.resubmitHeads[this.resubmitNext++];
  }

  /**
   * Head `head` was popped: stamps the next counter, then marks it inflight.
   * Call before the request reaches the engine. `head` < the ring size (checked by the ring).
   */
  begin(head: number): void {
    const c = this.counter++;
    const at = (INFLIGHT_HEADER_SIZE + INFLIGHT_DESC_SIZE * head + D_COUNTER) >>> 2;
    this.u32[at] = c >>> 0;
    this.u32[at + 1] = Math.floor(c / TWO_POW_32);
    this.u8[INFLIGHT_HEADER_SIZE + INFLIGHT_DESC_SIZE * head + D_INFLIGHT] = 1;
  }

  /** Head `head`'s used entry was written (not yet published): links it into the batch list. */
  used(head: number): void {
    this.u16[(INFLIGHT_HEADER_SIZE + INFLIGHT_DESC_SIZE * head + D_NEXT) >>> 1] =
      this.lastBatchHead;
    this.u16[LAST_BATCH_HEAD >>> 1] = head;
    this.lastBatchHead = head;
    this.batched++;
  }

  /**
   * used.idx was published as `usedIdx`: clears the flags of the batch's
   * heads (the last {@link used} ones, walking the list) and records
   * used_idx. Once per batch; nothing to do when no entry was added.
   */
  published(usedIdx: number): void {
    const n = this.batched;
    if (n === 0) return;
    this.batched = 0;
    this.clearBatch(this.lastBatchHead, n);
    // Last: a crash before this store leaves used_idx behind used.idx, and recovery clears the batch again.
    this.u16[USED_IDX >>> 1] = usedIdx;
  }

  /**
   * Reads the region a previous back end left, at ring start. `ringUsedIdx`
   * is used.idx in guest memory, `ringSize` the ring's size. A fresh region
   * (version 0) is initialised. Otherwise the last batch is reconciled with
   * used.idx and the heads still marked are queued for resubmission in
   * counter order; the caller resumes popping at `ringUsedIdx + resubmit`.
   * Runs once per ring start (it may allocate).
   * @throws InflightError BAD_VERSION, BAD_SIZE or CORRUPT.
   */
  recover(ringUsedIdx: number, ringSize: number): InflightRecovery {
    if (ringSize > this.queueSize)
      throw new InflightError(
        InflightErrorCode.BAD_SIZE,
        `ring size ${ringSize} exceeds the inflight region's ${this.queueSize} descriptors`,
      );
    this.batched = 0;
    this.resubmitCount = this.resubmitNext = 0;
    const version = this.u16[VERSION >>> 1];
    if (version === 0) {
      this.initialise(ringUsedIdx);
      return { fresh: true, reconciled: 0, resubmit: 0 };
    }
    this.checkHeader(version);
    const reconciled = this.reconcile(ringUsedIdx);
    const resubmit = this.collect(ringSize);
    if (resubmit > ringSize)
      throw new InflightError(
        InflightErrorCode.CORRUPT,
        `${resubmit} heads marked inflight in a ring of ${ringSize}`,
      );
    return { fresh: false, reconciled, resubmit };
  }

  private initialise(ringUsedIdx: number): void {
    this.u8.fill(0);
    this.u16[DESC_NUM >>> 1] = this.queueSize;
    this.u16[USED_IDX >>> 1] = ringUsedIdx;
    this.u16[VERSION >>> 1] = INFLIGHT_VERSION;
    this.lastBatchHead = 0;
    this.counter = 1;
  }

  private checkHeader(version: number): void {
    if (version !== INFLIGHT_VERSION)
      throw new InflightError(
        InflightErrorCode.BAD_VERSION,
        `inflight region version ${version}, this back end knows ${INFLIGHT_VERSION}`,
      );
    const descNum = this.u16[DESC_NUM >>> 1];
    if (descNum !== this.queueSize)
      throw new InflightError(
        InflightErrorCode.BAD_SIZE,
        `inflight region has desc_num ${descNum}, the front end announced ${this.queueSize}`,
      );
  }

  /** The spec's "used_idx does not match used.idx" step; returns the batch size it cleared. */
  private reconcile(ringUsedIdx: number): number {
    const regionUsed = this.u16[USED_IDX >>> 1];
    this.lastBatchHead = this.u16[LAST_BATCH_HEAD >>> 1];
    const batch = (ringUsedIdx - regionUsed) & 0xffff;
    if (batch === 0) return 0;
    if (batch > this.queueSize)
      throw new InflightError(
        InflightErrorCode.CORRUPT,
        `used.idx ${ringUsedIdx} is ${batch} ahead of the region's used_idx ${regionUsed}`,
      );
    this.clearBatch(this.lastBatchHead, batch);
    this.u16[USED_IDX >>> 1] = ringUsedIdx;
    return batch;
  }

  /** Clears the inflight flag of `n` heads of the batch list starting at `head` (indexes checked). */
  private clearBatch(head: number, n: number): void {
    let h = head;
    for (let i = 0; i < n && h < this.queueSize; i++) {
      const at = INFLIGHT_HEADER_SIZE + INFLIGHT_DESC_SIZE * h;
      this.u8[at + D_INFLIGHT] = 0;
      h = this.u16[(at + D_NEXT) >>> 1];
    }
  }

  /** Queues every marked head below `ringSize` by counter; clears marks beyond it; sets the counter. */
  private collect(ringSize: number): number {
    const found: { head: number; counter: number }[] = [];
    let max = 0;
    for (let h = 0; h < this.queueSize; h++) {
      const at = INFLIGHT_HEADER_SIZE + INFLIGHT_DESC_SIZE * h;
      if (this.u8[at + D_INFLIGHT] !== 1) continue;
      if (h >= ringSize) {
        // A head the ring cannot have: the front end shrank the ring; nothing to resubmit there.
        this.u8[at + D_INFLIGHT] = 0;
        continue;
      }
      const c32 = (at + D_COUNTER) >>> 2;
      const counter = this.u32[c32] + this.u32[c32 + 1] * TWO_POW_32;
      found.push({ head: h, counter });
      if (counter > max) max = counter;
    }
    found.sort((a, b) => a.counter - b.counter || a.head - b.head);
    for (let i = 0; i < found.length && i < ringSize; i++) this.resubmitHeads[i] = found[i].head;
    this.resubmitCount = Math.min(found.length, ringSize);
    this.counter = max + 1;
    return found.length;
  }
}
