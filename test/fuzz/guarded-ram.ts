/**
 * Guest RAM for the fuzzers: every region sits between guard bytes inside its
 * buffer (the device side can only reach a buffer through GuestMemory, so a
 * translation bug that steps outside a region lands in a guard), and the
 * small regions can be snapshotted and compared, so that any byte a device
 * changed outside the ranges it was allowed to write is found.
 *
 * The buffers are made once per target and reused by every case; each case
 * builds a fresh GuestRam (allocator) and GuestMemory over them.
 */
import { GuestRam } from '../support/guest-ram.js';
import { FuzzFailure } from './harness.js';

/** Bytes of guard before and after each region. */
export const GUARD = 64;
const GUARD_BYTE = 0xa5;

/** Where a region lives in guest-physical space; `checked` regions are snapshotted. */
export interface RegionSpec {
  guestPhysAddr: number;
  size: number;
  /** Compared byte for byte against a snapshot (keep these small). */
  checked: boolean;
}

/** A byte range the device may write: region index and offset in the region's buffer. */
export interface AllowedRange {
  region: number;
  offset: number;
  length: number;
}

/** Guarded, reusable guest RAM; see the module comment. */
export class GuardedRam {
  readonly buffers: SharedArrayBuffer[];
  private readonly bytes: Uint8Array[];
  private readonly snapshots: Uint8Array[];

  constructor(readonly layout: readonly RegionSpec[]) {
    this.buffers = layout.map((r) => new SharedArrayBuffer(GUARD + r.size + GUARD));
    this.bytes = this.buffers.map((b) => new Uint8Array(b));
    this.snapshots = layout.map((r) => new Uint8Array(r.checked ? r.size : 0));
    this.bytes.forEach((b, i) => {
      this.fillGuards(i, b);
    });
  }

  /** A fresh driver-side view (allocator from the start) over the same buffers. */
  ram(): GuestRam {
    return new GuestRam(
      this.layout.map((r, i) => ({
        guestPhysAddr: r.guestPhysAddr,
        size: r.size,
        mmapOffset: GUARD,
        buffer: this.buffers[i],
      })),
    );
  }

  /** Fills the checked regions with `value` (a new case starts from known contents). */
  clear(value: number): void {
    this.layout.forEach((r, i) => {
      if (r.checked) this.bytes[i].fill(value, GUARD, GUARD + r.size);
    });
  }

  /** Copies the checked regions aside. */
  snapshot(): void {
    this.layout.forEach((r, i) => {
      if (r.checked) this.snapshots[i].set(this.bytes[i].subarray(GUARD, GUARD + r.size));
    });
  }

  /**
   * Throws an `oob` failure if a guard byte changed, or if a byte of a
   * checked region outside `allowed` differs from the snapshot (guards are
   * restored first, so the next case starts clean).
   */
  verify(allowed: readonly AllowedRange[], what: string): void {
    this.checkGuards(what);
    for (let i = 0; i < this.layout.length; i++) {
      if (!this.layout[i].checked) continue;
      const mine = allowed
        .filter((a) => a.region === i && a.length > 0)
        .sort((a, b) => a.offset - b.offset);
      let from = GUARD;
      for (const a of mine) {
        this.compare(i, from, a.offset, what);
        from = Math.max(from, a.offset + a.length);
      }
      this.compare(i, from, GUARD + this.layout[i].size, what);
    }
  }

  /** Throws an `oob` failure if any guard byte changed (and restores them). */
  checkGuards(what: string): void {
    this.layout.forEach((r, i) => {
      const b = this.bytes[i];
      const end = GUARD + r.size;
      for (let k = 0; k < GUARD; k++) {
        if (b[k] !== GUARD_BYTE || b[end + k] !== GUARD_BYTE) {
          const at = b[k] !== GUARD_BYTE ? k - GUARD : r.size + k;
          this.fillGuards(i, b);
          throw new FuzzFailure('oob', `${what}: guard byte at region ${i} offset ${at} written`);
        }
      }
    });
  }

  private compare(region: number, from: number, to: number, what: string): void {
    if (to <= from) return;
    const now = this.bytes[region].subarray(from, to);
    const was = this.snapshots[region].subarray(from - GUARD, to - GUARD);
    if (Buffer.compare(now, was) === 0) return;
    let k = 0;
    while (now[k] === was[k]) k++;
    throw new FuzzFailure(
      'oob',
      `${what}: region ${region} byte at offset ${from - GUARD + k} changed (${was[k]} → ${now[k]}) outside every writable buffer`,
    );
  }

  private fillGuards(i: number, b: Uint8Array): void {
    b.fill(GUARD_BYTE, 0, GUARD);
    b.fill(GUARD_BYTE, GUARD + this.layout[i].size);
  }
}
