import { LatencyHistograms, monotonicNs, StatCounters } from '../../locking/index.js';
import { BlkRequestType, BlkStatus } from './config.js';

/** Names of the per-device counters a blk worker keeps in shared memory. */
export const BLK_STAT_NAMES = [
  'requests',
  'kicks',
  'interrupts',
  'bytesRead',
  'bytesWritten',
  'ioErrors',
  'unsupported',
  'badChains',
  'brokenQueues',
  // issue 14: the class of the ioprio field in the guest's request headers (unknown classes count as none).
  'ioprioNone',
  'ioprioRt',
  'ioprioBe',
  'ioprioIdle',
  // issue 14: requests that waited for the device's token buckets, and for how long the device held its queues.
  'throttledRequests',
  'throttledUs',
  // issue 14, the RT guard (src/io/disk-guard.ts): requests that waited because an RT neighbour on
  // the same disk was active and this device was at its cap, and for how long its queues were held;
  // the most lower-class requests / bytes in flight just after an admission with a neighbour active.
  'guardHeldRequests',
  'guardHeldUs',
  'guardPeakRequests',
  'guardPeakBytes',
  // issue 14: admissions the guard's rate term (--rt-guard-bps) refused: its bucket was empty.
  'guardRateHolds',
] as const;

/** Index of each counter in {@link BLK_STAT_NAMES}. */
export const BlkStat = Object.fromEntries(BLK_STAT_NAMES.map((name, i) => [name, i])) as {
  readonly [K in (typeof BLK_STAT_NAMES)[number]]: number;
};

/**
 * Names of the per-queue counters of a blk device (one block per device,
 * {@link blkQueueStatNames}), published once per batch by its worker.
 */
export const BLK_QUEUE_STAT_NAMES = [
  /** Requests popped from the queue. */
  'requests',
  /** Bytes read into / written from guest memory by requests that succeeded. */
  'bytesRead',
  'bytesWritten',
  /** Requests completed with a status other than OK (IOERR, UNSUPP, a chain unusable). */
  'errors',
  /** Requests popped and not yet completed, as of the last batch (a gauge). */
  'inFlight',
  /** Interrupts (used-buffer notifications) sent for the queue. */
  'interrupts',
  /** Drain batches that popped requests (each one engine submission). */
  'batches',
  /** Completion batches that completed requests of the queue. */
  'completionBatches',
  /** Requests whose kick-to-completion latency exceeded `--latency-target-us`. */
  'latencyTargetExceeded',
] as const;

/** Index of each counter in {@link BLK_QUEUE_STAT_NAMES}. */
export const BlkQueueStat = Object.fromEntries(
  BLK_QUEUE_STAT_NAMES.map((name, i) => [name, i]),
) as { readonly [K in (typeof BLK_QUEUE_STAT_NAMES)[number]]: number };

/** Counter names of a per-queue block: `q0.requests`, ..., queue-major. */
export function blkQueueStatNames(queues: number): string[] {
  const names: string[] = [];
  for (let q = 0; q < queues; q++) for (const n of BLK_QUEUE_STAT_NAMES) names.push(`q${q}.${n}`);
  return names;
}

/** Per-queue counters out of a snapshot of a {@link blkQueueStatNames} block, queue order. */
export function splitQueueStats(
  snapshot: Record<string, number>,
  queues: number,
): Record<string, number>[] {
  return Array.from({ length: queues }, (_, q) =>
    Object.fromEntries(BLK_QUEUE_STAT_NAMES.map((n) => [n, snapshot[`q${q}.${n}`] ?? 0])),
  );
}

/** What a worker is given to keep a blk device's per-queue accounting (made on the main thread). */
export interface BlkAccountingInit {
  /** A StatCounters block of {@link blkQueueStatNames}(queues). */
  queueStats: SharedArrayBuffer;
  /** A LatencyHistograms block, one series per queue. */
  latency: SharedArrayBuffer;
  /** `--latency-target-us`: 0 for none. */
  latencyTargetUs: number;
}

/** One LATENCY_TARGET_EXCEEDED report (at most one per {@link LATENCY_EVENT_INTERVAL_NS}). */
export interface LatencyExceeded {
  queue: number;
  /** Kick-to-completion latency of the request that triggered the report. */
  latencyUs: number;
  targetUs: number;
  /** Requests over the target on every queue of the device, ever. */
  exceeded: number;
  /** Requests over the target since the previous report that were not reported themselves. */
  suppressed: number;
}

