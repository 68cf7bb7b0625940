/**
 * Redirect-on-write for a live backup (issue 12, `blockdev-backup` with
 * `method: redirect`): the blk device's side of the overlay file
 * (src/io/redirect-file.ts).
 *
 * Why: copy-before-write (backup.ts) keeps the image's old contents by reading
 * them before a guest write may overwrite them. Under 4k random writes over the
 * whole disk nearly every write is a first touch, so nearly every write waits
 * for a read, and on a saturated disk that read alone lengthens the tail (QD32
 * p99.9 8–17× idle on this machine's disk). Redirecting instead leaves the image
 * untouched from the start instant on: a guest write goes to the overlay at the
 * same offset, in ONE write and with no read; the copier reads the frozen image
 * with nothing to coordinate. The cost moves to after the backup: the overlay is
 * merged back into the image (at the idle I/O class, one 1 MiB copy at a time),
 * and meanwhile reads of redirected units go to the overlay.
 *
 * Phases: PREPARING (the file exists, the device holds writes for the start
 * instant) → REDIRECT (every write-type request goes to the overlay) → MERGING
 * (the backup is over: a write that touches a redirected unit goes to the overlay,
 * whole, so a unit is never half here and half there; any other goes to the image)
 * → detached (nothing redirected left: the file is removed). A device closing while
 * REDIRECT or MERGING leaves the overlay on disk; the next open merges it
 * (recoverRedirect).
 *
 * Durability (what a crash may cost, no more than the guest allows): a guest
 * flush completes only after the bitmap's changed pages are written and the
 * overlay (and the image) fdatasynced, so every unit the guest was told is
 * durable is found in the overlay by the bitmap on disk. Only completed writes
 * reach the persisted bitmap (the routing one is set at submit), so recovery
 * never copies a write the guest was not told of — a sector is old or new. The merge clears a unit's
 * bit only after its copy in the image is fdatasynced; until the cleared page is
 * persisted, recovery would copy the overlay's (identical) data again — and a
 * write to the image after the clear is durable only after a flush, which
 * persists the cleared page first. Bitmap writes are serialized (one persist in
 * flight), so an older page can never land after a newer one.
 *
 * A unit being merged that the guest writes meanwhile (into the overlay: its bit
 * is set) is marked touched and keeps its bit; the merge copies it again on its
 * next pass.
 *
 * Hot path: routing a request is a scan of its bitmap words (a 4 KiB request: one
 * word); nothing is allocated per request; the split-read and persist tables are
 * preallocated per slot.
 */
import { type IoEngine, IoFile, IoOp } from '../../io/engine.js';
import { closeImage, type OpenImage, openImage } from '../../io/image.js';
import { IoprioClass, ioprioValue } from '../../io/ioprio.js';
import { QuietWatch, RatePacer } from '../../io/rate-pacer.js';
import {
  createRedirectFile,
  REDIRECT_BITMAP_PAGE,
  REDIRECT_FLAG_KEEP,
  type RedirectLayout,
  type RedirectPrefill,
  redirectPath,
  removeRedirectFile,
} from '../../io/redirect-file.js';
import type { IovecSink } from '../../virtio/chain.js';

/** userData of the overlay's own operations and split requests: REDIRECT_USER_BASE + ... */
export const REDIRECT_USER_BASE = 2 ** 31;

/** readTarget: the request's units are partly redirected: {@link WriteRedirect.startSplitRead}. */
export const SPLIT = -2;
/** read/writeTarget: the request goes to the image. */
export const TO_IMAGE = -1;

/** Where the overlay is in its life (see the module comment). */
export const RedirectPhase = { PREPARING: 0, REDIRECT: 1, MERGING: 2, DETACHED: 3 } as const;

/**
 * Split-read operations beyond each request's first that may be in flight at once, over all
 * slots; with {@link PERSIST_MAX_OPS} and the merge's one, what the engine's depth must have
 * on top of the request slots ({@link REDIRECT_ENGINE_DEPTH}).
 */
export const SPLIT_EXTRA_OPS = 16;
/** A persist writes at most this many runs of pages (beyond, one span from first to last). */
const PERSIST_MAX_OPS = 4;
/** Engine depth a device needs beyond its request slots for an overlay's own operations. */
export const REDIRECT_ENGINE_DEPTH = SPLIT_EXTRA_OPS + PERSIST_MAX_OPS + 1;

/** The merge's copy buffer: its largest read and write. */
export const MERGE_CHUNK_BYTES = 1024 * 1024;
/**
 * The merge fdatasyncs the image (then clears the copied units' bits) at the end of each pass
 * over the bitmap, or after this many bytes. Why so rarely: an fdatasync flushes the device's
 * write cache, and every guest request waits behind it (measured on this machine's disk: with
 * one per 64 MiB, QD32 p99.9 75–89 ms while merging; with one per 64 runs, 8 ms but IOPS
 * down two thirds). One per pass stalls the guest once.
 */
const MERGE_EPOCH_BYTES = 1024 * 1024 * 1024;
/** The merge sleeps when it is this far ahead of its pace (ms), never for less. */
const MERGE_PACE_SLACK_MS = 10;
/** A failed merge step is tried again after this long (the overlay keeps serving meanwhile). */
const MERGE_RETRY_MS = 5000;
/** The merge's I/O class: below every guest request. */
const MERGE_IOPRIO = ioprioValue(IoprioClass.IDLE, 7);

/** Offsets of the overlay's own operations past REDIRECT_USER_BASE + slots. */
const OWN = { PERSIST_WRITE: 0, PERSIST_FLUSH: 1, MERGE_READ: 2, MERGE_WRITE: 3, MERGE_FLUSH: 4 };

/** A part of a guest request's chain that stages its iovecs (ChainReader / ChainWriter). */
export interface ChainSource {
  stageIovecs(sink: IovecSink, bytes: number): number;
}

/** What the overlay asks of its device. */
export interface RedirectHooks {
  /** A split read or a flush of request `id` finished: bytes (or 0), or -errno. */
  complete(id: number, result: number): void;
  /** The overlay staged operations outside the device's batches: submit them. */
  endBatch(): void;
  /** Nothing is redirected any more and the file is gone: the device drops the overlay. */
  detached(): void;
  warn(message: string): void;
  /** Guest requests the device started so far (free-running, wrapping): the merge's quiet test. */
  guestStarted(): number;
  /** Guest requests in flight now. */
  guestInFlight(): number;
}

