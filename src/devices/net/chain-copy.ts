/**
 * Copies between a popped descriptor chain's guest buffers and a flat byte
 * array (a packet ring's data area or a staging buffer). Short runs go byte by
 * byte so they create no views; longer runs amortise one subarray view.
 */
import type { DescriptorChain } from '../../virtio/index.js';

const SMALL_COPY = 64;

function copy(src: Uint8Array, srcOff: number, dst: Uint8Array, dstOff: number, n: number): void {
  if (n < SMALL_COPY) {
    for (let i = 0; i < n; i++) dst[dstOff + i] = src[srcOff + i];
  } else {
    dst.set(src.subarray(srcOff, srcOff + n), dstOff);
  }
}

/**
 * Copies `length` bytes of the chain's device-readable part, starting `skip`
 * bytes into it, to `dst[dstOff, ...)`. The caller checked that they exist.
 */
export function readFromChain(
  chain: DescriptorChain,
  bytes: readonly Uint8Array[],
  skip: number,
  dst: Uint8Array,
  dstOff: number,
  length: number,
): void {
  let left = length;
  let out = dstOff;
  for (let s = 0; s < chain.firstWritable && left > 0; s++) {
    const segLen = chain.length[s];
    if (skip >= segLen) {
      skip -= segLen;
      continue;
    }
    const n = Math.min(segLen - skip, left);
    copy(bytes[chain.region[s]], chain.offset[s] + skip, dst, out, n);
    out += n;
    left -= n;
    skip = 0;
  }
}

/**
 * Copies `src[srcOff, srcOff + length)` into the chain's device-writable part
 * starting `skip` bytes into it; returns how many bytes fitted.
 */
export function writeToChain(
  chain: DescriptorChain,
  bytes: readonly Uint8Array[],
  skip: number,
  src: Uint8Array,
  srcOff: number,
  length: number,
): number {
  let left = length;
  let from = srcOff;
  for (let s = chain.firstWritable; s < chain.segments && left > 0; s++) {
    const segLen = chain.length[s];
    if (skip >= segLen) {
      skip -= segLen;
      continue;
    }
    const n = Math.min(segLen - skip, left);
    copy(src, from, bytes[chain.region[s]], chain.offset[s] + skip, n);
    from += n;
    left -= n;
    skip = 0;
  }
  return length - left;
}

/** Where one byte of a chain's writable part lives: region index (-1: beyond the chain) and offset. */
export interface ByteLocation {
  region: number;
  offset: number;
}

/** Finds byte `index` of the chain's device-writable part. */
export function locateWritable(chain: DescriptorChain, index: number, out: ByteLocation): void {
  let skip = index;
  for (let s = chain.firstWritable; s < chain.segments; s++) {
    if (skip < chain.length[s]) {
      out.region = chain.region[s];
      out.offset = chain.offset[s] + skip;
      return;
    }
    skip -= chain.length[s];
  }
  out.region = -1;
}
