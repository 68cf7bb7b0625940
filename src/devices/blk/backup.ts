/**
 * The blk device's side of a live backup (issue 12): the guest's writes are
 * never written to the backup target on their way to the disk. Instead, a
 * write (or discard, write-zeroes) that touches 4 KiB blocks the backup
 * still needs and has not copied is held, the OLD bytes of those blocks
 * (and, with `read-around`, from a chunk's second write on while the
 * journal is at most half full, of the rest of their 64 KiB chunk) are read
 * into a preallocated in-memory journal (one read per run of adjacent
 * blocks, through the device's own engine, scattered into 4 KiB entries),
 * and only then is the guest's write submitted. The backup copier
 * thread (src/worker/backup-copier.ts), at idle CPU and I/O priority, drains
 * the journal and copies the rest of the disk, chunk by chunk, to the
 * target. So a guest write that hits uncopied blocks waits for ONE disk read
 * of the blocks it overwrites, never for the target; every later write to
 * those blocks, and every write to a copied chunk, waits for nothing.
 *
 * Why blocks, not whole 64 KiB chunks (as first built): at QD1 a 4 KiB write
 * then waited for a 64 KiB read, and at QD32 the first touches filled a
 * 16 MiB journal of 256 chunk entries in a fraction of a second, so the
 * writes waited for the copier (the bench's journal-full waits). A 4 KiB
 * entry per overwritten block costs the journal 16× less. But then nearly
 * every random write was a first touch and waited for its own read (QD1 p50
 * 2.1–2.4× idle on a RAM disk); reading the rest of the chunk while the
 * journal has room makes it at most two waiting writes per chunk (p50
 * 0.97×; readAround, opt-in because on this machine's disk the extra reads
 * and journal traffic cost more than they saved under uniform random writes).
 *
 * Journal full — the policy: THROTTLE. A request that needs an entry while
 * none is free stays held until the copier frees one (it rings the
 * doorbell eventfd): the guest's writes to uncopied blocks go at the
 * copier's drain rate. Each such request is counted (BACKUP.FULL_WAITS).
 * The journal drain is never paced by `speed` (only the disk pass is), and
 * the copier is raised out of SCHED_IDLE while a request waits (priority
 * inheritance, boost()). Nothing is ever dropped, and no write reaches the
 * disk before its old blocks are safe.
 *
 * The start instant: while the tracker is PENDING every new write is held
 * and those already in flight complete; the instant they have, NEEDED is
 * written and the state turns ACTIVE. The held writes then go through the
 * journal rule like any other.
 *
 * Held requests keep their iovecs in a table preallocated per request slot
 * (the chain reader is re-pointed per request): no allocation per request.
 */

import { getSystemErrorName } from 'node:util';
import { BackupShare, type BackupShareInit } from '../../io/backup-share.js';
import type { IoEngine, IoOpCode } from '../../io/engine.js';
import { IoFile, IoOp } from '../../io/engine.js';
import { IoprioClass, ioprioValue } from '../../io/ioprio.js';
import { BACKUP, BackupState } from '../../locking/layout.js';
import { type FdWatcher, native, POLL_READABLE } from '../../native.js';

/** Most journal reads a device has in flight at once (its engine's depth is raised by this many). */
export const JOURNAL_READS_MAX = 32;

/** The copier's I/O priority while boosted (best effort, the default level) and otherwise (idle). */
const BOOSTED_IOPRIO = ioprioValue(IoprioClass.BE, 4);
const IDLE_IOPRIO = ioprioValue(IoprioClass.IDLE, 7);

/** What the tracker asks of its device. */
export interface BackupTrackerHooks {
  /** A held request may go now: the device stages it (see {@link BackupTracker.stage}) and counts it in flight. */
  resume(id: number): void;
  /** A batch started outside the device's own batches (the doorbell) is over: submit and notify. */
  endBatch(): void;
  /**
   * Where held request `id` goes when it is let go (a redirect backup, redirect.ts):
   * the offset in the engine's attached file, or -1 for the image. Absent: the image.
   */
  route?(id: number, offset: number, length: number): number;
}

