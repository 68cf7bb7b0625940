/**
 * Image locking compatible with QEMU's (block/file-posix.c, raw_apply_lock_bytes
 * and raw_check_lock_bytes), so that vhost-rt, qemu-storage-daemon, QEMU and
 * qemu-img see one another's use of an image.
 *
 * QEMU's convention: every permission bit `i` of the block layer (0 consistent
 * read, 1 write, 2 write unchanged, 3 resize) has two lock bytes in the file.
 * A process holding permission `i` takes a shared open-file-description lock
 * (F_OFD_SETLK, F_RDLCK) on byte 100 + i; a process that does not share
 * permission `i` with others takes one on byte 200 + i. Nobody takes an
 * exclusive lock: a process first takes its bytes, then tests (F_OFD_GETLK
 * with F_WRLCK, which reports any lock held through another open file) byte
 * 200 + i for every permission it holds and byte 100 + i for every permission
 * it does not share; a lock found there is a conflict. Taking before testing
 * makes two processes that start at once both see each other and both back
 * off, never both proceed.
 *
 * vhost-rt takes what QEMU's virtio-blk takes for its drive: consistent read
 * (and write, unless read-only), sharing everything but write. So a second
 * writer is refused, a reader beside a writer is refused, and read-only users
 * coexist; `qemu-img info` fails on an image a writable vhost-rt serves, and
 * succeeds with `-U` (force share), as with a running QEMU.
 *
 * The lock lives on a descriptor of its own (O_RDONLY is enough for read
 * locks) that is held until {@link ImageLock.release}; OFD locks belong to the
 * open file, so the engine's own descriptors opening and closing do not touch
 * them, and the kernel drops them when the process dies.
 */
import { closeSync, constants, fstatSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { ConfigError, VhostRtError } from '../errors.js';
import { native } from '../native.js';

/** Byte offset of QEMU's "holds permission i" lock bytes (RAW_LOCK_PERM_BASE). */
export const LOCK_PERM_BASE = 100;
/** Byte offset of QEMU's "does not share permission i" lock bytes (RAW_LOCK_SHARED_BASE). */
export const LOCK_SHARED_BASE = 200;

/** QEMU's block-layer permission bits (BLK_PERM_*), by bit index. */
export const BlkPerm = { CONSISTENT_READ: 0, WRITE: 1, WRITE_UNCHANGED: 2, RESIZE: 3 } as const;
/** One of the {@link BlkPerm} bit indexes. */
export type BlkPermBit = (typeof BlkPerm)[keyof typeof BlkPerm];

const PERM_NAMES = ['consistent read', 'write', 'write unchanged', 'resize'] as const;
/** errno codes with which a file system says it has no OFD locks (QEMU then runs unlocked too). */
const UNSUPPORTED = new Set(['EINVAL', 'ENOTSUP', 'EOPNOTSUPP', 'ENOLCK', 'ENOSYS']);

/** Another process's use of the image conflicts with ours (code `ERR_IMAGE_LOCKED`). */
export class ImageLockError extends VhostRtError {
  constructor(
    message: string,
    /** The QEMU-style lock byte where the conflict was found (101: another writer). */
    readonly lockByte: number,
  ) {
    super('ERR_IMAGE_LOCKED', message);
  }
}

/** What {@link lockImage} should take. */
export interface ImageLockOptions {
  /** Take consistent read only (a shared lock); otherwise write as well. */
  readonly: boolean;
  /** Share write with other writers (QEMU's share-rw=on); default false. */
  shareWrite?: boolean;
  /** Told when the file system cannot lock (the image is then served unlocked). */
  warn?: (message: string) => void;
}

/** A held image lock. */
export interface ImageLock {
  /** The image it locks. */
  readonly path: string;
  /** False when the file system cannot lock and the image is served without one. */
  readonly held: boolean;
  /** Drops the lock (closes its descriptor). Idempotent. */
  release(): void;
}

/** The permissions held and the permissions not shared, for `options`. */
function lockBits(options: ImageLockOptions): { held: BlkPermBit[]; unshared: BlkPermBit[] } {
  const held: BlkPermBit[] = [BlkPerm.CONSISTENT_READ];
  if (!options.readonly) held.push(BlkPerm.WRITE);
  return { held, unshared: options.shareWrite === true ? [] : [BlkPerm.WRITE] };
}

/**
 * Locks `path` as `options` say, or throws an {@link ImageLockError} naming the
 * conflict (`image X is locked for writing by another process (QEMU-style lock
 * byte 101)`). On a file system without OFD locks it warns and returns an
 * unheld lock, as QEMU's `locking=auto` does; a URI (an NBD export) gets an
 * unheld lock too.
 */
export function lockImage(path: string, options: ImageLockOptions): ImageLock {
  // A URI (nbd://...) is not a local file: the server that holds the image locks it.
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(path)) return { path, held: false, release: () => {} };
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new ConfigError(`--image ${path}: cannot open (${code})`, { cause: err });
  }
  try {
    if (!takeBytes(fd, path, options)) {
      closeSync(fd);
      return { path, held: false, release: () => {} };
    }
    checkBytes(fd, path, options);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  let open = true;
  return {
    path,
    held: true,
    release: () => {
      if (open) closeSync(fd);
      open = false;
    },
  };
}

/** The bytes a holder takes: 100 + each permission held, 200 + each not shared. */
function takenBytes(options: ImageLockOptions): number[] {
  const { held, unshared } = lockBits(options);
  return [...held.map((i) => LOCK_PERM_BASE + i), ...unshared.map((i) => LOCK_SHARED_BASE + i)];
}

