/**
 * Changed-block tracking (issue 12): one bit per {@link BACKUP_CHUNK_BYTES}
 * chunk of a blk device, set by every guest write, discard and write-zeroes,
 * so that `blockdev-backup sync=incremental` copies only what changed since
 * the last completed backup. Only the device worker touches it (a plain
 * Int32Array, no sharing).
 *
 * Persistence: next to the image, `IMAGE.vhost-rt-cbt` — a 64-byte header
 * (magic, version, chunk size, image size, generation, state) and the
 * bitmap. The file exists only for images that were backed up: it is
 * created (state OPEN) when a backup completes, not at open — users who
 * never back up get no file next to their images. At open the daemon reads
 * an existing file and at once rewrites its state to OPEN; a clean close
 * (SIGTERM, quit, device-del) writes the bitmap and the state CLEAN. A file found OPEN means the daemon died without writing it:
 * writes may have gone unrecorded, so the bitmap is invalid and the next
 * incremental backup is done as a full one (its reply says so). A missing,
 * foreign or resized file is invalid likewise. Two daemons on one image (a
 * live migration's source and destination): the later one finds the file
 * OPEN (invalid) and marks it as its own, so the earlier one's clean close
 * leaves it alone — for that, an image opened with `--share-rw` (the only way
 * two daemons write one image) gets its file at open as before, even without
 * a backup. A block device's bitmap is kept in memory only.
 */
import { randomInt } from 'node:crypto';
import { closeSync, existsSync, openSync, readSync, statSync, writeSync } from 'node:fs';
import { BACKUP_CHUNK_BYTES } from './backup-share.js';

/** Header bytes of a `.vhost-rt-cbt` file. */
export const CBT_HEADER_BYTES = 64;
/** File magic, ASCII. */
export const CBT_MAGIC = 'VRTCBT\0\0';
/** Format version. */
export const CBT_VERSION = 1;
/** Header state: the daemon has the image open (a crash leaves this). */
export const CBT_STATE_OPEN = 1;
/** Header state: written by a clean close; the bitmap is complete. */
export const CBT_STATE_CLEAN = 2;

/** The file name of an image's bitmap. */
export function cbtPath(image: string): string {
  return `${image}.vhost-rt-cbt`;
}

/** A device's dirty bitmap and whether it can be trusted. */
export class ChangedBlocks {
  /** One bit per chunk. */
  bits: Int32Array;
  /** False when writes may have gone unrecorded (first start, crash, resize): incremental means full. */
  valid: boolean;
  /** Why {@link valid} is false; '' when it is true. */
  invalidReason: string;
  /** Completed backups this bitmap has seen (persisted). */
  generation: number;
  /** Chunks covered. */
  chunks: number;
  /**
   * Written into the header at open: a second daemon opening the image (a live migration's
   * destination) writes its own, and then this one's clean close leaves the file alone.
   */
  private readonly owner = randomInt(1, 2 ** 31);
  /** The file exists and this daemon marked it (at open, or when a backup completed). */
  private onDisk = false;
  private warn: (m: string) => void = () => {};

  private constructor(
    chunks: number,
    private readonly path: string | null,
    private readonly imageBytes: number,
  ) {
    this.chunks = chunks;
    this.bits = new Int32Array(Math.ceil(chunks / 32));
    this.valid = false;
    this.invalidReason = 'no changed-block bitmap yet (no full backup since the image was opened)';
    this.generation = 0;
  }

  /** A bitmap kept in memory only (NBD images, read-only devices): invalid after every start. */
  static inMemory(imageBytes: number): ChangedBlocks {
    return new ChangedBlocks(Math.ceil(imageBytes / BACKUP_CHUNK_BYTES), null, imageBytes);
  }

  /**
   * Loads `image`'s bitmap file (when valid) and marks it OPEN at once, so a
   * crash from now on invalidates it. Without a file none is created (until a
   * backup completes), unless `eager` (a `--share-rw` image: the file's owner
   * mark is what tells two daemons apart). I/O errors leave an invalid
   * in-memory bitmap.
   */
  static open(
    image: string,
    imageBytes: number,
    warn: (m: string) => void,
    eager = false,
  ): ChangedBlocks {
    // A block device's directory (/dev) is no place for it: kept in memory only.
    if (!statSync(image).isFile()) return ChangedBlocks.inMemory(imageBytes);
    const path = cbtPath(image);
    const cbt = new ChangedBlocks(Math.ceil(imageBytes / BACKUP_CHUNK_BYTES), path, imageBytes);
    cbt.warn = warn;
    try {
      const exists = existsSync(path);
      if (exists) cbt.load();
      if (exists || eager) {
        cbt.writeHeader(CBT_STATE_OPEN);
        cbt.onDisk = true;
      }
    } catch (err) {
      warn(
        `changed-block bitmap ${path}: ${(err as Error).message}; incremental backups start with a full one`,
      );
      cbt.valid = false;
    }
    return cbt;
  }