/** How a device builds its overlay. */
export interface RedirectInit {
  /** The image's path: the overlay is redirectPath(image). */
  image: string;
  diskBytes: number;
  /** Bytes per bitmap bit: the device's logical block size. */
  unitBytes: number;
  engine: IoEngine;
  /** O_DIRECT for the overlay (as the image). */
  direct: boolean;
  /** Request slots of the device. */
  slots: number;
  /** Most iovecs one request carries (the device's chain capacity). */
  maxIovs: number;
  /** `keep-overlay`: the merged file is kept for the next backup (see redirect-file.ts KEEP). */
  keep?: boolean;
  /**
   * `prefill-overlay` (implies keep): the data area is written once (a random pattern)
   * before the start instant, paced at this many bytes/s (0: unpaced), so no
   * redirected write allocates (redirect-file.ts PREFILLED). Undefined: no prefill.
   */
  prefillBytesPerSecond?: number;
  /** The prefill pass's progress (bytes written) and whether to stop it (backup-cancel). */
  prefillHooks?: Pick<RedirectPrefill, 'progress' | 'cancelled'>;
  hooks: RedirectHooks;
}

/** What the merge did, for `BACKUP_MERGED`. */
export interface MergeResult {
  /** False: the device closed first; the overlay is merged at its next open. */
  merged: boolean;
  /** Bytes copied back into the image. */
  bytes: number;
  /** Units left redirected (0 once merged). */
  remainingBytes: number;
  /** Bytes of the copies made at the quiet pace, the guest being quiet (`merge-quiet-ms`). */
  quietBytes: number;
  /** Bytes the merge wrote into the image, a unit copied again counted again. */
  copiedBytes: number;
}

/**
 * The bits of unit range [u, u1) that lie in u's 32-bit word. The bitmaps' loops go
 * `for (let u = u0; u < u1; u = nextWord(u))` with this mask on word `u >>> 5`.
 */
function wordMask(u: number, u1: number): number {
  const lo = u & 31;
  const hi = Math.min(32, lo + (u1 - u));
  return hi === 32 ? -1 << lo : ((1 << hi) - 1) & (-1 << lo);
}

/** The first unit of the word after u's. */
function nextWord(u: number): number {
  return (u | 31) + 1;
}

/** Set bits of a 32-bit word. */
function popcount(v: number): number {
  let n = 0;
  for (let x = v; x !== 0; x &= x - 1) n++;
  return n;
}

/** One blk device's overlay: routing, the crash-safe bitmap, and the merge. */
export class WriteRedirect {
  phase: number = RedirectPhase.PREPARING;
  /**
   * The durable bitmap: one bit per unit whose redirected write COMPLETED (the source of the
   * persist writes). The routing bitmap (`bits`) is set when a write is submitted, so that
   * later requests go where it goes; only completed writes are persisted, so a crash never
   * makes recovery copy a hole (or half a write) the guest was never told of over the image's
   * old sectors: a sector is old or new, as on a disk.
   */
  readonly bitmapBuffer: SharedArrayBuffer;
  /** The merge's copy buffer. */
  readonly mergeBuffer: SharedArrayBuffer;
  /** Engine buffer indexes of the two (set by the device when it installs its buffers). */
  bitmapIndex = -1;
  mergeIndex = -1;
  /** Operations staged outside a device batch (completions, merge): the device submits. */
  needsSubmit = false;
  readonly path: string;
  private readonly layout: RedirectLayout;
  private readonly file: OpenImage;
  private readonly engine: IoEngine;
  private readonly hooks: RedirectHooks;
  /** Routing: the unit's current contents are (or are being written) in the overlay. */
  private readonly bits: Int32Array;
  /** Over bitmapBuffer: see there. */
  private readonly durable: Int32Array;
  private readonly slots: number;
  private readonly own: number;
  /** Units whose bit is set now. */
  private setUnits = 0;
  /** Per bitmap page: changed since it was last written. */
  private readonly dirtyPages: Uint8Array;
  /** Per request slot: 1 it reads the overlay (split parts included), 2 it writes it. */
  private readonly slotOnOverlay: Uint8Array;
  /** Per slot writing the overlay: its units [u0, u1), for the merge's check of writes in flight. */
  private readonly slotU0: Float64Array;
  private readonly slotU1: Float64Array;
  private slotsOnOverlay = 0;
  /** Per slot, a split read's recorded iovecs (buffer, offset, length) and their count. */
  private readonly iovTable: Float64Array;
  private readonly iovCount: Int32Array;
  private readonly maxIovs: number;
  private recordAt = 0;
  private recordEnd = 0;
  private readonly recorder: IovecSink = {
    addIov: (buffer: number, offset: number, length: number): boolean => {
      const at = this.recordAt;
      if (at + 3 > this.recordEnd) return false;
      this.iovTable[at] = buffer;
      this.iovTable[at + 1] = offset;
      this.iovTable[at + 2] = length;
      this.recordAt = at + 3;
      return true;
    },
  };
  /** Per split read: where it starts, its next run, its end, its ioprio; extra ops it holds. */
  private readonly splitStart: Float64Array;
  private readonly splitNext: Float64Array;
  private readonly splitEnd: Float64Array;
  private readonly splitIoprio: Int32Array;
  private readonly extraOps: Int32Array;
  /** Split-read operations beyond each request's first, in flight (at most SPLIT_EXTRA_OPS). */
  private extraInFlight = 0;
  /** Per slot, a split read or flush: operations outstanding (+1 while it is being staged). */
  private readonly pending: Int32Array;
  private readonly pendingSum: Float64Array;
  private readonly pendingErr: Int32Array;
  /** Flushes waiting for the next persist, and for the one in flight. */
  private readonly nextWaiters: Int32Array;
  private nextCount = 0;
  private readonly curWaiters: Int32Array;
  private curCount = 0;
  /** 0 idle, 1 writing pages, 2 fdatasync. */
  private persistState = 0;
  private persistOps = 0;
  private persistErr = 0;
  /** The merge waits for a persist: 0 no, 1 the next one, 2 the one in flight. */
  private mergePersist = 0;
  /** Merge state: 0 idle, 1 reading, 2 writing, 3 fdatasync of the image, 4 persist. */
  private mergeState = 0;
  private mergeCursor = 0;
  private mergeRunUnit = 0;
  private mergeRunUnits = 0;
  /** Units copied into the image this epoch (cleared at its fdatasync unless touched). */
  private readonly copied: Int32Array;
  /** Lowest and one-past-highest unit copied this epoch. */
  private epochLo = 0;
  private epochHi = 0;
  /** The merge's pace (the backup's `speed`; 0: unpaced), set when the merge begins. */
  private mergePacer = new RatePacer(0);
  /** The merge's pace while the guest is quiet (the backup's `speed`; 0: unpaced). */
  private mergeQuietPacer = new RatePacer(0);
  /** `merge-quiet-ms`: a guest quiet this long moves the merge to its quiet pace (0: never). */
  private mergeQuietMs = 0;
  private readonly guest = new QuietWatch();
  /** Bytes the merge copied at its quiet pace. */
  private mergeQuietBytes = 0;
  /** The copy in flight started at the quiet pace, the guest being quiet. */
  private mergeCopyQuiet = false;
  /** Units a guest wrote while merging since their run's copy started (see touch()). */
  private readonly touched: Int32Array;
  private epochBytes = 0;
  /** Bytes merged back into the image so far. */
  mergedBytes = 0;
  /**
   * Bytes the merge has written into the image so far, a unit written again counted again:
   * its progress copy by copy (mergedBytes moves only when an epoch is made durable).
   */
  mergeCopiedBytes = 0;
  private mergeTimer: ReturnType<typeof setTimeout> | null = null;
  /** `mergeTimer` is the wait before a failed step is tried again, not a pace wait. */
  private mergeRetrying = false;
  /** `backup-pause` after the backup: no copy starts until `backup-resume` (setMergePaused). */
  private mergePaused = false;
  private mergeWaiters: ((r: MergeResult) => void)[] = [];
  /** The device is closing: no new merge step. */
  private stopping = false;
  private onIdle: (() => void) | null = null;

