/**
 * The backup copier thread (issue 12): one per running backup, at idle CPU
 * priority (SCHED_IDLE, or SCHED_BATCH when asked) and the idle I/O class.
 * It copies the disk's chunks that the backup needs to the target — a raw
 * file (preadv/pwritev on this thread, so the idle I/O class applies to
 * them) or an NBD export (the nbd engine) — and drains the journal the blk
 * device fills with chunks the guest was about to overwrite. It never
 * stands in the guest's path: a guest write waits for the copier only when
 * the journal is full (the THROTTLE policy, src/devices/blk/backup.ts).
 * With `yield-ms` it also keeps its disk-pass reads off the disk while the
 * guest has I/O going (yieldToGuest): the idle I/O class, which the `none`
 * scheduler of virtio and NVMe disks does not give it. `backup-pause` stops
 * the disk pass (not the journal's drain) until `backup-resume`.
 *
 * Exactness (see src/io/backup-share.ts): of a chunk read from disk, only
 * the blocks not CLAIMED when the read had completed are written to the
 * target; a claimed block's old bytes come from its journal entry, read
 * before the guest's write. The disk pass is done with a chunk once it has
 * checked the claims (COPIED); the backup is complete once the pass is over
 * and every block it left to the journal has been written from there.
 */
import { getSystemErrorName } from 'node:util';
import { BackupShare, type BackupShareInit } from '../io/backup-share.js';
import {
  createEngine,
  type IoEngine,
  IoOp,
  type IoOpCode,
  IoprioClass,
  ioprioValue,
  QuietWatch,
  RatePacer,
} from '../io/index.js';
import { BACKUP, BackupState } from '../locking/layout.js';
import { native } from '../native.js';
import { applyRtOptions, lowerToBackground } from '../rt/index.js';
import { postEvent, postLog, runWorker } from '../thread/index.js';

/** Least time between two progress events from the copier (ms). */
export const PROGRESS_INTERVAL_MS = 1000;
/**
 * Journal entries written at once: a window that slides (one more starts as one finishes,
 * and each entry is freed as soon as its own write is done). Bounded because the copier's
 * writes share the disk queue with the guest's, and the idle I/O class means nothing to the
 * `none` scheduler of virtio and NVMe disks: a first version wrote every published entry at
 * once (up to the whole journal) and freed them only when all were done, and the bench saw
 * guest writes at QD32 wait ~40 ms (p99.9) for free entries behind those floods.
 */
const DRAIN_WINDOW = 32;
/** How long the copier waits on an empty journal before it looks at CANCEL again (ms). */
const JOURNAL_WAIT_MS = 200;
/**
 * With `yield-ms`: the longest a disk-pass read waits for the guest to go quiet (ms). Past it
 * the read goes anyway (FORCED_READS), so a guest that never pauses still gets its backup, at
 * one read (256 KiB) per second.
 */
export const YIELD_MAX_WAIT_MS = 1000;

/**
 * Engines the copier uses: the image is read with `sync` (preadv on this thread, so the idle
 * I/O class applies) or `nbd`; a file target is written with `linux-aio` (the idle class per
 * request, many journal entries in flight at once), an NBD target with `nbd`.
 */
export type CopierEngine = 'sync' | 'linux-aio' | 'nbd';

/** workerData of the copier. */
export interface BackupCopierInit {
  share: BackupShareInit;
  /** The device's image (path or NBD URI) and the engine to read it with. */
  image: string;
  imageEngine: CopierEngine;
  /** The target (file path or NBD URI) and the engine to write it with. */
  target: string;
  targetEngine: CopierEngine;
  diskBytes: number;
  /** Bytes per second to the target; 0: no limit. */
  speed: number;
  /** CPU scheduling of the copier: 'idle' (default) or 'batch'. */
  policy: 'idle' | 'batch';
  /**
   * The disk pass reads only once the guest has had no request in flight and started none
   * for this long (ms; at most {@link YIELD_MAX_WAIT_MS} of waiting per read); 0: off.
   */
  yieldMs: number;
  /**
   * The largest read or write the copier makes (bytes, a multiple of the chunk size; see
   * DEFAULT_COPY_MAX_CHUNK): a disk-pass read takes up to this many bytes of chunks, a
   * journal write up to this many bytes of adjacent entries. Small enough that one of them
   * ahead of a guest request in the disk's queue (the `none` scheduler ignores the idle I/O
   * class) costs that request little; the first version read 1 MiB.
   */
  maxChunk: number;
}

