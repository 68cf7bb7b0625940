/**
 * The two paces of a redirect backup's merge (issue 12, src/worker/backup.ts): the quiet
 * pace is the backup's speed, never slower than the busy pace, unpaced if either is.
 */
import { describe, expect, it } from 'vitest';
import { quietMergePace } from '../../src/worker/backup.js';

const MiB = 1024 * 1024;

describe('quietMergePace', () => {
  it("is the backup's speed when it is faster than merge-speed", () => {
    expect(quietMergePace(4 * MiB, 32 * MiB)).toBe(32 * MiB);
  });
  it('is merge-speed when that is faster (a quiet guest never slows the merge)', () => {
    expect(quietMergePace(48 * MiB, 16 * MiB)).toBe(48 * MiB);
  });
  it('is unpaced (0) when either pace is', () => {
    expect(quietMergePace(0, 32 * MiB)).toBe(0);
    expect(quietMergePace(4 * MiB, 0)).toBe(0);
  });
});
