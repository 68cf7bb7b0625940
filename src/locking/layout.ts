/**
 * The one place that names every shared-memory slot of src/locking's
 * structures. Each structure is a SharedArrayBuffer viewed as an Int32Array
 * (indexes below are Int32 element indexes unless a name ends in `_BYTES`).
 * Nothing else in the project hard-codes these numbers: code that posts a
 * structure to another thread posts the SharedArrayBuffer, and the receiving
 * side's `attach()` re-derives everything from this module.
 */

/** Bytes in a cache line on the x86-64 and arm64 machines we run on. */
export const CACHE_LINE_BYTES = 64;
/** Int32 slots in one cache line. */
const LINE = CACHE_LINE_BYTES / Int32Array.BYTES_PER_ELEMENT;

// ─────────────────────────── SpscByteRing ───────────────────────────
// Header of three cache lines, then the data area. Slots are grouped by the
// thread that writes them so the producer's stores and the consumer's stores
// never bounce the same line: line 0 is immutable after create, line 1 is
// written only by the producer, line 2 only by the consumer.

/** Written at create; attach() refuses buffers without it. ASCII 'RING'. */
export const RING_MAGIC_VALUE = 0x52494e47;
/** Int32 indexes of the SpscByteRing header; the data area starts at {@link RING_HEADER_BYTES}. */
export const RING = {
  /** Line 0, immutable: {@link RING_MAGIC_VALUE}. */
  MAGIC: 0,
  /** Line 0, immutable: data-area size in bytes, a power of two. */
  CAPACITY: 1,
  /**
   * Line 1, producer-written: free-running u32 count of bytes ever written
   * (stored as int32, read back with `>>> 0`). Position in the data area is
   * `HEAD & (capacity - 1)`. Publishing it publishes the bytes before it.
   * Also the futex word the consumer sleeps on in waitReadable().
   */
  HEAD: LINE,
  /** Line 1, producer-written: highest fill level (bytes) ever seen after a write. */
  HIGH_WATER: LINE + 1,
  /** Line 1, producer-written: 1 while the producer sleeps in waitWritable(), else 0. */
  PRODUCER_WAITING: LINE + 2,
  /**
   * Line 2, consumer-written: free-running u32 count of bytes ever read.
   * Publishing it hands the space before it back to the producer. Also the
   * futex word the producer sleeps on in waitWritable().
   */
  TAIL: 2 * LINE,
  /** Line 2, consumer-written: 1 while the consumer sleeps in waitReadable(), else 0. */
  CONSUMER_WAITING: 2 * LINE + 1,
} as const;
/** Bytes before the data area (three cache lines). */
export const RING_HEADER_BYTES = 3 * CACHE_LINE_BYTES;
/** Largest ring: free-running u32 indexes need capacity <= 2^31; we stay well below. */
export const RING_MAX_CAPACITY = 2 ** 30;

// ─────────────────────────── StatCounters ───────────────────────────
// A seqlock-protected block of 64-bit counters, each two Int32 halves.
// Slot 0 is the sequence (odd while the single writer is mid-update).

/** Written at create; attach() refuses buffers without it. ASCII 'STAT'. */
export const COUNTERS_MAGIC_VALUE = 0x53544154;
/** Int32 slot indexes of a StatCounters block: seqlock header, then two slots per counter. */
export const COUNTERS = {
  /** Seqlock sequence: even = stable, odd = writer mid-update. Bumped twice per update. */
  SEQ: 0,
  /** Immutable: {@link COUNTERS_MAGIC_VALUE}. */
  MAGIC: 1,
  /** Immutable: number of counters in the block. */
  COUNT: 2,
  /** Reserved (zero); keeps the counter array 8-byte aligned. */
  RESERVED: 3,
  /** First counter; counter i occupies FIRST + i * STRIDE + {LO, HI}. */
  FIRST: 4,
  /** Int32 slots per counter. */
  STRIDE: 2,
  /** Offset of a counter's low 32 bits (unsigned, stored as int32). */
  LO: 0,
  /** Offset of a counter's high bits (signed int32: value = HI * 2^32 + LO). */
  HI: 1,
} as const;

