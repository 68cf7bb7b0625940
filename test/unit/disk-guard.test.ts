/**
 * Issue 14's RT guard, its pure parts: the main thread's table of disk regions and slots,
 * and the admission rule two devices on one disk follow through their shared region —
 * driven by request counts, never by elapsed time (the window is 0, or 10 s where a test
 * needs it to hold).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseBlkQosFlags } from '../../src/devices/blk/options.js';
import {
  backingDisk,
  DEFAULT_RT_GUARD,
  DiskGuard,
  type DiskGuardInit,
  DiskGuardRegistry,
  type RtGuardPolicy,
  rtGuardPolicy,
} from '../../src/io/disk-guard.js';

const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-guard-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function image(name: string): string {
  const path = join(dir, name);
  writeFileSync(path, '');
  return path;
}

const noWarn = (m: string) => {
  throw new Error(`unexpected warning: ${m}`);
};

/** Two devices on one disk: a (RT) and b (lower class, capped by `policy`). */
function pair(policy: RtGuardPolicy): { a: DiskGuard; b: DiskGuard } {
  const reg = new DiskGuardRegistry();
  const ia = reg.assign(image('a.img'), policy, noWarn) as DiskGuardInit;
  const ib = reg.assign(image('b.img'), policy, noWarn) as DiskGuardInit;
  return { a: DiskGuard.attach(ia), b: DiskGuard.attach(ib) };
}

const MiB = 1024 * 1024;

/** A policy with the in-flight cap only (no rate term), for the tests of the cap. */
function capOnly(p: Partial<RtGuardPolicy>): RtGuardPolicy {
  return rtGuardPolicy({ bytesPerSecond: 0, ...p });
}

/** A slot on a fresh registry's region (for the getters that need no neighbour). */
function pairInit(): DiskGuardInit {
  return new DiskGuardRegistry().assign(image('p.img'), null, noWarn) as DiskGuardInit;
}

