/**
 * Opening a disk image the way every engine needs it: O_DIRECT when asked and
 * allowed, a buffered descriptor beside it for requests whose buffers O_DIRECT
 * cannot take (misaligned guest memory), and the size.
 */
import { closeSync, constants, fstatSync, openSync, readFileSync } from 'node:fs';
import { ConfigError } from '../errors.js';
import { native } from '../native.js';

/** An image opened by {@link openImage}; release both descriptors with {@link closeImage}. */
export interface OpenImage {
  /** Descriptor for aligned requests: O_DIRECT when `direct`. */
  fd: number;
  /** Buffered descriptor for requests O_DIRECT would refuse (same as `fd` when not direct). */
  bufferedFd: number;
  direct: boolean;
  sizeBytes: number;
  /** Alignment of offsets, lengths and memory for `fd`. */
  alignment: number;
}

function openOrExplain(path: string, flags: number): number {
  try {
    return openSync(path, flags);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new ConfigError(`--image ${path}: cannot open (${code})`, { cause: err });
  }
}

/**
 * fstat reports 0 bytes for a block device; sysfs knows its size in 512-byte
 * sectors (whatever its logical block size).
 */
function blockDeviceBytes(rdev: number): number {
  const major = (rdev >>> 8) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  return Number(readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim()) * 512;
}

/** Opens `path`; refuses anything but a regular file or block device. */
export function openImage(
  path: string,
  readonly: boolean,
  direct: boolean,
  warn: (message: string) => void,
): OpenImage {
  const access = readonly ? constants.O_RDONLY : constants.O_RDWR;
  const bufferedFd = openOrExplain(path, access);
  const st = fstatSync(bufferedFd);
  if (!st.isFile() && !st.isBlockDevice()) {
    closeSync(bufferedFd);
    throw new ConfigError(`--image ${path}: not a regular file or block device`);
  }
  const size = st.isBlockDevice() ? blockDeviceBytes(st.rdev) : st.size;
  if (!direct) return { fd: bufferedFd, bufferedFd, direct: false, sizeBytes: size, alignment: 1 };
  try {
    const fd = openSync(path, access | native.constants.O_DIRECT);
    return { fd, bufferedFd, direct: true, sizeBytes: size, alignment: native.blockSize(fd) };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    warn(`--image ${path}: O_DIRECT refused (${code}); falling back to buffered I/O`);
    return { fd: bufferedFd, bufferedFd, direct: false, sizeBytes: size, alignment: 1 };
  }
}

/** Closes both descriptors of an image. */
export function closeImage(image: OpenImage): void {
  if (image.fd !== image.bufferedFd) closeSync(image.fd);
  closeSync(image.bufferedFd);
}
