/**
 * Question: what does moving one message through the SPSC byte ring cost, by
 * message size — the price of decoupled logging for each console line?
 * One thread writes a batch of messages and reads them back, so only the
 * ring's own work (index loads and stores, copies) is measured.
 */
import { SpscByteRing } from '../../src/locking/index.js';
import { isMain, type MicroCase, type MicroRow, runMicro } from './common.js';

const CAPACITY = 1 << 20;

function ringCase(size: number): MicroCase {
  const ring = SpscByteRing.create(CAPACITY);
  const message = new Uint8Array(size).fill(0x61);
  const out = new Uint8Array(size);
  const batch = Math.max(1, Math.min(256, Math.floor(CAPACITY / size / 2)));
  return {
    name: `${size} bytes`,
    opsPerCall: batch,
    fn: () => {
      for (let i = 0; i < batch; i++) ring.writeAll(message);
      for (let i = 0; i < batch; i++) ring.read(out);
    },
  };
}

/** Runs the question and prints its table. */
export function run(): Promise<MicroRow[]> {
  return runMicro('SPSC byte ring: write + read of one message', [
    ringCase(16),
    ringCase(80),
    ringCase(1024),
    ringCase(16384),
  ]);
}

if (isMain(import.meta.url)) await run();