/** Where the tracker gets its data. */
export interface BackupTrackerOptions {
  /** The share of a backup; null for a plain hold of writes (a snapshot's instant). */
  share: BackupShareInit | null;
  engine: IoEngine;
  /** Request slots of the device; journal reads complete with userData slots + entry. */
  slots: number;
  /** Most iovecs one request may carry. */
  maxIovs: number;
  diskBytes: number;
  /** Read-around (see {@link BackupTracker} readAround); default false: only the written blocks. */
  readAround?: boolean;
  /**
   * A redirect backup (redirect.ts): writes are held only until the start instant, nothing
   * is journaled, held writes go where hooks.route says.
   */
  redirect?: boolean;
  hooks: BackupTrackerHooks;
}

/**
 * One backup (or one hold) on a blk device, driven from its worker thread.
 * The device asks {@link mustHold} for each write-type request, {@link hold}s
 * those that must wait, and hands journal-read completions to {@link readDone}.
 */
export class BackupTracker {
  /** The share, or null for a plain hold. */
  readonly share: BackupShare | null;
  /** PENDING, ACTIVE or ENDED (BackupState), as this thread sees it. */
  state: number = BackupState.PENDING;
  /** userData of journal entry 0's read. */
  readonly readBase: number;
  /** Errno name of a failed journal read ('' while none failed). */
  failure = '';
  /** Chunks this backup copies (set by activate). */
  neededChunks = 0;
  private readonly engine: IoEngine;
  private readonly hooks: BackupTrackerHooks;
  private readonly diskBytes: number;
  private readonly maxIovs: number;
  private readonly readAroundOn: boolean;
  private readonly redirect: boolean;
  private readonly heldOp: Uint8Array;
  /** Host ioprio of each held request: its own write and its journal read are submitted at it. */
  private readonly heldIoprio: Int32Array;
  private readonly heldOffset: Float64Array;
  private readonly heldLength: Float64Array;
  private readonly heldIovCount: Int32Array;
  private readonly heldIovs: Float64Array;
  /** The request was counted as waiting for a free entry (counted once). */
  private readonly heldFull: Uint8Array;
  private readonly heldList: Int32Array;
  private heldCount = 0;
  /**
   * Per chunk, the blocks whose old bytes are safe: their journal read completed, or the disk
   * pass copied them (COPIED, and not claimed). A block claimed and not yet read is not safe.
   */
  private readonly saved: Uint16Array;
  /** Blocks per chunk, and the mask of the last chunk's blocks (it may have fewer). */
  private readonly perChunk: number;
  private readonly lastMask: number;
  /** Per journal entry: the next entry of its read's run (-1: the last one). */
  private readonly entryNext: Int32Array;
  /** Per first entry of a run: the bytes its read must return. */
  private readonly runBytes: Float64Array;
  /** NEEDED as this thread wrote it (read without atomics: only this thread writes it). */
  private needed: Int32Array;
  private readonly freeStack: Int32Array;
  private freeCount = 0;
  private readsInFlight = 0;
  /** READY entries published by this thread (stored to READY_HEAD once per batch). */
  private readyHead = 0;
  private freeTail = 0;
  private dirty = false;
  /** Staged resumed requests or journal reads since the last submit. */
  needsSubmit = false;
  /** The engine buffer index of the journal (set by the device when it installs the buffers). */
  journalBuffer = -1;
  private watcher: FdWatcher | null = null;
  private recordAt = 0;
  private onReadsDone: (() => void) | null = null;
  private pumping = false;
  private repump = false;
  /** The copier runs at SCHED_OTHER / best effort because a guest request waited on it. */
  private boosted = false;
  /** The kernel refused a boost once (no privilege): not tried again. */
  private boostRefused = false;
  /** Records a chain's iovecs into the held table (an IovecSink for ChainReader.stageIovecs). */
  private readonly recorder = {
    addIov: (buffer: number, offset: number, length: number): boolean => {
      const at = this.recordAt;
      const end = Math.floor(at / (3 * this.maxIovs)) * 3 * this.maxIovs + 3 * this.maxIovs;
      if (at + 3 > end) return false;
      this.heldIovs[at] = buffer;
      this.heldIovs[at + 1] = offset;
      this.heldIovs[at + 2] = length;
      this.recordAt = at + 3;
      return true;
    },
  };