  private constructor(init: RedirectInit, layout: RedirectLayout, file: OpenImage) {
    this.path = redirectPath(init.image);
    this.layout = layout;
    this.file = file;
    this.engine = init.engine;
    this.hooks = init.hooks;
    this.slots = init.slots;
    this.own = REDIRECT_USER_BASE + init.slots;
    this.bitmapBuffer = new SharedArrayBuffer(layout.bitmapBytes);
    this.durable = new Int32Array(this.bitmapBuffer);
    this.bits = new Int32Array(layout.bitmapBytes / 4);
    this.mergeBuffer = new SharedArrayBuffer(MERGE_CHUNK_BYTES);
    this.dirtyPages = new Uint8Array(layout.bitmapBytes / REDIRECT_BITMAP_PAGE);
    this.slotOnOverlay = new Uint8Array(init.slots);
    this.slotU0 = new Float64Array(init.slots);
    this.slotU1 = new Float64Array(init.slots);
    this.pending = new Int32Array(init.slots);
    this.maxIovs = init.maxIovs;
    this.iovTable = new Float64Array(init.slots * init.maxIovs * 3);
    this.iovCount = new Int32Array(init.slots);
    this.splitStart = new Float64Array(init.slots);
    this.splitNext = new Float64Array(init.slots);
    this.splitEnd = new Float64Array(init.slots);
    this.splitIoprio = new Int32Array(init.slots);
    this.extraOps = new Int32Array(init.slots);
    this.pendingSum = new Float64Array(init.slots);
    this.pendingErr = new Int32Array(init.slots);
    this.nextWaiters = new Int32Array(init.slots);
    this.curWaiters = new Int32Array(init.slots);
    this.copied = new Int32Array(this.bits.length);
    this.touched = new Int32Array(this.bits.length);
  }

  /**
   * Creates the overlay file (off this thread), opens it and attaches it to the
   * engine. Refused for an engine that cannot take a second file (nbd, null).
   */
  static async create(init: RedirectInit): Promise<WriteRedirect> {
    if (init.engine.attachFile === undefined)
      throw new RangeError(
        `the ${init.engine.name} engine cannot redirect writes: method redirect needs a local image file`,
      );
    if (init.unitBytes < 512 || (init.unitBytes & (init.unitBytes - 1)) !== 0)
      throw new RangeError(`redirect unit of ${init.unitBytes} bytes is not a power of two >= 512`);
    const path = redirectPath(init.image);
    const prefill =
      init.prefillBytesPerSecond === undefined
        ? undefined
        : { bytesPerSecond: init.prefillBytesPerSecond, ...init.prefillHooks };
    const layout = await createRedirectFile(
      path,
      init.diskBytes,
      init.unitBytes,
      init.keep,
      prefill,
    );
    const file = openImage(path, false, init.direct, init.hooks.warn);
    init.engine.attachFile(file);
    return new WriteRedirect(init, layout, file);
  }

  /** Writes go to the overlay from now on (the start instant). */
  startRedirect(): void {
    this.phase = RedirectPhase.REDIRECT;
  }

  /** Whether requests are routed through the overlay (REDIRECT or MERGING). */
  get routing(): boolean {
    return this.phase === RedirectPhase.REDIRECT || this.phase === RedirectPhase.MERGING;
  }

  /** Bytes whose current contents are in the overlay. */
  get remainingBytes(): number {
    return this.setUnits * this.layout.unitBytes;
  }

  /** Whether the overlay is merging back (the backup ended), paused or not. */
  get merging(): boolean {
    return this.phase === RedirectPhase.MERGING;
  }

  /** Whether the merge runs but is paused (backup-pause after the backup). */
  get mergeIsPaused(): boolean {
    return this.phase === RedirectPhase.MERGING && this.mergePaused;
  }

  // ---- routing ---------------------------------------------------------------------------

  /** First and one-past-last unit of [offset, offset + length). */
  private firstUnit(offset: number): number {
    return Math.floor(offset / this.layout.unitBytes);
  }

  private endUnit(offset: number, length: number): number {
    return Math.ceil((offset + length) / this.layout.unitBytes);
  }

