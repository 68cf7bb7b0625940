/**
 * A port's private MAC learning table: MAC address → switch port, with
 * ageing. Each port worker owns one and nobody else touches it, which is why
 * the switch needs no shared forwarding table and no lock (see switch-port.ts).
 *
 * Entries live in preallocated typed arrays, an address as its high 16 and
 * low 32 bits, found through an open-addressing hash index that is a typed
 * array too; the table reads addresses straight from the frame and keeps the
 * batch's time itself. So learning and looking up allocate nothing and pass
 * no double between calls (a Map keyed by 48-bit numbers cost a heap number
 * per frame). The table is bounded: when it is full an expired entry is
 * reused, else the address is not learnt and its frames are flooded (a guest
 * spraying source addresses cannot grow the daemon's memory).
 */

/** The MAC address at `bytes[offset, offset + 6)` as one number (48 bits fit a double exactly). */
export function macKey(bytes: Uint8Array, offset: number): number {
  return (
    (bytes[offset] * 0x100 + bytes[offset + 1]) * 0x1_0000_0000 +
    ((bytes[offset + 2] << 24) >>> 0) +
    (bytes[offset + 3] << 16) +
    (bytes[offset + 4] << 8) +
    bytes[offset + 5]
  );
}

/** Group (broadcast or multicast) addresses have the I/G bit, bit 0 of the first byte. */
export function isGroupAddress(bytes: Uint8Array, offset: number): boolean {
  return (bytes[offset] & 1) !== 0;
}

/** Parses `aa:bb:cc:dd:ee:ff` into 6 bytes; RangeError naming `what` otherwise. */
export function parseMac(text: string, what = 'MAC address'): Uint8Array {
  const parts = text.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{1,2}$/.test(p))) {
    throw new RangeError(`${what} '${text}' is not of the form 52:54:00:12:34:56`);
  }
  return Uint8Array.from(parts, (p) => Number.parseInt(p, 16));
}

/** Formats 6 bytes as `aa:bb:cc:dd:ee:ff`. */
export function formatMac(bytes: Uint8Array, offset = 0): string {
  const out: string[] = [];
  for (let i = 0; i < 6; i++) out.push(bytes[offset + i].toString(16).padStart(2, '0'));
  return out.join(':');
}

/** Result of {@link MacTable.lookup} for an address with no live entry: flood. */
export const UNKNOWN_PORT = -1;

/** Multiplier of the index hash (2^32 / golden ratio). */
const HASH_MULTIPLIER = 0x9e3779b1;

/** High 16 bits of the MAC address at `bytes[offset, offset + 6)`. */
function macHigh(bytes: Uint8Array, offset: number): number {
  return (bytes[offset] << 8) | bytes[offset + 1];
}

/** Low 32 bits of the MAC address at `bytes[offset, offset + 6)`, as an int32. */
function macLow(bytes: Uint8Array, offset: number): number {
  return (
    (bytes[offset + 2] << 24) |
    (bytes[offset + 3] << 16) |
    (bytes[offset + 4] << 8) |
    bytes[offset + 5]
  );
}

/**
 * MAC address → switch port with ageing, bounded at `capacity` entries; owned by
 * one port worker; learning and lookup allocate nothing.
 */
export class MacTable {
  /**
   * Time (ms) that {@link learn} stamps entries with and {@link lookup} ages
   * them by. The owner sets it once per batch of frames; keeping it here
   * rather than passing it means no double crosses a call per frame.
   */
  now = 0;
  /** Entry i's address: high 16 bits, low 32 bits (as int32). */
  private readonly keyHigh: Int32Array;
  private readonly keyLow: Int32Array;
  private readonly ports: Int32Array;
  private readonly seen: Float64Array;
  private used = 0;
  /**
   * Hash index: entry + 1 per bucket, 0 for empty; linear probing with
   * backward-shift deletion (no tombstones). At least twice as many buckets
   * as entries, so a probe always ends at an empty bucket.
   */
  private readonly buckets: Int32Array;
  private readonly bucketMask: number;
  private held = 0;
  /**
   * Bumped whenever what a lookup answers may change (an entry moves port, is
   * added, reused or forgotten); the one-entry caches below are valid only
   * for the version, and the {@link now}, they were filled at. Frames of a
   * burst mostly share their addresses: the cache answers them without
   * hashing (issue 13).
   */
  private version = 0;
  private learntHigh = -1;
  private learntLow = 0;
  private learntPort = 0;
  private learntNow = Number.NaN;
  private learntVersion = -1;
  private lookedHigh = -1;
  private lookedLow = 0;
  private lookedNow = Number.NaN;
  private lookedVersion = -1;
  private lookedPort = UNKNOWN_PORT;