  private load(): void {
    const fd = openSync(this.path as string, 'r');
    try {
      const h = Buffer.alloc(CBT_HEADER_BYTES);
      readSync(fd, h, 0, CBT_HEADER_BYTES, 0);
      this.generation = Number(h.readBigUInt64LE(24));
      if (h.toString('latin1', 0, 8) !== CBT_MAGIC || h.readUInt32LE(8) !== CBT_VERSION) {
        this.invalidate('the bitmap file is not one of this version');
        return;
      }
      if (
        h.readUInt32LE(12) !== BACKUP_CHUNK_BYTES ||
        Number(h.readBigUInt64LE(16)) !== this.imageBytes
      ) {
        this.invalidate('the image size or chunk size changed since the bitmap was written');
        return;
      }
      if (h.readUInt32LE(32) !== CBT_STATE_CLEAN) {
        this.invalidate('the daemon did not stop cleanly (crash): writes may be unrecorded');
        return;
      }
      const body = Buffer.from(this.bits.buffer, this.bits.byteOffset, this.bits.byteLength);
      if (readSync(fd, body, 0, body.length, CBT_HEADER_BYTES) !== body.length) {
        this.invalidate('the bitmap file is short');
        return;
      }
      this.valid = true;
      this.invalidReason = '';
    } finally {
      closeSync(fd);
    }
  }

  private header(state: number): Buffer {
    const h = Buffer.alloc(CBT_HEADER_BYTES);
    h.write(CBT_MAGIC, 0, 'latin1');
    h.writeUInt32LE(CBT_VERSION, 8);
    h.writeUInt32LE(BACKUP_CHUNK_BYTES, 12);
    h.writeBigUInt64LE(BigInt(this.imageBytes), 16);
    h.writeBigUInt64LE(BigInt(this.generation), 24);
    h.writeUInt32LE(state, 32);
    h.writeUInt32LE(this.owner, 36);
    return h;
  }

  private writeHeader(state: number): void {
    if (this.path === null) return;
    const fd = openSync(this.path, existsSync(this.path) ? 'r+' : 'w');
    try {
      writeSync(fd, this.header(state), 0, CBT_HEADER_BYTES, 0);
    } finally {
      closeSync(fd);
    }
  }

  /** The header still carries this daemon's owner mark (no other daemon opened the image since). */
  private stillOwned(): boolean {
    try {
      const fd = openSync(this.path as string, 'r');
      try {
        const h = Buffer.alloc(CBT_HEADER_BYTES);
        readSync(fd, h, 0, CBT_HEADER_BYTES, 0);
        return h.readUInt32LE(36) === this.owner;
      } finally {
        closeSync(fd);
      }
    } catch {
      return false;
    }
  }

  /** Marks the bitmap untrustworthy with `reason`; every chunk counts as changed. */
  invalidate(reason: string): void {
    this.valid = false;
    this.invalidReason = reason;
  }

  /** Records a change of bytes [offset, offset + length): a few word operations, no allocation. */
  mark(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / BACKUP_CHUNK_BYTES);
    const last = Math.min(Math.floor((offset + length - 1) / BACKUP_CHUNK_BYTES), this.chunks - 1);
    for (let c = first; c <= last; c++) this.bits[c >>> 5] |= 1 << (c & 31);
  }

  /**
   * Hands the bits over to a backup starting now and begins a fresh record
   * (the changes made during the backup). Returns the bits taken.
   */
  take(): Int32Array {
    const taken = this.bits;
    this.bits = new Int32Array(taken.length);
    return taken;
  }

  /** A backup that took `taken` failed or was cancelled: its chunks count as changed again. */
  giveBack(taken: Int32Array): void {
    for (let i = 0; i < taken.length; i++) this.bits[i] |= taken[i];
  }

  /**
   * A backup completed: from now on the bitmap records exactly the changes since its start
   * instant. The first one creates the file (state OPEN: a crash from here invalidates it);
   * one small synchronous write on the device's thread, once per image.
   */
  completed(): void {
    this.valid = true;
    this.invalidReason = '';
    this.generation++;
    if (this.path === null || this.onDisk) return;
    try {
      this.writeHeader(CBT_STATE_OPEN);
      this.onDisk = true;
    } catch (err) {
      this.warn(
        `changed-block bitmap ${this.path}: ${(err as Error).message}; it is kept in memory only`,
      );
    }
  }

  /** The image is resized: the bitmap no longer covers it, the next incremental is a full one. */
  resized(imageBytes: number): void {
    this.chunks = Math.ceil(imageBytes / BACKUP_CHUNK_BYTES);
    this.bits = new Int32Array(Math.ceil(this.chunks / 32));
    this.invalidate('the image was resized');
  }

  /** Clean close: writes the bitmap, then the header with state CLEAN (only a valid bitmap is kept valid). */
  persist(): void {
    if (this.path === null || !this.onDisk || !this.stillOwned()) return;
    const fd = openSync(this.path, 'w');
    try {
      const body = Buffer.from(this.bits.buffer, this.bits.byteOffset, this.bits.byteLength);
      writeSync(fd, body, 0, body.length, CBT_HEADER_BYTES);
      writeSync(
        fd,
        this.header(this.valid ? CBT_STATE_CLEAN : CBT_STATE_OPEN),
        0,
        CBT_HEADER_BYTES,
        0,
      );
    } finally {
      closeSync(fd);
    }
  }
}