  /** Counts units of [u0, u1) with the bit set (0: none, u1 - u0: all). */
  private countSet(u0: number, u1: number, b: Int32Array = this.bits): number {
    let n = 0;
    for (let u = u0; u < u1; u = nextWord(u)) n += popcount(b[u >>> 5] & wordMask(u, u1));
    return n;
  }

  /** Sets the routing bits of [u0, u1), counting new ones. */
  private setBits(u0: number, u1: number): void {
    const b = this.bits;
    for (let u = u0; u < u1; u = nextWord(u)) {
      const w = u >>> 5;
      const fresh = wordMask(u, u1) & ~b[w];
      if (fresh === 0) continue;
      b[w] |= fresh;
      this.setUnits += popcount(fresh);
    }
  }

  /** Sets the durable bits of [u0, u1), marking the pages that changed dirty. */
  private setDurable(u0: number, u1: number): void {
    const d = this.durable;
    for (let u = u0; u < u1; u = nextWord(u)) {
      const w = u >>> 5;
      const mask = wordMask(u, u1);
      if ((mask & ~d[w]) === 0) continue;
      d[w] |= mask;
      this.dirtyPages[(w * 4) >>> 12] = 1;
    }
  }

  /**
   * The engine completed request `id` (`result` bytes, or -errno): a redirected write that
   * succeeded becomes durable in the bitmap (persisted by the next flush). The device calls
   * this for every completion while it has an overlay, before a writethrough flush.
   */
  writeCompleted(id: number, result: number): void {
    if (this.slotOnOverlay[id] !== 2) return;
    this.slotOnOverlay[id] = 1;
    if (result >= 0) this.setDurable(this.slotU0[id], this.slotU1[id]);
  }

  /**
   * Where a write-type request of slot `id` over [offset, offset + length) goes:
   * the overlay offset to use with IoFile.ATTACHED (its units are marked
   * redirected, and touched if the merge is copying them), or TO_IMAGE.
   */
  writeTarget(id: number, offset: number, length: number): number {
    if (this.phase !== RedirectPhase.REDIRECT && this.phase !== RedirectPhase.MERGING)
      return TO_IMAGE;
    const u0 = this.firstUnit(offset);
    const u1 = this.endUnit(offset, length);
    if (this.phase === RedirectPhase.MERGING) {
      if (this.setUnits === 0 || this.countSet(u0, u1) === 0) return TO_IMAGE;
      this.touch(u0, u1);
    }
    this.setBits(u0, u1);
    this.onOverlay(id);
    this.slotOnOverlay[id] = 2;
    this.slotU0[id] = u0;
    this.slotU1[id] = u1;
    return this.layout.dataOffset + offset;
  }

  /** Where a read goes: an overlay offset, TO_IMAGE, or SPLIT (see startSplitRead). */
  readTarget(id: number, offset: number, length: number): number {
    if (this.setUnits === 0) return TO_IMAGE;
    const u0 = this.firstUnit(offset);
    const u1 = this.endUnit(offset, length);
    const n = this.countSet(u0, u1);
    if (n === 0) return TO_IMAGE;
    this.onOverlay(id);
    return n === u1 - u0 ? this.layout.dataOffset + offset : SPLIT;
  }

  private onOverlay(id: number): void {
    if (this.slotOnOverlay[id] !== 0) return;
    this.slotOnOverlay[id] = 1;
    this.slotsOnOverlay++;
  }

  /** Request `id` finished (the device calls this for every request while it has an overlay). */
  released(id: number): void {
    if (this.slotOnOverlay[id] === 0) return;
    this.slotOnOverlay[id] = 0;
    this.slotsOnOverlay--;
    if (this.slotsOnOverlay === 0) this.maybeDetach();
  }

  /**
   * A guest write into redirected units while merging: marked in the touched bitmap, so a
   * run copied before the write keeps its bits this epoch (a run's marks are reset when its
   * copy starts). One bit per unit, as the bitmap: O(words) per write.
   */
  private touch(u0: number, u1: number): void {
    this.mark(this.touched, u0, u1);
  }

  /** Clears the touched marks of [u0, u1). */
  private untouch(u0: number, u1: number): void {
    const t = this.touched;
    for (let u = u0; u < u1; u = nextWord(u)) t[u >>> 5] &= ~wordMask(u, u1);
  }

  /**
   * Starts a read of slot `id` whose units are partly redirected: one read per
   * run of units on the same side, each into its part of the chain (`part`,
   * positioned at the data's first byte). The chain's iovecs are recorded first
   * (the part is re-pointed at the next request once this returns), and the runs
   * go in waves: a wave's first read uses the slot's own share of the engine's
   * depth, further ones draw on {@link SPLIT_EXTRA_OPS} shared by all slots, so a
   * read the guest fragmented sector by sector never fills the engine. Completes
   * through hooks.complete with the bytes read, or the first error. False when its
   * iovecs do not fit the table or nothing could be staged.
   */
  startSplitRead(
    id: number,
    offset: number,
    length: number,
    part: ChainSource,
    ioprio: number,
  ): boolean {
    this.recordAt = id * this.maxIovs * 3;
    this.recordEnd = this.recordAt + this.maxIovs * 3;
    const count = part.stageIovecs(this.recorder, length);
    if (count < 0) return false;
    this.iovCount[id] = count;
    this.splitStart[id] = offset;
    this.splitNext[id] = offset;
    this.splitEnd[id] = offset + length;
    this.splitIoprio[id] = ioprio;
    this.pending[id] = 1;
    this.pendingSum[id] = 0;
    this.pendingErr[id] = 0;
    if (!this.queueWave(id)) {
      this.pending[id] = 0;
      return false;
    }
    this.subDone(id, 0);
    return true;
  }

  /** Queues the next wave of split request `id`'s runs; false when not even one could be queued. */
  private queueWave(id: number): boolean {
    const unit = this.layout.unitBytes;
    const end = this.splitEnd[id];
    let queued = 0;
    while (this.splitNext[id] < end) {
      if (queued > 0 && this.extraInFlight >= SPLIT_EXTRA_OPS) break;
      const at = this.splitNext[id];
      const u = this.firstUnit(at);
      const set = this.isSet(u);
      let next = (u + 1) * unit;
      while (next < end && this.isSet(next / unit) === set) next += unit;
      const runEnd = Math.min(next, end);
      if (!this.stageRun(id, at, runEnd - at, set)) break;
      if (queued > 0) {
        this.extraOps[id]++;
        this.extraInFlight++;
      }
      queued++;
      this.splitNext[id] = runEnd;
    }
    return queued > 0;
  }

