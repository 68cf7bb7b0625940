/**
 * The virtio-blk device model (virtio 1.x §5.2). Transport-agnostic: it is
 * handed virtqueues, guest memory and an I/O engine, and signals the driver
 * through a callback, so a VMM can drive it without vhost-user.
 *
 * Each request occupies a preallocated slot from pop to completion; the slot
 * index travels through the engine as userData. Chains are popped by the
 * shared drain loop and read through one ChainReader / ChainWriter pair
 * re-pointed at each chain. Nothing is allocated per request or per kick.
 */

import { VhostRtError } from '../../errors.js';
import type { ChangedBlocks } from '../../io/backup-cbt.js';
import { BackupShare, type BackupShareInit } from '../../io/backup-share.js';
import type { DiskGuard } from '../../io/disk-guard.js';
import { type IoEngine, IoFile, type IoFileIndex, IoOp, type IoOpCode } from '../../io/engine.js';
import { IoprioClass, IoprioPolicy, ioprioClass } from '../../io/ioprio.js';
import { IoThrottle, type ThrottleLimits } from '../../io/throttle.js';
import type { StatCounters } from '../../locking/index.js';
import { BACKUP } from '../../locking/layout.js';
import {
  type ByteLocation,
  type ChainHandler,
  ChainReader,
  ChainWriter,
  DescriptorChain,
  DrainResult,
  DrainStop,
  drainQueue,
  type GuestMemory,
  type SplitVirtqueue,
  takeVrings,
  type Vring,
} from '../../virtio/index.js';
import { readConfigBytes, type VirtioDeviceModel } from '../device.js';
import { BackupTracker, countBits, publishNeeded } from './backup.js';
import {
  BLK_ID_BYTES,
  BlkCacheMode,
  BlkConfigOffset,
  type BlkGeometry,
  BlkRequestType,
  BlkStatus,
  blkDeviceFeatures,
  capacityOf,
  DISCARD_SEGMENT_SIZE,
  encodeBlkConfig,
  MAX_DISCARD_SECTORS,
  REQUEST_HEADER_SIZE,
  SECTOR_SIZE,
  WRITE_ZEROES_FLAG_UNMAP,
  writeCapacity,
} from './config.js';
import {
  type MergeResult,
  REDIRECT_USER_BASE,
  SPLIT,
  TO_IMAGE,
  WriteRedirect,
} from './redirect.js';
import { type BlkAccounting, BlkStat } from './stats.js';

/** Options of a {@link BlkDevice}. */
export interface BlkDeviceOptions {
  engine: IoEngine;
  geometry: BlkGeometry;
  /** Answer to GET_ID, at most 20 bytes. */
  serial: string;
  /** Slots per queue: the queue size. */
  queueSize: number;
  stats: StatCounters;
  /** Reports guest protocol violations (rate limiting is the caller's business). */
  warn: (message: string) => void;
  /**
   * Takes an exception thrown while the device handles engine completions
   * (DeviceEnv.fault): its host then stops serving the device. Without it the
   * exception propagates out of the engine's callback.
   */
  fault?: (error: unknown) => void;
  /** Per-queue counters and latency histograms in shared memory (issues 10, 14); none when absent. */
  accounting?: BlkAccounting;
  /** The config space changed (a resize): the transport tells the driver. */
  configChanged?: () => void;
  /** How the guest's header ioprio becomes the host one (default: clamp under best-effort 0). */
  ioprio?: IoprioPolicy;
  /** Token-bucket limits (QoS); absent or all 0: none. */
  throttle?: ThrottleLimits;
  /** Changed-block tracking (issue 12): marked by every write, discard and write-zeroes; absent: none. */
  cbt?: ChangedBlocks;
  /**
   * The RT guard of the image's backing disk (issue 14, src/io/disk-guard.ts): the device
   * publishes its RT-class requests there and, under its policy, caps its lower-class ones
   * while a neighbour's RT requests are active. Absent: neither.
   */
  guard?: DiskGuard;
}

/** What `backup-start` answers once the start instant has passed (issue 12). */
export interface BackupStarted {
  /** The sync mode done: 'full' also when 'incremental' was asked but the bitmap is invalid. */
  sync: 'full' | 'incremental';
  /** Why an incremental became a full backup ('' when it did not). */
  reason: string;
  /** Chunks the backup copies. */
  chunks: number;
  /** The changed-block bitmap's generation (completed backups). */
  generation: number;
  /** How long new writes were held at the start instant, waiting for those in flight (µs). */
  heldUs: number;
}

/**
 * A redirect backup as the device starts it: the overlay goes next to `image`
 * (RedirectInit); `keep` is keep-overlay, `prefillBytesPerSecond` the pace of
 * a prefill-overlay pass (undefined: no prefill).
 */
export interface RedirectBackupRequest {
  image: string;
  keep?: boolean;
  prefillBytesPerSecond?: number;
}

/**
 * Run-time commands of a blk device. `resize`: the capacity becomes `bytes`
 * (whole sectors); the driver is told. Resolves once no request in flight
 * reaches past the new end (each of those completes with IOERR), so the
 * caller may then shrink the image file.
 */
export type BlkCommand =
  | { type: 'resize'; bytes: number }
  /** block-set-io-throttle: new token-bucket limits (issue 14); answered with the limits in force. */
  | { type: 'set-io-throttle'; limits: ThrottleLimits }
  /**
   * Live backup (issue 12): holds new writes, waits for those in flight (the
   * start instant), then saves old chunks into the share's journal before
   * guest writes overwrite them. Answered with a {@link BackupStarted}.
   */
  | {
      type: 'backup-start';
      share: BackupShareInit;
      sync: 'full' | 'incremental';
      /** Journal read-around (see BackupTrackerOptions.readAround); default false. */
      readAround?: boolean;
      /**
       * The caller clones the image (FICLONE) at the instant and the copier
       * reads the clone: NEEDED is published, nothing is journaled, and the
       * writes stay held until `release-writes`, which leaves the backup
       * running until `backup-end`.
       */
      clone?: boolean;
      /**
       * Redirect-on-write (redirect.ts): from the instant on, writes go to an overlay
       * next to this image path and the copier reads the untouched image; merged back
       * after `backup-end`.
       */
      redirect?: RedirectBackupRequest;
    }
  /** Resolves once a redirect backup's overlay is merged back (or the device closed first). */
  | { type: 'redirect-merged' }
  /**
   * The running merge of a redirect backup's overlay: paused or resumed (`paused`), and/or
   * paced anew (`mergeSpeed` while the guest does I/O, `mergeQuietSpeed` once it is quiet);
   * answers {@link MergeControlResult}.
   */
  | {
      type: 'redirect-merge-set';
      paused?: boolean;
      mergeSpeed?: number;
      mergeQuietSpeed?: number;
    }
  /**
   * The backup is over: `ok` clears the changed blocks it copied, else they stay changed. A
   * redirect backup's overlay starts merging back, at most `mergeSpeed` bytes/s (0: unpaced)
   * while the guest does I/O, at most `mergeQuietSpeed` once it has been quiet for
   * `mergeQuietMs` (0: never).
   */
  | {
      type: 'backup-end';
      ok: boolean;
      mergeSpeed?: number;
      mergeQuietMs?: number;
      mergeQuietSpeed?: number;
    }
  /** A snapshot's instant: hold new writes, resolve once none is in flight; `release-writes` lets them go. */
  | { type: 'hold-writes' }
  | { type: 'release-writes' };