/** What the copier reports on its own. */
export type BackupCopierEvent =
  | { type: 'progress'; copiedChunks: number; fromJournal: number; bytesWritten: number }
  | { type: 'completed'; copiedChunks: number; fromJournal: number; bytesWritten: number }
  | { type: 'failed'; code: string; reason: string };

/** Commands of the copier: `run` starts copying (after the device passed the start instant). */
export type BackupCopierCommand = { op: 'run' };

/** A backup that cannot go on: `code` says why (ERR_BACKUP_TARGET, ERR_BACKUP_CANCELLED...). */
class CopyFailure extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** One engine driven as promises (the copier's I/O is not on any guest's path). */
class EngineIo {
  private next = 0;
  private readonly waiting = new Map<number, (result: number) => void>();

  constructor(readonly engine: IoEngine) {
    engine.onComplete(
      (userData, result) => {
        const done = this.waiting.get(userData);
        this.waiting.delete(userData);
        done?.(result);
      },
      () => {},
    );
  }

  /** One read or write of `length` bytes at `offset` from/to buffer `buffer` at `at`. */
  rw(op: IoOpCode, offset: number, buffer: number, at: number, length: number): Promise<number> {
    const id = this.next++;
    const e = this.engine;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      const first = e.stagedIovs;
      if (!e.addIov(buffer, at, length)) return resolve(-22);
      // ioprio 0: the thread's own — the idle class lowerPriority set, or best effort while
      // the device has boosted this thread (a guest request waits on a full journal).
      if (!e.queueReadWrite(op, offset, first, 1, id, 0)) return resolve(-22);
      e.submit();
    });
  }

  /** Makes what was written durable. */
  flush(): Promise<number> {
    const id = this.next++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.engine.queueSlowOp(IoOp.FLUSH, 0, 0, id);
      this.engine.submit();
    });
  }
}

/** Atomics.waitAsync (Node 20 has it; the ES2022 lib this project compiles against does not name it). */
const waitAsync = (
  Atomics as unknown as {
    waitAsync(
      a: Int32Array,
      index: number,
      value: number,
      timeoutMs: number,
    ): { async: boolean; value: Promise<string> | string };
  }
).waitAsync;

/** The idle I/O class: the copier's reads and writes go when nobody else's do. */
const IDLE_IOPRIO = ioprioValue(IoprioClass.IDLE, 7);
/** Engine buffer indexes. */
const JOURNAL = 0;
const COPY = 1;

/** The copy itself. */
class Copier {
  private readonly s: BackupShare;
  private readonly copyBuf: SharedArrayBuffer;
  private src: EngineIo | null = null;
  private dst: EngineIo | null = null;
  private readyTail = 0;
  private freeHead = 0;
  /** Chunks the disk pass is done with. */
  private copied = 0;
  /** Per chunk: blocks the disk pass left to the journal (claimed at its check), not written yet. */
  private readonly owed: Uint16Array;
  /** Per chunk: blocks written from the journal. */
  private readonly drained: Uint16Array;
  /** Blocks owed in all: the backup is complete when the pass is over and this is 0. */
  private owedCount = 0;
  /** The CLAIMED masks of the chunks of one disk read, as checked after it (allocated once). */
  private readonly masks: Int32Array;
  /** Chunks per disk-pass read, and journal entries per target write (from maxChunk). */
  private readonly batchChunks: number;
  private readonly coalesceMaxBlocks: number;
  private fromJournal = 0;
  private written = 0;
  /**
   * The disk pass's pace (`speed`), restarted when `run` begins: the thread starts before the
   * start instant, which may be a prefill pass of the whole image later. Replaced when
   * backup-set-speed changes the speed (followSpeed).
   */
  private pacer: RatePacer;
  /** The disk pass's speed now (bytes/s; 0: none): init.speed until backup-set-speed. */
  private speed: number;
  /** SPEED_SEQ as last applied. */
  private speedSeq = 0;
  private lastProgress = 0;
  /** The guest's activity as last sampled (yieldToGuest). */
  private readonly guest = new QuietWatch();
  private yields = 0;
  private forcedReads = 0;