  private isSet(u: number): boolean {
    return (this.bits[u >>> 5] & (1 << (u & 31))) !== 0;
  }

  /** Stages [at, at + bytes) of split request `id` from its recorded iovecs and queues its read. */
  private stageRun(id: number, at: number, bytes: number, overlay: boolean): boolean {
    const e = this.engine;
    const fileOffset = overlay ? this.layout.dataOffset + at : at;
    const file = overlay ? IoFile.ATTACHED : IoFile.IMAGE;
    for (let attempt = 0; attempt < 2; attempt++) {
      const first = e.stagedIovs;
      const count = this.stageRecorded(id, at - this.splitStart[id], bytes);
      if (
        count > 0 &&
        e.queueReadWrite(
          IoOp.READ,
          fileOffset,
          first,
          count,
          REDIRECT_USER_BASE + id,
          this.splitIoprio[id],
          file,
        )
      ) {
        this.pending[id]++;
        return true;
      }
      e.submit();
    }
    return false;
  }

  /** Adds the recorded iovecs of slot `id` covering bytes [rel, rel + bytes) of its data; -1 when full. */
  private stageRecorded(id: number, rel: number, bytes: number): number {
    const e = this.engine;
    const t = this.iovTable;
    const base = id * this.maxIovs * 3;
    let pos = 0;
    let left = bytes;
    let count = 0;
    for (let i = 0; i < this.iovCount[id] && left > 0; i++) {
      const at = base + 3 * i;
      const len = t[at + 2];
      if (pos + len <= rel) {
        pos += len;
        continue;
      }
      const skip = Math.max(0, rel - pos);
      const take = Math.min(len - skip, left);
      if (!e.addIov(t[at], t[at + 1] + skip, take)) return -1;
      count++;
      left -= take;
      pos += len;
    }
    return left === 0 ? count : -1;
  }

  /**
   * A guest flush (or a writethrough write's flush) of slot `id` while the
   * overlay routes: the image fdatasynced, the bitmap persisted and the
   * overlay fdatasynced; completes through hooks.complete with 0 or -errno.
   */
  flush(id: number): void {
    // The image's fdatasync, the persist, and the guard released below.
    this.pending[id] = 3;
    this.splitEnd[id] = 0;
    this.splitNext[id] = 0;
    this.pendingSum[id] = 0;
    this.pendingErr[id] = 0;
    this.engine.queueSlowOp(IoOp.FLUSH, 0, 0, REDIRECT_USER_BASE + id, IoFile.IMAGE);
    this.nextWaiters[this.nextCount++] = id;
    if (this.persistState === 0) this.startPersist();
    this.subDone(id, 0);
  }

  /** One operation of split request / flush `id` finished. */
  private subDone(id: number, result: number): void {
    if (result < 0) {
      if (this.pendingErr[id] === 0) this.pendingErr[id] = result;
    } else this.pendingSum[id] += result;
    if (this.extraOps[id] > 0 && this.pending[id] > 1) {
      // Extra ops are fungible: one finished, one unit of the shared budget returns.
      this.extraOps[id]--;
      this.extraInFlight--;
    }
    if (--this.pending[id] > 0) return;
    // A split read with runs left: the next wave (the slot's own share is free again).
    if (this.splitNext[id] < this.splitEnd[id] && this.pendingErr[id] === 0) {
      this.pending[id] = 1;
      if (!this.queueWave(id)) this.pendingErr[id] = -11;
      this.needsSubmit = true;
      if (--this.pending[id] > 0) return;
    }
    const err = this.pendingErr[id];
    this.hooks.complete(id, err < 0 ? err : this.pendingSum[id]);
  }

  /** A completion with userData >= REDIRECT_USER_BASE. */
  done(userData: number, result: number): void {
    const k = userData - REDIRECT_USER_BASE;
    if (k < this.slots) {
      this.subDone(k, result);
      return;
    }
    switch (userData - this.own) {
      case OWN.PERSIST_WRITE:
        this.persistWriteDone(result);
        break;
      case OWN.PERSIST_FLUSH:
        this.finishPersist(result < 0 ? result : this.persistErr);
        break;
      case OWN.MERGE_READ:
        this.mergeReadDone(result);
        break;
      case OWN.MERGE_WRITE:
        this.mergeWriteDone(result);
        break;
      case OWN.MERGE_FLUSH:
        this.mergeFlushDone(result);
        break;
      default:
        throw new RangeError(`blk redirect: completion ${userData} was never started`);
    }
    this.checkIdle();
  }

  // ---- persisting the bitmap ------------------------------------------------------------

  /**
   * Writes every dirty bitmap page (runs of adjacent pages, one write each), then
   * fdatasyncs the overlay; the flushes waiting then complete. One at a time.
   */
  private startPersist(): void {
    for (let i = 0; i < this.nextCount; i++) this.curWaiters[i] = this.nextWaiters[i];
    this.curCount = this.nextCount;
    this.nextCount = 0;
    if (this.mergePersist === 1) this.mergePersist = 2;
    this.persistState = 1;
    this.persistErr = 0;
    this.persistOps = 1;
    const pages = this.dirtyPages;
    // Runs of dirty pages; more than PERSIST_MAX_OPS become one span from the first dirty page
    // to the last (clean pages in it are rewritten unchanged), so a persist never takes more
    // of the engine's depth than REDIRECT_ENGINE_DEPTH reserves.
    let runs = 0;
    let first = -1;
    let last = -1;
    for (let p = 0; p < pages.length; p++) {
      if (pages[p] === 0) continue;
      if (p !== last + 1 || first < 0) runs++;
      if (first < 0) first = p;
      last = p;
    }
    let p = first < 0 ? pages.length : first;
    while (p <= last) {
      let n = 1;
      if (runs > PERSIST_MAX_OPS) n = last - first + 1;
      else while (p + n <= last && pages[p + n] === 1) n++;
      if (!this.queuePersistWrite(p, n)) {
        // Pages not written stay dirty; this persist fails its waiters (EAGAIN) rather than lie.
        this.persistErr = -11;
        break;
      }
      for (let i = 0; i < n; i++) pages[p + i] = 0;
      this.persistOps++;
      p += n;
      while (p <= last && pages[p] === 0) p++;
    }
    this.needsSubmit = true;
    this.persistWriteDone(0);
  }