/** The answer to `redirect-merge-set`: whether a merge ran to change, and how far it is. */
export interface MergeControlResult {
  /** False: no merge runs (none started, or it ended); nothing was changed. */
  merging: boolean;
  /** Bytes merged back into the image so far. */
  mergedBytes: number;
  /** Bytes the merge has written into the image so far, copy by copy (WriteRedirect.mergeCopiedBytes). */
  copiedBytes: number;
  /** Bytes whose contents are still in the overlay. */
  remainingBytes: number;
}

/** The merge's paces a `backup-end` command carries (absent: 0). */
type MergePaces = Omit<Extract<BlkCommand, { type: 'backup-end' }>, 'type' | 'ok'>;

/** slotType of a write that completed and now waits for its writethrough flush. */
const WRITE_FLUSHING = 0xf0;

const U32 = 0x1_0000_0000;
/** slotGuard values: not counted, being started, counted as RT, counted as lower-class. */
const GUARD_NONE = 0;
const GUARD_PENDING = 1;
const GUARD_RT = 2;
const GUARD_LOW = 3;

/** Returned by the start functions when the engine owns the request until it completes. */
const STARTED = -1;
/** Returned for a chain that cannot even carry a status: used length 0, no status byte. */
const UNUSABLE = -2;

interface QueueState {
  vring: Vring | null;
  inFlight: number;
  /**
   * The last drain stopped because every slot was busy: chains may be left in
   * the ring, and kicks are off, so drain again when a slot frees (even if the
   * ring turns out empty: that run turns kicks back on).
   */
  starved: boolean;
  onIdle: (() => void) | null;
  /** The token buckets stopped this queue's drain: chains wait in the avail ring for the timer. */
  held: boolean;
  /** When the RT guard stopped this queue's drain (performance.now()); 0: it did not. */
  guardHeldSince: number;
  /** Takes each popped chain for this queue in {@link drainQueue}; made once. */
  handler: ChainHandler;
}

/**
 * The virtio-blk device model: runs each queue's request chains on an IoEngine,
 * at most `queueSize` in flight per queue (one preallocated slot per request).
 */
export class BlkDevice implements VirtioDeviceModel<BlkCommand> {
  readonly kind = 'blk';
  readonly features: bigint;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly configSize: number;
  private readonly config: Uint8Array;
  private readonly engine: IoEngine;
  private readonly geometry: BlkGeometry;
  private capacityBytes: number;
  /** Writethrough (config `writeback` 0): every write is flushed before it completes. */
  private writethrough = false;
  /** A writethrough flush was queued in a completion batch: submit at the batch's end. */
  private flushQueued = false;
  private readonly configChanged: () => void;
  /** Requests in flight past the capacity a shrink set, and who waits for them to end. */
  private tailInFlight = 0;
  private tailDone: (() => void) | null = null;
  private readonly serial: Uint8Array;
  private readonly slotsPerQueue: number;
  private readonly stats: StatCounters;
  private readonly acct: BlkAccounting | null;
  private readonly warn: (message: string) => void;
  private readonly queues: QueueState[];
  private readonly chain: DescriptorChain;
  /** The popped chain's header and payload (device-readable part), re-pointed per request. */
  private readonly reader = new ChainReader();
  /** The popped chain's data and status byte (device-writable part), re-pointed per request. */
  private readonly writer = new ChainWriter();
  private readonly header = new Uint8Array(REQUEST_HEADER_SIZE);
  private readonly headerView = new DataView(this.header.buffer);
  private readonly statusAt: ByteLocation = { region: -1, offset: 0 };
  private readonly drained = new DrainResult();
  /** A drain is popping and starting requests: completion batches must not start another. */
  private draining = false;
  /** A completion batch ended during a drain: re-drain starved queues when it is over. */
  private redrainDeferred = false;
  // Slot tables, indexed by queue * slotsPerQueue + slot.
  private readonly slotHead: Int32Array;
  private readonly slotDataLen: Float64Array;
  /** End (byte offset) of the image range a request in flight touches; 0: none or done. */
  private readonly slotEnd: Float64Array;
  private readonly slotType: Uint8Array;
  /** Where each request's status byte lives: region index (-1: nowhere) and buffer offset. */
  private readonly statusRegion: Int32Array;
  private readonly statusOffset: Float64Array;
  private readonly freeSlots: Int32Array[];
  private readonly freeCount: Int32Array;
  private memory: GuestMemory | null = null;
  private readonly ioprio: IoprioPolicy;
  /** Host ioprio of the request being started (set by start, read by startReadWrite). */
  private requestIoprio = 0;
  /** Guest ioprio classes seen since the last drain ended (NONE, RT, BE, IDLE), published once per drain. */
  private readonly classSeen = new Float64Array(4);
  /** Token buckets; null: no limit, and no cost per request. */
  private throttle: IoThrottle | null = null;
  /** Timer that re-drains held queues; null: none armed. */
  private throttleTimer: ReturnType<typeof setTimeout> | null = null;
  private heldSince = 0;
  private readonly unthrottle = () => this.releaseHeld();
  private bytes: readonly Uint8Array[] = [];
  private retired: GuestMemory[] = [];
  private inFlight = 0;
  /** A redirect backup's overlay, while the backup runs and until it is merged back; null: none. */
  private overlay: WriteRedirect | null = null;
  /** The overlay file is being created (a backup-start is under way). */
  private overlayStarting = false;
  /** The live backup (or write hold) in progress; null: none, and no cost per request. */
  private backup: BackupTracker | null = null;
  private readonly cbt: ChangedBlocks | null;
  /** The changed blocks a running backup took over (given back if it fails). */
  private cbtTaken: Int32Array | null = null;
  /**
   * A backup from a reflink clone is running (backup-start with `clone`):
   * no tracker after its instant, but its changed blocks settle at backup-end.
   */
  private cloneBackup = false;
  /**
   * The running backup's share (either method), where the guest's activity is published
   * once per batch for the copier's `yield-ms`; null: no backup.
   */
  private activityShare: BackupShare | null = null;
  /** Guest requests started, free-running (Int32, wrapping): GUEST_IO. */
  private guestStarted = 0;
  /** Write-type requests handed to the engine and not finished (the start instant waits for 0). */
  private writesInFlight = 0;
  /** 1 while slot id's write-type request counts in {@link writesInFlight}. */
  private readonly slotWrite: Uint8Array;
  private writesIdle: (() => void) | null = null;
  /** The disk's RT guard; null: none, and no cost per request. */
  private readonly guard: DiskGuard | null;
  /** Per slot: how the request counts in the guard (GUARD_*). */
  private readonly slotGuard: Uint8Array;
  /** Per slot: the payload bytes a lower-class request counts in the guard. */
  private readonly slotGuardBytes: Float64Array;
  /** The guard's peaks as last published (published when they grow). */
  private guardPeaks = 0;
  /** The guard's rate-term holds as last published. */
  private guardRateHolds = 0;
  /** Re-drains queues a strict guard holds with nothing in flight; null: none armed. */
  private guardTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly guardRecheck = () => this.guardRecheckNow();

