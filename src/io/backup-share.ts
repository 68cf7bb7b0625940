/**
 * The shared state of one live backup (issue 12) between the blk device
 * worker and the backup copier thread: a journal of old chunks (bytes in a
 * page-aligned buffer, so O_DIRECT reads land there), two single-producer
 * rings of entry numbers (READY: device → copier, FREE: copier → device) and
 * three bitmaps with one writer each (DESIGN.md rule 6; every slot is named
 * in src/locking/layout.ts). No lock: each side writes only its own slots.
 *
 * The ordering rule that makes the copy exact: the device sets a chunk's
 * CLAIMED bit (Atomics.store) BEFORE it submits the journal read and, after
 * that read completed, the guest's write; the copier reads a chunk from disk
 * and only THEN loads CLAIMED (Atomics.load). Sequentially consistent atomics
 * put the store and the load in one order: if the copier saw 0, the claim
 * and therefore the guest write came after its read, so it read the old
 * bytes; if it saw 1, it drops what it read and the journal's copy wins.
 */
import { BACKUP, BACKUP_MAGIC_VALUE, BackupState, backupLayout } from '../locking/layout.js';
import { native } from '../native.js';

/** Bytes per chunk: the unit the backup copies and journals, and changed-block tracking's granularity. */
export const BACKUP_CHUNK_BYTES = 64 * 1024;
/** Journal size when `journal-size` is not given: 16 MiB (256 chunks). */
export const DEFAULT_JOURNAL_BYTES = 16 * 1024 * 1024;
/** Smallest and largest journal. */
export const MIN_JOURNAL_BYTES = 4 * BACKUP_CHUNK_BYTES;
/** Largest journal: 1 GiB. */
export const MAX_JOURNAL_BYTES = 1024 * 1024 * 1024;

/** What a backup's share is made of, as it is posted to the two threads. */
export interface BackupShareInit {
  /** The Int32 state (header, rings, bitmaps). */
  state: SharedArrayBuffer;
  /** The journal's bytes: entry e at e * chunkBytes; page-aligned (a memfd mapping). */
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
    this.chunks = this.i32[BACKUP.CHUNKS];
    this.entries = this.i32[BACKUP.ENTRIES];
    this.at = backupLayout(this.chunks, this.entries);
  }

  /**
   * Allocates a share for a disk of `diskBytes` with a journal of
   * `journalBytes` (whole chunks) and a doorbell eventfd; the caller closes
   * the fd with {@link release} once both threads are done.
   */
  static create(diskBytes: number, journalBytes: number): BackupShare {
    const chunks = Math.ceil(diskBytes / BACKUP_CHUNK_BYTES);
    const entries = Math.floor(journalBytes / BACKUP_CHUNK_BYTES);
    const layout = backupLayout(chunks, entries);
    const state = new SharedArrayBuffer(layout.total * 4);
    const i32 = new Int32Array(state);
    i32[BACKUP.MAGIC] = BACKUP_MAGIC_VALUE;
    i32[BACKUP.CHUNK_BYTES] = BACKUP_CHUNK_BYTES;
    i32[BACKUP.CHUNKS] = chunks;
    i32[BACKUP.ENTRIES] = entries;
    i32[BACKUP.STATE] = BackupState.PENDING;
    // A memfd mapping: page-aligned, so O_DIRECT reads into it need no bounce buffer.
    const fd = native.memfdCreate('vhost-rt-backup-journal', entries * BACKUP_CHUNK_BYTES);
    let journal: SharedArrayBuffer;
    try {
      journal = native.mmapShared(fd, entries * BACKUP_CHUNK_BYTES, 0);
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
}