  /** Queues one write of bitmap pages [page, page + n). */
  private queuePersistWrite(page: number, n: number): boolean {
    const e = this.engine;
    const off = page * REDIRECT_BITMAP_PAGE;
    for (let attempt = 0; attempt < 2; attempt++) {
      if (
        e.addIov(this.bitmapIndex, off, n * REDIRECT_BITMAP_PAGE) &&
        e.queueReadWrite(
          IoOp.WRITE,
          this.layout.bitmapOffset + off,
          e.stagedIovs - 1,
          1,
          this.own + OWN.PERSIST_WRITE,
          0,
          IoFile.ATTACHED,
        )
      )
        return true;
      e.submit();
    }
    return false;
  }

  private persistWriteDone(result: number): void {
    if (result < 0 && this.persistErr === 0) this.persistErr = result;
    if (--this.persistOps > 0) return;
    if (this.persistErr !== 0) {
      // What was written is unknown: every page is written again next time.
      this.dirtyPages.fill(1);
      this.finishPersist(this.persistErr);
      return;
    }
    this.persistState = 2;
    this.engine.queueSlowOp(IoOp.FLUSH, 0, 0, this.own + OWN.PERSIST_FLUSH, IoFile.ATTACHED);
    // Staged on io_uring: submitted at the end of this completion batch (see flushEpoch).
    this.needsSubmit = true;
  }

  private finishPersist(result: number): void {
    if (result < 0) this.dirtyPages.fill(1);
    this.persistState = 0;
    const n = this.curCount;
    this.curCount = 0;
    for (let i = 0; i < n; i++) this.subDone(this.curWaiters[i], Math.min(result, 0));
    if (this.mergePersist === 2) {
      this.mergePersist = 0;
      this.mergePersisted(result);
    }
    if (this.nextCount > 0 || this.mergePersist === 1) this.startPersist();
  }

  // ---- the merge --------------------------------------------------------------------------

  /**
   * The backup is over: merge the overlay back into the image (see the module comment), at
   * most `speed` bytes a second while the guest does I/O (0: as fast as one copy at a time
   * goes), and at `quietSpeed` (0: unpaced) once the guest has started no request for
   * `quietMs` (0: never), until its next request. Why two paces: the busy pace is what the
   * guest's tail pays while it writes (bench/results/backup-redirect.md: QD1 p99.9 while
   * merging 1.2x idle at 4 MiB/s, 1.7x at 8, 6.9x at 32), and a quiet guest pays nothing, so
   * its pauses shorten the merge, during which no other backup, snapshot or resize of the
   * device starts. Why not unpaced when quiet: a burst of hundreds of MiB leaves the disk
   * writing back after the guest has come back (bench/results/backup-redirect.md, session 4).
   */
  beginMerge(speed = 0, quietMs = 0, quietSpeed = 0): void {
    if (this.phase !== RedirectPhase.REDIRECT && this.phase !== RedirectPhase.PREPARING) return;
    this.phase = RedirectPhase.MERGING;
    this.mergeCursor = 0;
    // Bounded credit: the pauses of a merge (an epoch's fdatasync, a retry after a failed step)
    // must not become an unpaced burst after them.
    this.mergePacer = new RatePacer(speed);
    this.mergeQuietPacer = new RatePacer(quietSpeed);
    this.mergeQuietMs = quietMs;
    this.mergeQuietBytes = 0;
    this.mergeCopyQuiet = false;
    this.epochLo = this.layout.units;
    this.epochHi = 0;
    this.mergeStep();
  }

  /**
   * `backup-pause` / `backup-resume` once the backup has ended: the merge stops, or goes on.
   * Paused, the copy in flight (at most {@link MERGE_CHUNK_BYTES} read and written, then its
   * epoch's fdatasync and bitmap persist if it closes one) completes and no other starts, at
   * either pace: the guest's writes still go where the routing says and its reads still see
   * them, so a paused merge costs the guest nothing but the overlay staying. Why: the same
   * latency-critical stretch of the guest's work that pauses a disk pass; the merge's copies
   * are the backup's cost too. Resumed, both paces start over with no credit (no burst for the
   * time paused). Returns false when no merge runs (the caller submits what this staged).
   */
  setMergePaused(paused: boolean): boolean {
    if (this.phase !== RedirectPhase.MERGING) return false;
    if (this.mergePaused === paused) return true;
    this.mergePaused = paused;
    if (!paused) {
      this.mergePacer.restart();
      this.mergeQuietPacer.restart();
      this.wakeMerge();
    }
    return true;
  }

  /**
   * `backup-set-speed` once the backup has ended: the merge goes at `speed` while the guest
   * does I/O and at `quietSpeed` once it is quiet (bytes/s; 0: unpaced), from its next copy,
   * with no credit for the time it went slower; a merge waiting on its old pace looks again
   * now. Returns false when no merge runs.
   */
  setMergePace(speed: number, quietSpeed: number): boolean {
    if (this.phase !== RedirectPhase.MERGING) return false;
    this.mergePacer = new RatePacer(speed);
    this.mergeQuietPacer = new RatePacer(quietSpeed);
    this.wakeMerge();
    return true;
  }

  /**
   * A merge that is not paused and not copying goes on now, at its pace: a pace wait is
   * ended early (it is taken again if still due); a retry wait after a failed step is kept.
   */
  private wakeMerge(): void {
    if (this.mergePaused || this.mergeState !== 0 || this.mergeRetrying) return;
    if (this.mergeTimer !== null) clearTimeout(this.mergeTimer);
    this.mergeTimer = null;
    this.pacedMergeStep();
  }

  /** Resolves when the overlay is merged (or the device closed first). */
  merged(): Promise<MergeResult> {
    if (this.phase === RedirectPhase.DETACHED)
      return Promise.resolve({
        merged: true,
        bytes: this.mergedBytes,
        remainingBytes: 0,
        quietBytes: this.mergeQuietBytes,
        copiedBytes: this.mergeCopiedBytes,
      });
    return new Promise((resolve) => this.mergeWaiters.push(resolve));
  }

