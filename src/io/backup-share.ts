/**
 * The shared state of one live backup (issue 12) between the blk device
 * worker and the backup copier thread: a journal of old 4 KiB blocks (bytes
 * in a page-aligned buffer, so O_DIRECT reads land there), two
 * single-producer rings of entry numbers (READY: device → copier, FREE:
 * copier → device) and three bitmaps with one writer each (DESIGN.md rule 6;
 * every slot is named in src/locking/layout.ts). No lock: each side writes
 * only its own slots.
 *
 * Two units: the disk pass copies 64 KiB chunks (and NEEDED / COPIED and
 * changed-block tracking count chunks), the journal saves 4 KiB blocks — only
 * the blocks a guest write overwrites, so a first write to a chunk waits for
 * a 4 KiB read, not a 64 KiB one, and takes one 4 KiB entry (the bench showed
 * 64 KiB entries filling a 16 MiB journal in a fraction of a second at QD1).
 *
 * The ordering rule that makes the copy exact: the device sets a block's
 * CLAIMED bit (Atomics.store) BEFORE it submits the journal read and, after
 * that read completed, the guest's write; the copier reads a chunk from disk
 * and only THEN loads the chunk's CLAIMED word (Atomics.load). Sequentially
 * consistent atomics put the store and the load in one order: if the copier
 * saw a block unclaimed, the claim and therefore the guest write came after
 * its read, so it read the old bytes; if it saw it claimed, it does not write
 * it and the journal's copy is the one written.
 */
import { BACKUP, BACKUP_MAGIC_VALUE, BackupState, backupLayout } from '../locking/layout.js';
import { native } from '../native.js';

/** Bytes per chunk: the unit the disk pass copies, and changed-block tracking's granularity. */
export const BACKUP_CHUNK_BYTES = 64 * 1024;
/** Bytes per block: the unit the journal saves (a journal entry holds one block). */
export const BACKUP_BLOCK_BYTES = 4096;
/** Blocks per chunk: chunk c's CLAIMED bits are bits 16·(c mod 2).. of word c / 2. */
export const BLOCKS_PER_CHUNK = BACKUP_CHUNK_BYTES / BACKUP_BLOCK_BYTES;
/**
 * The copier's largest read or write (`max-chunk`) when none is given: 256 KiB. A trade
 * between the backup's pace and the guest's share of the disk (bench/results/backup-max-chunk.md):
 * on this machine's disk under a QD32 guest, 64 KiB copied 3x slower (15 against 44 MiB per
 * 5 s window) while the guest completed 43 % more writes (p50 during/idle 2.24x against 3.25x,
 * p99.9 no better); on zram it changed nothing beyond the runs' spread.
 */
export const DEFAULT_COPY_MAX_CHUNK = 256 * 1024;
/** Least `max-chunk`: one chunk. */
export const MIN_COPY_MAX_CHUNK = BACKUP_CHUNK_BYTES;
/** Most `max-chunk`: 1 MiB. */
export const MAX_COPY_MAX_CHUNK = 1024 * 1024;

/** Journal size when `journal-size` is not given: 16 MiB (4096 blocks). */
export const DEFAULT_JOURNAL_BYTES = 16 * 1024 * 1024;
/** Smallest journal: 4 blocks (a request needing more saved claims them as entries come back). */
export const MIN_JOURNAL_BYTES = 4 * BACKUP_BLOCK_BYTES;
/** Largest journal: 1 GiB. */
export const MAX_JOURNAL_BYTES = 1024 * 1024 * 1024;

/** What a backup's share is made of, as it is posted to the two threads. */
export interface BackupShareInit {
  /** The Int32 state (header, rings, bitmaps). */
  state: SharedArrayBuffer;
  /** The journal's bytes: entry e at e * blockBytes; page-aligned (a memfd mapping). */
  journal: SharedArrayBuffer;
  /** Doorbell from the copier to the device worker: entries were freed while a guest request waited. */
  doorbellFd: number;
}

/** One backup's shared state, viewed from either thread. */
export class BackupShare {
  /** The Int32 view of the state buffer. */
  readonly i32: Int32Array;
  /** Bytes per chunk. */
  readonly chunkBytes: number;
  /** Bytes per block (journal entry). */
  readonly blockBytes: number;
  /** Blocks per chunk. */
  readonly blocksPerChunk: number;
  /** Chunks on the disk. */
  readonly chunks: number;
  /** Journal entries. */
  readonly entries: number;
  /** Offsets of the arrays (see backupLayout). */
  readonly at: ReturnType<typeof backupLayout>;