  constructor(options: BlkDeviceOptions) {
    this.engine = options.engine;
    this.geometry = options.geometry;
    this.capacityBytes = capacityOf(options.geometry.imageBytes);
    this.configChanged = options.configChanged ?? (() => {});
    this.ioprio = options.ioprio ?? new IoprioPolicy();
    this.setIoThrottle(options.throttle ?? {});
    this.serial = new TextEncoder().encode(options.serial).subarray(0, BLK_ID_BYTES);
    this.slotsPerQueue = options.queueSize;
    this.features = blkDeviceFeatures(options.geometry);
    this.numQueues = options.geometry.numQueues;
    this.maxQueueSize = options.queueSize;
    this.config = encodeBlkConfig(options.geometry);
    this.configSize = this.config.length;
    this.stats = options.stats;
    this.acct = options.accounting ?? null;
    this.warn = options.warn;
    const n = options.geometry.numQueues;
    const slots = n * this.slotsPerQueue;
    this.slotHead = new Int32Array(slots);
    this.slotDataLen = new Float64Array(slots);
    this.slotEnd = new Float64Array(slots);
    this.slotType = new Uint8Array(slots);
    this.slotWrite = new Uint8Array(slots);
    this.cbt = options.cbt ?? null;
    this.guard = options.guard ?? null;
    this.slotGuard = new Uint8Array(slots);
    this.slotGuardBytes = new Float64Array(slots);
    this.statusRegion = new Int32Array(slots);
    this.statusOffset = new Float64Array(slots);
    this.freeCount = new Int32Array(n);
    this.freeSlots = [];
    this.queues = [];
    for (let q = 0; q < n; q++) {
      this.freeSlots.push(Int32Array.from({ length: this.slotsPerQueue }, (_, i) => i));
      this.freeCount[q] = this.slotsPerQueue;
      this.queues.push(this.newQueueState(q));
    }
    // A chain may be split at region boundaries: allow a few more segments than descriptors.
    this.chain = new DescriptorChain(options.geometry.segMax + 2 + 16);
    const fault = options.fault;
    if (fault === undefined) {
      this.engine.onComplete(
        (userData, result) => this.complete(userData, result),
        () => this.endCompletionBatch(),
      );
      return;
    }
    // Completions arrive from the engine's own watcher, outside any kick: the
    // runtime boundary is here. A try/catch per completion costs nothing until it throws.
    this.engine.onComplete(
      (userData, result) => {
        try {
          this.complete(userData, result);
        } catch (err) {
          fault(err);
        }
      },
      () => {
        try {
          this.endCompletionBatch();
        } catch (err) {
          fault(err);
        }
      },
    );
  }

  private newQueueState(index: number): QueueState {
    const q: QueueState = {
      vring: null,
      inFlight: 0,
      starved: false,
      held: false,
      guardHeldSince: 0,
      onIdle: null,
      handler: { handleChain: () => this.dispatch(index, q) },
    };
    return q;
  }

  /** virtio_blk_config as it stands; zeroes past its end. */
  readConfig(offset: number, out: Uint8Array): void {
    readConfigBytes(this.config, offset, out);
  }

  /**
   * VIRTIO_BLK_F_CONFIG_WCE: the `writeback` byte is the one writable field
   * (0 writethrough, 1 writeback). A write may cover other bytes only if it
   * leaves them as they are.
   */
  writeConfig(offset: number, data: Uint8Array): boolean {
    const at = BlkConfigOffset.writeback - offset;
    if (at < 0 || at >= data.length || data[at] > BlkCacheMode.WRITEBACK) return false;
    for (let i = 0; i < data.length; i++)
      if (i !== at && data[i] !== (this.config[offset + i] ?? 0)) return false;
    this.config[BlkConfigOffset.writeback] = data[at];
    this.writethrough = data[at] === BlkCacheMode.WRITETHROUGH;
    return true;
  }

  /** Run-time commands from the control plane. */
  command(cmd: BlkCommand): Promise<unknown> {
    switch (cmd.type) {
      case 'resize':
        return this.resize(cmd.bytes);
      case 'set-io-throttle':
        this.setIoThrottle(cmd.limits);
        return Promise.resolve(this.ioThrottle);
      case 'backup-start':
        return this.backupStart(
          cmd.share,
          cmd.sync,
          cmd.clone === true,
          cmd.readAround === true,
          cmd.redirect,
        );
      case 'redirect-merged':
        return this.overlay === null
          ? Promise.resolve<MergeResult>({
              merged: true,
              bytes: 0,
              remainingBytes: 0,
              quietBytes: 0,
              copiedBytes: 0,
            })
          : this.overlay.merged();
      case 'redirect-merge-set':
        return Promise.resolve(this.setMerge(cmd));
      case 'backup-end':
        return this.backupEnd(cmd.ok, cmd);
      case 'hold-writes':
        return this.backupStart(null, 'full', false);
      case 'release-writes':
        return this.releaseWrites();
    }
  }

