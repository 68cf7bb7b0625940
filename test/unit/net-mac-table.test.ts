import { describe, expect, it } from 'vitest';
import {
  formatMac,
  isGroupAddress,
  MacTable,
  macKey,
  parseMac,
  UNKNOWN_PORT,
} from '../../src/net/mac-table.js';

const key = (mac: string) => macKey(parseMac(mac), 0);

describe('MAC addresses', () => {
  it('parses, formats and keys addresses', () => {
    const mac = parseMac('52:54:00:Ab:cd:EF');
    expect(formatMac(mac)).toBe('52:54:00:ab:cd:ef');
    expect(key('ff:ff:ff:ff:ff:ff')).toBe(2 ** 48 - 1);
    expect(key('00:00:00:00:00:01')).toBe(1);
    expect(key('80:00:00:00:00:00')).toBe(0x8000 * 2 ** 32);
    expect(() => parseMac('52:54:00:12:34')).toThrow(RangeError);
    expect(() => parseMac('52:54:00:12:34:zz', '--mac-base')).toThrow(/--mac-base/);
  });

  it('tells group (broadcast, multicast) from unicast addresses', () => {
    expect(isGroupAddress(parseMac('ff:ff:ff:ff:ff:ff'), 0)).toBe(true);
    expect(isGroupAddress(parseMac('01:00:5e:00:00:01'), 0)).toBe(true);
    expect(isGroupAddress(parseMac('33:33:00:00:00:01'), 0)).toBe(true);
    expect(isGroupAddress(parseMac('52:54:00:00:00:01'), 0)).toBe(false);
  });
});

/** The address whose 48-bit number is `n`. */
function addr(n: number): Uint8Array {
  const b = new Uint8Array(6);
  for (let i = 5, v = n; i >= 0; i--, v = Math.floor(v / 256)) b[i] = v % 256;
  return b;
}

describe('MacTable', () => {
  it('learns, moves and ages out addresses', () => {
    const t = new MacTable(16, 1000);
    const a = parseMac('02:00:00:00:00:01');
    expect(t.lookup(a, 0)).toBe(UNKNOWN_PORT);
    t.learn(a, 0, 3);
    t.now = 500;
    expect(t.lookup(a, 0)).toBe(3);
    t.now = 900;
    t.learn(a, 0, 1); // moved, and refreshed
    t.now = 1800;
    expect(t.lookup(a, 0)).toBe(1);
    t.now = 1901;
    expect(t.lookup(a, 0)).toBe(UNKNOWN_PORT);
  });

  it('reads the address at an offset in a frame', () => {
    const t = new MacTable(4, 1000);
    const frame = new Uint8Array(20);
    frame.set(parseMac('02:00:00:00:00:0b'), 0);
    frame.set(parseMac('02:00:00:00:00:0a'), 6);
    t.learn(frame, 6, 2);
    expect(t.lookup(parseMac('02:00:00:00:00:0a'), 0)).toBe(2);
    expect(t.lookup(frame, 0)).toBe(UNKNOWN_PORT);
  });

  it('stays bounded: reuses expired entries, else does not learn', () => {
    const t = new MacTable(2, 1000);
    t.learn(addr(1), 0, 0);
    t.learn(addr(2), 0, 1);
    t.now = 10;
    t.learn(addr(3), 0, 2); // full, nothing expired
    expect(t.lookup(addr(3), 0)).toBe(UNKNOWN_PORT);
    expect(t.size).toBe(2);
    t.now = 2000;
    t.learn(addr(3), 0, 2); // both expired: one slot is reused
    expect(t.lookup(addr(3), 0)).toBe(2);
    expect(t.size).toBe(2);
  });

  it('forgets every address behind a port', () => {
    const t = new MacTable(8, 1000);
    t.learn(addr(1), 0, 0);
    t.learn(addr(2), 0, 1);
    t.forgetPort(1);
    t.now = 1;
    expect(t.lookup(addr(1), 0)).toBe(0);
    expect(t.lookup(addr(2), 0)).toBe(UNKNOWN_PORT);
  });

  it('validates its options', () => {
    expect(() => new MacTable(0, 1)).toThrow(RangeError);
    expect(() => new MacTable(1, 0)).toThrow(RangeError);
  });

  it('agrees with a Map-based model under churn: collisions, moves, ageing, reuse, forgetting', () => {
    /** The straightforward table (a Map from 48-bit key to entry) the typed-array index must match. */
    class ModelTable {
      readonly index = new Map<number, number>();
      readonly keys: number[] = [];
      readonly ports: number[] = [];
      readonly seen: number[] = [];
      constructor(
        readonly capacity: number,
        readonly ageingMs: number,
      ) {}
      learn(key: number, port: number, now: number): void {
        const slot = this.index.get(key);
        if (slot !== undefined) {
          this.ports[slot] = port;
          this.seen[slot] = now;
          return;
        }
        let free = this.keys.length;
        if (free >= this.capacity) {
          free = this.seen.findIndex((t) => now - t > this.ageingMs);
          if (free < 0) return;
          this.index.delete(this.keys[free]);
        }
        this.keys[free] = key;
        this.ports[free] = port;
        this.seen[free] = now;
        this.index.set(key, free);
      }
      lookup(key: number, now: number): number {
        const slot = this.index.get(key);
        if (slot === undefined || now - this.seen[slot] > this.ageingMs) return UNKNOWN_PORT;
        return this.ports[slot];
      }
      forgetPort(port: number): void {
        this.ports.forEach((p, i) => {
          if (p === port) this.seen[i] = -Infinity;
        });
      }
    }
    let seed = 12345;
    const random = (n: number) => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    // Addresses differing only in high bits, only in low bits, and near the top.
    const keys = Array.from({ length: 300 }, (_, i) =>
      i % 3 === 0 ? i * 2 ** 32 : i % 3 === 1 ? 0x0200_0000_0000 + i : 2 ** 48 - 1 - i,
    );
    const addrs = keys.map(addr);
    expect(addrs.map((a) => macKey(a, 0))).toEqual(keys);
    const t = new MacTable(64, 50);
    const model = new ModelTable(64, 50);
    let mismatches = 0;
    for (let step = 0; step < 50_000; step++) {
      t.now += random(3);
      const k = random(keys.length);
      const op = random(20);
      if (op === 0) {
        t.forgetPort(op);
        model.forgetPort(op);
      } else if (op < 10) {
        t.learn(addrs[k], 0, op);
        model.learn(keys[k], op, t.now);
      } else if (t.lookup(addrs[k], 0) !== model.lookup(keys[k], t.now)) mismatches++;
      if (t.size !== model.index.size) mismatches++;
    }
    expect(mismatches).toBe(0);
    for (let k = 0; k < keys.length; k++) {
      expect(t.lookup(addrs[k], 0)).toBe(model.lookup(keys[k], t.now));
    }
  });
});