  constructor(o: BackupTrackerOptions) {
    this.share = o.share === null ? null : BackupShare.attach(o.share);
    this.engine = o.engine;
    this.hooks = o.hooks;
    this.diskBytes = o.diskBytes;
    this.maxIovs = o.maxIovs;
    this.readAroundOn = o.readAround === true;
    this.redirect = o.redirect === true;
    this.readBase = o.slots;
    this.heldOp = new Uint8Array(o.slots);
    this.heldIoprio = new Int32Array(o.slots);
    this.heldOffset = new Float64Array(o.slots);
    this.heldLength = new Float64Array(o.slots);
    this.heldIovCount = new Int32Array(o.slots);
    this.heldIovs = new Float64Array(o.slots * o.maxIovs * 3);
    this.heldFull = new Uint8Array(o.slots);
    this.heldList = new Int32Array(o.slots);
    const s = this.share;
    this.saved = new Uint16Array(s?.chunks ?? 0);
    this.perChunk = s?.blocksPerChunk ?? 16;
    if (this.perChunk > 16) throw new RangeError('a backup chunk has at most 16 blocks');
    this.lastMask = s === null || s.chunks === 0 ? 0 : s.fullMask(s.chunks - 1, o.diskBytes);
    this.entryNext = new Int32Array(s?.entries ?? 0);
    this.runBytes = new Float64Array(s?.entries ?? 0);
    this.needed = new Int32Array(0);
    this.freeStack = Int32Array.from({ length: s?.entries ?? 0 }, (_, i) => i);
    this.freeCount = this.freeStack.length;
    if (s !== null) {
      const fd = s.init.doorbellFd;
      this.watcher = new native.FdWatcher(fd, () => this.doorbell());
      this.watcher.start(POLL_READABLE);
    }
  }

  /** Requests held now. */
  get held(): number {
    return this.heldCount;
  }

  /**
   * The start instant: `needed` (one bit per chunk; null: every chunk) is
   * what this backup copies. Published with STATE = ACTIVE; held requests go
   * through the journal rule from here on.
   */
  activate(needed: Int32Array | null): void {
    const s = this.share;
    if (s === null) return;
    const bits = publishNeeded(s, needed);
    this.needed = bits;
    this.neededChunks = countBits(bits);
    this.state = BackupState.ACTIVE;
    this.pump();
  }

  /** Whether a write-type request over [offset, offset + length) must wait (see the module comment). */
  mustHold(offset: number, length: number): boolean {
    if (this.state === BackupState.PENDING) return true;
    if (this.state !== BackupState.ACTIVE || this.redirect) return false;
    const s = this.share as BackupShare;
    const first = Math.floor(offset / s.chunkBytes);
    const last = Math.min(Math.floor((offset + length - 1) / s.chunkBytes), s.chunks - 1);
    for (let c = first; c <= last; c++) {
      if ((this.needed[c >>> 5] & (1 << (c & 31))) === 0) continue;
      const m = this.rangeMask(c, offset, length);
      if ((this.safe(c, m) & m) !== m) return true;
    }
    return false;
  }

  /** The mask of chunk `c`'s blocks that [offset, offset + length) touches. */
  private rangeMask(c: number, offset: number, length: number): number {
    const s = this.share as BackupShare;
    const base = c * s.chunkBytes;
    const from = Math.max(offset, base) - base;
    const to = Math.min(offset + length, base + s.chunkBytes) - base;
    const fb = Math.floor(from / s.blockBytes);
    const lb = Math.floor((to - 1) / s.blockBytes);
    return ((1 << (lb + 1)) - 1) & ~((1 << fb) - 1);
  }

