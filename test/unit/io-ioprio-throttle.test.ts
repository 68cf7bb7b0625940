/**
 * Issue 14's pure parts: the guest-to-host I/O priority policy (honor / clamp
 * / ignore under the device's --ioprio, with the guest's levels squeezed
 * under the ceiling by src/rt/priority.ts's formula) and the token buckets'
 * arithmetic, driven with explicit clocks (no wall-clock time).
 */
import { describe, expect, it } from 'vitest';
import { parseBlkQosFlags } from '../../src/devices/blk/options.js';
import {
  formatIoprio,
  IoprioClass,
  IoprioPolicy,
  IoThrottle,
  ioprioValue,
  parseIoprio,
} from '../../src/io/index.js';

const rt = (l: number) => ioprioValue(IoprioClass.RT, l);
const be = (l: number) => ioprioValue(IoprioClass.BE, l);
const IDLE = ioprioValue(IoprioClass.IDLE, 0);

describe('--ioprio and --guest-ioprio', () => {
  it('parses CLASS[:LEVEL] as ionice does, naming the flag on errors', () => {
    expect(parseIoprio('rt')).toBe(rt(4));
    expect(parseIoprio('rt:0')).toBe(rt(0));
    expect(parseIoprio('be:7')).toBe(be(7));
    expect(parseIoprio('idle')).toBe(IDLE);
    for (const bad of ['rt:8', 'idle:1', 'realtime', 'be:', ''])
      expect(() => parseIoprio(bad)).toThrow('--ioprio');
    expect(formatIoprio(rt(3))).toBe('rt:3');
    expect(formatIoprio(0)).toBe('none');
  });

  it('clamp (default): never above the ceiling, order kept inside its class', () => {
    const p = new IoprioPolicy('clamp', rt(4));
    expect(p.hostIoprio(0)).toBe(rt(4)); // none: the device's default
    // RT levels 0..7 squeezed under rt:4: level = 7 - floor((7 - l) * 3 / 7)
    expect([0, 1, 2, 3, 4, 5, 6, 7].map((l) => p.hostIoprio(rt(l)))).toEqual(
      [4, 5, 5, 6, 6, 7, 7, 7].map(rt),
    );
    expect(p.hostIoprio(be(0))).toBe(be(0));
    expect(p.hostIoprio(IDLE)).toBe(IDLE);
    const def = new IoprioPolicy();
    expect(def.hostIoprio(rt(0))).toBe(be(0)); // no --ioprio: a guest cannot reach RT
    expect(def.hostIoprio(0)).toBe(0); // and a request without one keeps the thread's own
    expect(def.hostIoprio(be(3))).toBe(be(3));
  });

  it('honor passes the guest value; ignore uses the device value; garbage gets the default', () => {
    const honor = new IoprioPolicy('honor', be(4));
    expect(honor.hostIoprio(rt(0))).toBe(rt(0));
    expect(honor.hostIoprio(0)).toBe(be(4));
    const ignore = new IoprioPolicy('ignore', be(6));
    expect(ignore.hostIoprio(rt(0))).toBe(be(6));
    for (const junk of [7 << 13, 0xffffffff, rt(0) | 0x100])
      expect(honor.hostIoprio(junk)).toBe(be(4));
  });

  it('parses the blk QoS flags', () => {
    expect(
      parseBlkQosFlags({
        ioprio: 'rt:1',
        'guest-ioprio': 'honor',
        'bps-limit': '1000',
        'bps-burst': '10',
      }),
    ).toEqual({ ioprio: rt(1), guestIoprio: 'honor', throttle: { bps: 1000, bpsBurst: 10 } });
    expect(parseBlkQosFlags({})).toEqual({});
    expect(() => parseBlkQosFlags({ 'guest-ioprio': 'maybe' })).toThrow('--guest-ioprio');
    expect(() => parseBlkQosFlags({ 'iops-write-limit': '1.5' })).toThrow('--iops-write-limit');
    expect(() => parseBlkQosFlags({ 'iops-burst': '4' })).toThrow('--iops-burst');
  });
});

describe('token buckets', () => {
  it('admits the burst, then one request into debt, then refills at the limit', () => {
    const t = new IoThrottle({ iops: 100, iopsBurst: 3 }, 0);
    let admitted = 0;
    while (t.open(0)) {
      t.charge(false, 4096);
      admitted++;
    }
    expect(admitted).toBe(3); // the burst, down to exactly 0: closed
    expect(t.open(0.001)).toBe(true); // any refill opens it: this request goes into debt
    t.charge(false, 4096);
    expect(t.waitMs(0.001)).toBeCloseTo(10, 1); // a whole token at 100/s
    expect(t.open(9.9)).toBe(false);
    expect(t.open(10.1)).toBe(true);
  });

  it('bounds what is admitted by limit × time + burst + one request', () => {
    const limit = 1_000_000; // bytes/s
    const burst = 100_000;
    const size = 65536;
    const t = new IoThrottle({ bps: limit, bpsBurst: burst }, 0);
    let bytes = 0;
    for (let now = 0; now <= 2000; now += 0.5) {
      while (t.open(now)) {
        t.charge(true, size);
        bytes += size;
      }
    }
    expect(bytes).toBeLessThanOrEqual(limit * 2 + burst + size);
    expect(bytes).toBeGreaterThan(limit * 2 - size);
  });

  it('keeps reads and writes apart, and is off with no limit', () => {
    const t = new IoThrottle({ iopsWrite: 10, iopsBurst: 1 }, 0);
    t.charge(true, 512);
    expect(t.open(0)).toBe(false);
    const reads = new IoThrottle({ iopsRead: 10, iopsBurst: 1 }, 0);
    reads.charge(true, 512);
    expect(reads.open(0)).toBe(true);
    expect(new IoThrottle({}, 0).enabled).toBe(false);
  });
});