describe('the disk guard registry', () => {
  it('gives devices on one disk one region and a slot each', () => {
    const reg = new DiskGuardRegistry();
    const a = reg.assign(image('r1.img'), DEFAULT_RT_GUARD, noWarn) as DiskGuardInit;
    const b = reg.assign(image('r2.img'), null, noWarn) as DiskGuardInit;
    expect(a.disk).toBe(backingDisk(join(dir, 'r1.img')));
    expect(b.disk).toBe(a.disk);
    expect(b.buffer).toBe(a.buffer);
    expect([a.slot, b.slot]).toEqual([0, 1]);
    expect(b.policy).toBeNull();
  });

  it('resolves a file to its disk, and gives another file system another region', () => {
    const reg = new DiskGuardRegistry();
    const a = reg.assign(image('d1.img'), DEFAULT_RT_GUARD, noWarn) as DiskGuardInit;
    const shm = mkdtempSync('/dev/shm/vhost-rt-guard-');
    try {
      writeFileSync(join(shm, 'x.img'), '');
      const b = reg.assign(join(shm, 'x.img'), DEFAULT_RT_GUARD, noWarn) as DiskGuardInit;
      expect(b.disk).not.toBe(a.disk);
      expect(b.buffer).not.toBe(a.buffer);
      expect(b.slot).toBe(0);
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
    expect(a.disk).toMatch(/^\d+:\d+$/);
  });

  it('hands a closed device slot out again, and warns when every slot is running', () => {
    const reg = new DiskGuardRegistry(2);
    const warnings: string[] = [];
    const warn = (m: string) => warnings.push(m);
    const s0 = reg.assign(image('s0.img'), null, warn) as DiskGuardInit;
    const s1 = reg.assign(image('s1.img'), null, warn) as DiskGuardInit;
    expect(reg.assign(image('s2.img'), null, warn)).toBeUndefined();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('served without it');
    const g0 = DiskGuard.attach(s0);
    g0.rtStarted();
    g0.endBatch();
    g0.close();
    const again = reg.assign(image('s3.img'), DEFAULT_RT_GUARD, warn) as DiskGuardInit;
    expect(again.slot).toBe(s0.slot);
    // The new owner starts from a cleared line: the old device's RT past is not its.
    const other = DiskGuard.attach({ ...s1, policy: rtGuardPolicy({ windowUs: 10_000_000 }) });
    expect(other.neighbourActive()).toBe(false);
  });

  it('gives no slot for an image that does not exist (opening it reports why)', () => {
    const reg = new DiskGuardRegistry();
    expect(reg.assign(join(dir, 'missing.img'), null, noWarn)).toBeUndefined();
  });
});

describe('admission', () => {
  it('caps the lower-class device at N requests while an RT neighbour has requests in flight', () => {
    const { a, b } = pair(capOnly({ maxRequests: 2, maxBytes: 64 * MiB, windowUs: 0 }));
    for (let i = 0; i < 8; i++) {
      expect(b.admits()).toBe(true);
      b.lowStarted(MiB);
    }
    a.rtStarted();
    a.endBatch();
    b.endBatch();
    // 8 in flight, above the cap: nothing more until it drops under 2.
    expect(b.admits()).toBe(false);
    for (let i = 0; i < 6; i++) b.lowFinished(MiB);
    expect(b.lowRequests).toBe(2);
    expect(b.admits()).toBe(false);
    b.lowFinished(MiB);
    expect(b.admits()).toBe(true);
    b.lowStarted(MiB);
    expect(b.admits()).toBe(false);
    expect(b.peakRequests).toBe(2);
    // The RT request completes; with a window of 0 the next batch admits freely.
    a.rtFinished();
    a.endBatch();
    b.endBatch();
    expect(b.neighbourActive()).toBe(false);
    expect(b.admits()).toBe(true);
    b.lowStarted(MiB);
    expect(b.peakRequests).toBe(2);
  });

  it('caps bytes too: one request past the cap at most', () => {
    const { a, b } = pair(capOnly({ maxRequests: 100, maxBytes: 256 * 1024, windowUs: 0 }));
    a.rtStarted();
    a.endBatch();
    let admitted = 0;
    while (b.admits()) {
      b.lowStarted(96 * 1024);
      admitted++;
    }
    // 96 + 96 < 256, then 288 KiB: three admitted, the last one over by less than a request.
    expect(admitted).toBe(3);
    expect(b.peakBytes).toBe(288 * 1024);
    expect(b.peakBytes).toBeLessThan(256 * 1024 + 96 * 1024);
  });

  it('keeps the cap for the window after the RT requests complete', () => {
    const { a, b } = pair(capOnly({ maxRequests: 1, windowUs: 10_000_000 }));
    b.lowStarted(4096);
    a.rtStarted();
    a.endBatch();
    a.rtFinished();
    a.endBatch();
    b.endBatch();
    expect(b.neighbourActive()).toBe(true);
    expect(b.admits()).toBe(false);
    b.lowFinished(4096);
    expect(b.admits()).toBe(true);
  });

  it('ignores its own RT requests, and a device never RT, and caps nothing with no policy', () => {
    const { a, b } = pair(capOnly({ maxRequests: 1, windowUs: 10_000_000 }));
    // b's own RT requests do not cap b; a never had one.
    b.rtStarted();
    b.lowStarted(4096);
    b.endBatch();
    expect(b.admits()).toBe(true);
    // a has no RT of its own and sees b's.
    a.lowStarted(4096);
    a.endBatch();
    expect(a.admits()).toBe(false);
    const reg = new DiskGuardRegistry();
    const rt = DiskGuard.attach(reg.assign(image('n1.img'), null, noWarn) as DiskGuardInit);
    const free = DiskGuard.attach(reg.assign(image('n2.img'), null, noWarn) as DiskGuardInit);
    rt.rtStarted();
    rt.endBatch();
    free.lowStarted(MiB);
    free.lowStarted(MiB);
    expect(free.admits()).toBe(true);
    expect(free.peakRequests).toBe(0);
  });

  it('strict (0 requests): admits nothing while the neighbour is active, and says when to look again', () => {
    const { a, b } = pair(capOnly({ maxRequests: 0, windowUs: 0 }));
    expect(b.recheckMs()).toBe(1);
    a.rtStarted();
    a.endBatch();
    expect(b.admits()).toBe(false);
    a.rtFinished();
    a.endBatch();
    b.endBatch();
    expect(b.admits()).toBe(true);
    expect(DiskGuard.attach({ ...pairInit(), policy: DEFAULT_RT_GUARD }).recheckMs()).toBe(13);
  });

  it('reads its neighbours once per batch', () => {
    const { a, b } = pair(capOnly({ maxRequests: 1, windowUs: 0 }));
    b.lowStarted(4096);
    expect(b.admits()).toBe(true);
    a.rtStarted();
    a.endBatch();
    // Same batch: b still goes by what it read at its start.
    expect(b.admits()).toBe(true);
    b.endBatch();
    expect(b.admits()).toBe(false);
  });
});

/**
 * The rate term, on a clock the test supplies (performance.now() ms passed to admits and
 * the attach), so every bound is on bytes counted, none on elapsed time.
 */
describe('the rate term (--rt-guard-bps)', () => {
  const KiB = 1024;
  /** The cap wide open, so only the rate holds; a 10 s window. */
  const rateOnly = (bytesPerSecond: number) =>
    rtGuardPolicy({ maxRequests: 1024, maxBytes: 2 ** 40, windowUs: 10_000_000, bytesPerSecond });
  function ratePair(bytesPerSecond: number): { a: DiskGuard; b: DiskGuard } {
    const reg = new DiskGuardRegistry();
    const policy = rateOnly(bytesPerSecond);
    const ia = reg.assign(image('ra.img'), null, noWarn) as DiskGuardInit;
    const ib = reg.assign(image('rb.img'), policy, noWarn) as DiskGuardInit;
    return { a: DiskGuard.attach(ia), b: DiskGuard.attach({ ...ib, now: 0 }) };
  }
  /** Requests b offers per 1 ms step. */
  const PER_STEP = 64;
  /** b submits up to PER_STEP 64 KiB requests (each completing at once) while admitted, 1 ms steps; the bytes. */
  function flood(b: DiskGuard, fromMs: number, toMs: number): number {
    let admitted = 0;
    for (let t = fromMs; t < toMs; t++) {
      b.endBatch();
      for (let i = 0; i < PER_STEP && b.admits(t); i++) {
        b.lowStarted(64 * KiB);
        b.lowFinished(64 * KiB);
        admitted += 64 * KiB;
      }
    }
    return admitted;
  }

  it('holds the lower class to the rate while the neighbour is active: rate·T + burst + one request at most', () => {
    const rate = MiB; // 1 MiB/s: a 10 KiB bucket, so 64 KiB requests go into debt
    const { a, b } = ratePair(rate);
    a.rtStarted();
    a.endBatch();
    const bytes = flood(b, 0, 2000);
    const burst = Math.round(rate * 0.01);
    expect(bytes).toBeLessThanOrEqual(2 * rate + burst + 64 * KiB);
    // ...and is not starved below it either (one request short at most).
    expect(bytes).toBeGreaterThanOrEqual(2 * rate - 64 * KiB);
    expect(b.rateHolds).toBeGreaterThan(0);
    // The peak in flight stayed one request: the rate, not the cap, held b.
    expect(b.peakRequests).toBe(1);
  });

  it('says when the bucket has refilled, for the one timer of a device held with nothing in flight', () => {
    const { a, b } = ratePair(MiB);
    a.rtStarted();
    a.endBatch();
    expect(b.admits(0)).toBe(true);
    b.lowStarted(64 * KiB);
    b.lowFinished(64 * KiB);
    b.endBatch();
    expect(b.admits(0)).toBe(false);
    // 64 KiB − 10 KiB of debt at 1 MiB/s: 52.5 ms, rounded up.
    const wait = b.recheckMs(0);
    expect(wait).toBe(53);
    b.endBatch();
    expect(b.admits(wait - 1)).toBe(false);
    b.endBatch();
    expect(b.admits(wait)).toBe(true);
  });

  it('charges nothing while no neighbour is active, and starts a neighbour period with a full bucket', () => {
    const { a, b } = ratePair(MiB);
    // No RT neighbour: b floods freely and the bucket is untouched.
    expect(flood(b, 0, 10)).toBe(10 * PER_STEP * 64 * KiB);
    expect(b.rateHolds).toBe(0);
    a.rtStarted();
    a.endBatch();
    b.endBatch();
    expect(b.admits(10)).toBe(true);
  });

  it('0: no rate term, the cap alone', () => {
    const { a, b } = ratePair(0);
    a.rtStarted();
    a.endBatch();
    expect(flood(b, 0, 10)).toBe(10 * PER_STEP * 64 * KiB);
    expect(b.rateHolds).toBe(0);
  });
});

describe('the RT guard flags', () => {
  it('parses the cap and the window, off, and refuses bad values naming the flag', () => {
    expect(parseBlkQosFlags({}).rtGuard).toBeUndefined();
    expect(parseBlkQosFlags({ 'no-rt-guard': true }).rtGuard).toBeNull();
    expect(
      parseBlkQosFlags({ 'rt-guard-requests': '4', 'rt-guard-window-us': '5000' }).rtGuard,
    ).toEqual({
      maxRequests: 4,
      maxBytes: DEFAULT_RT_GUARD.maxBytes,
      windowUs: 5000,
      bytesPerSecond: DEFAULT_RT_GUARD.bytesPerSecond,
    });
    expect(parseBlkQosFlags({ 'rt-guard-bps': '0' }).rtGuard?.bytesPerSecond).toBe(0);
    expect(parseBlkQosFlags({ 'rt-guard-bps': '1048576' }).rtGuard?.bytesPerSecond).toBe(MiB);
    expect(() => parseBlkQosFlags({ 'rt-guard-bps': '-5' })).toThrow('--rt-guard-bps');
    expect(() => parseBlkQosFlags({ 'rt-guard-bps': '1e9' })).toThrow('--rt-guard-bps');
    expect(parseBlkQosFlags({ 'rt-guard-requests': '0' }).rtGuard?.maxRequests).toBe(0);
    expect(() => parseBlkQosFlags({ 'rt-guard-requests': '1025' })).toThrow(
      '--rt-guard-requests 1025',
    );
    expect(() => parseBlkQosFlags({ 'rt-guard-bytes': 'lots' })).toThrow('--rt-guard-bytes');
    expect(() => parseBlkQosFlags({ 'rt-guard-window-us': '99999999999' })).toThrow(
      '--rt-guard-window-us',
    );
    expect(() => parseBlkQosFlags({ 'no-rt-guard': true, 'rt-guard-requests': '2' })).toThrow(
      '--no-rt-guard',
    );
  });
});
