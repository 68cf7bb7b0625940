/**
 * Byte-range helpers over a popped descriptor chain. The virtio spec forbids a
 * device to assume any framing (§2.6.4), so the 16-byte header, the data and
 * the status byte may each start anywhere and span descriptors; these helpers
 * address the readable and writable parts as plain byte streams.
 */
import type { IoEngine } from '../../io/engine.js';
import type { DescriptorChain } from '../../virtio/index.js';

/** Where a byte of the chain lives: a segment index and the offset inside it. */
export interface ChainCursor {
  segment: number;
  within: number;
}

/**
 * Moves `cursor` to byte `pos` of the part that starts at segment `first`
 * (readable part: 0; writable part: chain.firstWritable). Returns false when
 * the part is shorter than `pos`.
 */
export function seek(
  chain: DescriptorChain,
  first: number,
  end: number,
  pos: number,
  cursor: ChainCursor,
): boolean {
  let rest = pos;
  for (let s = first; s < end; s++) {
    const len = chain.length[s];
    if (rest < len) {
      cursor.segment = s;
      cursor.within = rest;
      return true;
    }
    rest -= len;
  }
  cursor.segment = end;
  cursor.within = 0;
  return rest === 0;
}

/** Copies `out.length` bytes starting at readable byte `pos` into `out`. */
export function copyFromChain(
  chain: DescriptorChain,
  memory: readonly Uint8Array[],
  pos: number,
  out: Uint8Array,
  cursor: ChainCursor,
): boolean {
  if (!seek(chain, 0, chain.firstWritable, pos, cursor)) return false;
  let done = 0;
  for (
    let s = cursor.segment, w = cursor.within;
    s < chain.firstWritable && done < out.length;
    s++, w = 0
  ) {
    const take = Math.min(chain.length[s] - w, out.length - done);
    const start = chain.offset[s] + w;
    out.set(memory[chain.region[s]].subarray(start, start + take), done);
    done += take;
  }
  return done === out.length;
}

/** Copies `data` into the writable part starting at writable byte `pos`; returns bytes written. */
export function copyToChain(
  chain: DescriptorChain,
  memory: readonly Uint8Array[],
  pos: number,
  data: Uint8Array,
  cursor: ChainCursor,
): number {
  if (!seek(chain, chain.firstWritable, chain.segments, pos, cursor)) return 0;
  let done = 0;
  for (
    let s = cursor.segment, w = cursor.within;
    s < chain.segments && done < data.length;
    s++, w = 0
  ) {
    const take = Math.min(chain.length[s] - w, data.length - done);
    memory[chain.region[s]].set(data.subarray(done, done + take), chain.offset[s] + w);
    done += take;
  }
  return done;
}

/**
 * Stages iovecs covering `bytes` bytes of the chain starting at `cursor` (as
 * set by seek) and stopping before segment `end`. Returns the number of iovecs
 * staged, or -1 when the engine's staging table is full.
 */
export function stageIovecs(
  chain: DescriptorChain,
  engine: IoEngine,
  cursor: ChainCursor,
  end: number,
  bytes: number,
): number {
  let left = bytes;
  let count = 0;
  for (let s = cursor.segment, w = cursor.within; s < end && left > 0; s++, w = 0) {
    const take = Math.min(chain.length[s] - w, left);
    if (take === 0) continue;
    if (!engine.addIov(chain.region[s], chain.offset[s] + w, take)) return -1;
    left -= take;
    count++;
  }
  return left === 0 ? count : -1;
}
