/**
 * Question: what does the blk device's per-queue accounting cost per request
 * — the start stamp, the histogram bucket, the counters, and the per-batch
 * clock readings and publishes into shared memory — at QD1 (a batch of one
 * request) and QD32 (batches of 32)? One thread plays the device worker; the
 * clock itself (monotonicNs) is measured on its own for scale.
 */
import { BlkRequestType } from '../../src/devices/blk/config.js';
import { BlkAccounting, createBlkAccounting } from '../../src/devices/blk/stats.js';
import { monotonicNs } from '../../src/locking/index.js';
import { isMain, type MicroCase, type MicroRow, runMicro } from './common.js';

/** `batch` requests started in one drain batch, completed in one completion batch. */
function accountingCase(batch: number): MicroCase {
  const shared = createBlkAccounting(1, 0);
  const acct = new BlkAccounting({ queues: 1, slotsPerQueue: 256, init: shared.init });
  const rounds = Math.max(1, Math.floor(256 / batch));
  return {
    name: `QD${batch}: started + finished, publish per batch`,
    opsPerCall: rounds * batch,
    fn: () => {
      for (let r = 0; r < rounds; r++) {
        for (let i = 0; i < batch; i++) acct.started(0, i);
        acct.drained(0, batch);
        acct.publish();
        for (let i = 0; i < batch; i++) acct.finished(0, i, 0, BlkRequestType.IN, 4096, 4096);
        acct.interrupt(0);
        acct.publish();
      }
    },
  };
}

/** Runs the question and prints its table. */
export function run(): Promise<MicroRow[]> {
  let sink = 0;
  return runMicro('blk per-queue accounting and latency histograms: cost per request', [
    accountingCase(1),
    accountingCase(32),
    {
      name: 'monotonicNs() alone',
      opsPerCall: 256,
      fn: () => {
        for (let i = 0; i < 256; i++) sink += monotonicNs() & 1;
        if (sink < 0) throw new Error('unreachable');
      },
    },
  ]);
}

if (isMain(import.meta.url)) await run();