  constructor(private readonly init: BackupCopierInit) {
    this.s = BackupShare.attach(init.share);
    this.pacer = new RatePacer(init.speed);
    this.speed = init.speed;
    this.owed = new Uint16Array(this.s.chunks);
    this.drained = new Uint16Array(this.s.chunks);
    this.batchChunks = Math.max(1, Math.floor(init.maxChunk / this.s.chunkBytes));
    this.coalesceMaxBlocks = Math.max(1, Math.floor(init.maxChunk / this.s.blockBytes));
    this.masks = new Int32Array(this.batchChunks);
    const bytes = this.batchChunks * this.s.chunkBytes;
    const fd = native.memfdCreate('vhost-rt-backup-copy', bytes);
    try {
      this.copyBuf = native.mmapShared(fd, bytes, 0);
    } finally {
      native.close(fd);
    }
  }

  /** Opens the image (read-only) and the target. */
  open(): void {
    const common = {
      readonly: false,
      direct: true,
      // Room for the drain window in flight (and one copy write).
      depth: DRAIN_WINDOW + 4,
      maxIovs: DRAIN_WINDOW + 4,
      warn: (m: string) => postLog('warn', m),
    };
    const buffers = [this.s.init.journal, this.copyBuf];
    const src = createEngine(this.init.imageEngine, {
      ...common,
      path: this.init.image,
      readonly: true,
      ...nbdTimeout(this.init.imageEngine),
    });
    src.setBuffers(buffers);
    this.src = new EngineIo(src);
    let dst: IoEngine;
    try {
      dst = createEngine(this.init.targetEngine, {
        ...common,
        path: this.init.target,
        ...nbdTimeout(this.init.targetEngine),
      });
    } catch (err) {
      src.close();
      throw err;
    }
    dst.setBuffers(buffers);
    this.dst = new EngineIo(dst);
  }

  /** Copies everything; resolves with the totals or rejects with a CopyFailure. */
  async run(): Promise<BackupCopierEvent> {
    const s = this.s;
    // The pass reads NEEDED, which the device writes at the start instant, after this thread
    // started. Counted when the thread started (as it once was), the chunks to wait for were 0:
    // the copier completed without journal entries still coming after its pass, whose target
    // blocks stayed zero (the "last chunk zero" of issue 12, seen on the threads engine, whose
    // journal reads are slowest). Atomics.load of STATE orders after the device's plain stores
    // of NEEDED (made before it stored ACTIVE); `run` is only sent after backup-start answered.
    if (Atomics.load(s.i32, BACKUP.STATE) === BackupState.PENDING)
      throw new CopyFailure('ERR_BACKUP', 'the copier was started before the start instant');
    this.pacer.restart();
    for (let c = 0; c < s.chunks; ) {
      await this.drainJournal();
      this.check();
      if (!this.passMustCopy(c)) {
        c++;
        continue;
      }
      // Every block claimed: nothing to read, the journal has it all.
      const all = s.fullMask(c, this.init.diskBytes);
      const cm = s.claimedMask(c);
      if ((cm & all) === all) {
        this.settle(c, cm);
        c++;
        continue;
      }
      let n = 1;
      while (n < this.batchChunks && c + n < s.chunks && this.passMustCopy(c + n)) n++;
      await this.copyFromDisk(c, n);
      c += n;
    }
    // What is left: blocks the device claimed, whose journal entries are still coming.
    // PASS_DONE: for query-backups and tests only (the disk pass is over); orders nothing.
    Atomics.store(s.i32, BACKUP.PASS_DONE, 1);
    while (this.owedCount > 0) {
      if (!(await this.drainJournal())) await this.waitReady();
      this.check();
    }
    const r = await (this.dst as EngineIo).flush();
    if (r < 0) throw targetFailure('flushing the target', r);
    return { type: 'completed', ...this.totals() };
  }