  /**
   * Chunk `c`'s safe blocks, looked up again when those of `m` are not all safe: once the
   * disk pass is done with the chunk (COPIED), every block this device did not claim is safe.
   */
  private safe(c: number, m: number): number {
    const s = this.share as BackupShare;
    let sv = this.saved[c];
    // Atomics.load (in bit): pairs with the copier's store of COPIED after its post-read check.
    if ((sv & m) !== m && s.bit(s.at.copied, c)) {
      // The device is CLAIMED's only writer: its own word, read plainly via claimedMask.
      sv |= this.chunkMask(c) & ~s.claimedMask(c);
      this.saved[c] = sv;
    }
    return sv;
  }

  /**
   * Holds request `id` (op, range; `source` stages a write's payload, null
   * for discard / write-zeroes) and starts saving the chunks it needs.
   * `ioprio` (the request's host ioprio; 0: the thread's own) goes with its
   * journal reads and, when it is let go, with the request itself.
   * False when its iovecs do not fit the table (the device fails it).
   */
  hold(
    id: number,
    op: IoOpCode,
    offset: number,
    length: number,
    source: {
      stageIovecs(sink: { addIov(b: number, o: number, l: number): boolean }, n: number): number;
    } | null,
    ioprio = 0,
  ): boolean {
    this.recordAt = id * this.maxIovs * 3;
    this.heldIoprio[id] = ioprio;
    let count = 0;
    if (source !== null) {
      count = source.stageIovecs(this.recorder, length);
      if (count < 0) return false;
    }
    this.heldOp[id] = op + 1;
    this.heldOffset[id] = offset;
    this.heldLength[id] = length;
    this.heldIovCount[id] = count;
    this.heldFull[id] = 0;
    this.heldList[this.heldCount++] = id;
    if (this.state === BackupState.ACTIVE) this.pump();
    return true;
  }

  /**
   * Calls `mark(offset, length)` for every held request: writes held at the start instant
   * come after it, so they belong in the changed-block record that starts there.
   */
  forEachHeld(mark: (offset: number, length: number) => void): void {
    for (let i = 0; i < this.heldCount; i++) {
      const id = this.heldList[i];
      mark(this.heldOffset[id], this.heldLength[id]);
    }
  }

  /**
   * Stages held request `id` into the engine (its iovecs, then its op);
   * false when the engine refuses it even after a submit.
   */
  stage(id: number): boolean {
    const e = this.engine;
    const op = (this.heldOp[id] - 1) as IoOpCode;
    this.heldOp[id] = 0;
    this.needsSubmit = true;
    const at = this.hooks.route?.(id, this.heldOffset[id], this.heldLength[id]) ?? -1;
    const file = at >= 0 ? IoFile.ATTACHED : IoFile.IMAGE;
    const fileOffset = at >= 0 ? at : this.heldOffset[id];
    if (op !== IoOp.READ && op !== IoOp.WRITE) {
      e.queueSlowOp(op, fileOffset, this.heldLength[id], id, file);
      return true;
    }
    for (let attempt = 0; attempt < 2; attempt++) {
      if (this.stageOnce(id, op, fileOffset, file)) return true;
      e.submit();
    }
    return false;
  }

  private stageOnce(id: number, op: IoOpCode, fileOffset: number, file: 0 | 1): boolean {
    const e = this.engine;
    const first = e.stagedIovs;
    const base = id * this.maxIovs * 3;
    const count = this.heldIovCount[id];
    for (let i = 0; i < count; i++) {
      const at = base + 3 * i;
      if (!e.addIov(this.heldIovs[at], this.heldIovs[at + 1], this.heldIovs[at + 2])) return false;
    }
    return e.queueReadWrite(op, fileOffset, first, count, id, this.heldIoprio[id], file);
  }

