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