/** Takes the shared lock bytes; false when the file system has no OFD locks. */
function takeBytes(fd: number, path: string, options: ImageLockOptions): boolean {
  for (const byte of takenBytes(options)) {
    try {
      native.ofdSetLock(fd, 1, byte, 1);
    } catch (err) {
      const code = (err as { code?: string }).code ?? '';
      if (UNSUPPORTED.has(code)) {
        options.warn?.(`image ${path}: the file system cannot lock it (${code}); served unlocked`);
        return false;
      }
      // EAGAIN / EACCES: someone holds an exclusive lock there (not QEMU's way, but a conflict).
      throw lockedError(path, byte, fd, false);
    }
  }
  return true;
}

/** Tests the bytes that would show a conflict; throws the first one found. */
function checkBytes(fd: number, path: string, options: ImageLockOptions): void {
  const { held, unshared } = lockBits(options);
  const taken = new Set(takenBytes(options));
  // Another holder of what we do not share first: a second writer reads "locked for writing".
  const tested = [
    ...unshared.map((i) => LOCK_PERM_BASE + i),
    ...held.map((i) => LOCK_SHARED_BASE + i),
  ];
  for (const byte of tested)
    if (native.ofdTestLock(fd, 2, byte, 1) !== 0)
      throw lockedError(path, byte, fd, taken.has(byte));
}

/** The one-line error for a conflict found at `byte`. */
function lockedError(path: string, byte: number, fd: number, fdHoldsByte: boolean): ImageLockError {
  const shared = byte >= LOCK_SHARED_BASE;
  const perm = byte - (shared ? LOCK_SHARED_BASE : LOCK_PERM_BASE);
  const name = PERM_NAMES[perm] ?? `permission ${perm}`;
  const what = shared
    ? perm === BlkPerm.WRITE
      ? 'against other writers'
      : `against other users needing "${name}"`
    : perm === BlkPerm.WRITE
      ? 'for writing'
      : `for "${name}"`;
  return new ImageLockError(
    `image ${path} is locked ${what} by ${lockHolder(fd, byte, fdHoldsByte)} (QEMU-style lock byte ${byte})`,
    byte,
  );
}

/**
 * Who holds an OFD lock on `byte` of the file under `fd`: "another process
 * (qemu-storage-d, pid 123)", "another device of this process", or "another
 * process" when it cannot be told. /proc/locks shows -1 as the
 * owner of OFD locks, but each holder's /proc/PID/fdinfo/FD lists its locks:
 * scanned only here, on the error path (processes this user may not inspect
 * are skipped).
 */
function lockHolder(fd: number, byte: number, fdHoldsByte: boolean): string {
  let file: string;
  try {
    const st = fstatSync(fd);
    const major = (st.dev >>> 8) & 0xfff;
    const minor = (st.dev & 0xff) | ((st.dev >>> 12) & 0xfff00);
    file = `${hex2(major)}:${hex2(minor)}:${st.ino}`;
  } catch {
    return 'another process';
  }
  // This process's own count includes `fd` itself when it took the same byte.
  let own = 0;
  for (const pid of readdirOrEmpty('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const holders = readdirOrEmpty(`/proc/${pid}/fdinfo`).filter((n) =>
      locksByte(readOrEmpty(`/proc/${pid}/fdinfo/${n}`), file, byte),
    ).length;
    if (holders > 0 && Number(pid) !== process.pid)
      return `another process (${processName(pid)}, pid ${pid})`;
    if (Number(pid) === process.pid) own = holders;
  }
  return own > (fdHoldsByte ? 1 : 0) ? 'another device of this process' : 'another process';
}

/** Whether an fdinfo text has a "lock: N: OFDLCK ... MAJ:MIN:INO START END" line covering `byte` of `file`. */
function locksByte(fdinfo: string, file: string, byte: number): boolean {
  for (const line of fdinfo.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0] !== 'lock:' || f[2] !== 'OFDLCK' || f[6] !== file) continue;
    const end = f[8] === 'EOF' ? Number.POSITIVE_INFINITY : Number(f[8]);
    if (byte >= Number(f[7]) && byte <= end) return true;
  }
  return false;
}

/** The program a process runs: argv[0]'s basename (comm is cut at 15 bytes), else comm. */
function processName(pid: string): string {
  const argv0 = readOrEmpty(`/proc/${pid}/cmdline`).split('\0')[0];
  return basename(argv0) || readOrEmpty(`/proc/${pid}/comm`).trim() || '?';
}

function readdirOrEmpty(path: string): string[] {
  try {
    return readdirSync(path);
  } catch {
    return [];
  }
}

function readOrEmpty(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

/**
 * Ties `lock` to `owner`'s close (an I/O engine): the lock is released right
 * after the owner's own close, so the image stays locked exactly as long as it
 * is served.
 */
export function releaseWithClose<T extends { close(): void }>(owner: T, lock: ImageLock): T {
  const close = owner.close.bind(owner);
  owner.close = () => {
    try {
      close();
    } finally {
      lock.release();
    }
  };
  return owner;
}

/**
 * Opens what serves the locked image (an I/O engine) with `open`: if that
 * throws, the lock is released; otherwise it is released after the engine's
 * own close ({@link releaseWithClose}).
 */
export function lockedWhileOpen<T extends { close(): void }>(lock: ImageLock, open: () => T): T {
  let owner: T;
  try {
    owner = open();
  } catch (err) {
    lock.release();
    throw err;
  }
  return releaseWithClose(owner, lock);
}
