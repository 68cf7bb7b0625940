/**
 * The one byte copy of the data paths (guest memory to and from chains, ring
 * to ring, staging buffer to ring, into and out of the SPSC byte ring): guest
 * RAM and the rings are SharedArrayBuffers, where a `set` of a short run costs
 * more than the bytes. Runs shorter than {@link SMALL_COPY} go byte by byte
 * and create no view; longer ones pay one short-lived subarray view, which
 * still beats a word loop (measured: ~0.1 µs against ~0.4 µs for 1500 bytes).
 */

/** Below this many bytes a copy is a plain loop. */
export const SMALL_COPY = 64;

/** Copies `src[srcOff, srcOff + length)` to `dst[dstOff, ...)`; the ranges must not overlap. */
export function copyBytes(
  src: Uint8Array,
  srcOff: number,
  dst: Uint8Array,
  dstOff: number,
  length: number,
): void {
  if (length < SMALL_COPY) {
    for (let i = 0; i < length; i++) dst[dstOff + i] = src[srcOff + i];
  } else {
    dst.set(src.subarray(srcOff, srcOff + length), dstOff);
  }
}