/** Bytes of a counter block holding `count` counters. */
export function countersByteLength(count: number): number {
  return (COUNTERS.FIRST + count * COUNTERS.STRIDE) * Int32Array.BYTES_PER_ELEMENT;
}

// ─────────────────────────── PacketRing (src/net) ───────────────────────────
// One ring per ordered pair of switch ports: the source port's worker is the
// only producer, the destination port's worker the only consumer. Header of
// three cache lines, then the data area of `[u32 length][frame]` records.
// Grouped by writer like SpscByteRing's: line 0 is immutable after create,
// line 1 is written only by the producer (HEAD, DROPS), line 2 only by the
// consumer (TAIL), so a port sending and a port receiving at full rate never
// write the same cache line.

/** Written at create; attach() refuses buffers without it. ASCII 'pktr'. */
export const PACKET_RING_MAGIC_VALUE = 0x706b7472;
/** Int32 indexes of the PacketRing header; records start at {@link PACKET_RING_HEADER_BYTES}. */
export const PACKET_RING = {
  /** Line 0, immutable: {@link PACKET_RING_MAGIC_VALUE}. */
  MAGIC: 0,
  /** Line 0, immutable: data-area size in bytes, a power of two. */
  CAPACITY: 1,
  /**
   * Line 1, producer-written: free-running u32 count of record bytes ever
   * committed (stored as int32). Publishing it publishes every record before it.
   */
  HEAD: LINE,
  /** Line 1, producer-written: frames dropped because the ring was full (u32, wraps). */
  DROPS: LINE + 1,
  /**
   * Line 1, producer-written: 1 while the producer holds a frame for want of
   * room (backpressure); the consumer reads it after storing TAIL and then
   * rings the producer's doorbell.
   */
  WAITING: LINE + 2,
  /**
   * Line 2, consumer-written: free-running u32 count of record bytes ever
   * released. Publishing it hands the space before it back to the producer.
   */
  TAIL: 2 * LINE,
} as const;
/** Bytes before the data area (three cache lines). */
export const PACKET_RING_HEADER_BYTES = 3 * CACHE_LINE_BYTES;
/** Smallest data area: a few full-size frames. */
export const PACKET_RING_MIN_CAPACITY = 4096;
/** Largest data area (256 MiB): far below the 2^31 that free-running u32 indexes allow. */
export const PACKET_RING_MAX_CAPACITY = 2 ** 28;

// ─────────────────────────── LatencyHistograms (src/locking/histogram.ts) ───────────────────────────
// A block of `series` log-linear latency histograms (one per queue of a
// device) written by ONE thread — the device worker, once per batch, under a
// seqlock — and read by the main thread only when scraped or queried. Line 0
// is the header (the sequence, written by the writer, then immutable words);
// each series starts on a cache line of its own, so a reader copying one
// series never shares a line with the header's sequence word more than once.
// Every count and sum is 64 bits as two Int32 halves {LO, HI} (LO unsigned,
// stored as int32), like StatCounters.

/** Written at create; attach() refuses buffers without it. ASCII 'HIST'. */
export const HISTOGRAM_MAGIC_VALUE = 0x48495354;
/**
 * Sub-buckets per power of two (2^3): a bucket's width is at most 1/8 of its
 * lower bound, so a percentile read from the buckets is within 12.5 %.
 */
export const HISTOGRAM_SUB_BUCKET_BITS = 3;
/** log2 of the first bucket's upper bound in nanoseconds: 2^10 ns = 1.024 µs. */
export const HISTOGRAM_MIN_EXPONENT = 10;
/** log2 of the last finite upper bound in nanoseconds: 2^30 ns = 1.074 s. */
export const HISTOGRAM_MAX_EXPONENT = 30;
/**
 * Buckets per series: one for [0, 1.024 µs], 8 per power of two up to
 * 2^30 ns, one overflow bucket (+Inf).
 */
export const HISTOGRAM_BUCKETS =
  2 + (HISTOGRAM_MAX_EXPONENT - HISTOGRAM_MIN_EXPONENT) * (1 << HISTOGRAM_SUB_BUCKET_BITS);