  private totals() {
    return { copiedChunks: this.copied, fromJournal: this.fromJournal, bytesWritten: this.written };
  }

  /** Chunk `c` is in the backup (NEEDED) and the disk pass has not copied it yet. */
  private passMustCopy(c: number): boolean {
    const s = this.s;
    return s.bit(s.at.needed, c) && !s.bit(s.at.copied, c);
  }

  /**
   * The pass is done with chunk `c`, whose blocks in `claimed` were claimed when it looked:
   * those not yet written from the journal are owed by it. COPIED is stored here, before the
   * target write of the disk's blocks: they are in this thread's buffer already.
   */
  private settle(c: number, claimed: number): void {
    const owe = claimed & ~this.drained[c];
    this.owed[c] = owe;
    this.owedCount += popcount(owe);
    this.markCopied(c);
  }

  /**
   * `yield-ms`: the idle I/O class, kept here. The kernel's idle class means nothing to the
   * `none` scheduler of virtio and NVMe disks, and a disk-pass read there sits in the
   * device's queue beside the guest's requests (bench/results/backup-long.md: on XFS a third
   * of the QD32 tail during a backup was the copier's reads). So before each read this waits
   * until the device has published no new guest request and none in flight for `yieldMs`,
   * draining the journal meanwhile (its entries free guest writes, they are never held
   * back). Past {@link YIELD_MAX_WAIT_MS} the read goes anyway.
   */
  private async yieldToGuest(): Promise<void> {
    const quietMs = this.init.yieldMs;
    // Not `<= 0`: an init without it (undefined) must not wait either.
    if (!(quietMs > 0)) return;
    const s = this.s;
    const since = performance.now();
    let waited = false;
    for (;;) {
      const now = performance.now();
      // Plain values the device stores once per batch (publishActivity); they order nothing.
      const quietFor = this.guest.quietFor(
        Atomics.load(s.i32, BACKUP.GUEST_IO),
        Atomics.load(s.i32, BACKUP.GUEST_IN_FLIGHT),
        now,
      );
      if (quietFor >= quietMs) break;
      if (now - since >= YIELD_MAX_WAIT_MS) {
        // Statistics only (query-backups); orders nothing.
        Atomics.store(s.i32, BACKUP.FORCED_READS, ++this.forcedReads);
        break;
      }
      waited = true;
      const w = waitAsync(s.i32, BACKUP.READY_HEAD, this.readyTail, quietMs - quietFor);
      if (w.async) await w.value;
      await this.drainJournal();
      this.check();
    }
    // Statistics only (query-backups); orders nothing.
    if (waited) Atomics.store(s.i32, BACKUP.YIELDS, ++this.yields);
  }

  /**
   * `backup-pause`: the disk pass waits here, before its next read, until `backup-resume` or a
   * cancel. The journal is drained meanwhile: a guest write may be waiting for a free entry,
   * and a pause must never hold the guest. The pace starts again with no credit, so the pass
   * does not make up for the pause in a burst.
   */
  private async waitWhilePaused(): Promise<void> {
    const s = this.s;
    // PAUSED: the main thread's plain flag, notified on READY_HEAD after each change (which
    // ends waitReady early); it orders nothing else.
    if (Atomics.load(s.i32, BACKUP.PAUSED) === 0) return;
    while (Atomics.load(s.i32, BACKUP.PAUSED) !== 0) {
      if (!(await this.drainJournal())) await this.waitReady();
      this.check();
    }
    this.pacer.restart();
  }