  /** Copies the next run of redirected units, or ends the epoch / the merge. */
  private mergeStep(): void {
    if (
      this.phase !== RedirectPhase.MERGING ||
      this.mergeState !== 0 ||
      this.mergePaused ||
      this.stopping
    )
      return;
    const run = this.nextRun();
    if (run < 0) {
      if (this.epochBytes > 0) this.flushEpoch();
      else if (this.setUnits > 0) {
        this.mergeCursor = 0;
        if (this.nextRun() >= 0) this.mergeStep();
      } else this.maybeDetach();
      return;
    }
    const unit = this.layout.unitBytes;
    const offset = this.mergeRunUnit * unit;
    const len = Math.min(this.mergeRunUnits * unit, this.layout.diskBytes - offset);
    // Writes from here on mark the run touched; one still in flight (routed before the run was
    // picked) may land after the read: then the run is touched already and keeps its bits.
    const end = run + this.mergeRunUnits;
    this.untouch(run, end);
    if (this.writeInFlight(run, end)) this.touch(run, end);
    this.mergeState = 1;
    this.queueMergeIo(
      IoOp.READ,
      this.layout.dataOffset + offset,
      len,
      OWN.MERGE_READ,
      IoFile.ATTACHED,
    );
  }

  /** Whether a write to the overlay over units overlapping [u0, u1) is in flight. */
  private writeInFlight(u0: number, u1: number): boolean {
    if (this.slotsOnOverlay === 0) return false;
    for (let id = 0; id < this.slots; id++) {
      if (this.slotOnOverlay[id] === 2 && this.slotU0[id] < u1 && u0 < this.slotU1[id]) return true;
    }
    return false;
  }

  /** Finds the next run of set bits from the cursor (at most a merge buffer); -1: none before the end. */
  private nextRun(): number {
    const b = this.bits;
    const units = this.layout.units;
    let u = this.mergeCursor;
    while (u < units) {
      const w = u >>> 5;
      const word = b[w] & (-1 << (u & 31));
      if (word === 0) {
        u = (w + 1) * 32;
        continue;
      }
      u = w * 32 + (31 - Math.clz32(word & -word));
      break;
    }
    if (u >= units) {
      this.mergeCursor = units;
      return -1;
    }
    const max = MERGE_CHUNK_BYTES / this.layout.unitBytes;
    let n = 1;
    while (u + n < units && n < max && (b[(u + n) >>> 5] & (1 << ((u + n) & 31))) !== 0) n++;
    this.mergeRunUnit = u;
    this.mergeRunUnits = n;
    return u;
  }

  private queueMergeIo(
    op: 0 | 1,
    fileOffset: number,
    len: number,
    which: number,
    file: 0 | 1,
  ): void {
    const e = this.engine;
    let ok = e.addIov(this.mergeIndex, 0, len);
    ok =
      ok &&
      e.queueReadWrite(op, fileOffset, e.stagedIovs - 1, 1, this.own + which, MERGE_IOPRIO, file);
    if (!ok) {
      e.submit();
      ok = e.addIov(this.mergeIndex, 0, len);
      ok =
        ok &&
        e.queueReadWrite(op, fileOffset, e.stagedIovs - 1, 1, this.own + which, MERGE_IOPRIO, file);
    }
    if (!ok) {
      this.mergeFailed('the engine refused the merge I/O');
      return;
    }
    this.needsSubmit = true;
  }

  private runBytes(): number {
    const unit = this.layout.unitBytes;
    const offset = this.mergeRunUnit * unit;
    return Math.min(this.mergeRunUnits * unit, this.layout.diskBytes - offset);
  }

  private mergeReadDone(result: number): void {
    const len = this.runBytes();
    if (result !== len) {
      this.mergeFailed(`reading the overlay gave ${result} of ${len} bytes`);
      return;
    }
    this.mergeState = 2;
    const offset = this.mergeRunUnit * this.layout.unitBytes;
    this.queueMergeIo(IoOp.WRITE, offset, len, OWN.MERGE_WRITE, IoFile.IMAGE);
  }

  private mergeWriteDone(result: number): void {
    const len = this.runBytes();
    if (result !== len) {
      this.mergeFailed(`writing the image gave ${result} of ${len} bytes`);
      return;
    }
    // Writes during the copy are in the touched bitmap: those units stay redirected.
    const u0 = this.mergeRunUnit;
    const u1 = u0 + this.mergeRunUnits;
    this.mark(this.copied, u0, u1);
    if (u0 < this.epochLo) this.epochLo = u0;
    if (u1 > this.epochHi) this.epochHi = u1;
    this.epochBytes += len;
    this.mergeCopiedBytes += len;
    this.mergeCursor = u1;
    this.mergeState = 0;
    if (this.mergeCopyQuiet) {
      this.mergeQuietBytes += len;
      this.mergeQuietPacer.add(len);
    } else this.mergePacer.add(len);
    if (this.epochBytes >= MERGE_EPOCH_BYTES) {
      this.flushEpoch();
      return;
    }
    this.pacedMergeStep();
  }

  /**
   * The next copy now, or after a wait (one timer, not one per run): ahead of its pace the
   * merge waits, the busy pace or, once the guest has been quiet for `merge-quiet-ms`, the
   * quiet one. While waiting at the busy pace it looks again at least every `merge-quiet-ms`,
   * so a guest that goes quiet does not leave the merge asleep for the rest of a long pace
   * (1 MiB at 4 MiB/s: 250 ms).
   */
  private pacedMergeStep(): void {
    if (this.mergePaused) return;
    const wait = this.mergeWaitMs();
    if (wait === 0) {
      this.mergeStep();
      return;
    }
    this.mergeTimer = setTimeout(() => {
      this.mergeTimer = null;
      this.pacedMergeStep();
      this.hooks.endBatch();
    }, wait);
  }

