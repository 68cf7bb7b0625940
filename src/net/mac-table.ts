/**
 * A port's private MAC learning table: MAC address → switch port, with
 * ageing. Each port worker owns one and nobody else touches it, which is why
 * the switch needs no shared forwarding table and no lock (see switch-port.ts).
 *
 * Addresses are keyed as one number (48 bits fit a double exactly); entries
 * live in preallocated typed arrays, and the Map from key to entry allocates
 * only when a new address is learnt (never per frame). The table is bounded:
 * when it is full an expired entry is reused, else the address is not learnt
 * and its frames are flooded (a guest spraying source addresses cannot grow
 * the daemon's memory).
 */

/** Key of the MAC address at `bytes[offset, offset + 6)`. */
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

export class MacTable {
  private readonly index = new Map<number, number>();
  private readonly keys: Float64Array;
  private readonly ports: Int32Array;
  private readonly seen: Float64Array;
  private used = 0;

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
    this.keys = new Float64Array(capacity);
    this.ports = new Int32Array(capacity);
    this.seen = new Float64Array(capacity);
  }

  /** Addresses currently held (expired ones included until reused or swept). */
  get size(): number {
    return this.index.size;
  }

  /** Records that `key` was seen behind `port` at time `now` (ms). */
  learn(key: number, port: number, now: number): void {
    const slot = this.index.get(key);
    if (slot !== undefined) {
      this.ports[slot] = port;
      this.seen[slot] = now;
      return;
    }
    let free: number;
    if (this.used < this.capacity) {
      free = this.used++;
    } else {
      free = this.expiredSlot(now);
      if (free < 0) return;
      this.index.delete(this.keys[free]);
    }
    this.keys[free] = key;
    this.ports[free] = port;
    this.seen[free] = now;
    this.index.set(key, free);
  }

  /** The port behind `key`, or {@link UNKNOWN_PORT} when unknown or aged out. */
  lookup(key: number, now: number): number {
    const slot = this.index.get(key);
    if (slot === undefined || now - this.seen[slot] > this.ageingMs) return UNKNOWN_PORT;
    return this.ports[slot];
  }

  /** Forgets every address learnt behind `port` (its peer went away). */
  forgetPort(port: number): void {
    for (let i = 0; i < this.used; i++) if (this.ports[i] === port) this.seen[i] = -Infinity;
  }

  private expiredSlot(now: number): number {
    for (let i = 0; i < this.used; i++) if (now - this.seen[i] > this.ageingMs) return i;
    return -1;
  }
}
