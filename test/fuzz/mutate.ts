/**
 * Byte-level mutations in the manner of libFuzzer's mutators: bit flips,
 * boundary values written at aligned and unaligned offsets, insertions,
 * deletions, duplicated runs and splices with another input. Used on wire
 * payloads and on guest-memory contents.
 */
import type { Prng } from './prng.js';

/** u8/u16/u32/u64 values that sit on a boundary somebody may have got wrong. */
const INTERESTING_32 = [
  0, 1, 2, 7, 8, 12, 15, 16, 17, 31, 32, 63, 64, 127, 128, 255, 256, 511, 512, 1023, 1024, 4095,
  4096, 4097, 0x7fff, 0x8000, 0xffff, 0x1_0000, 0x10_0000, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe,
  0xffff_ffff,
];

/** An interesting u32 (or, with `wide`, a u64 split into two words). */
export function interestingU32(rng: Prng): number {
  return rng.chance(0.85) ? rng.pick(INTERESTING_32) : rng.u32();
}

function writeU32(out: Uint8Array, at: number, v: number, width: number): void {
  for (let i = 0; i < width && at + i < out.length; i++) out[at + i] = (v >>> (8 * i)) & 0xff;
}

/** Applies 1..`maxSteps` random mutations to a copy of `input`; the result is at most `maxLen` bytes. */
export function mutateBytes(
  rng: Prng,
  input: Uint8Array,
  maxLen: number,
  other?: Uint8Array,
  maxSteps = 4,
): Uint8Array {
  let out: Uint8Array = Uint8Array.from(input);
  const steps = 1 + rng.below(maxSteps);
  for (let s = 0; s < steps; s++) out = mutateOnce(rng, out, maxLen, other);
  return out.length > maxLen ? out.subarray(0, maxLen) : out;
}

function mutateOnce(rng: Prng, b: Uint8Array, maxLen: number, other?: Uint8Array): Uint8Array {
  const len = b.length;
  switch (rng.below(10)) {
    case 0:
      if (len > 0) b[rng.below(len)] ^= 1 << rng.below(8);
      return b;
    case 1:
      if (len > 0) b[rng.below(len)] = rng.u32() & 0xff;
      return b;
    case 2:
    case 3: {
      // A boundary value at an aligned field offset (where decoders read).
      if (len === 0) return b;
      const width = rng.pick([1, 2, 4, 8]);
      const at = rng.chance(0.8) ? rng.below(Math.ceil(len / width)) * width : rng.below(len);
      if (width === 8) {
        writeU32(b, at, interestingU32(rng), 4);
        writeU32(b, at + 4, rng.pick([0, 0, 1, 0x1f_ffff, 0x20_0000, 0xffff_ffff, rng.u32()]), 4);
      } else {
        writeU32(b, at, interestingU32(rng), width);
      }
      return b;
    }
    case 4: {
      // Truncate.
      return b.subarray(0, rng.below(len + 1));
    }
    case 5: {
      // Extend with random or zero bytes.
      const n = rng.pick([1, 4, 8, 16, rng.below(64) + 1]);
      if (len + n > maxLen) return b;
      const out = new Uint8Array(len + n);
      out.set(b);
      if (rng.chance(0.5)) out.set(rng.bytes(n), len);
      return out;
    }
    case 6: {
      // Delete a run.
      if (len === 0) return b;
      const at = rng.below(len);
      const n = 1 + rng.below(Math.min(16, len - at));
      const out = new Uint8Array(len - n);
      out.set(b.subarray(0, at));
      out.set(b.subarray(at + n), at);
      return out;
    }
    case 7: {
      // Duplicate a run in place.
      if (len === 0) return b;
      const at = rng.below(len);
      const n = 1 + rng.below(Math.min(16, len - at));
      if (len + n > maxLen) return b;
      const out = new Uint8Array(len + n);
      out.set(b.subarray(0, at + n));
      out.set(b.subarray(at), at + n);
      return out;
    }
    case 8: {
      // Splice: our head, the other input's tail.
      if (other === undefined || other.length === 0) return b;
      const cut = rng.below(len + 1);
      const from = rng.below(other.length);
      const tail = other.subarray(from, from + Math.max(0, maxLen - cut));
      const out = new Uint8Array(cut + tail.length);
      out.set(b.subarray(0, cut));
      out.set(tail, cut);
      return out;
    }
    default: {
      // Copy a run within the input (overlapping fields, repeated headers).
      if (len < 2) return b;
      const from = rng.below(len);
      const to = rng.below(len);
      const n = 1 + rng.below(Math.min(8, len - Math.max(from, to)));
      b.copyWithin(to, from, from + n);
      return b;
    }
  }
}