  /**
   * Walks the held requests in the order they were held: each whose chunks
   * are all safe goes (hooks.resume); the others claim what they can.
   */
  private pump(): void {
    // Re-entered from a completion that a resumed request's submit delivered at once (sync
    // engines): the outer walk goes round once more instead.
    if (this.pumping) {
      this.repump = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.repump = false;
        this.walk();
      } while (this.repump);
    } finally {
      this.pumping = false;
    }
  }

  /** One walk over the held list, in the order requests were held. */
  private walk(): void {
    const list = this.heldList;
    const n = this.heldCount;
    let kept = 0;
    for (let i = 0; i < n; i++) {
      const id = list[i];
      if (this.state === BackupState.ACTIVE && !this.redirect && !this.advance(id))
        list[kept++] = id;
      // resume may re-enter pump through a completion: that only sets repump.
      else this.hooks.resume(id);
    }
    // Requests held during the walk (a completion re-draining a queue) wait for the repump.
    for (let j = n; j < this.heldCount; j++) list[kept++] = list[j];
    this.heldCount = kept;
  }

  /** Claims the blocks request `id` needs saved; true once every one is safe. */
  private advance(id: number): boolean {
    const s = this.share as BackupShare;
    const offset = this.heldOffset[id];
    const length = this.heldLength[id];
    const first = Math.floor(offset / s.chunkBytes);
    const last = Math.min(Math.floor((offset + length - 1) / s.chunkBytes), s.chunks - 1);
    let ready = true;
    for (let c = first; c <= last; c++) {
      if ((this.needed[c >>> 5] & (1 << (c & 31))) === 0) continue;
      const m = this.rangeMask(c, offset, length);
      const missing = m & ~this.safe(c, m);
      if (missing === 0) continue;
      ready = false;
      // Blocks claimed already (by this request or another) are being read: only wait for them.
      const claimed = s.claimedMask(c);
      const toClaim = missing & ~claimed;
      if (toClaim !== 0 && !this.claimRuns(c, this.readAround(c, toClaim, claimed), id)) break;
    }
    return ready;
  }

  /**
   * What to claim in chunk `c` when a write needs `toClaim` saved: with READ-AROUND (the
   * backup's `read-around`, off by default: on this machine's disk it cost more than it saved
   * under uniform random writes, bench/results/backup-readaround.md) — from the
   * chunk's second write on, every block of the chunk not yet safe nor claimed, while the
   * journal would stay at least half free after taking them; else `toClaim` alone. Why: writes
   * to a chunk come in groups (file system blocks, journals, random writes to a small area),
   * and each would wait for a read of its own block; one read of the rest of the chunk saves
   * them all, so at most two writes per chunk wait, without putting the target in the write
   * path. Not on the first write: uniform random writes over a large disk touch most chunks
   * once, and there the 64 KiB reads and the 16× journal traffic cost more than they save
   * (bench/results/backup-readaround.md). Once the journal is half full, only the blocks
   * written are saved, so a burst of first touches does not fill it and wait on the copier.
   */
  private readAround(c: number, toClaim: number, claimed: number): number {
    const s = this.share as BackupShare;
    // A chunk's first write saves its own blocks: on a disk a 64 KiB read costs more than a
    // 4 KiB one, and writes spread thinly (one per chunk) would pay it for nothing. A second
    // write to the chunk shows locality: that one reads around.
    if (!this.readAroundOn || (this.saved[c] | claimed) === 0) return toClaim;
    const wide = this.chunkMask(c) & ~this.saved[c] & ~claimed;
    if (wide === toClaim) return toClaim;
    const extra = popcount(wide);
    if (this.freeCount - extra < s.entries / 2) this.refill();
    return this.freeCount - extra >= s.entries / 2 ? wide : toClaim;
  }

  /** Every block of chunk `c` (the last chunk may have fewer). */
  private chunkMask(c: number): number {
    const s = this.share as BackupShare;
    return c === s.chunks - 1 ? this.lastMask : (1 << this.perChunk) - 1;
  }

  /** Claims every run of adjacent blocks in `mask` of chunk `c`; false when it could not claim all. */
  private claimRuns(c: number, mask: number, id: number): boolean {
    let m = mask;
    while (m !== 0) {
      const b0 = 31 - Math.clz32(m & -m);
      let n = 1;
      while (b0 + n < this.perChunk && (m & (1 << (b0 + n))) !== 0) n++;
      const k = this.claimRun(c, b0, n, id);
      if (k < n) return false;
      m &= ~(((1 << n) - 1) << b0);
    }
    return true;
  }

  /**
   * Saves blocks [b0, b0 + n) of chunk `c` (or as many of the first ones as there are free
   * entries): CLAIMED first (the copier will not copy them from disk any more), then ONE read
   * of their old bytes, scattered into free journal entries. Returns how many it claimed: fewer
   * than `n` when entries ran out (THROTTLE, counted, the copier boosted), too many reads are
   * in flight or the staging table is full — the request then waits.
   */
  private claimRun(c: number, b0: number, n: number, id: number): number {
    const s = this.share as BackupShare;
    if (this.readsInFlight >= JOURNAL_READS_MAX) return 0;
    if (this.freeCount < n) this.refill();
    const k = Math.min(n, this.freeCount);
    if (k < n) {
      if (this.heldFull[id] === 0) {
        this.heldFull[id] = 1;
        s.i32[BACKUP.FULL_WAITS]++;
        this.dirty = true;
      }
      this.boost(true);
      if (k === 0) return 0;
    }
    const g0 = c * this.perChunk + b0;
    const eng = this.engine;
    const iov = eng.stagedIovs;
    // The run's entries are the top k of the free stack, block g0 + i in the i-th from the
    // bottom of those: entries freed together (ascending) come back adjacent and ascending,
    // so a run's blocks usually sit in adjacent entries and the copier writes them in one.
    const top = this.freeCount - k;
    let bytes = 0;
    for (let i = 0; i < k; i++) {
      const e = this.freeStack[top + i];
      const length = s.blockLength(g0 + i, this.diskBytes);
      // The staging table is full: nothing taken; the request tries again on the next pump.
      if (!eng.addIov(this.journalBuffer, e * s.blockBytes, length)) return 0;
      bytes += length;
    }
    const e0 = this.freeStack[top];
    // At the priority of the write that waits for it: that write's latency is this read's.
    const ioprio = this.heldIoprio[id];
    if (!eng.queueReadWrite(IoOp.READ, g0 * s.blockBytes, iov, k, this.readBase + e0, ioprio))
      return 0;
    // Sequentially consistent store, BEFORE the journal read and the guest write are submitted:
    // the copier's Atomics.load after its own disk read of c orders against it (backup-share.ts).
    s.claim(c, ((1 << k) - 1) << b0);
    let prev = -1;
    for (let i = 0; i < k; i++) {
      const e = this.freeStack[top + i];
      s.i32[s.at.entryBlock + e] = g0 + i;
      if (prev >= 0) this.entryNext[prev] = e;
      prev = e;
    }
    this.freeCount = top;
    this.entryNext[prev] = -1;
    this.runBytes[e0] = bytes;
    s.i32[BACKUP.JOURNAL_READS]++;
    this.dirty = true;
    this.readsInFlight++;
    this.needsSubmit = true;
    return k;
  }

  /**
   * Takes back entries the copier freed (FREE ring). When none: says so
   * (DEVICE_WAITING) and looks once more, so a free published meanwhile is not missed.
   */
  private refill(): boolean {
    const s = this.share as BackupShare;
    const take = () => {
      // Atomics.load of FREE_HEAD orders after the copier's stores of the ring slots before it.
      const head = Atomics.load(s.i32, BACKUP.FREE_HEAD);
      while (this.freeTail !== head) {
        this.freeStack[this.freeCount++] = s.i32[s.at.free + (this.freeTail % s.entries)];
        this.freeTail++;
      }
      // Statistics only (the copier never reads FREE_TAIL: the ring cannot overflow, it holds
      // at most every entry once); orders nothing.
      Atomics.store(s.i32, BACKUP.FREE_TAIL, this.freeTail);
      return this.freeCount > 0;
    };
    if (take()) return true;
    // Stored before the second look; the copier stores FREE_HEAD before it loads DEVICE_WAITING.
    Atomics.store(s.i32, BACKUP.DEVICE_WAITING, 1);
    return take();
  }

  /** Entries the copier freed that this thread has not taken yet. */
  private pendingFrees(): number {
    // Atomics.load: pairs with the copier's store of FREE_HEAD (a count only, no slot is read).
    return Atomics.load((this.share as BackupShare).i32, BACKUP.FREE_HEAD) - this.freeTail;
  }

  /**
   * Priority inheritance for a filling journal: a guest request that waits for a free entry
   * waits for the copier, so the copier leaves SCHED_IDLE / the idle I/O class
   * (sched_setscheduler and ioprio_set on its thread) when one waits or an eighth of the
   * journal is in use, until the journal is nearly empty again (publish).
   * Two system calls per episode, none per request; refused without the privilege (warned
   * nowhere: the counters show the waits), then never tried again.
   */
  private boost(on: boolean): void {
    const s = this.share as BackupShare;
    if (on === this.boosted || this.boostRefused) return;
    // Stored once by the copier before it was started: a plain value, nothing else ordered.
    const tid = Atomics.load(s.i32, BACKUP.COPIER_TID);
    if (tid === 0) return;
    const c = native.constants;
    try {
      native.schedSetScheduler(tid, on ? c.SCHED_OTHER : s.i32[BACKUP.COPIER_POLICY], 0);
      native.ioprioSet(tid, on ? BOOSTED_IOPRIO : IDLE_IOPRIO);
    } catch {
      this.boostRefused = true;
      return;
    }
    this.boosted = on;
    if (on) s.i32[BACKUP.BOOSTS]++;
  }

  /** A journal read finished: its blocks are safe (or the backup failed); held requests move on. */
  readDone(entry: number, result: number): void {
    const s = this.share as BackupShare;
    this.readsInFlight--;
    if (result !== this.runBytes[entry]) {
      this.fail(result < 0 ? -result : 5);
    } else if (this.state === BackupState.ACTIVE) {
      for (let e = entry; e !== -1; e = this.entryNext[e]) {
        const g = s.i32[s.at.entryBlock + e];
        const c = Math.floor(g / this.perChunk);
        this.saved[c] |= 1 << (g - c * this.perChunk);
        s.i32[s.at.ready + (this.readyHead % s.entries)] = e;
        this.readyHead++;
        s.i32[BACKUP.JOURNALED]++;
      }
      this.dirty = true;
    }
    if (this.readsInFlight === 0) this.onReadsDone?.();
    this.pump();
  }

  /** The old bytes of blocks could not be read: the backup cannot be exact any more, it fails. */
  private fail(errno: number): void {
    const s = this.share as BackupShare;
    if (this.state !== BackupState.ACTIVE) return;
    this.failure = errnoName(errno);
    // Read by the copier's check() with Atomics.load: the backup fails; nothing else is ordered.
    Atomics.store(s.i32, BACKUP.FAILED_ERRNO, errno);
    this.state = BackupState.ENDED;
  }

  /**
   * Once per batch: publishes the READY entries (one Atomics.store of
   * READY_HEAD, which orders the ring slots and ENTRY_BLOCK before it) and
   * wakes the copier if it waits on it.
   */
  publish(): void {
    const s = this.share;
    if (s === null) return;
    // Once per batch. Not boosted: boosted once an eighth of the journal is in use, long
    // before any request has to wait for an entry — on a busy host an idle-class copier barely
    // runs (the bench at QD32 saw ~1900 full waits per cell with the boost at three quarters).
    // Boosted: back to idle once the journal is nearly empty (a 32nd in use: hysteresis).
    if (!this.boosted && !this.dirty) return;
    // Free here or freed by the copier and not taken back yet: the journal's real room.
    const inUse = s.entries - this.freeCount - this.pendingFrees();
    if (this.boosted && inUse <= s.entries / 32) this.boost(false);
    else if (!this.boosted && inUse >= s.entries / 8) this.boost(true);
    if (!this.dirty) return;
    this.dirty = false;
    Atomics.store(s.i32, BACKUP.READY_HEAD, this.readyHead);
    if (inUse > s.i32[BACKUP.HIGH_WATER]) s.i32[BACKUP.HIGH_WATER] = inUse;
    // Wakes a copier in Atomics.waitAsync on READY_HEAD (after the store above it can see).
    Atomics.notify(s.i32, BACKUP.READY_HEAD);
  }

  /** The copier freed entries while a request waited: take them, move on, end the batch. */
  private doorbell(): void {
    const s = this.share as BackupShare;
    native.eventfdRead(s.init.doorbellFd);
    // Cleared before refill() looks at FREE_HEAD: a free published after that look finds it set
    // again (refill sets it when it finds nothing) and rings once more.
    Atomics.store(s.i32, BACKUP.DEVICE_WAITING, 0);
    this.refill();
    this.pump();
    this.publish();
    this.hooks.endBatch();
  }

  /**
   * The backup is over (or the hold released): nothing is journaled any
   * more, every held request goes. Resolves once no journal read is in
   * flight (only then may the device drop the journal buffer).
   */
  end(): Promise<void> {
    // For the main thread's reports; the copier has finished (or is told by CANCEL) already.
    if (this.share !== null) Atomics.store(this.share.i32, BACKUP.STATE, BackupState.ENDED);
    this.state = BackupState.ENDED;
    this.boost(false);
    this.watcher?.close();
    this.watcher = null;
    this.pump();
    this.hooks.endBatch();
    if (this.readsInFlight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.onReadsDone = resolve;
    });
  }
}

