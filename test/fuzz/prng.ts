/**
 * The fuzzers' random source: xorshift32, seeded, so every case is named by a
 * 32-bit seed and replays exactly. Not for anything but picking fuzz cases.
 */

/** xorshift32 with helpers for picking sizes, flags and items. */
export class Prng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0 || 0x9e3779b9;
  }

  /** The next 32 random bits, as an unsigned number. */
  u32(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }

  /** An integer in 0..n-1 (n >= 1). */
  below(n: number): number {
    return n <= 0x1_0000_0000 ? this.u32() % n : Math.floor((this.u32() / 2 ** 32) * n);
  }

  /** An integer in lo..hi inclusive. */
  range(lo: number, hi: number): number {
    return lo + this.below(hi - lo + 1);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }

  /** One element of a non-empty list. */
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)];
  }

  /** `n` random bytes. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }
}

/** Seed of case `index` of a run seeded `runSeed` (splitmix-style mixing, never 0). */
export function caseSeed(runSeed: number, index: number): number {
  let z = (runSeed ^ Math.imul(index + 1, 0x9e3779b9)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0 || 1;
}