/** Int32 slot indexes of a LatencyHistograms block. */
export const HISTOGRAM = {
  /** Line 0, writer: seqlock sequence, even = stable, odd = the writer is publishing a batch. */
  SEQ: 0,
  /** Line 0, immutable: {@link HISTOGRAM_MAGIC_VALUE}. */
  MAGIC: 1,
  /** Line 0, immutable: number of series (queues). */
  SERIES: 2,
  /** Line 0, immutable: {@link HISTOGRAM_BUCKETS}, checked by attach(). */
  BUCKETS: 3,
  /** First series: series s starts at FIRST + s * seriesStride(). */
  FIRST: LINE,
  /** Within a series: bucket b's count at BUCKET + b * 2 + {LO, HI} (not cumulative). */
  BUCKET: 0,
  /** Within a series, after the buckets: sum of every recorded value, nanoseconds. */
  SUM: HISTOGRAM_BUCKETS * 2,
  /** Within a series: values recorded above the series' target (latency-target-exceeded). */
  OVER: HISTOGRAM_BUCKETS * 2 + 2,
  /** Within a series: the largest value recorded, nanoseconds. */
  MAX: HISTOGRAM_BUCKETS * 2 + 4,
  /** Offset of the low 32 bits (unsigned, stored as int32) of a 64-bit value. */
  LO: 0,
  /** Offset of the high bits of a 64-bit value (value = HI * 2^32 + LO). */
  HI: 1,
} as const;

/** Int32 slots of one series, rounded up to whole cache lines. */
export function histogramSeriesStride(): number {
  const used = HISTOGRAM.MAX + 2;
  return Math.ceil(used / LINE) * LINE;
}

/** Bytes of a histogram block holding `series` series. */
export function histogramByteLength(series: number): number {
  return (HISTOGRAM.FIRST + series * histogramSeriesStride()) * Int32Array.BYTES_PER_ELEMENT;
}

// ─────────────────────────── BackupShare (src/io/backup-share.ts, issue 12) ───────────────────────────
// The state a live backup shares between the blk device worker (which saves
// old blocks into the journal before a guest write overwrites them) and the
// backup copier thread (which drains the journal and the rest of the disk to
// the target). One SharedArrayBuffer viewed as Int32Array: four header
// lines grouped by writer, then arrays whose offsets backupLayout() derives
// from the chunk and entry counts. The journal's bytes live in a second,
// page-aligned buffer (entry e at e * BLOCK_BYTES).

