/**
 * The switch's batched native frame copy (src/net/frame-copy.ts over
 * native/net.cc FrameCopier): ops run in order in one call, between views of
 * SharedArrayBuffers and ArrayBuffers; a range outside its view is refused
 * with a RangeError, never copied. Its prefetch hint skips what is out of
 * range instead (a CPU prefetch never faults, and nothing depends on it).
 */
import { describe, expect, it } from 'vitest';
import { FrameCopyBatch } from '../../src/net/frame-copy.js';

function views() {
  const ring = new Uint8Array(new SharedArrayBuffer(4096), 256, 1024);
  const template = Uint8Array.from({ length: 24 }, (_, i) => i);
  const guest = new Uint8Array(new SharedArrayBuffer(8192));
  return { ring, template, guest };
}

describe('FrameCopyBatch', () => {
  it('copies every recorded op in one flush, in order (a later op may read an earlier one)', () => {
    const { ring, template, guest } = views();
    const batch = new FrameCopyBatch(8);
    batch.setViews([ring, template], [guest]);
    for (let i = 0; i < 100; i++) guest[1000 + i] = i + 1;
    batch.add(batch.guestView(0), 1000, 0, 10, 100); // guest -> ring
    batch.add(0, 10, 0, 500, 100); // ring -> ring, from what the first op wrote
    batch.add(1, 12, batch.guestView(0), 4000, 12); // template -> guest
    expect(ring[10]).toBe(0); // nothing before the flush
    batch.flush();
    expect([...ring.subarray(10, 110)]).toEqual([...guest.subarray(1000, 1100)]);
    expect([...ring.subarray(500, 600)]).toEqual([...guest.subarray(1000, 1100)]);
    expect([...guest.subarray(4000, 4012)]).toEqual([...template.subarray(12, 24)]);
    expect(batch.count).toBe(0);
  });

  it('flushes by itself when full; rollback and shiftSource touch only unflushed ops', () => {
    const { ring, template, guest } = views();
    const batch = new FrameCopyBatch(2);
    batch.setViews([ring, template], [guest]);
    guest.fill(7, 0, 16);
    batch.add(batch.guestView(0), 0, 0, 0, 4);
    batch.add(batch.guestView(0), 0, 0, 4, 4);
    const generation = batch.generation;
    batch.add(batch.guestView(0), 0, 0, 8, 4); // the first two went out
    expect(batch.generation).toBe(generation + 1);
    expect([...ring.subarray(0, 8)]).toEqual(Array(8).fill(7));
    batch.rollback(0);
    batch.flush();
    expect(ring[8]).toBe(0);
    batch.add(1, 0, batch.guestView(0), 100, 12);
    batch.shiftSource(0, 1, 12);
    batch.flush();
    expect([...guest.subarray(100, 112)]).toEqual([...template.subarray(12, 24)]);
  });

  it('refuses a range outside its view, or a view outside the table', () => {
    const { ring, template, guest } = views();
    const batch = new FrameCopyBatch(4);
    batch.setViews([ring, template], [guest]);
    batch.add(0, 1000, 1, 0, 100); // past the end of the 1024-byte ring view
    expect(() => batch.flush()).toThrow(RangeError);
    batch.add(5, 0, 0, 0, 1);
    expect(() => batch.flush()).toThrow(/outside the table/);
    batch.add(0, 0.5, 0, 0, 1);
    expect(() => batch.flush()).toThrow(RangeError);
    expect(guest[0]).toBe(0);
  });

  it('prefetches guest regions by (region, offset) pairs; pairs outside the table or a view are skipped, a count beyond the array is refused', () => {
    const { ring, template, guest } = views();
    const batch = new FrameCopyBatch(4);
    batch.setViews([ring, template], [guest]);
    // Region 0 (view 2) at 0 and 8191, then region 5 (no such view), offset past the end, NaN.
    const at = Float64Array.from([0, 0, 0, 8191, 5, 0, 0, 8192, 0, Number.NaN]);
    expect(() => batch.prefetchGuest(at, 5)).not.toThrow();
    // Rewritten in place to view indexes (guest regions follow the two fixed views).
    expect(Array.from(at.subarray(0, 4))).toEqual([2, 0, 2, 8191]);
    expect(() => batch.prefetchGuest(new Float64Array(2), 2)).toThrow(RangeError);
    // Nothing was copied or changed by it.
    expect(batch.count).toBe(0);
    expect(guest.every((b) => b === 0)).toBe(true);
  });
});