  /** Reads chunks [c, c + n) from disk, then writes the blocks not claimed after the read. */
  private async copyFromDisk(c: number, n: number): Promise<void> {
    await this.waitWhilePaused();
    await this.yieldToGuest();
    const s = this.s;
    const offset = c * s.chunkBytes;
    const length = Math.min(n * s.chunkBytes, this.init.diskBytes - offset);
    const r = await (this.src as EngineIo).rw(IoOp.READ, offset, COPY, 0, length);
    if (r !== length)
      throw new CopyFailure(
        'ERR_BACKUP_SOURCE',
        `reading the disk at ${offset} failed: ${errnoText(r)}`,
      );
    // Atomics.load after the read completed (claimedMask): a claim not seen here came after it.
    for (let i = 0; i < n; i++) {
      this.masks[i] = s.claimedMask(c + i);
      this.settle(c + i, this.masks[i]);
    }
    // Runs of unclaimed blocks, across chunk borders, each one write.
    const per = s.blocksPerChunk;
    const blocks = Math.ceil(length / s.blockBytes);
    for (let b = 0; b < blocks; ) {
      if ((this.masks[Math.floor(b / per)] & (1 << (b % per))) !== 0) {
        b++;
        continue;
      }
      let e = b + 1;
      while (e < blocks && (this.masks[Math.floor(e / per)] & (1 << (e % per))) === 0) e++;
      const at = b * s.blockBytes;
      await this.write(offset + at, COPY, at, Math.min(e * s.blockBytes, length) - at);
      b = e;
    }
  }

  /** Writes journal entries published so far; false when there were none. */
  private async drainJournal(): Promise<boolean> {
    const s = this.s;
    // Atomics.load of READY_HEAD: the device stored the ring slots, ENTRY_BLOCK and the bytes before it.
    const head = Atomics.load(s.i32, BACKUP.READY_HEAD);
    if (head === this.readyTail) return false;
    let next = this.readyTail;
    let failure: unknown = null;
    const lane = async () => {
      while (next !== head && failure === null) {
        const t = next++;
        const e = s.i32[s.at.ready + (t % s.entries)];
        const g = s.i32[s.at.entryBlock + e];
        // Entries that follow in the ring with the next blocks in the next entries (a run read
        // around a chunk: the device lays its blocks out so) go out in the same write.
        let n = 1;
        while (next !== head && n < this.coalesceMaxBlocks) {
          const e2 = s.i32[s.at.ready + (next % s.entries)];
          if (e2 !== e + n || s.i32[s.at.entryBlock + e2] !== g + n) break;
          next++;
          n++;
        }
        // Only the disk's last block may be short, and it can only end a span.
        const length = (n - 1) * s.blockBytes + s.blockLength(g + n - 1, this.init.diskBytes);
        try {
          await this.write(g * s.blockBytes, JOURNAL, e * s.blockBytes, length);
        } catch (err) {
          failure ??= err;
          return;
        }
        this.freeEntries(e, g, n);
      }
    };
    await Promise.all(Array.from({ length: Math.min(DRAIN_WINDOW, head - next) }, lane));
    if (failure !== null) throw failure;
    this.readyTail = head;
    // Progress for the main thread's reports only; the device never reads READY_TAIL (it gets
    // entries back through FREE_HEAD).
    Atomics.store(s.i32, BACKUP.READY_TAIL, this.readyTail);
    return true;
  }

