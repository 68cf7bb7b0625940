/**
 * BlkAccounting (src/devices/blk/stats.ts), the blk worker's per-queue
 * counters and latency histograms: what a batch publishes, the clock read
 * once per batch, the latency target's counter and its rate-limited report.
 * A test clock stands in for monotonicNs, so nothing here depends on time.
 */
import { describe, expect, it } from 'vitest';
import { BlkRequestType, BlkStatus } from '../../src/devices/blk/config.js';
import {
  BlkAccounting,
  createBlkAccounting,
  type LatencyExceeded,
  splitQueueStats,
} from '../../src/devices/blk/stats.js';
import { latencyBucket } from '../../src/locking/histogram.js';

function setup(targetUs = 0) {
  const shared = createBlkAccounting(2, targetUs);
  let now = 1_000_000;
  let reads = 0;
  const reports: LatencyExceeded[] = [];
  const acct = new BlkAccounting({
    queues: 2,
    slotsPerQueue: 8,
    init: shared.init,
    onExceeded: (e) => reports.push(e),
    clock: () => {
      reads++;
      return now;
    },
  });
  return {
    acct,
    reports,
    queues: () => splitQueueStats(shared.queueStats.snapshot(), 2),
    latency: (q: number) => shared.latency.snapshot(q),
    advance: (ns: number) => {
      now += ns;
    },
    clockReads: () => reads,
  };
}

describe('BlkAccounting', () => {
  it('publishes a batch at its end, reading the clock once per batch', () => {
    const t = setup();
    // A drain batch of three requests on queue 1 (slots 8..10).
    for (const id of [8, 9, 10]) t.acct.started(1, id);
    t.acct.drained(1, 3);
    expect(t.queues()[1].requests).toBe(0); // nothing visible before the publish
    t.acct.publish();
    expect(t.queues()[1]).toMatchObject({ requests: 3, inFlight: 3, batches: 1 });
    expect(t.clockReads()).toBe(1);
    // 50 µs later one completion batch completes them: a read, a write, a failure.
    t.advance(50_000);
    t.acct.finished(1, 8, BlkStatus.OK, BlkRequestType.IN, 4096, 4096);
    t.acct.finished(1, 9, BlkStatus.OK, BlkRequestType.OUT, 0, 8192);
    t.acct.finished(1, 10, BlkStatus.IOERR, BlkRequestType.IN, 0, 4096);
    t.acct.interrupt(1);
    t.acct.publish();
    expect(t.clockReads()).toBe(2);
    expect(t.queues()[1]).toEqual({
      requests: 3,
      bytesRead: 4096,
      bytesWritten: 8192,
      errors: 1,
      inFlight: 0,
      interrupts: 1,
      batches: 1,
      completionBatches: 1,
      latencyTargetExceeded: 0,
    });
    expect(t.queues()[0].requests).toBe(0);
    const h = t.latency(1);
    expect(h.count).toBe(3);
    expect(h.buckets[latencyBucket(50_000)]).toBe(3);
    expect(h.sumNs).toBe(150_000);
    expect(t.latency(0).count).toBe(0);
  });

  it('gives requests completed inside their drain the drain time, and no completion batch', () => {
    const t = setup();
    t.acct.started(0, 0);
    t.acct.finished(0, 0, BlkStatus.UNSUPP, 99, 0, 0); // answered at once
    t.acct.drained(0, 1);
    t.acct.publish();
    expect(t.queues()[0]).toMatchObject({
      requests: 1,
      errors: 1,
      inFlight: 0,
      completionBatches: 0,
    });
    expect(t.latency(0).buckets[0]).toBe(1); // 0 ns
    expect(t.clockReads()).toBe(1);
  });

  it('counts requests over the target and reports at most once a second', () => {
    const t = setup(100); // 100 µs
    const batch = (latencyNs: number, ids: number[]) => {
      for (const id of ids) t.acct.started(0, id);
      t.acct.drained(0, ids.length);
      t.acct.publish();
      t.advance(latencyNs);
      for (const id of ids) t.acct.finished(0, id, BlkStatus.OK, BlkRequestType.IN, 512, 512);
      t.acct.publish();
    };
    batch(99_000, [0]); // under
    expect(t.reports).toEqual([]);
    batch(250_000, [0, 1]); // two over: one report at the batch's end, the other suppressed
    expect(t.reports).toEqual([
      { queue: 0, latencyUs: 250, targetUs: 100, exceeded: 2, suppressed: 1 },
    ]);
    batch(300_000, [2]); // within the second: counted, not reported
    expect(t.reports).toHaveLength(1);
    t.advance(1e9);
    batch(400_000, [3]);
    expect(t.reports[1]).toEqual({
      queue: 0,
      latencyUs: 400,
      targetUs: 100,
      exceeded: 4,
      suppressed: 1,
    });
    expect(t.queues()[0].latencyTargetExceeded).toBe(4);
    expect(t.latency(0).over).toBe(4);
  });

  it('refuses a histogram block of another queue count', () => {
    const shared = createBlkAccounting(1, 0);
    const other = createBlkAccounting(2, 0);
    expect(
      () =>
        new BlkAccounting({
          queues: 2,
          slotsPerQueue: 4,
          init: { ...other.init, latency: shared.init.latency },
        }),
    ).toThrow(RangeError);
  });
});