  /**
   * Sets the capacity to `bytes` (whole sectors) and tells the driver. A
   * request that reaches past it fails with IOERR: new ones at once, those
   * in flight when they complete; the promise resolves once none is left.
   */
  resize(bytes: number): Promise<void> {
    if (!Number.isSafeInteger(bytes) || bytes < 0)
      throw new RangeError(`resize to ${bytes} bytes: must be a non-negative integer`);
    const capacity = capacityOf(bytes);
    const changed = capacity !== this.capacityBytes;
    if (changed && (this.backup !== null || this.cloneBackup))
      throw new VhostRtError(
        'ERR_BACKUP_RUNNING',
        'a backup or snapshot of this device is running',
      );
    if (changed && this.overlay !== null) throw this.mergingError();
    if (changed) this.cbt?.resized(capacity);
    this.capacityBytes = capacity;
    writeCapacity(this.config, capacity);
    // Only a real change is announced: a re-read (SIGHUP) of an unchanged image says nothing.
    if (changed) this.configChanged();
    let tail = 0;
    for (let id = 0; id < this.slotEnd.length; id++)
      if (this.slotEnd[id] > this.capacityBytes) tail++;
    this.tailInFlight = tail;
    const previous = this.tailDone;
    if (tail === 0) {
      this.tailDone = null;
      previous?.();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.tailDone = () => {
        previous?.();
        resolve();
      };
    });
  }

  /** Usable capacity in bytes (whole sectors). */
  get capacity(): number {
    return this.capacityBytes;
  }

  /** True while the driver asked for writethrough (config `writeback` 0). */
  get isWritethrough(): boolean {
    return this.writethrough;
  }

  /** Takes the device's rings, one per queue. */
  activate(vrings: readonly Vring[]): void {
    const rings = takeVrings(vrings, this.queues.length);
    for (let i = 0; i < rings.length; i++) this.queues[i].vring = rings[i];
    // The used length does not say where blk wrote (the status byte is the
    // last writable byte; a failed read may have written part of its data).
    for (const v of rings) v.logsWholeWritablePart = true;
  }

  /** Installs a new guest memory table; the old one stays referenced until nothing is in flight. */
  setMemory(memory: GuestMemory): void {
    if (this.memory !== null && this.inFlight > 0) this.retired.push(this.memory);
    this.memory = memory;
    this.bytes = memory.bytes;
    this.installBuffers();
  }

  /**
   * The engine's buffers: guest memory, then a running backup's journal, then a
   * redirect overlay's bitmap and merge buffer.
   */
  private installBuffers(): void {
    const buffers = [...(this.memory?.buffers ?? [])];
    const share = this.backup?.share ?? null;
    if (this.backup !== null) this.backup.journalBuffer = share === null ? -1 : buffers.length;
    if (share !== null) buffers.push(share.init.journal);
    const ov = this.overlay;
    if (ov !== null) {
      ov.bitmapIndex = buffers.length;
      ov.mergeIndex = buffers.length + 1;
      buffers.push(ov.bitmapBuffer, ov.mergeBuffer);
    }
    this.engine.setBuffers(buffers);
  }

  /** A backup, snapshot or resize refused while a redirect overlay is being merged. */
  private mergingError(): VhostRtError {
    const left = this.overlay?.remainingBytes ?? 0;
    const paused = this.overlay?.mergeIsPaused === true ? '; paused: backup-resume goes on' : '';
    return new VhostRtError(
      'ERR_BACKUP_MERGING',
      `the last redirect backup's writes are being merged back into the image (${left} bytes left${paused})`,
    );
  }

  /** `redirect-merge-set`: pauses, resumes or re-paces the overlay's merge, if one runs. */
  private setMerge(cmd: Extract<BlkCommand, { type: 'redirect-merge-set' }>): MergeControlResult {
    const ov = this.overlay;
    const merging = ov?.merging === true;
    if (ov !== null && merging) {
      if (cmd.mergeSpeed !== undefined)
        ov.setMergePace(cmd.mergeSpeed, cmd.mergeQuietSpeed ?? cmd.mergeSpeed);
      if (cmd.paused !== undefined) ov.setMergePaused(cmd.paused);
    }
    // A resumed or re-paced merge may have staged its next read.
    this.endBackupBatch();
    return {
      merging,
      mergedBytes: ov?.mergedBytes ?? 0,
      copiedBytes: ov?.mergeCopiedBytes ?? 0,
      remainingBytes: ov?.remainingBytes ?? 0,
    };
  }

  /**
   * `backup-start` (share null: `hold-writes`): new writes are held, those
   * in flight complete — that moment is the start instant — then the backup
   * becomes active (see backup.ts).
   */
  private async backupStart(
    share: BackupShareInit | null,
    sync: 'full' | 'incremental',
    clone: boolean,
    readAround = false,
    redirect?: RedirectBackupRequest,
  ): Promise<BackupStarted> {
    if (this.backup !== null || this.cloneBackup || this.overlayStarting)
      throw new VhostRtError(
        'ERR_BACKUP_RUNNING',
        'a backup or snapshot of this device is running',
      );
    if (this.overlay !== null) throw this.mergingError();
    // Attached once: the prefill's hooks, the activity counters and NEEDED all use it.
    const shared = share === null ? null : BackupShare.attach(share);
    if (redirect !== undefined) {
      if (shared === null || clone)
        throw new RangeError('a redirect backup needs a share and no clone');
      this.overlayStarting = true;
      // A prefill pass runs before the instant: its progress for query-backups, and
      // backup-cancel (CANCEL, the main thread's) stops it between two writes.
      const i32 = shared.i32;
      try {
        this.overlay = await WriteRedirect.create({
          image: redirect.image,
          diskBytes: this.capacityBytes,
          unitBytes: this.geometry.blockSize,
          engine: this.engine,
          direct: this.engine.direct,
          slots: this.slotType.length,
          maxIovs: this.chain.capacity,
          keep: redirect.keep === true,
          prefillBytesPerSecond: redirect.prefillBytesPerSecond,
          prefillHooks: {
            progress: (bytes) => Atomics.store(i32, BACKUP.PREFILL_KIB, Math.floor(bytes / 1024)),
            cancelled: () => Atomics.load(i32, BACKUP.CANCEL) !== 0,
          },
          hooks: {
            complete: (id, result) => this.complete(id, result),
            endBatch: () => this.endBackupBatch(),
            detached: () => {
              this.overlay = null;
              this.installBuffers();
            },
            warn: this.warn,
            guestStarted: () => this.guestStarted,
            guestInFlight: () => this.inFlight,
          },
        });
      } finally {
        this.overlayStarting = false;
      }
    }
    const t = new BackupTracker({
      // A clone backup's tracker only holds the writes (the copier reads the clone).
      share: clone ? null : share,
      engine: this.engine,
      slots: this.slotType.length,
      maxIovs: this.chain.capacity,
      diskBytes: this.capacityBytes,
      readAround,
      redirect: redirect !== undefined,
      hooks: {
        resume: (id) => this.resumeHeld(id),
        endBatch: () => this.endBackupBatch(),
        route: (id, offset, length) => this.overlay?.writeTarget(id, offset, length) ?? -1,
      },
    });
    this.backup = t;
    this.installBuffers();
    const t0 = performance.now();
    if (this.writesInFlight > 0)
      await new Promise<void>((resolve) => {
        this.writesIdle = resolve;
      });
    const cbt = this.cbt;
    let reason = '';
    if (sync === 'incremental' && (cbt === null || !cbt.valid)) {
      reason = cbt?.invalidReason ?? 'no changed-block tracking on this device';
      sync = 'full';
    }
    const heldUs = Math.round((performance.now() - t0) * 1000);
    const generation = cbt?.generation ?? 0;
    if (shared === null) return { sync, reason, chunks: 0, generation, heldUs };
    this.activityShare = shared;
    this.publishActivity(this.activityShare);
    this.cbtTaken = cbt?.take() ?? null;
    // The writes held since the tracker went in come after the instant: the new record has them.
    if (cbt !== null) t.forEachHeld((offset, length) => cbt.mark(offset, length));
    const needed = sync === 'incremental' ? this.cbtTaken : null;
    if (clone) {
      this.cloneBackup = true;
      const chunks = countBits(publishNeeded(shared, needed));
      return { sync, reason, chunks, generation, heldUs };
    }
    // Writes go to the overlay from here; the held ones too, as activate lets them go.
    this.overlay?.startRedirect();
    t.activate(needed);
    this.endBackupBatch();
    return { sync, reason, chunks: t.neededChunks, generation, heldUs };
  }

  /**
   * `release-writes`: held writes go. Ends a snapshot's hold; a clone
   * backup (the image is cloned now) stays running until `backup-end`.
   */
  private async releaseWrites(): Promise<number> {
    if (!this.cloneBackup) return this.backupEnd(false);
    await this.dropTracker();
    return 0;
  }

  /** `backup-end`: held writes go; the changed blocks are settled. */
  private async backupEnd(ok: boolean, merge: MergePaces = {}): Promise<number> {
    const t = await this.dropTracker();
    // A redirect backup's image is free again: the overlay merges back from now on.
    if (this.overlay !== null) {
      this.overlay.beginMerge(
        merge.mergeSpeed ?? 0,
        merge.mergeQuietMs ?? 0,
        merge.mergeQuietSpeed ?? 0,
      );
      this.endBackupBatch();
    }
    this.cloneBackup = false;
    this.activityShare = null;
    // Taken only by a backup's start instant (not by a snapshot's hold).
    const taken = this.cbtTaken;
    this.cbtTaken = null;
    if (taken === null || this.cbt === null) return 0;
    if (ok && (t === null || t.failure === '')) this.cbt.completed();
    else this.cbt.giveBack(taken);
    return this.cbt.generation;
  }

  /** Ends the tracker in place, if any (its held writes go); returns it. */
  private async dropTracker(): Promise<BackupTracker | null> {
    const t = this.backup;
    if (t === null) return null;
    await t.end();
    this.backup = null;
    this.installBuffers();
    return t;
  }

  /** A request the backup held may go now. */
  private resumeHeld(id: number): void {
    if (!(this.backup as BackupTracker).stage(id)) {
      this.stats.add(BlkStat.ioErrors, 1);
      this.finish(id, BlkStatus.IOERR, 0);
      return;
    }
    this.countWrite(id);
  }

  /** Ends a batch the backup started (a doorbell, an activation): submit, publish, notify. */
  private endBackupBatch(): void {
    const t = this.backup;
    const ov = this.overlay;
    if (t?.needsSubmit || ov?.needsSubmit) {
      if (t !== null) t.needsSubmit = false;
      if (ov !== null) ov.needsSubmit = false;
      this.engine.submit();
    }
    t?.publish();
    this.flushNotifications();
    this.acct?.publish();
  }

  /** Resolves once queue `index` has no request in flight. */
  quiesce(index: number): Promise<void> {
    const q = this.queue(index);
    if (q.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      q.onIdle = () => {
        q.onIdle = null;
        resolve();
      };
    });
  }

  /** The driver kicked queue `index`: pop everything available, submit it as one batch. */
  kick(index: number): void {
    const q = this.queues[index];
    const v = q?.vring;
    if (v === undefined || v === null || !v.ready) return;
    this.draining = true;
    try {
      this.drain(index, q, v.queue as SplitVirtqueue);
    } catch (err) {
      v.fail(err, this.warn);
      this.stats.add(BlkStat.brokenQueues, 1);
    } finally {
      this.draining = false;
    }
    if (this.redrainDeferred) {
      this.redrainDeferred = false;
      this.redrainStarved();
    }
    this.engine.submit();
    this.flushNotifications();
    this.acct?.publish();
    if (this.activityShare !== null) this.publishActivity(this.activityShare);
    if (this.guard !== null) this.endGuardBatch(this.guard);
  }

  /**
   * Once per batch while a backup runs: what the guest is doing (requests started so far,
   * requests in flight), for the copier's disk pass to keep out of its way (`yield-ms`).
   * Two plain-value stores; the copier orders nothing by them.
   */
  private publishActivity(s: BackupShare): void {
    Atomics.store(s.i32, BACKUP.GUEST_IO, this.guestStarted);
    Atomics.store(s.i32, BACKUP.GUEST_IN_FLIGHT, this.inFlight);
  }

  /**
   * Pops (drainQueue) until the ring is empty or every slot is busy. In the
   * second case kicks stay off and the queue is starved: the next slot
   * release drains again, which also turns kicks back on if nothing was left.
   */
  private drain(index: number, q: QueueState, vq: SplitVirtqueue): void {
    if (this.freeCount[index] === 0) {
      q.starved = true;
      return;
    }
    if (this.throttle !== null && !this.throttle.open()) {
      this.hold(q);
      return;
    }
    if (this.guard !== null && !this.guard.admits()) {
      // At the cap with an RT neighbour active: a request of this device in flight drains
      // again when it completes (starved); with none (a strict cap of 0) the guard's timer does.
      if (q.guardHeldSince === 0) q.guardHeldSince = performance.now();
      q.starved = true;
      if (this.guard.lowRequests === 0) this.armGuardTimer(this.guard);
      return;
    }
    const wasHeld = q.held;
    q.held = false;
    const guardHeldSince = q.guardHeldSince;
    q.guardHeldSince = 0;
    const stop = drainQueue(vq, this.chain, q.handler, Number.POSITIVE_INFINITY, this.drained);
    q.starved = stop === DrainStop.HANDLER;
    const popped = this.drained.popped;
    this.acct?.drained(index, popped);
    if (wasHeld) this.stats.add(BlkStat.throttledRequests, popped);
    if (guardHeldSince !== 0) this.guardReleased(guardHeldSince, popped);
    // The guard stopped the pop with chains still in the ring: they wait from now.
    if (q.starved && this.guard !== null && !this.guard.admits() && vq.pending() > 0)
      q.guardHeldSince = performance.now();
    this.publishClasses();
    if (this.throttle !== null && !this.throttle.open()) this.hold(q);
    if (popped > 0) {
      this.stats.add(BlkStat.requests, popped);
      this.stats.add(BlkStat.kicks, 1);
    }
  }

  /** Starts the popped chain in a free slot; false when that was the last free slot. */
  private dispatch(queue: number, q: QueueState): boolean {
    const slot = this.takeSlot(queue);
    const id = queue * this.slotsPerQueue + slot;
    this.slotHead[id] = this.chain.head;
    this.reader.reset(this.chain, this.bytes);
    this.writer.reset(this.chain, this.bytes);
    this.locateStatus(id);
    q.inFlight++;
    this.inFlight++;
    this.guestStarted = (this.guestStarted + 1) | 0;
    this.acct?.started(queue, id);
    // Pending until start returns: finish() clears it if the request ended meanwhile.
    this.slotGuard[id] = GUARD_PENDING;
    const status = this.start(id);
    if (status !== STARTED)
      this.finish(id, status, status === BlkStatus.OK ? this.slotDataLen[id] : 0);
    else if (this.guard !== null && this.slotGuard[id] === GUARD_PENDING)
      this.guardStarted(this.guard, id);
    // Over budget or at the guard's cap: the rest waits in the avail ring (the debt is at most this request).
    return (
      this.freeCount[queue] > 0 &&
      (this.throttle === null || this.throttle.open()) &&
      (this.guard === null || this.guard.admits())
    );
  }

  /** Counts a started request in the disk's guard: as RT, or as lower-class with its bytes. */
  private guardStarted(guard: DiskGuard, id: number): void {
    if (ioprioClass(this.requestIoprio) === IoprioClass.RT) {
      this.slotGuard[id] = GUARD_RT;
      guard.rtStarted();
      return;
    }
    const bytes = this.slotDataLen[id];
    this.slotGuard[id] = GUARD_LOW;
    this.slotGuardBytes[id] = bytes;
    guard.lowStarted(bytes);
  }

  /** Takes a finished request out of the guard's counts (a pending one: it ended inside start). */
  private guardFinished(id: number): void {
    if (this.slotGuard[id] === GUARD_RT) this.guard?.rtFinished();
    else if (this.slotGuard[id] === GUARD_LOW) this.guard?.lowFinished(this.slotGuardBytes[id]);
    this.slotGuard[id] = GUARD_NONE;
  }

  /** A queue the guard held pops again: counts its wait and the requests that waited. */
  private guardReleased(since: number, popped: number): void {
    this.stats.add(BlkStat.guardHeldUs, Math.round((performance.now() - since) * 1000));
    this.stats.add(BlkStat.guardHeldRequests, popped);
  }

  /**
   * A strict cap (0), or the rate term, holds a queue with nothing in flight: look again
   * after a while — the bucket's refill time, or an eighth of the window (one timer per device).
   */
  private armGuardTimer(guard: DiskGuard): void {
    if (this.guardTimer === null)
      this.guardTimer = setTimeout(this.guardRecheck, guard.recheckMs());
  }

  /** The guard's timer: drains the queues it holds again (the drain re-reads the neighbours). */
  private guardRecheckNow(): void {
    this.guardTimer = null;
    for (let i = 0; i < this.queues.length; i++)
      if (this.queues[i].guardHeldSince !== 0) this.kick(i);
  }

  /** Ends a batch in the guard (publishes this device's RT state) and publishes its peaks when they grew. */
  private endGuardBatch(guard: DiskGuard): void {
    guard.endBatch();
    if (guard.rateHolds !== this.guardRateHolds) {
      this.stats.add(BlkStat.guardRateHolds, guard.rateHolds - this.guardRateHolds);
      this.guardRateHolds = guard.rateHolds;
    }
    const peaks = guard.peakRequests + guard.peakBytes;
    if (peaks === this.guardPeaks) return;
    this.guardPeaks = peaks;
    this.stats.max(BlkStat.guardPeakRequests, guard.peakRequests);
    this.stats.max(BlkStat.guardPeakBytes, guard.peakBytes);
  }

  /**
   * Replaces the token-bucket limits (QoS) at run time; all 0 removes them.
   * Held queues are re-drained by the timer already armed, or now.
   */
  setIoThrottle(limits: ThrottleLimits): void {
    const t = new IoThrottle(limits);
    this.throttle = t.enabled ? t : null;
    if (this.throttle === null && this.throttleTimer !== null) {
      clearTimeout(this.throttleTimer);
      this.releaseHeld();
    }
  }

  /** The limits in force ({} when none). */
  get ioThrottle(): ThrottleLimits {
    return this.throttle?.limits ?? {};
  }

  /** Adds the classes counted during a drain to the shared counters: one add per class seen, not per request. */
  private publishClasses(): void {
    const seen = this.classSeen;
    for (let c = 0; c < 4; c++) {
      if (seen[c] === 0) continue;
      this.stats.add(BlkStat.ioprioNone + c, seen[c]);
      seen[c] = 0;
    }
  }

  /** Leaves the queue's chains in the avail ring until the buckets refill (one timer per device). */
  private hold(q: QueueState): void {
    q.held = true;
    if (this.throttleTimer !== null || this.throttle === null) return;
    this.heldSince = performance.now();
    this.throttleTimer = setTimeout(
      this.unthrottle,
      Math.max(1, Math.ceil(this.throttle.waitMs())),
    );
  }

  /** The timer: counts the time held, then drains every held queue again. */
  private releaseHeld(): void {
    this.throttleTimer = null;
    this.stats.add(BlkStat.throttledUs, Math.round((performance.now() - this.heldSince) * 1000));
    for (let i = 0; i < this.queues.length; i++) if (this.queues[i].held) this.kick(i);
  }

  /** The status byte is the chain's last device-writable byte (§5.2.6); region -1: there is none. */
  private locateStatus(id: number): void {
    const at = this.statusAt;
    this.writer.locate(this.writer.length - 1, at);
    this.statusRegion[id] = at.region;
    this.statusOffset[id] = at.offset;
  }

  /** Starts request `id`; returns a status (or UNUSABLE) when it finished at once, STARTED when the engine has it. */
  private start(id: number): number {
    const chain = this.chain;
    if (chain.error !== null) return this.badChain(chain.error);
    if (chain.writableBytes < 1) return this.badChain('VIRTQ_NO_STATUS_BYTE');
    // struct virtio_blk_req: le32 type, le32 reserved, le64 sector. One copy
    // into the scratch (measured a little cheaper than three field reads),
    // decoded from there: the guest may rewrite its buffer meanwhile.
    if (this.reader.read(this.header, 0, REQUEST_HEADER_SIZE) < REQUEST_HEADER_SIZE)
      return BlkStatus.IOERR;
    const h = this.headerView;
    const type = h.getUint32(0, true);
    // The field after `type` (Linux: req_get_ioprio()), made the host's by --guest-ioprio.
    const guestIoprio = h.getUint32(4, true);
    const guestClass = ioprioClass(guestIoprio);
    this.classSeen[guestClass > 3 ? 0 : guestClass]++;
    this.requestIoprio = this.ioprio.hostIoprio(guestIoprio);
    const sector = h.getUint32(8, true) + h.getUint32(12, true) * U32;
    this.slotType[id] = type;
    this.slotDataLen[id] = 0;
    switch (type) {
      case BlkRequestType.IN:
        return this.startReadWrite(id, IoOp.READ, sector);
      case BlkRequestType.OUT:
        return this.startReadWrite(id, IoOp.WRITE, sector);
      case BlkRequestType.FLUSH:
        this.queueFlush(id);
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

  /**
   * READ: the data is the writable part minus the status byte; WRITE: the
   * readable part after the header. Both go to the engine as iovecs into
   * guest memory (zero copy).
   */
  /**
   * Stages the data part as iovecs and queues the request. When the engine
   * refuses it (its table of staged ops is full) the staged ops are submitted
   * and the request is tried once more; a second refusal means the engine's
   * depth is smaller than the device's request slots (an embedder's
   * configuration, never the daemon's): the request fails with IOERR instead
   * of retrying without end.
   */
  private startReadWrite(id: number, op: IoOpCode, sector: number, retried = false): number {
    const write = op === IoOp.WRITE;
    // The part the data lives in, positioned at its first byte (again, on a retry).
    const part = write ? this.reader : this.writer;
    const bytes = write ? part.length - REQUEST_HEADER_SIZE : part.length - 1;
    const offset = sector * SECTOR_SIZE;
    if (bytes % SECTOR_SIZE !== 0 || offset + bytes > this.capacityBytes) return this.ioError();
    if (write && this.geometry.readonly) return this.ioError();
    if (bytes === 0) return BlkStatus.OK;
    part.seek(write ? REQUEST_HEADER_SIZE : 0);
    if (write) {
      this.cbt?.mark(offset, bytes);
      if (this.backup?.mustHold(offset, bytes)) return this.holdForBackup(id, op, offset, bytes);
    }
    let file: IoFileIndex = IoFile.IMAGE;
    let fileOffset = offset;
    const ov = this.overlay;
    if (ov !== null) {
      const at = write ? ov.writeTarget(id, offset, bytes) : ov.readTarget(id, offset, bytes);
      if (at === SPLIT) return this.startSplitRead(ov, id, offset, bytes);
      if (at !== TO_IMAGE) {
        file = IoFile.ATTACHED;
        fileOffset = at;
      }
    }
    const firstIov = this.engine.stagedIovs;
    let count = part.stageIovecs(this.engine, bytes);
    if (count < 0) {
      // The staging table is full: submit what it holds, then stage again from the same position.
      this.engine.submit();
      count = part.stageIovecs(this.engine, bytes);
      if (count < 0) return this.ioError();
    }
    this.slotDataLen[id] = bytes;
    this.slotEnd[id] = offset + bytes;
    const first = count === 0 ? firstIov : this.engine.stagedIovs - count;
    if (!this.engine.queueReadWrite(op, fileOffset, first, count, id, this.requestIoprio, file)) {
      if (retried) {
        this.warn(
          'I/O engine refused a request with all it holds submitted: its depth is below the request slots',
        );
        return this.ioError();
      }
      this.engine.submit();
      return this.startReadWrite(id, op, sector, true);
    }
    this.throttle?.charge(write, bytes);
    if (write) this.countWrite(id);
    return STARTED;
  }

  /** A flush of request `id`: through the overlay while one routes (its bitmap is made durable too). */
  private queueFlush(id: number): void {
    const ov = this.overlay;
    if (ov?.routing) ov.flush(id);
    else this.engine.queueSlowOp(IoOp.FLUSH, 0, 0, id);
  }

  /** Counts a write-type request handed to the engine (the start instant waits for these). */
  private countWrite(id: number): void {
    this.slotWrite[id] = 1;
    this.writesInFlight++;
  }

  /** A read whose sectors are partly in the overlay: one engine read per run (redirect.ts). */
  private startSplitRead(ov: WriteRedirect, id: number, offset: number, bytes: number): number {
    this.slotDataLen[id] = bytes;
    this.slotEnd[id] = offset + bytes;
    if (!ov.startSplitRead(id, offset, bytes, this.writer, this.requestIoprio)) {
      this.slotEnd[id] = 0;
      return this.ioError();
    }
    this.throttle?.charge(false, bytes);
    return STARTED;
  }

  /** Holds a write-type request for the backup (its payload's iovecs recorded); STARTED. */
  private holdForBackup(id: number, op: IoOpCode, offset: number, bytes: number): number {
    const write = op === IoOp.WRITE;
    // Set first: hold() may resume the request at once, and a sync engine completes it inside.
    this.slotDataLen[id] = write ? bytes : 0;
    this.slotEnd[id] = offset + bytes;
    const t = this.backup as BackupTracker;
    if (!t.hold(id, op, offset, bytes, write ? this.reader : null, this.requestIoprio)) {
      this.slotEnd[id] = 0;
      return this.ioError();
    }
    if (write) this.throttle?.charge(true, bytes);
    return STARTED;
  }

  private startDiscard(id: number, op: IoOpCode): number {
    if (this.geometry.readonly) return this.ioError();
    const r = this.reader;
    const payload = r.length - REQUEST_HEADER_SIZE;
    // max_discard_seg and max_write_zeroes_seg are 1 in our config space.
    if (payload !== DISCARD_SEGMENT_SIZE) return BlkStatus.UNSUPP;
    // struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags.
    r.seek(REQUEST_HEADER_SIZE);
    const sector = r.readU64();
    const sectors = r.readU32();
    const flags = r.readU32();
    const offset = sector * SECTOR_SIZE;
    const length = sectors * SECTOR_SIZE;
    if (flags & ~WRITE_ZEROES_FLAG_UNMAP || (op === IoOp.DISCARD && flags !== 0))
      return BlkStatus.UNSUPP;
    if (sectors > MAX_DISCARD_SECTORS || offset + length > this.capacityBytes)
      return this.ioError();
    if (length === 0) return BlkStatus.OK;
    const unmap = flags & WRITE_ZEROES_FLAG_UNMAP;
    const slowOp = unmap ? IoOp.DISCARD : op;
    this.cbt?.mark(offset, length);
    if (this.backup?.mustHold(offset, length))
      return this.holdForBackup(id, slowOp, offset, length);
    this.slotEnd[id] = offset + length;
    const at = this.overlay?.writeTarget(id, offset, length) ?? TO_IMAGE;
    if (at === TO_IMAGE) this.engine.queueSlowOp(slowOp, offset, length, id);
    else this.engine.queueSlowOp(slowOp, at, length, id, IoFile.ATTACHED);
    this.countWrite(id);
    return STARTED;
  }

  private getId(id: number): number {
    const w = this.writer;
    const room = Math.min(w.length - 1, BLK_ID_BYTES);
    const n = w.write(this.serial, 0, room);
    // The spec asks for a NUL-padded 20-byte answer; pad whatever room is left.
    w.fill(0, room - n);
    this.slotDataLen[id] = room;
    return BlkStatus.OK;
  }

  private ioError(): number {
    this.stats.add(BlkStat.ioErrors, 1);
    return BlkStatus.IOERR;
  }

  private complete(id: number, result: number): void {
    // A redirect overlay's own operation, or part of a split read or flush.
    if (id >= REDIRECT_USER_BASE) {
      if (this.overlay === null)
        throw new RangeError(`blk: completion ${id} for a redirect overlay that is gone`);
      this.overlay.done(id, result);
      return;
    }
    // Past the request slots: a backup's journal read (userData slots + entry).
    if (id >= this.slotType.length) {
      // Anything else past the slots is a completion the device never asked for: an
      // engine bug, thrown to the host's fault hook rather than ignored.
      if (this.backup === null)
        throw new RangeError(`blk: completion for request ${id}, which was never started`);
      this.backup.readDone(id - this.slotType.length, result);
      return;
    }
    // A redirected write that completed is durable in the overlay's bitmap from here (before a
    // writethrough flush, which must persist it).
    if (this.overlay !== null) this.overlay.writeCompleted(id, result);
    const type = this.slotType[id];
    const expected =
      type === BlkRequestType.IN || type === BlkRequestType.OUT ? this.slotDataLen[id] : 0;
    // A shrink cut the range this request touches while it was in flight.
    if (result < 0 || result !== expected || this.slotEnd[id] > this.capacityBytes) {
      this.stats.add(BlkStat.ioErrors, 1);
      this.finish(id, BlkStatus.IOERR, 0);
      return;
    }
    if (type === BlkRequestType.IN) this.stats.add(BlkStat.bytesRead, result);
    else if (type === BlkRequestType.OUT) this.stats.add(BlkStat.bytesWritten, result);
    if (type === BlkRequestType.OUT && this.writethrough) {
      // Writethrough: the write completes only once a flush made it durable.
      this.slotType[id] = WRITE_FLUSHING;
      this.flushQueued = true;
      this.queueFlush(id);
      return;
    }
    this.finish(id, BlkStatus.OK, type === BlkRequestType.IN ? result : 0);
  }

  /**
   * Writes the status byte (the last device-writable byte) and returns the
   * chain. `status` UNUSABLE means the chain could not carry one: used length 0.
   */
  private finish(id: number, status: number, dataWritten: number): void {
    const queue = Math.floor(id / this.slotsPerQueue);
    const q = this.queues[queue];
    this.acct?.finished(queue, id, status, this.slotType[id], dataWritten, this.slotDataLen[id]);
    let used = 0;
    if (status >= 0 && this.statusRegion[id] >= 0) {
      this.bytes[this.statusRegion[id]][this.statusOffset[id]] = status;
      used = dataWritten + 1;
    }
    q.vring?.addUsed(this.slotHead[id], used);
    if (this.overlay !== null) this.overlay.released(id);
    if (this.slotWrite[id] === 1) this.writeFinished(id);
    if (this.slotGuard[id] !== GUARD_NONE) this.guardFinished(id);
    if (this.tailInFlight > 0 && this.slotEnd[id] > this.capacityBytes) this.tailEnded();
    this.slotEnd[id] = 0;
    this.releaseSlot(queue, id % this.slotsPerQueue);
    q.inFlight--;
    this.inFlight--;
    if (q.inFlight === 0) q.onIdle?.();
  }

  /** A counted write-type request finished; the last one wakes a backup waiting for its start instant. */
  private writeFinished(id: number): void {
    this.slotWrite[id] = 0;
    if (--this.writesInFlight > 0 || this.writesIdle === null) return;
    const idle = this.writesIdle;
    this.writesIdle = null;
    idle();
  }

  /** One request in flight past a shrink's new end finished; the last wakes the resize. */
  private tailEnded(): void {
    if (--this.tailInFlight > 0) return;
    const done = this.tailDone;
    this.tailDone = null;
    done?.();
  }

  private endCompletionBatch(): void {
    const backup = this.backup;
    const ov = this.overlay;
    if (this.flushQueued || backup?.needsSubmit === true || ov?.needsSubmit === true) {
      this.flushQueued = false;
      if (backup !== null) backup.needsSubmit = false;
      if (ov !== null) ov.needsSubmit = false;
      this.engine.submit();
    }
    backup?.publish();
    if (this.inFlight === 0 && this.retired.length > 0) this.retired = [];
    this.flushNotifications();
    this.acct?.publish();
    if (this.activityShare !== null) this.publishActivity(this.activityShare);
    // Before the re-drain: its admission reads the neighbours afresh, and our RT state is out.
    if (this.guard !== null) this.endGuardBatch(this.guard);
    // A batch that ends inside a drain (an engine completing or failing
    // requests in submit) must not pop: the chain, reader and writer belong
    // to the request being started. The drain's kick re-drains once done.
    if (this.draining) this.redrainDeferred = true;
    else this.redrainStarved();
  }

  /** Drains every queue that stopped for want of a slot (slots may have freed). */
  private redrainStarved(): void {
    for (let i = 0; i < this.queues.length; i++) {
      if (this.queues[i].starved) this.kick(i);
    }
  }

  /** Ends a batch on every queue: used.idx published once, at most one interrupt each. */
  private flushNotifications(): void {
    let sent = 0;
    for (let i = 0; i < this.queues.length; i++) {
      if (!this.queues[i].vring?.flush()) continue;
      sent++;
      this.acct?.interrupt(i);
    }
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
    const q = this.queues[index];
    if (q === undefined)
      throw new RangeError(`queue index ${index} is outside 0..${this.queues.length - 1}`);
    return q;
  }

  /** Completes everything in flight on every queue and closes the engine. */
  async close(): Promise<void> {
    if (this.throttleTimer !== null) clearTimeout(this.throttleTimer);
    this.throttleTimer = null;
    if (this.guardTimer !== null) clearTimeout(this.guardTimer);
    this.guardTimer = null;
    if (this.backup !== null || this.cloneBackup) await this.backupEnd(false);
    for (let i = 0; i < this.queues.length; i++) await this.quiesce(i);
    // Persisted and left on disk: the next open merges what is still redirected.
    await this.overlay?.close();
    this.overlay = null;
    this.guard?.close();
    this.engine.close();
    this.cbt?.persist();
  }

  /** Requests in flight on every queue. */
  get requestsInFlight(): number {
    return this.inFlight;
  }
}