/** Shortest time between two LATENCY_TARGET_EXCEEDED reports of one device: 1 s. */
export const LATENCY_EVENT_INTERVAL_NS = 1e9;

/**
 * A blk device's per-queue accounting on its worker: counters and
 * kick-to-completion latency histograms per queue, and the latency target.
 *
 * The device calls it at a few points of a batch; everything per request
 * touches only this object's private typed arrays, and {@link publish} (once
 * at the end of each drain or completion batch) makes it visible to the main
 * thread: one StatCounters section and one LatencyHistograms section.
 * The clock is taken at most once per drain batch (at the first request it
 * pops) and once per completion batch (at the first request it completes):
 * every request of a batch shares the batch's time.
 */
export class BlkAccounting {
  readonly #queues: number;
  readonly #slotsPerQueue: number;
  readonly #stats: StatCounters;
  readonly #latency: LatencyHistograms;
  readonly #targetNs: number;
  readonly #targetUs: number;
  readonly #onExceeded: ((e: LatencyExceeded) => void) | null;
  readonly #readClock: () => number;
  /** When each request slot's request was popped (monotonicNs of its drain batch). */
  readonly #startNs: Float64Array;
  /** The writer's own values of the per-queue counters, queue-major. */
  readonly #values: Float64Array;
  /** {@link #values} as last published: only counters that changed are stored again. */
  readonly #published: Float64Array;
  readonly #changed: Uint8Array;
  #anyChanged = false;
  /** Queues that completed requests in the current completion batch. */
  readonly #completedInBatch: Uint8Array;
  #now = 0;
  #haveNow = false;
  #draining = false;
  #exceededTotal = 0;
  #lastEventNs = Number.NEGATIVE_INFINITY;
  #suppressed = 0;
  /** A report waits for the batch's publish: queue (-1: none) and latency. */
  #eventQueue = -1;
  #eventNs = 0;

  constructor(options: {
    queues: number;
    slotsPerQueue: number;
    init: BlkAccountingInit;
    /** Told of LATENCY_TARGET_EXCEEDED at most once per second, at the end of a batch. */
    onExceeded?: (e: LatencyExceeded) => void;
    /** Nanoseconds from a monotonic clock; {@link monotonicNs} unless a test gives its own. */
    clock?: () => number;
  }) {
    const { queues, slotsPerQueue, init } = options;
    this.#queues = queues;
    this.#slotsPerQueue = slotsPerQueue;
    this.#stats = StatCounters.attach(init.queueStats, blkQueueStatNames(queues));
    this.#latency = LatencyHistograms.attach(init.latency);
    if (this.#latency.series !== queues)
      throw new RangeError(
        `BlkAccounting: ${this.#latency.series} latency series for ${queues} queues`,
      );
    this.#targetUs = init.latencyTargetUs;
    this.#targetNs =
      init.latencyTargetUs > 0 ? init.latencyTargetUs * 1000 : Number.POSITIVE_INFINITY;
    this.#onExceeded = options.onExceeded ?? null;
    this.#readClock = options.clock ?? monotonicNs;
    this.#startNs = new Float64Array(queues * slotsPerQueue);
    this.#values = new Float64Array(queues * BLK_QUEUE_STAT_NAMES.length);
    this.#published = new Float64Array(queues * BLK_QUEUE_STAT_NAMES.length);
    this.#changed = new Uint8Array(queues);
    this.#completedInBatch = new Uint8Array(queues);
  }

  /** The batch's time: the clock is read once, at the first use in a batch. */
  #clock(): number {
    if (!this.#haveNow) {
      this.#now = this.#readClock();
      this.#haveNow = true;
    }
    return this.#now;
  }

