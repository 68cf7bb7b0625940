/**
 * The overlay file of a redirect backup (issue 12, `method: redirect`): while
 * the backup runs, the guest's writes go here instead of into the image, so the
 * image stays exactly as it was at the start instant and the copier reads it
 * with no copy-before-write at all. After the backup the overlay is merged back.
 *
 * Layout (little-endian):
 *
 *   [0, 4096)                   header: magic "VHRTROW1", version, unit bytes,
 *                               disk bytes, bitmap offset and length, data offset,
 *                               flags (bit 0: KEEP, see below)
 *   [4096, 4096 + bitmapBytes)  one bit per unit of the disk (unit i: byte i >> 3,
 *                               bit i & 7): set means the unit's current contents
 *                               are in the data area, not in the image
 *   [dataOffset, + diskBytes)   the data area: unit i at dataOffset + i × unit,
 *                               the same place as in the image (no allocation map:
 *                               the file is sparse, only written units take space)
 *
 * Why the disk's own offsets instead of a log: a guest write is then ONE write to
 * the overlay whatever it overwrites, a read is at most a few runs, and there is no
 * map but the bitmap to keep crash-safe. The file system allocates the blocks on
 * first write (a cost the bench measures against the journal's read).
 *
 * PREFILLED (`prefill-overlay`, always with KEEP): the whole data area was
 * written once, so no guest write ever allocates a block in it: a redirected
 * write is an overwrite, as a write into the image is. Sparse or fallocated
 * (unwritten extents) data areas make every first write allocate or convert an
 * extent, a metadata transaction in the guest's write path
 * (bench/overlay-alloc.sh: the "written" rows are what a prefilled overlay
 * gives). How the pass writes matters too (prefillRedirectFile).
 * The price: the image's size in space, and one pass of writes before the first
 * backup with it starts (paced at the backup's speed by a RatePacer).
 *
 * KEEP (`keep-overlay`): once merged the file is not removed but kept, its bitmap
 * clear, and the next redirect backup of the image reuses it. Why: the data area
 * is sparse, and a guest write into a block the file system has not allocated
 * is slower than an overwrite (allocation, a metadata journal commit; measured in
 * bench/results/backup-redirect.md); blocks written by an earlier backup stay
 * allocated. The price: the file keeps the space of every block ever redirected.
 *
 * Crash safety: the bitmap on disk is what a crash leaves. The device writes its
 * changed pages and fdatasyncs the overlay before it completes a guest flush, so
 * every write the guest was told is durable is found again; {@link recoverRedirect}
 * merges a leftover overlay into the image when the device opens next.
 */