  /**
   * @param capacity most addresses held (1..65536)
   * @param ageingMs an entry not refreshed for this long is forgotten
   */
  constructor(
    readonly capacity: number,
    readonly ageingMs: number,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 65536) {
      throw new RangeError(`MacTable capacity ${capacity} must be an integer in 1..65536`);
    }
    if (!(ageingMs > 0)) throw new RangeError(`MacTable ageingMs ${ageingMs} must be > 0`);
    this.keyHigh = new Int32Array(capacity);
    this.keyLow = new Int32Array(capacity);
    this.ports = new Int32Array(capacity);
    this.seen = new Float64Array(capacity);
    let buckets = 2;
    while (buckets < 2 * capacity) buckets *= 2;
    this.buckets = new Int32Array(buckets);
    this.bucketMask = buckets - 1;
  }

  /** Addresses currently held (expired ones included until reused). */
  get size(): number {
    return this.held;
  }

  /** Records that the address at `bytes[offset, offset + 6)` is behind `port`, as of {@link now}. */
  learn(bytes: Uint8Array, offset: number, port: number): void {
    this.learnKey(macHigh(bytes, offset), macLow(bytes, offset), port);
  }

  /**
   * {@link learn} for an address given as its high 16 bits and low 32 bits
   * (as an int32): how the native frame loop hands over a source address.
   */
  learnKey(high: number, low: number, port: number): void {
    // The same address behind the same port in the same batch: already stamped.
    if (
      low === this.learntLow &&
      high === this.learntHigh &&
      port === this.learntPort &&
      this.now === this.learntNow &&
      this.version === this.learntVersion
    )
      return;
    const held = this.buckets[this.find(high, low)];
    if (held !== 0) {
      // A new port, or an aged-out entry coming back: lookups answer differently.
      if (this.ports[held - 1] !== port || this.now - this.seen[held - 1] > this.ageingMs)
        this.version++;
      this.ports[held - 1] = port;
      this.seen[held - 1] = this.now;
      this.learntHigh = high;
      this.learntLow = low;
      this.learntPort = port;
      this.learntNow = this.now;
      this.learntVersion = this.version;
      return;
    }
    this.version++;
    let free: number;
    if (this.used < this.capacity) {
      free = this.used++;
    } else {
      free = this.expiredSlot();
      if (free < 0) return;
      this.unindex(this.find(this.keyHigh[free], this.keyLow[free]));
    }
    this.keyHigh[free] = high;
    this.keyLow[free] = low;
    this.ports[free] = port;
    this.seen[free] = this.now;
    // Found again: unindexing may have moved the empty bucket the first probe ended at.
    this.buckets[this.find(high, low)] = free + 1;
    this.held++;
  }

  /**
   * The port behind the address at `bytes[offset, offset + 6)`, or
   * {@link UNKNOWN_PORT} when it is unknown or aged out as of {@link now}.
   */
  lookup(bytes: Uint8Array, offset: number): number {
    const high = macHigh(bytes, offset);
    const low = macLow(bytes, offset);
    if (
      low === this.lookedLow &&
      high === this.lookedHigh &&
      this.now === this.lookedNow &&
      this.version === this.lookedVersion
    )
      return this.lookedPort;
    const held = this.buckets[this.find(high, low)];
    const port =
      held === 0 || this.now - this.seen[held - 1] > this.ageingMs
        ? UNKNOWN_PORT
        : this.ports[held - 1];
    this.lookedHigh = high;
    this.lookedLow = low;
    this.lookedNow = this.now;
    this.lookedVersion = this.version;
    this.lookedPort = port;
    return port;
  }

  /**
   * The table's arrays, for the native frame loop's lookups
   * (native/net-burst.cc: the same hash, probe and ageing rule as
   * {@link lookup}; it never writes them). Fixed for the table's life.
   */
  get arrays(): {
    keyHigh: Int32Array;
    keyLow: Int32Array;
    ports: Int32Array;
    seen: Float64Array;
    buckets: Int32Array;
  } {
    const { keyHigh, keyLow, ports, seen, buckets } = this;
    return { keyHigh, keyLow, ports, seen, buckets };
  }

  /** Forgets every address learnt behind `port` (its peer went away). */
  forgetPort(port: number): void {
    this.version++;
    for (let i = 0; i < this.used; i++) if (this.ports[i] === port) this.seen[i] = -Infinity;
  }

  /** The bucket holding the address, or the empty bucket where its probe ends. */
  private find(high: number, low: number): number {
    let b = this.home(high, low);
    for (let e = this.buckets[b]; e !== 0; e = this.buckets[b]) {
      if (this.keyLow[e - 1] === low && this.keyHigh[e - 1] === high) return b;
      b = (b + 1) & this.bucketMask;
    }
    return b;
  }

  /** First bucket probed for an address: a multiplicative hash of its two halves. */
  private home(high: number, low: number): number {
    let h = Math.imul(low ^ Math.imul(high, HASH_MULTIPLIER), HASH_MULTIPLIER);
    h ^= h >>> 16;
    return h & this.bucketMask;
  }

  /** Empties `bucket` and shifts back the entries whose probe passed it (linear probing's delete). */
  private unindex(bucket: number): void {
    const mask = this.bucketMask;
    let hole = bucket;
    this.buckets[hole] = 0;
    this.held--;
    for (let b = (hole + 1) & mask; this.buckets[b] !== 0; b = (b + 1) & mask) {
      const e = this.buckets[b] - 1;
      const home = this.home(this.keyHigh[e], this.keyLow[e]);
      // The entry at b may fill the hole unless its home lies cyclically in (hole, b].
      const stays = hole <= b ? hole < home && home <= b : hole < home || home <= b;
      if (stays) continue;
      this.buckets[hole] = this.buckets[b];
      this.buckets[b] = 0;
      hole = b;
    }
  }

  /** First entry aged out as of {@link now}, or -1. */
  private expiredSlot(): number {
    for (let i = 0; i < this.used; i++) if (this.now - this.seen[i] > this.ageingMs) return i;
    return -1;
  }
}
