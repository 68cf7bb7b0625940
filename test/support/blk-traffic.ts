/**
 * Verified block traffic through the project's front end: write a pattern,
 * read it back, compare — the proof that a device still serves correctly.
 */
import { type BlkDriver, BlkStatus } from '../frontend/index.js';
import { diff, pattern } from './bytes.js';

/** Shape of one round of {@link blkTraffic}. */
export interface TrafficShape {
  /** Bytes written and read back per round. */
  bytes: number;
  /** Rounds cycle over this many slots of `bytes` each (sector = slot * bytes / 512). */
  slots: number;
}

/**
 * Writes and reads back `rounds` patterns (seeded by `seed + round`);
 * resolves to 'ok', or what went wrong, including driver-side violations.
 */
export async function blkTraffic(
  d: BlkDriver,
  rounds: number,
  seed: number,
  shape: TrafficShape,
): Promise<string> {
  for (let i = 0; i < rounds; i++) {
    const data = pattern(seed + i, shape.bytes);
    const sector = (i % shape.slots) * (shape.bytes / 512);
    const w = await d.write(sector, data);
    if (w.status !== BlkStatus.OK) return `write ${i}: status ${w.status}`;
    const r = await d.read(sector, data.length);
    const same = diff(r.data, data);
    if (r.status !== BlkStatus.OK || same !== 'equal')
      return `read ${i}: status ${r.status}, ${same}`;
  }
  return d.violations.length > 0 ? d.violations.join('; ') : 'ok';
}

/** The bytes behind a device (its image file), when a test can look at them. */
export type BackingBytes = (offset: number, length: number) => Uint8Array;

/**
 * The verified traffic every blk back end must carry, from sector `base` on
 * (about 1 MiB): 64 writes in flight (multi-segment when the driver splits
 * buffers), read back; flush; write-zeroes without and with UNMAP and a
 * discard, read back as zeroes; the bytes around them untouched. With
 * `backing`, the written and zeroed bytes are checked there too. Resolves to
 * 'ok' or what went wrong.
 */
export async function blkVerifiedTraffic(
  d: BlkDriver,
  base: number,
  backing?: BackingBytes,
): Promise<string> {
  const size = 16 * 1024;
  const writes = Array.from({ length: 64 }, (_, i) => ({
    type: 'write' as const,
    sector: base + (i * size) / 512,
    data: pattern(base + i, size),
  }));
  const w = await d.submitBatch(writes);
  const failed = w.findIndex((r) => r.status !== BlkStatus.OK);
  if (failed >= 0) return `write ${failed}: status ${w[failed].status}`;
  const reads = await d.submitBatch(
    writes.map((x) => ({ type: 'read' as const, sector: x.sector, length: size })),
  );
  for (const [i, r] of reads.entries()) {
    const same = diff(r.data, writes[i].data);
    if (r.status !== BlkStatus.OK || same !== 'equal') return `read ${i}: ${r.status}, ${same}`;
  }
  const flushed = await d.flush();
  if (flushed.status !== BlkStatus.OK) return `flush: status ${flushed.status}`;
  if (backing) {
    const all = diff(backing(base * 512, 64 * size), concat(writes.map((x) => x.data)));
    if (all !== 'equal') return `backing store after the writes: ${all}`;
  }
  // Sectors base..base+8 zeroed, +8..+16 zeroed with UNMAP, +16..+24 discarded.
  const z1 = await d.writeZeroes(base, 8);
  const z2 = await d.writeZeroes(base + 8, 8, true);
  const z3 = await d.discard(base + 16, 8);
  if ([z1, z2, z3].some((r) => r.status !== BlkStatus.OK))
    return `write-zeroes / discard: status ${[z1, z2, z3].map((r) => r.status).join(', ')}`;
  const zeroed = await d.read(base, 16 * 512);
  const z = diff(zeroed.data, new Uint8Array(16 * 512));
  if (zeroed.status !== BlkStatus.OK || z !== 'equal') return `zeroed sectors: ${z}`;
  const rest = await d.read(base + 24, 8 * 512);
  const r = diff(rest.data, writes[0].data.subarray(24 * 512, 32 * 512));
  if (rest.status !== BlkStatus.OK || r !== 'equal') return `sectors after the discard: ${r}`;
  if (backing) {
    const b = diff(backing(base * 512, 16 * 512), new Uint8Array(16 * 512));
    if (b !== 'equal') return `backing store after write-zeroes: ${b}`;
  }
  return d.violations.length > 0 ? d.violations.join('; ') : 'ok';
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