  /**
   * Journal entries e0.. (blocks g0.., `n` of them, one target write) are in the target: the
   * blocks are no longer owed, and the entries go back to the device at once (FREE ring), with
   * the doorbell if a guest request waits.
   */
  private freeEntries(e0: number, g0: number, n: number): void {
    const s = this.s;
    const per = s.blocksPerChunk;
    for (let i = 0; i < n; i++) {
      const g = g0 + i;
      const c = Math.floor(g / per);
      const bit = 1 << (g - c * per);
      this.drained[c] |= bit;
      if ((this.owed[c] & bit) !== 0) {
        this.owed[c] &= ~bit;
        this.owedCount--;
      }
      s.i32[s.at.free + (this.freeHead % s.entries)] = e0 + i;
      this.freeHead++;
    }
    this.fromJournal += n;
    // One store and at most one doorbell for the span's entries, after all their slots.
    // Stored before DEVICE_WAITING is loaded: a device that looked before this store set it first.
    Atomics.store(s.i32, BACKUP.FREE_HEAD, this.freeHead);
    if (Atomics.load(s.i32, BACKUP.DEVICE_WAITING) === 1) native.eventfdWrite(s.init.doorbellFd, 1);
  }

  private markCopied(c: number): void {
    const s = this.s;
    if (s.bit(s.at.copied, c)) return;
    s.setBit(s.at.copied, c);
    this.copied++;
    // Progress for query-backups (main thread's Atomics.load); COPIED bits are published by setBit.
    Atomics.store(s.i32, BACKUP.COPIED, this.copied);
  }

  /** One write to the target, paced to `speed`, with a progress event now and then. */
  private async write(offset: number, buffer: number, at: number, length: number): Promise<void> {
    this.check();
    // A short write (a file system filling up) is followed by one for the rest, which says why.
    for (let done = 0; done < length; ) {
      const r = await (this.dst as EngineIo).rw(
        IoOp.WRITE,
        offset + done,
        buffer,
        at + done,
        length - done,
      );
      if (r <= 0) throw targetFailure(`writing the target at ${offset + done}`, r === 0 ? -28 : r);
      done += r;
    }
    this.written += length;
    // Statistics only: the main thread's Atomics.load reads it when asked; orders nothing else.
    Atomics.store(this.s.i32, BACKUP.FROM_JOURNAL, this.fromJournal);
    const now = performance.now();
    if (now - this.lastProgress >= PROGRESS_INTERVAL_MS) {
      this.lastProgress = now;
      postEvent<BackupCopierEvent>({ type: 'progress', ...this.totals() });
    }
    // `speed` paces the disk pass only: a journal entry may have a guest write waiting on it
    // (journal full), so it is never held back, and while the disk pass waits for its pace the
    // journal is drained as entries arrive (the first bench run slept through a full journal).
    if (buffer === JOURNAL) return;
    this.followSpeed();
    if (this.speed <= 0) return;
    for (let ahead = this.pacer.add(length); ahead > 1; ahead = this.pacer.aheadMs()) {
      const w = waitAsync(this.s.i32, BACKUP.READY_HEAD, this.readyTail, ahead);
      if (w.async) await w.value;
      await this.drainJournal();
      this.check();
      // backup-set-speed notifies READY_HEAD: a new speed ends this wait (a fresh pacer owes
      // nothing), and speed 0 ends pacing.
      this.followSpeed();
      if (this.speed <= 0) return;
    }
  }

  /**
   * backup-set-speed: a new speed from the share (a seqlock the main thread writes) replaces
   * the pace, with no credit; read once per disk-pass write. A read that overlapped a store
   * is dropped and taken at the next write.
   */
  private followSpeed(): void {
    const i32 = this.s.i32;
    const seq = Atomics.load(i32, BACKUP.SPEED_SEQ);
    if (seq === this.speedSeq || (seq & 1) !== 0) return;
    const hi = Atomics.load(i32, BACKUP.SPEED_HI);
    const lo = Atomics.load(i32, BACKUP.SPEED_LO);
    if (Atomics.load(i32, BACKUP.SPEED_SEQ) !== seq) return;
    this.speedSeq = seq;
    this.speed = hi * 2 ** 32 + (lo >>> 0);
    this.pacer = new RatePacer(this.speed);
  }

