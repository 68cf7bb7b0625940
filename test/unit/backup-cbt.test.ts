/**
 * Changed-block tracking's persistence (issue 12), on real files: a clean
 * close keeps the bitmap, an open that is never closed (a crash) makes it
 * invalid, a resized image or a foreign file too, and of two daemons on one
 * image (a migration) the later one owns the file. No file is created next
 * to an image that was never backed up (unless it is shared: --share-rw).
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChangedBlocks, cbtPath } from '../../src/io/backup-cbt.js';
import { BACKUP_CHUNK_BYTES } from '../../src/io/backup-share.js';

const MiB = 1024 * 1024;
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-cbt-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function image(name: string, bytes = 8 * MiB): string {
  const p = join(dir, name);
  writeFileSync(p, Buffer.alloc(bytes));
  return p;
}

const bit = (c: ChangedBlocks, chunk: number) => (c.bits[chunk >>> 5] >>> (chunk & 31)) & 1;

describe('ChangedBlocks', () => {
  it('starts invalid, becomes valid at a completed backup, and survives a clean close', () => {
    const img = image('clean.img');
    const a = ChangedBlocks.open(img, 8 * MiB, () => {});
    expect(a.valid).toBe(false);
    a.take();
    a.completed();
    a.mark(3 * BACKUP_CHUNK_BYTES + 10, 1);
    a.mark(5 * BACKUP_CHUNK_BYTES - 512, 1024); // straddles chunks 4 and 5
    a.persist();
    const b = ChangedBlocks.open(img, 8 * MiB, () => {});
    expect(b.valid).toBe(true);
    expect(b.generation).toBe(1);
    expect([3, 4, 5, 6].map((c) => bit(b, c))).toEqual([1, 1, 1, 0]);
  });

  it('creates no file for an image never backed up; the first completed backup creates it', () => {
    const img = image('lazy.img');
    const a = ChangedBlocks.open(img, 8 * MiB, () => {});
    a.mark(0, 4096);
    a.persist();
    expect(existsSync(cbtPath(img))).toBe(false);
    const b = ChangedBlocks.open(img, 8 * MiB, () => {});
    expect(existsSync(cbtPath(img))).toBe(false);
    b.take();
    b.completed();
    // Created OPEN at once: a crash from here on invalidates it.
    expect(existsSync(cbtPath(img))).toBe(true);
    expect(ChangedBlocks.open(img, 8 * MiB, () => {}).invalidReason).toMatch(/crash/);
    // A shared image (--share-rw) gets its file at open, for the owner mark.
    const shared = image('shared.img');
    ChangedBlocks.open(shared, 8 * MiB, () => {}, true);
    expect(existsSync(cbtPath(shared))).toBe(true);
  });

  it('a daemon that never closed (crash) leaves an invalid bitmap; a resize too', () => {
    const img = image('crash.img');
    const a = ChangedBlocks.open(img, 8 * MiB, () => {});
    a.completed();
    a.persist();
    ChangedBlocks.open(img, 8 * MiB, () => {}); // opened, never persisted: the crash
    const after = ChangedBlocks.open(img, 8 * MiB, () => {});
    expect(after.valid).toBe(false);
    expect(after.invalidReason).toMatch(/crash/);
    const c = ChangedBlocks.open(image('resized.img'), 8 * MiB, () => {});
    c.completed();
    c.persist();
    expect(ChangedBlocks.open(join(dir, 'resized.img'), 16 * MiB, () => {}).invalidReason).toMatch(
      /size/,
    );
  });

  it('a failed backup gives its chunks back; the changes made meanwhile stay', () => {
    const c = ChangedBlocks.inMemory(8 * MiB);
    c.mark(0, 1);
    const taken = c.take();
    c.mark(2 * BACKUP_CHUNK_BYTES, 1);
    c.giveBack(taken);
    expect([0, 1, 2].map((x) => bit(c, x))).toEqual([1, 0, 1]);
  });

  it('of two daemons on one image the later one owns the file: the earlier close leaves it alone', () => {
    const img = image('migrate.img');
    const first = ChangedBlocks.open(img, 8 * MiB, () => {});
    first.completed();
    first.persist();
    const source = ChangedBlocks.open(img, 8 * MiB, () => {});
    expect(source.valid).toBe(true);
    const destination = ChangedBlocks.open(img, 8 * MiB, () => {});
    expect(destination.valid).toBe(false); // the source has it open
    source.persist(); // the source stops after the migration: not its file any more
    // The destination crashes: the next daemon must not trust the source's bitmap.
    expect(ChangedBlocks.open(img, 8 * MiB, () => {}).valid).toBe(false);
    expect(cbtPath(img)).toBe(`${img}.vhost-rt-cbt`);
  });
});
