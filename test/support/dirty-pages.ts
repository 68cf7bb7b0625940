/** Reading a vhost-user dirty-log bitmap in tests: one bit per 4 KiB guest page. */

/** Bytes per page of the dirty log (VHOST_LOG_PAGE). */
export const LOG_PAGE = 4096;

/** The pages whose bits are set in `bits` (bit `p % 8` of byte `p / 8`), ascending. */
export function markedPages(bits: Uint8Array): number[] {
  const pages: number[] = [];
  for (let i = 0; i < bits.length; i++) {
    for (let b = 0; b < 8; b++) if ((bits[i] >> b) & 1) pages.push(i * 8 + b);
  }
  return pages;
}

/** The pages guest-physical `[gpa, gpa + len)` touches, ascending. */
export function pagesOf(gpa: number, len: number): number[] {
  const out: number[] = [];
  for (let p = Math.floor(gpa / LOG_PAGE); p <= Math.floor((gpa + len - 1) / LOG_PAGE); p++)
    out.push(p);
  return out;
}
