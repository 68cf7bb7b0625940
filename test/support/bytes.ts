/**
 * Byte helpers shared by the data tests: deterministic patterns, cheap
 * comparison (vitest's deep equality walks typed arrays element by element,
 * which takes seconds on megabytes) and reading an image file as it is on disk.
 */
import { closeSync, openSync, readSync } from 'node:fs';

/** Deterministic pseudo-random bytes (xorshift32), different per seed. */
export function pattern(seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** 'equal', or where two byte arrays first differ. */
export function diff(actual: Uint8Array | undefined, expected: Uint8Array): string {
  if (!actual) return 'no data';
  if (Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength).equals(expected))
    return 'equal';
  if (actual.byteLength !== expected.byteLength)
    return `${actual.byteLength} bytes, expected ${expected.byteLength}`;
  const at = actual.findIndex((b, i) => b !== expected[i]);
  return `first difference at byte ${at}: ${actual[at]} != ${expected[at]}`;
}

/** Whether two byte arrays hold the same bytes. */
export function same(actual: Uint8Array | undefined, expected: Uint8Array): boolean {
  return diff(actual, expected) === 'equal';
}

/** `length` bytes of the file at `path` from `offset`, as they are on disk. */
export function onDisk(path: string, offset: number, length: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const out = new Uint8Array(length);
    readSync(fd, out, 0, length, offset);
    return out;
  } finally {
    closeSync(fd);
  }
}