  /** Sleeps until the device publishes journal entries (or the wait times out, or a cancel wakes it). */
  private async waitReady(): Promise<void> {
    const w = waitAsync(this.s.i32, BACKUP.READY_HEAD, this.readyTail, JOURNAL_WAIT_MS);
    if (w.async) await w.value;
  }

  /** Stops at a cancel or a failed journal read. */
  private check(): void {
    const s = this.s;
    // CANCEL: the main thread's Atomics.store; FAILED_ERRNO: the device's, stored before its
    // STATE says ENDED. Both are plain flags; nothing else is ordered by them.
    if (Atomics.load(s.i32, BACKUP.CANCEL) !== 0)
      throw new CopyFailure('ERR_BACKUP_CANCELLED', 'cancelled (backup-cancel)');
    const errno = Atomics.load(s.i32, BACKUP.FAILED_ERRNO);
    if (errno !== 0)
      throw new CopyFailure(
        'ERR_BACKUP_JOURNAL',
        `saving old blocks into the journal failed: ${errnoText(-errno)}`,
      );
  }

  /** Closes both engines (after the last I/O). */
  close(): void {
    this.src?.engine.close();
    this.dst?.engine.close();
    this.src = null;
    this.dst = null;
    native.retireMapping(this.copyBuf);
  }
}

/** An NBD engine gets a short timeout: a target that went away fails the backup, not the guest. */
function nbdTimeout(engine: CopierEngine): { nbdTimeoutMs?: number } {
  return engine === 'nbd' ? { nbdTimeoutMs: 5000 } : {};
}

function errnoText(result: number): string {
  if (result >= 0) return `short transfer (${result} bytes)`;
  try {
    return getSystemErrorName(result);
  } catch {
    return `errno ${-result}`;
  }
}

function targetFailure(what: string, result: number): CopyFailure {
  return new CopyFailure('ERR_BACKUP_TARGET', `${what} failed: ${errnoText(result)}`);
}

/** Bits set in a 16-bit mask. */
function popcount(m: number): number {
  let n = 0;
  for (let x = m; x !== 0; x &= x - 1) n++;
  return n;
}

/** The thread's scheduling: idle CPU class (or batch), idle I/O class. */
function lowerPriority(policy: 'idle' | 'batch'): void {
  if (policy === 'batch') applyRtOptions({ policy: 'batch' });
  else lowerToBackground();
  try {
    native.ioprioSet(0, IDLE_IOPRIO);
  } catch (err) {
    postLog('warn', `backup copier: idle I/O class refused: ${(err as Error).message}`);
  }
}

runWorker<BackupCopierInit, { chunks: number }, BackupCopierCommand>((init) => {
  lowerPriority(init.policy);
  const copier = new Copier(init);
  // For the device's priority inheritance (journal full): who to boost, and back to what.
  const state = new Int32Array(init.share.state);
  const policy = native.schedGetScheduler(0).policy;
  Atomics.store(state, BACKUP.COPIER_POLICY, policy);
  // Stored before `ready` is posted: the device gets the share only after that (backup-start).
  Atomics.store(state, BACKUP.COPIER_TID, native.gettid());
  copier.open();
  let running: Promise<void> | null = null;
  return {
    ready: { chunks: init.share ? BackupShare.attach(init.share).chunks : 0 },
    handle: () => {
      running ??= copier.run().then(
        (done) => postEvent<BackupCopierEvent>(done),
        (err: unknown) => {
          const code = (err as { code?: string }).code ?? 'ERR_BACKUP';
          postEvent<BackupCopierEvent>({ type: 'failed', code, reason: (err as Error).message });
        },
      );
      return 0;
    },
    shutdown: async () => {
      await running?.catch(() => {});
      copier.close();
    },
  };
});