  /** How long the merge waits before its next copy (ms; 0: go now). */
  private mergeWaitMs(): number {
    const q = this.mergeQuietMs;
    const quiet =
      q > 0 ? this.guest.quietFor(this.hooks.guestStarted(), this.hooks.guestInFlight()) : 0;
    const wasQuiet = this.mergeCopyQuiet;
    this.mergeCopyQuiet = q > 0 && quiet >= q;
    if (this.mergeCopyQuiet) {
      // Each pace starts over, with no credit, when the merge moves to it.
      if (!wasQuiet) this.mergeQuietPacer.restart();
      this.mergePacer.restart();
    }
    const ahead = (this.mergeCopyQuiet ? this.mergeQuietPacer : this.mergePacer).aheadMs();
    if (ahead < MERGE_PACE_SLACK_MS) return 0;
    // Busy: looked at again within merge-quiet-ms, in case the guest goes quiet meanwhile.
    return this.mergeCopyQuiet || !(q > 0) ? ahead : Math.min(ahead, q - quiet);
  }

  /** Sets the bits of [u0, u1) in `b` (a mark bitmap: nothing counted, no page dirtied). */
  private mark(b: Int32Array, u0: number, u1: number): void {
    for (let u = u0; u < u1; u = nextWord(u)) b[u >>> 5] |= wordMask(u, u1);
  }

  /** The epoch's copies are made durable in the image before any of their bits is cleared. */
  private flushEpoch(): void {
    this.mergeState = 3;
    this.engine.queueSlowOp(IoOp.FLUSH, 0, 0, this.own + OWN.MERGE_FLUSH, IoFile.IMAGE);
    // io_uring stages the fdatasync like any operation: without a submit it would wait for
    // the guest's next batch, forever on an idle guest (linux-aio hands it to a thread).
    this.needsSubmit = true;
  }

  private mergeFlushDone(result: number): void {
    if (result < 0) {
      this.mergeFailed(`fdatasync of the image failed (errno ${-result})`);
      return;
    }
    // Copied, durable in the image, and not written since their copy started: no longer
    // redirected. Word by word over the epoch's span (once per pass).
    const b = this.bits;
    const d = this.durable;
    const c = this.copied;
    const t = this.touched;
    let cleared = 0;
    const w1 = Math.ceil(this.epochHi / 32);
    for (let w = this.epochLo >>> 5; w < w1; w++) {
      const m = b[w] & c[w] & ~t[w];
      c[w] = 0;
      if (m === 0) continue;
      b[w] &= ~m;
      d[w] &= ~m;
      cleared += popcount(m);
      this.dirtyPages[(w * 4) >>> 12] = 1;
    }
    this.setUnits -= cleared;
    this.mergedBytes += cleared * this.layout.unitBytes;
    this.epochLo = this.layout.units;
    this.epochHi = 0;
    this.epochBytes = 0;
    this.mergeState = 4;
    this.mergePersist = 1;
    if (this.persistState === 0) this.startPersist();
  }

  private mergePersisted(result: number): void {
    if (result < 0) {
      this.mergeFailed(`persisting the overlay's bitmap failed (errno ${-result})`);
      return;
    }
    this.mergeState = 0;
    this.mergeCopyQuiet = false;
    this.mergeStep();
  }

  /** A merge step failed: the overlay keeps serving, the merge tries again later. */
  private mergeFailed(why: string): void {
    this.hooks.warn(
      `redirect overlay ${this.path}: merge paused: ${why}; retrying in ${MERGE_RETRY_MS} ms`,
    );
    this.mergeState = 0;
    this.mergeCopyQuiet = false;
    // Copied marks of a failed epoch are dropped: those units are copied again.
    this.copied.fill(0);
    this.epochLo = this.layout.units;
    this.epochHi = 0;
    this.epochBytes = 0;
    this.mergeRetrying = true;
    this.mergeTimer = setTimeout(() => {
      this.mergeTimer = null;
      this.mergeRetrying = false;
      this.mergeCursor = 0;
      this.mergeStep();
      this.hooks.endBatch();
    }, MERGE_RETRY_MS);
    this.mergeTimer.unref?.();
  }

  /** Nothing redirected and nothing on the overlay in flight: close and remove the file. */
  private maybeDetach(): void {
    if (
      this.phase !== RedirectPhase.MERGING ||
      this.setUnits > 0 ||
      this.mergeState !== 0 ||
      this.persistState !== 0 ||
      this.slotsOnOverlay > 0 ||
      this.stopping
    )
      return;
    this.phase = RedirectPhase.DETACHED;
    this.engine.attachFile?.(null);
    closeImage(this.file);
    this.hooks.detached();
    const path = this.path;
    // Kept: its bitmap on disk is clear already (the last epoch's clears were persisted).
    if ((this.layout.flags & REDIRECT_FLAG_KEEP) !== 0) {
      this.resolveMerged(true);
      return;
    }
    removeRedirectFile(path).then(
      () => this.resolveMerged(true),
      (err: Error) => {
        this.hooks.warn(`redirect overlay ${path}: merged, but removing it failed: ${err.message}`);
        this.resolveMerged(true);
      },
    );
  }

  private resolveMerged(merged: boolean): void {
    const r: MergeResult = {
      merged,
      bytes: this.mergedBytes,
      remainingBytes: this.remainingBytes,
      quietBytes: this.mergeQuietBytes,
      copiedBytes: this.mergeCopiedBytes,
    };
    const w = this.mergeWaiters;
    this.mergeWaiters = [];
    for (const resolve of w) resolve(r);
  }

  /**
   * The device closes (nothing of the guest's in flight): the merge stops after
   * its current step, the bitmap is persisted, the file closed and LEFT for the
   * next open to merge (recoverRedirect). A merged overlay is gone already.
   */
  async close(): Promise<void> {
    if (this.phase === RedirectPhase.DETACHED) return;
    if (this.mergeTimer !== null) clearTimeout(this.mergeTimer);
    this.mergeTimer = null;
    this.stopping = true;
    await this.idle();
    if (this.dirtyPages.includes(1)) {
      this.startPersist();
      this.needsSubmit = false;
      this.engine.submit();
      await this.idle();
    }
    this.engine.attachFile?.(null);
    closeImage(this.file);
    this.phase = RedirectPhase.DETACHED;
    this.resolveMerged(false);
  }

  /** Resolves once no merge step and no persist is in flight. */
  private idle(): Promise<void> {
    if (this.mergeState === 0 && this.persistState === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.onIdle = resolve;
    });
  }

  /** After each of the overlay's own completions: wakes close() once it is idle. */
  private checkIdle(): void {
    const wake = this.onIdle;
    if (wake === null || this.mergeState !== 0 || this.persistState !== 0) return;
    this.onIdle = null;
    wake();
  }
}