/** An errno number's name (EIO, ENOSPC...), or `errno N`. */
export function errnoName(errno: number): string {
  try {
    return getSystemErrorName(-errno);
  } catch {
    return `errno ${errno}`;
  }
}

/**
 * Writes NEEDED into `s` (one bit per chunk the backup copies: the set bits
 * of `needed`, or every chunk when null) and publishes it with STATE =
 * ACTIVE. Returns the bits. Used by {@link BackupTracker.activate}, and
 * alone by a backup that copies from a reflink clone (nothing to journal).
 */
export function publishNeeded(s: BackupShare, needed: Int32Array | null): Int32Array {
  const words = Math.ceil(s.chunks / 32);
  const bits = new Int32Array(words);
  for (let c = 0; c < s.chunks; c++) {
    if (needed !== null && (needed[c >>> 5] & (1 << (c & 31))) === 0) continue;
    bits[c >>> 5] |= 1 << (c & 31);
  }
  for (let w = 0; w < words; w++) s.i32[s.at.needed + w] = bits[w];
  // Sequentially consistent: NEEDED's plain stores above are visible to a copier that loads ACTIVE.
  Atomics.store(s.i32, BACKUP.STATE, BackupState.ACTIVE);
  return bits;
}

/** Set bits in `bits`. */
export function countBits(bits: Int32Array): number {
  let n = 0;
  for (let w = 0; w < bits.length; w++) n += popcount(bits[w]);
  return n;
}

/** Set bits of a 32-bit mask. */
function popcount(mask: number): number {
  let n = 0;
  for (let v = mask; v !== 0; v &= v - 1) n++;
  return n;
}