import { randomFillSync } from 'node:crypto';
import {
  closeSync,
  constants,
  existsSync,
  fdatasyncSync,
  fstatSync,
  fsyncSync,
  openSync,
  readSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { open, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { VhostRtError } from '../errors.js';
import { native } from '../native.js';
import { RatePacer } from './rate-pacer.js';

/** "VHRTROW1": vhost-rt redirect-on-write, format 1. */
const MAGIC = Buffer.from('VHRTROW1', 'latin1');
/** The header's size, and where the bitmap starts. */
export const REDIRECT_HEADER_BYTES = 4096;
/** The data area starts on a MiB: O_DIRECT alignment of the disk's offsets carries over. */
const DATA_ALIGN = 1024 * 1024;
/** The bitmap is written in pages of this size. */
export const REDIRECT_BITMAP_PAGE = 4096;
/** Largest run {@link recoverRedirect} copies per read / write. */
const RECOVER_CHUNK = 1024 * 1024;

/**
 * An overlay file is missing, malformed, or does not fit the disk; `code`:
 * ERR_REDIRECT_EXISTS, ERR_REDIRECT_FORMAT, ERR_REDIRECT_IO, ERR_REDIRECT_CANCELLED (a
 * prefill pass stopped by its caller).
 */
export class RedirectFileError extends VhostRtError {}

/** Header flag: the file is kept (bitmap clear) after a merge, for the next backup. */
export const REDIRECT_FLAG_KEEP = 1;
/** Header flag: the whole data area has been written (with a random pattern) once; only with KEEP. */
export const REDIRECT_FLAG_PREFILLED = 2;
/** Bytes per write of the prefill pass: the guest's usual write unit (see prefillRedirectFile). */
const PREFILL_WRITE = 4096;

/**
 * Whether an overlay owes a merge: any that is not KEEP (only a kept one is ever left merged),
 * or a KEEP one with a unit set in `bitmap` (null: unreadable, counted as owing).
 */
function owesMerge(l: RedirectLayout, bitmap: Buffer | null): boolean {
  if ((l.flags & REDIRECT_FLAG_KEEP) === 0 || bitmap === null) return true;
  return bitmap.some((b) => b !== 0);
}

/** Where the parts of an overlay file are. */
export interface RedirectLayout {
  /** Bytes per bitmap bit (the device's logical block size). */
  unitBytes: number;
  diskBytes: number;
  /** Units of the disk: bits in the bitmap. */
  units: number;
  bitmapOffset: number;
  /** Bitmap bytes, whole pages. */
  bitmapBytes: number;
  dataOffset: number;
  /** Header flags ({@link REDIRECT_FLAG_KEEP}). */
  flags: number;
}

/** The overlay file of `image`: next to it, like the changed-block bitmap. */
export function redirectPath(image: string): string {
  return `${image}.vhost-rt-redirect`;
}

/** The layout of an overlay for a disk of `diskBytes` with `unitBytes` per bit. */
export function redirectLayout(diskBytes: number, unitBytes: number, flags = 0): RedirectLayout {
  const units = Math.ceil(diskBytes / unitBytes);
  const bitmapBytes =
    Math.ceil(Math.ceil(units / 8) / REDIRECT_BITMAP_PAGE) * REDIRECT_BITMAP_PAGE ||
    REDIRECT_BITMAP_PAGE;
  const bitmapOffset = REDIRECT_HEADER_BYTES;
  const dataOffset = Math.ceil((bitmapOffset + bitmapBytes) / DATA_ALIGN) * DATA_ALIGN;
  return { unitBytes, diskBytes, units, bitmapOffset, bitmapBytes, dataOffset, flags };
}

function encodeHeader(l: RedirectLayout): Buffer {
  const h = Buffer.alloc(REDIRECT_HEADER_BYTES);
  MAGIC.copy(h, 0);
  h.writeUInt32LE(1, 8);
  h.writeUInt32LE(l.unitBytes, 12);
  h.writeBigUInt64LE(BigInt(l.diskBytes), 16);
  h.writeBigUInt64LE(BigInt(l.bitmapOffset), 24);
  h.writeBigUInt64LE(BigInt(l.bitmapBytes), 32);
  h.writeBigUInt64LE(BigInt(l.dataOffset), 40);
  h.writeUInt32LE(l.flags, 48);
  return h;
}

/** Decodes and checks a header; throws ERR_REDIRECT_FORMAT naming what is wrong. */
export function decodeRedirectHeader(h: Buffer, path: string): RedirectLayout {
  const bad = (what: string) =>
    new RedirectFileError('ERR_REDIRECT_FORMAT', `overlay ${path}: ${what}`);
  if (h.length < 48 || !h.subarray(0, 8).equals(MAGIC)) throw bad('not a vhost-rt overlay');
  if (h.readUInt32LE(8) !== 1) throw bad(`format version ${h.readUInt32LE(8)} is not 1`);
  const unitBytes = h.readUInt32LE(12);
  if (unitBytes < 512 || (unitBytes & (unitBytes - 1)) !== 0)
    throw bad(`unit of ${unitBytes} bytes`);
  const diskBytes = Number(h.readBigUInt64LE(16));
  const flags = h.readUInt32LE(48);
  if ((flags & ~(REDIRECT_FLAG_KEEP | REDIRECT_FLAG_PREFILLED)) !== 0)
    throw bad(`unknown flags 0x${flags.toString(16)}`);
  if ((flags & REDIRECT_FLAG_PREFILLED) !== 0 && (flags & REDIRECT_FLAG_KEEP) === 0)
    throw bad('flagged prefilled but not kept');
  const expected = redirectLayout(diskBytes, unitBytes, flags);
  if (
    Number(h.readBigUInt64LE(24)) !== expected.bitmapOffset ||
    Number(h.readBigUInt64LE(32)) !== expected.bitmapBytes ||
    Number(h.readBigUInt64LE(40)) !== expected.dataOffset
  )
    throw bad('its layout does not match its disk size');
  return expected;
}

/**
 * Creates the overlay at `path` for a disk of `diskBytes`, sparse, with its header
 * and an empty bitmap durable before it is used; with `keep`, flagged KEEP. One
 * there already is reused when it is a KEEP overlay of this disk size whose bitmap
 * is clear (merged); a kept one of another size, or asked for without `keep`, with
 * a clear bitmap is replaced; any other is refused (ERR_REDIRECT_EXISTS: a previous backup's writes are not merged
 * yet). Off the calling thread (fs/promises).
 */
export async function createRedirectFile(
  path: string,
  diskBytes: number,
  unitBytes: number,
  keep = false,
  prefill?: RedirectPrefill,
): Promise<RedirectLayout> {
  if (prefill !== undefined) keep = true;
  const l = redirectLayout(diskBytes, unitBytes, keep ? REDIRECT_FLAG_KEEP : 0);
  const existing = await inspectExisting(path);
  if (existing !== null) {
    if (existing.pending)
      throw new RedirectFileError(
        'ERR_REDIRECT_EXISTS',
        `overlay ${path} exists: a previous redirect backup's writes are not merged yet`,
      );
    if (
      keep &&
      existing.layout.diskBytes === diskBytes &&
      existing.layout.unitBytes === unitBytes
    ) {
      const had = existing.layout.flags & REDIRECT_FLAG_PREFILLED;
      if (prefill === undefined || had !== 0) return { ...l, flags: l.flags | had };
      await prefillRedirectFile(path, l, prefill);
      return { ...l, flags: l.flags | REDIRECT_FLAG_PREFILLED };
    }
    // Merged, and not reusable as asked: a fresh one.
    await unlink(path);
  }
  let f: Awaited<ReturnType<typeof open>>;
  try {
    f = await open(path, 'wx', 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new RedirectFileError('ERR_REDIRECT_IO', `overlay ${path}: cannot create (${code})`, {
      cause: err,
    });
  }
  try {
    await f.write(encodeHeader(l), 0, REDIRECT_HEADER_BYTES, 0);
    await f.truncate(l.dataOffset + diskBytes);
    await f.sync();
  } catch (err) {
    await f.close();
    await unlink(path).catch(() => {});
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new RedirectFileError('ERR_REDIRECT_IO', `overlay ${path}: cannot write (${code})`, {
      cause: err,
    });
  }
  await f.close();
  await syncDirectory(path);
  if (prefill === undefined) return l;
  await prefillRedirectFile(path, l, prefill);
  return { ...l, flags: l.flags | REDIRECT_FLAG_PREFILLED };
}

/** How {@link createRedirectFile} prefills a data area (`prefill-overlay`). */
export interface RedirectPrefill {
  /** Pace of the pass in bytes per second (the backup's `speed`); 0: as fast as the disk goes. */
  bytesPerSecond: number;
  /** Told the bytes of the data area written so far, after each write. */
  progress?: (bytes: number) => void;
  /** Asked before each write: true stops the pass (ERR_REDIRECT_CANCELLED), the file unflagged. */
  cancelled?: () => boolean;
}

/**
 * Writes the whole data area of the merged, kept overlay at `path` (layout
 * `l`) once, paced, makes it durable, and only then sets PREFILLED in its
 * header: a crash in between leaves a file that is simply prefilled again next
 * time. Off the calling thread (fs/promises), one write at a time, so one
 * threadpool thread at most.
 *
 * How it writes, both measured on this machine's virtual disk
 * (bench/file-write-spread.sh, bench/results/backup-redirect.md):
 * - With O_DIRECT, {@link PREFILL_WRITE} bytes per write: how a block was
 *   first written decides how fast the disk later takes 4k random writes into
 *   it. Files first written through the page cache took them at 30–35k IOPS,
 *   files written with O_DIRECT in 1 MiB writes at 82–106k, in 64 KiB writes at
 *   131–154k, in 4 KiB writes at 165–174k: storage below that maps a block as
 *   it was first written (copy-on-write host files do) pays for a small
 *   overwrite inside a large first write. (Three runs in a row showed it; a
 *   fourth, on another region of the disk, did not: a hypothesis, and O_DIRECT
 *   also keeps the pass out of the page cache.) Where O_DIRECT is refused
 *   (tmpfs) the pass writes through the page cache.
 * - Not zeros: zram keeps a zero page as no page (and thin storage may keep a
 *   zero block unallocated), so a guest's first write there would allocate.
 *   One random block, repeated: content did not change the rates above.
 * @throws RedirectFileError ERR_REDIRECT_IO naming the file and errno; ERR_REDIRECT_CANCELLED
 *   when `prefill.cancelled` said so.
 */
async function prefillRedirectFile(
  path: string,
  l: RedirectLayout,
  prefill: RedirectPrefill,
): Promise<void> {
  let f: Awaited<ReturnType<typeof open>> | null = null;
  try {
    f = await openDirectOrBuffered(path);
    const block = alignedRandomBlock();
    const pacer = new RatePacer(prefill.bytesPerSecond);
    for (let done = 0; done < l.diskBytes; ) {
      if (prefill.cancelled?.() === true)
        throw new RedirectFileError('ERR_REDIRECT_CANCELLED', `overlay ${path}: prefill cancelled`);
      const n = Math.min(PREFILL_WRITE, l.diskBytes - done);
      try {
        await f.write(block, 0, n, l.dataOffset + done);
      } catch (err) {
        // A short tail O_DIRECT cannot write (a disk size not a multiple of the file
        // system's direct I/O alignment): that one through the page cache.
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL' || n === PREFILL_WRITE) throw err;
        await f.close();
        f = await open(path, 'r+');
        continue;
      }
      done += n;
      prefill.progress?.(done);
      const ahead = pacer.add(n);
      if (ahead > 1) await new Promise((resolve) => setTimeout(resolve, ahead));
    }
    await f.datasync();
    await f.close();
    // The header is not a block of the data area: through the page cache.
    f = await open(path, 'r+');
    await f.write(encodeHeader({ ...l, flags: l.flags | REDIRECT_FLAG_PREFILLED }), 0, 64, 0);
    await f.datasync();
  } catch (err) {
    if (err instanceof RedirectFileError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new RedirectFileError('ERR_REDIRECT_IO', `overlay ${path}: cannot prefill (${code})`, {
      cause: err,
    });
  } finally {
    await f?.close();
  }
}

/** `path` opened read-write with O_DIRECT, or without where the file system refuses it. */
async function openDirectOrBuffered(path: string): Promise<Awaited<ReturnType<typeof open>>> {
  try {
    return await open(path, constants.O_RDWR | constants.O_DIRECT);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    return await open(path, 'r+');
  }
}

/** {@link PREFILL_WRITE} random bytes in page-aligned memory (a memfd mapping), as O_DIRECT needs. */
function alignedRandomBlock(): Uint8Array {
  const fd = native.memfdCreate('vhost-rt-prefill', PREFILL_WRITE);
  try {
    const block = new Uint8Array(native.mmapShared(fd, PREFILL_WRITE, 0));
    randomFillSync(block);
    return block;
  } finally {
    native.close(fd);
  }
}

/**
 * An overlay at `path`: its layout and whether any unit is still redirected
 * (pending a merge); null when there is none. A file that is not an overlay counts
 * as pending (it is refused, never overwritten).
 */
async function inspectExisting(
  path: string,
): Promise<{ layout: RedirectLayout; pending: boolean } | null> {
  let f: Awaited<ReturnType<typeof open>>;
  try {
    f = await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  try {
    const h = Buffer.alloc(REDIRECT_HEADER_BYTES);
    await f.read(h, 0, h.length, 0);
    let layout: RedirectLayout;
    try {
      layout = decodeRedirectHeader(h, path);
    } catch {
      return { layout: redirectLayout(0, 512), pending: true };
    }
    const bitmap = Buffer.alloc(layout.bitmapBytes);
    const { bytesRead } = await f.read(bitmap, 0, bitmap.length, layout.bitmapOffset);
    return { layout, pending: owesMerge(layout, bytesRead < bitmap.length ? null : bitmap) };
  } finally {
    await f.close();
  }
}

/**
 * Whether the overlay at `path` is merged, kept and prefilled for a disk of `diskBytes`, so a
 * `prefill-overlay` backup starts without a pass (its unit size is the device's and is not
 * checked here: a device whose block size changed recreates and prefills it regardless).
 * False when there is none or it is unreadable.
 */
export async function redirectPrefilled(path: string, diskBytes: number): Promise<boolean> {
  let existing: Awaited<ReturnType<typeof inspectExisting>>;
  try {
    existing = await inspectExisting(path);
  } catch {
    return false;
  }
  return (
    existing !== null &&
    !existing.pending &&
    existing.layout.diskBytes === diskBytes &&
    (existing.layout.flags & REDIRECT_FLAG_PREFILLED) !== 0
  );
}

/** fsync of the directory holding `path`: its creation or removal survives a crash. */
async function syncDirectory(path: string): Promise<void> {
  const d = await open(dirname(path), 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/** Removes an overlay (merged), and makes the removal durable. */
export async function removeRedirectFile(path: string): Promise<void> {
  await unlink(path);
  await syncDirectory(path);
}

/** What {@link recoverRedirect} merged. */
export interface RedirectRecovery {
  path: string;
  /** Bytes copied into the image. */
  bytes: number;
  runs: number;
}

/**
 * Merges the overlay a stopped or crashed daemon left next to `image` into the
 * image (through `imageFd`, a writable descriptor without O_DIRECT), makes the
 * image durable, then removes the overlay. Null when there is none. Runs at
 * device open, before the guest is served: blocking calls are fine there.
 * Throws RedirectFileError when the overlay is unreadable or does not fit the
 * image — the device then does not open: serving the image without the overlay
 * would hand the guest data older than what it was told is on disk.
 */
export function recoverRedirect(image: string, imageFd: number): RedirectRecovery | null {
  const path = redirectPath(image);
  if (!existsSync(path)) return null;
  const fd = openSync(path, constants.O_RDONLY);
  try {
    const h = Buffer.alloc(REDIRECT_HEADER_BYTES);
    readFully(fd, h, 0, path);
    const l = decodeRedirectHeader(h, path);
    const bitmap = Buffer.alloc(l.bitmapBytes);
    readFully(fd, bitmap, l.bitmapOffset, path);
    // A kept, merged overlay owes nothing: left as it is.
    if (!owesMerge(l, bitmap)) {
      closeSync(fd);
      return null;
    }
    // Larger is fine (grown outside while the overlay existed): the overlay covers its start.
    const imageBytes = fstatSync(imageFd).size;
    if (imageBytes < l.diskBytes)
      throw new RedirectFileError(
        'ERR_REDIRECT_FORMAT',
        `overlay ${path} is for a disk of ${l.diskBytes} bytes, the image has only ${imageBytes}`,
      );
    const buf = Buffer.alloc(RECOVER_CHUNK);
    const maxUnits = RECOVER_CHUNK / l.unitBytes;
    let bytes = 0;
    let runs = 0;
    let u = 0;
    while (u < l.units) {
      if ((bitmap[u >>> 3] & (1 << (u & 7))) === 0) {
        u++;
        continue;
      }
      let n = 1;
      while (
        u + n < l.units &&
        n < maxUnits &&
        (bitmap[(u + n) >>> 3] & (1 << ((u + n) & 7))) !== 0
      )
        n++;
      const offset = u * l.unitBytes;
      const length = Math.min(n * l.unitBytes, l.diskBytes - offset);
      const view = buf.subarray(0, length);
      readFully(fd, view, l.dataOffset + offset, path);
      let done = 0;
      while (done < length) done += writeSync(imageFd, view, done, length - done, offset + done);
      bytes += length;
      runs++;
      u += n;
    }
    fdatasyncSync(imageFd);
    closeSync(fd);
    if ((l.flags & REDIRECT_FLAG_KEEP) !== 0) {
      // Kept for the next backup: its bitmap cleared, durably, now that the image has it all.
      const w = openSync(path, constants.O_WRONLY);
      try {
        writeSync(w, Buffer.alloc(l.bitmapBytes), 0, l.bitmapBytes, l.bitmapOffset);
        fdatasyncSync(w);
      } finally {
        closeSync(w);
      }
      return { path, bytes, runs };
    }
    unlinkSync(path);
    const d = openSync(dirname(path), constants.O_RDONLY);
    try {
      fsyncSync(d);
    } finally {
      closeSync(d);
    }
    return { path, bytes, runs };
  } catch (err) {
    try {
      closeSync(fd);
    } catch {
      // closed already (after the merge)
    }
    if (err instanceof RedirectFileError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new RedirectFileError(
      'ERR_REDIRECT_IO',
      `overlay ${path}: merging it into the image failed (${code})`,
      { cause: err },
    );
  }
}

/**
 * Whether `image` has an overlay with units still redirected (a merge is owed). A kept,
 * merged overlay (KEEP, bitmap clear) is not pending; a file there that is not an overlay
 * is (it is then refused by name rather than ignored).
 */
export function redirectPending(image: string): boolean {
  const path = redirectPath(image);
  if (!existsSync(path)) return false;
  const fd = openSync(path, constants.O_RDONLY);
  try {
    const h = Buffer.alloc(REDIRECT_HEADER_BYTES);
    if (readSync(fd, h, 0, h.length, 0) < 48) return true;
    let l: RedirectLayout;
    try {
      l = decodeRedirectHeader(h, path);
    } catch {
      return true;
    }
    const bitmap = Buffer.alloc(l.bitmapBytes);
    const n = readSync(fd, bitmap, 0, bitmap.length, l.bitmapOffset);
    return owesMerge(l, n < bitmap.length ? null : bitmap);
  } finally {
    closeSync(fd);
  }
}

function readFully(fd: number, into: Buffer, position: number, path: string): void {
  let done = 0;
  while (done < into.length) {
    const n = readSync(fd, into, done, into.length - done, position + done);
    if (n === 0) throw new RedirectFileError('ERR_REDIRECT_FORMAT', `overlay ${path} is truncated`);
    done += n;
  }
}