/** Written at create; attach() refuses buffers without it. ASCII 'BKUP'. */
export const BACKUP_MAGIC_VALUE = 0x424b5550;
/** Int32 indexes of the BackupShare header. */
export const BACKUP = {
  /** Line 0, immutable: {@link BACKUP_MAGIC_VALUE}. */
  MAGIC: 0,
  /** Line 0, immutable: bytes per chunk (the unit the disk pass copies, NEEDED and COPIED, and changed-block tracking's). */
  CHUNK_BYTES: 1,
  /** Line 0, immutable: chunks on the disk (the last one may be short). */
  CHUNKS: 2,
  /** Line 0, immutable: journal entries (one block each). */
  ENTRIES: 3,
  /** Line 0, immutable: bytes per block (the unit journaled and CLAIMED; 16 per chunk). */
  BLOCK_BYTES: 4,
  /**
   * Line 1, device-written: free-running count of journal entries published
   * to the copier (ENTRY_CHUNK and the entry's bytes before it). The futex
   * word the copier waits on.
   */
  READY_HEAD: LINE,
  /** Line 1, device-written: free-running count of freed entries taken back from the FREE ring. */
  FREE_TAIL: LINE + 1,
  /** Line 1, device-written: {@link BackupState}. */
  STATE: LINE + 2,
  /** Line 1, device-written: errno number of a failed journal read (the backup then fails); 0: none. */
  FAILED_ERRNO: LINE + 3,
  /** Line 1, device-written: blocks saved into the journal in all. */
  JOURNALED: LINE + 4,
  /** Line 1, device-written: guest requests that waited for a free journal entry (journal full). */
  FULL_WAITS: LINE + 5,
  /** Line 1, device-written: 1 while a guest request waits for a free entry (the copier rings the doorbell). */
  DEVICE_WAITING: LINE + 6,
  /** Line 1, device-written: most journal entries ever in use at once. */
  HIGH_WATER: LINE + 7,
  /**
   * Line 1, device-written: times the device raised the copier to SCHED_OTHER because a guest
   * request waited for a journal entry (priority inheritance, src/devices/blk/backup.ts).
   */
  BOOSTS: LINE + 8,
  /**
   * Line 1, device-written: journal reads issued (one per run of adjacent blocks a held request
   * needed saved: the guest requests that waited for an old-block read, counted by read).
   */
  JOURNAL_READS: LINE + 9,
  /**
   * Line 1, device-written once per batch: free-running count (Int32, wrapping) of guest
   * requests the device has started. With GUEST_IN_FLIGHT, what the copier's disk pass
   * yields to (`yield-ms`, src/worker/backup-copier.ts).
   */
  GUEST_IO: LINE + 10,
  /** Line 1, device-written once per batch: guest requests in flight at the batch's end. */
  GUEST_IN_FLIGHT: LINE + 11,
  /**
   * Line 1, device-written: KiB of the overlay's data area a `prefill-overlay` pass has
   * written so far (before the start instant; query-backups shows it while it runs).
   */
  PREFILL_KIB: LINE + 12,
  /** Line 2, copier-written: free-running count of READY entries consumed. */
  READY_TAIL: 2 * LINE,
  /** Line 2, copier-written: free-running count of entries handed back through the FREE ring. */
  FREE_HEAD: 2 * LINE + 1,
  /** Line 2, copier-written: chunks the disk pass is done with (distinct), the progress. */
  COPIED: 2 * LINE + 2,
  /** Line 2, copier-written: blocks written from the journal. */
  FROM_JOURNAL: 2 * LINE + 3,
  /** Line 2, copier-written once before it copies: its thread id (the device boosts it, see BOOSTED). */
  COPIER_TID: 2 * LINE + 4,
  /** Line 2, copier-written once before it copies: its own scheduling policy number (SCHED_IDLE / SCHED_BATCH). */
  COPIER_POLICY: 2 * LINE + 5,
  /**
   * Line 2, copier-written: 1 once the disk pass is over and only journal entries still
   * claimed are awaited (for reports and tests; orders nothing).
   */
  PASS_DONE: 2 * LINE + 6,
  /** Line 2, copier-written: disk-pass reads that waited for the guest to go quiet (`yield-ms`). */
  YIELDS: 2 * LINE + 7,
  /** Line 2, copier-written: disk-pass reads made after the longest wait although the guest was busy. */
  FORCED_READS: 2 * LINE + 8,
  /**
   * Line 3, main-thread-written: 1 asks the copier to stop (backup-cancel), and a device's
   * `prefill-overlay` pass that is still running before the start instant. Also a futex word.
   */
  CANCEL: 3 * LINE,
  /**
   * Line 3, main-thread-written: 1 while the backup is paused (backup-pause): the copier's disk
   * pass reads nothing until it is 0 again (backup-resume); the journal is still drained.
   * The main thread notifies READY_HEAD after each change, which wakes a waiting copier.
   */
  PAUSED: 3 * LINE + 1,
  /**
   * Line 3, main-thread-written: `speed` as changed by backup-set-speed, a seqlock: SPEED_SEQ
   * is odd while SPEED_HI / SPEED_LO (bytes/s = HI * 2^32 + LO as unsigned) are being stored,
   * and even after; 0 while the speed is the one the copier started with.
   */
  SPEED_SEQ: 3 * LINE + 2,
  SPEED_HI: 3 * LINE + 3,
  SPEED_LO: 3 * LINE + 4,
  /** First array (ENTRY_BLOCK); see backupLayout(). */
  ARRAYS: 4 * LINE,
} as const;

/** BACKUP.STATE values (device-written). */
export const BackupState = {
  /** Writes are held until those in flight completed: the start instant is not reached yet. */
  PENDING: 0,
  /** The start instant passed: writes to blocks not yet copied save the old blocks first. */
  ACTIVE: 1,
  /** The device let go (completed, failed or cancelled): nothing is journaled any more. */
  ENDED: 2,
} as const;

