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

describe('MacTable', () => {
  it('learns, moves and ages out addresses', () => {
    const t = new MacTable(16, 1000);
    expect(t.lookup(key('02:00:00:00:00:01'), 0)).toBe(UNKNOWN_PORT);
    t.learn(key('02:00:00:00:00:01'), 3, 0);
    expect(t.lookup(key('02:00:00:00:00:01'), 500)).toBe(3);
    t.learn(key('02:00:00:00:00:01'), 1, 900); // moved, and refreshed
    expect(t.lookup(key('02:00:00:00:00:01'), 1800)).toBe(1);
    expect(t.lookup(key('02:00:00:00:00:01'), 1901)).toBe(UNKNOWN_PORT);
  });

  it('stays bounded: reuses expired entries, else does not learn', () => {
    const t = new MacTable(2, 1000);
    t.learn(1, 0, 0);
    t.learn(2, 1, 0);
    t.learn(3, 2, 10); // full, nothing expired
    expect(t.lookup(3, 10)).toBe(UNKNOWN_PORT);
    expect(t.size).toBe(2);
    t.learn(3, 2, 2000); // both expired: one slot is reused
    expect(t.lookup(3, 2000)).toBe(2);
    expect(t.size).toBe(2);
  });

  it('forgets every address behind a port', () => {
    const t = new MacTable(8, 1000);
    t.learn(1, 0, 0);
    t.learn(2, 1, 0);
    t.forgetPort(1);
    expect(t.lookup(1, 1)).toBe(0);
    expect(t.lookup(2, 1)).toBe(UNKNOWN_PORT);
  });

  it('validates its options', () => {
    expect(() => new MacTable(0, 1)).toThrow(RangeError);
    expect(() => new MacTable(1, 0)).toThrow(RangeError);
  });
});