  #add(queue: number, stat: number, n: number): void {
    this.#values[queue * BLK_QUEUE_STAT_NAMES.length + stat] += n;
    this.#changed[queue] = 1;
    this.#anyChanged = true;
  }

  /** Request slot `id` (queue-major, as the device's) of `queue` was popped and started. */
  started(queue: number, id: number): void {
    this.#draining = true;
    this.#startNs[id] = this.#clock();
    this.#add(queue, BlkQueueStat.requests, 1);
    this.#add(queue, BlkQueueStat.inFlight, 1);
  }

  /**
   * Request slot `id` of `queue` completed with `status` (a BlkStatus, or
   * negative when the chain could not carry one). `type` is its request
   * type, `dataWritten` the bytes it wrote into guest memory, `dataLen` the
   * bytes of its data part (what a write took from guest memory).
   */
  finished(
    queue: number,
    id: number,
    status: number,
    type: number,
    dataWritten: number,
    dataLen: number,
  ): void {
    const ns = this.#clock() - this.#startNs[id];
    this.#latency.record(queue, ns);
    if (ns > this.#targetNs) this.#exceeded(queue, ns);
    this.#add(queue, BlkQueueStat.inFlight, -1);
    if (status !== BlkStatus.OK) this.#add(queue, BlkQueueStat.errors, 1);
    else if (type === BlkRequestType.IN) this.#add(queue, BlkQueueStat.bytesRead, dataWritten);
    else if (type !== BlkRequestType.GET_ID && dataLen > 0)
      this.#add(queue, BlkQueueStat.bytesWritten, dataLen);
    if (!this.#draining) this.#completedInBatch[queue] = 1;
  }

  #exceeded(queue: number, ns: number): void {
    this.#latency.over(queue);
    this.#add(queue, BlkQueueStat.latencyTargetExceeded, 1);
    this.#exceededTotal++;
    if (this.#eventQueue < 0 && this.#now - this.#lastEventNs >= LATENCY_EVENT_INTERVAL_NS) {
      this.#eventQueue = queue;
      this.#eventNs = ns;
      this.#lastEventNs = this.#now;
    } else {
      this.#suppressed++;
    }
  }

  /** An interrupt was sent for `queue`. */
  interrupt(queue: number): void {
    this.#add(queue, BlkQueueStat.interrupts, 1);
  }

  /**
   * A drain of `queue` ended having popped `popped` requests, before the
   * engine submits them: the next clock reading is a new batch's (an engine
   * that completes inside submit must not see the drain's time).
   */
  drained(queue: number, popped: number): void {
    if (popped > 0) this.#add(queue, BlkQueueStat.batches, 1);
    this.#draining = false;
    this.#haveNow = false;
  }

  /** End of a batch (drain or completions): publishes everything since the last one. */
  publish(): void {
    this.#haveNow = false;
    this.#draining = false;
    const width = BLK_QUEUE_STAT_NAMES.length;
    for (let q = 0; q < this.#queues; q++) {
      if (this.#completedInBatch[q] === 0) continue;
      this.#completedInBatch[q] = 0;
      this.#add(q, BlkQueueStat.completionBatches, 1);
    }
    this.#latency.publish();
    if (this.#anyChanged) {
      this.#anyChanged = false;
      const stats = this.#stats;
      const values = this.#values;
      const published = this.#published;
      stats.beginBatch();
      for (let q = 0; q < this.#queues; q++) {
        if (this.#changed[q] === 0) continue;
        this.#changed[q] = 0;
        for (let i = q * width; i < (q + 1) * width; i++) {
          if (values[i] === published[i]) continue;
          published[i] = values[i];
          stats.setInBatch(i, values[i]);
        }
      }
      stats.endBatch();
    }
    if (this.#eventQueue >= 0) this.#report();
  }

  /** Hands the pending LATENCY_TARGET_EXCEEDED report over (the rate-limited slow path). */
  #report(): void {
    const queue = this.#eventQueue;
    this.#eventQueue = -1;
    const suppressed = this.#suppressed;
    this.#suppressed = 0;
    this.#onExceeded?.({
      queue,
      latencyUs: Math.round(this.#eventNs / 1000),
      targetUs: this.#targetUs,
      exceeded: this.#exceededTotal,
      suppressed,
    });
  }

  /** Request slots per queue (ids are queue * slotsPerQueue + slot). */
  get slotsPerQueue(): number {
    return this.#slotsPerQueue;
  }
}

/**
 * The shared memory of a blk device's accounting, made on the main thread:
 * the init to post to the worker and the reader handles to keep.
 */
export function createBlkAccounting(
  queues: number,
  latencyTargetUs: number,
): { init: BlkAccountingInit; queueStats: StatCounters; latency: LatencyHistograms } {
  const queueStats = StatCounters.create(blkQueueStatNames(queues));
  const latency = LatencyHistograms.create(queues);
  return {
    init: { queueStats: queueStats.buffer, latency: latency.buffer, latencyTargetUs },
    queueStats,
    latency,
  };
}