/**
 * Int32 offsets of the BackupShare arrays for `chunks` chunks of `blocksPerChunk`
 * blocks (at most 32, a power of two) and `entries` journal entries: ENTRY_BLOCK
 * (device-written: the disk block entry e holds), READY (device-written ring of
 * entry numbers), FREE (copier-written ring of entry numbers), then three
 * bitmaps in Int32 words: NEEDED (one bit per chunk, device-written before
 * STATE turns ACTIVE, immutable after: the chunks this backup copies), CLAIMED
 * (one bit per BLOCK, chunk c's blocks together in one word; device-written:
 * the old block is, or is being, saved in the journal — the copier must not
 * copy it from disk), COPIED (one bit per chunk, copier-written: the disk pass
 * is done with the chunk — it read it, and wrote the blocks not claimed when
 * the read had completed). `total` is the buffer's Int32 length.
 */
export function backupLayout(
  chunks: number,
  entries: number,
  blocksPerChunk: number,
): {
  entryBlock: number;
  ready: number;
  free: number;
  needed: number;
  claimed: number;
  copied: number;
  total: number;
} {
  const words = Math.ceil(chunks / 32);
  const claimWords = Math.ceil((chunks * blocksPerChunk) / 32);
  // Each array starts on a cache line of its own: its writer never shares a line with another's.
  const up = (n: number) => Math.ceil(n / LINE) * LINE;
  const entryBlock = BACKUP.ARRAYS;
  const ready = entryBlock + up(entries);
  const free = ready + up(entries);
  const needed = free + up(entries);
  const claimed = needed + up(words);
  const copied = claimed + up(claimWords);
  return { entryBlock, ready, free, needed, claimed, copied, total: copied + up(words) };
}

// ─────────────────────────── DiskGuard (src/io/disk-guard.ts, issue 14) ───────────────────────────
// The RT guard of one backing block device: every blk device of the process whose image lives on
// that disk owns one slot (one cache line) and is its only writer while it runs; the others read
// it. A device with RT-class requests publishes them there once per batch; a device of a lower
// class reads its neighbours' slots (only when it is at its cap) to decide whether to cap its own
// in-flight I/O. Line 0 is written by the main thread only: MAGIC and SLOTS at create, SLOTS_USED
// when it hands a slot out. A slot's line passes from one owner to the next through the main
// thread: the worker's last store is CLOSED = 1; the main thread clears the line before it hands
// the slot to a new device (whose worker only starts after that, so it sees the cleared line).

/** Written at create; attach() refuses buffers without it. ASCII 'RTGD'. */
export const DISK_GUARD_MAGIC_VALUE = 0x52544744;
/** Int32 indexes of a DiskGuard region. */
export const DISK_GUARD = {
  /** Line 0, immutable: {@link DISK_GUARD_MAGIC_VALUE}. */
  MAGIC: 0,
  /** Line 0, immutable: number of slots. */
  SLOTS: 1,
  /** Line 0, main-thread-written: slots handed out so far (readers scan [0, SLOTS_USED)). */
  SLOTS_USED: 2,
  /** First slot; slot s starts at FIRST + s * STRIDE. */
  FIRST: LINE,
  /** Int32 slots per device slot: one cache line. */
  STRIDE: LINE,
  /** Within a slot, owner-written: the device's RT-class requests in flight, as of its last batch. */
  RT_IN_FLIGHT: 0,
  /**
   * Within a slot, owner-written: the monotonic clock (µs, mod 2^32, stored as int32) of the
   * device's last batch that had RT-class requests in flight or completed some.
   */
  RT_LAST_US: 1,
  /** Within a slot, owner-written: 1 once the device has had an RT-class request (RT_LAST_US is valid). */
  RT_SEEN: 2,
  /** Within a slot, owner-written last: 1 when the device closed (the main thread may reuse the slot). */
  CLOSED: 3,
} as const;
/** Devices per backing disk the guard tracks at once (more are served unguarded, with a warning). */
export const DISK_GUARD_SLOTS = 64;

/** Bytes of a DiskGuard region of `slots` slots. */
export function diskGuardByteLength(slots: number): number {
  return (DISK_GUARD.FIRST + slots * DISK_GUARD.STRIDE) * Int32Array.BYTES_PER_ELEMENT;
}