  private constructor(readonly init: BackupShareInit) {
    this.i32 = new Int32Array(init.state);
    if (this.i32[BACKUP.MAGIC] !== BACKUP_MAGIC_VALUE)
      throw new TypeError('not a backup share (bad magic)');
    this.chunkBytes = this.i32[BACKUP.CHUNK_BYTES];
    this.blockBytes = this.i32[BACKUP.BLOCK_BYTES];
    this.blocksPerChunk = this.chunkBytes / this.blockBytes;
    this.chunks = this.i32[BACKUP.CHUNKS];
    this.entries = this.i32[BACKUP.ENTRIES];
    this.at = backupLayout(this.chunks, this.entries, this.blocksPerChunk);
  }

  /**
   * Allocates a share for a disk of `diskBytes` with a journal of
   * `journalBytes` (whole blocks) and a doorbell eventfd; the caller closes
   * the fd with {@link release} once both threads are done.
   */
  static create(diskBytes: number, journalBytes: number): BackupShare {
    const chunks = Math.ceil(diskBytes / BACKUP_CHUNK_BYTES);
    const entries = Math.floor(journalBytes / BACKUP_BLOCK_BYTES);
    const layout = backupLayout(chunks, entries, BLOCKS_PER_CHUNK);
    const state = new SharedArrayBuffer(layout.total * 4);
    const i32 = new Int32Array(state);
    i32[BACKUP.MAGIC] = BACKUP_MAGIC_VALUE;
    i32[BACKUP.CHUNK_BYTES] = BACKUP_CHUNK_BYTES;
    i32[BACKUP.CHUNKS] = chunks;
    i32[BACKUP.ENTRIES] = entries;
    i32[BACKUP.BLOCK_BYTES] = BACKUP_BLOCK_BYTES;
    i32[BACKUP.STATE] = BackupState.PENDING;
    // A memfd mapping: page-aligned, so O_DIRECT reads into it need no bounce buffer.
    const fd = native.memfdCreate('vhost-rt-backup-journal', entries * BACKUP_BLOCK_BYTES);
    let journal: SharedArrayBuffer;
    try {
      journal = native.mmapShared(fd, entries * BACKUP_BLOCK_BYTES, 0);
    } finally {
      native.close(fd);
    }
    return new BackupShare({ state, journal, doorbellFd: native.eventfd(0) });
  }

  /** The share as another thread received it. */
  static attach(init: BackupShareInit): BackupShare {
    return new BackupShare(init);
  }

  /** Closes the doorbell and unmaps the journal (main thread, after both threads let go). */
  release(): void {
    native.close(this.init.doorbellFd);
    native.retireMapping(this.init.journal);
  }

  /** Bit `chunk` of the bitmap at Int32 offset `base`, read with Atomics.load (see the module comment). */
  bit(base: number, chunk: number): boolean {
    return (Atomics.load(this.i32, base + (chunk >>> 5)) & (1 << (chunk & 31))) !== 0;
  }

  /**
   * Sets bit `chunk` of a bitmap this thread is the only writer of: a plain
   * read of its own word, then Atomics.store, sequentially consistent, so the
   * other thread's later Atomics.load of the word sees it (the claim/copy rule).
   */
  setBit(base: number, chunk: number): void {
    const w = base + (chunk >>> 5);
    Atomics.store(this.i32, w, this.i32[w] | (1 << (chunk & 31)));
  }

  /** Chunk `chunk`'s length in bytes on a disk of `diskBytes` (the last one may be short). */
  chunkLength(chunk: number, diskBytes: number): number {
    return Math.min(this.chunkBytes, diskBytes - chunk * this.chunkBytes);
  }

  /** Block `block`'s length in bytes on a disk of `diskBytes` (the last one may be short). */
  blockLength(block: number, diskBytes: number): number {
    return Math.min(this.blockBytes, diskBytes - block * this.blockBytes);
  }

  /** Mask of the blocks chunk `chunk` has on a disk of `diskBytes` (the last chunk may have fewer). */
  fullMask(chunk: number, diskBytes: number): number {
    const n = Math.ceil(this.chunkLength(chunk, diskBytes) / this.blockBytes);
    return n >= 32 ? -1 : (1 << n) - 1;
  }

  /** Chunk `chunk`'s CLAIMED bits (one per block), read with one Atomics.load (the claim/copy rule). */
  claimedMask(chunk: number): number {
    const per = this.blocksPerChunk;
    const bit = chunk * per;
    const word = Atomics.load(this.i32, this.at.claimed + (bit >>> 5));
    return per === 32 ? word : (word >>> (bit & 31)) & ((1 << per) - 1);
  }

  /**
   * Adds `mask` to chunk `chunk`'s CLAIMED bits: the device's own word (it is the only
   * writer), one Atomics.store, sequentially consistent (the claim/copy rule).
   */
  claim(chunk: number, mask: number): void {
    const bit = chunk * this.blocksPerChunk;
    const w = this.at.claimed + (bit >>> 5);
    Atomics.store(this.i32, w, this.i32[w] | (mask << (bit & 31)));
  }
}
