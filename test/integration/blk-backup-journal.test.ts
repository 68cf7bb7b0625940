/**
 * The journal protocol of a live backup (issue 12), step by step on an
 * embedded BlkDevice over a real linux-aio engine and a real image, with the
 * test playing the copier on the shared state: a guest write to uncopied
 * blocks completes only after those blocks' OLD bytes (4 KiB each, not the
 * whole chunk; with read-around, from a chunk's second write on, while the journal is at
 * most half full, the rest of the chunk)
 * are in the journal and published, and claimed (so a disk read
 * the copier made before the claim does not write them: the journal wins); a
 * chunk the copier marked copied needs no journal entry; a full journal
 * holds the write (THROTTLE, counted) until an entry is freed.
 */
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BLK_STAT_NAMES,
  BlkDevice,
  BlkStatus,
  createVrings,
  LinuxAioEngine,
  SplitVirtqueue,
  StatCounters,
} from '../../src/index.js';
import { BACKUP_BLOCK_BYTES, BACKUP_CHUNK_BYTES, BackupShare } from '../../src/io/backup-share.js';
import { BACKUP } from '../../src/locking/layout.js';
import { native } from '../../src/native.js';
import { DriverQueue } from '../support/driver-queue.js';
import { GuestRam } from '../support/guest-ram.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;
const CHUNK = BACKUP_CHUNK_BYTES;
const BLOCK = BACKUP_BLOCK_BYTES;
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-journal-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Chunk c of the image as first written: every byte c + 1. */
const oldByte = (c: number) => c + 1;

/** An image of `chunks` chunks as first written (chunk c all oldByte(c)), in the test's dir. */
function oldImage(name: string, chunks: number): string {
  const image = join(dir, name);
  const bytes = Buffer.alloc(chunks * CHUNK);
  for (let c = 0; c < chunks; c++) bytes.fill(oldByte(c), c * CHUNK, (c + 1) * CHUNK);
  writeFileSync(image, bytes);
  return image;
}

function embedded(image: string) {
  const ram = new GuestRam([{ guestPhysAddr: 0, size: 4 * MiB }]);
  const driver = new DriverQueue(ram, 64);
  const memory = ram.toGuestMemory();
  const engine = new LinuxAioEngine({
    path: image,
    readonly: false,
    direct: true,
    depth: 128,
    maxIovs: 1024,
    warn: () => {},
  });
  const device = new BlkDevice({
    engine,
    geometry: {
      imageBytes: engine.sizeBytes,
      blockSize: 512,
      numQueues: 1,
      segMax: 62,
      readonly: false,
    },
    serial: 'journal',
    queueSize: 64,
    stats: StatCounters.create(BLK_STAT_NAMES),
    warn: () => {},
  });
  const vrings = createVrings(1, () => {});
  device.activate(vrings);
  device.setMemory(memory);
  vrings[0].start(new SplitVirtqueue(memory, driver.config(), 64));
  vrings[0].enabled = true;
  device.kick(0);
  /** A 4 KiB write of `fill` at byte `offset`; `status()` is 0xff until it completed. */
  const write = (offset: number, fill: number) => {
    const header = ram.alloc(16, 16);
    const buf = ram.alloc(4096, 4096);
    const status = ram.alloc(1, 1);
    ram.write(status, new Uint8Array([0xff]));
    const h = new DataView(new ArrayBuffer(16));
    h.setUint32(0, 1, true);
    h.setUint32(8, offset / 512, true);
    ram.write(header, new Uint8Array(h.buffer));
    ram.write(buf, new Uint8Array(4096).fill(fill));
    driver.addChain([
      { addr: header, len: 16, write: false },
      { addr: buf, len: 4096, write: false },
      { addr: status, len: 1, write: true },
    ]);
    device.kick(0);
    return { status: () => ram.read(status, 1)[0] };
  };
  return { device, write };
}

function onDisk(image: string, offset: number, length: number): Uint8Array {
  const fd = openSync(image, 'r');
  try {
    const out = Buffer.alloc(length);
    readSync(fd, out, 0, length, offset);
    return out;
  } finally {
    closeSync(fd);
  }
}

const allBytes = (b: Uint8Array, v: number) => b.every((x) => x === v);

describe('the backup journal on a blk device (embedded, linux-aio)', () => {
  it('saves the old blocks before the write, skips copied chunks, and throttles on a full journal', async () => {
    const chunks = 16;
    const image = oldImage('disk.img', chunks);
    const { device, write } = embedded(image);
    // A journal of 4 entries (4 KiB blocks).
    const share = BackupShare.create(chunks * CHUNK, 4 * BLOCK);
    const i32 = share.i32;
    const journal = new Uint8Array(share.init.journal);
    const entryOld = (e: number, c: number) =>
      allBytes(journal.subarray(e * BLOCK, (e + 1) * BLOCK), oldByte(c));
    try {
      const started = (await device.command({
        type: 'backup-start',
        share: share.init,
        sync: 'full',
      })) as {
        sync: string;
        chunks: number;
      };
      expect(started).toMatchObject({ sync: 'full', chunks });
      expect(share.entries).toBe(4);

      // The first write to block 0: only that block is saved (one 4 KiB read), and claimed, so
      // a copier's disk read of chunk 0 will not write block 0.
      const w0 = write(0, 0xa0);
      await waitFor(() => w0.status() === BlkStatus.OK, 'the write to block 0');
      expect(share.claimedMask(0)).toBe(0b1);
      expect(Atomics.load(i32, BACKUP.READY_HEAD)).toBe(1);
      expect(Atomics.load(i32, BACKUP.JOURNAL_READS)).toBe(1);
      const e0 = i32[share.at.ready];
      expect(i32[share.at.entryBlock + e0]).toBe(0);
      // The journal holds the OLD block, the disk the new bytes.
      expect(entryOld(e0, 0)).toBe(true);
      expect(allBytes(onDisk(image, 0, 4096), 0xa0)).toBe(true);
      // A second write to the same block is not journaled again...
      const w0b = write(0, 0xa1);
      await waitFor(() => w0b.status() === BlkStatus.OK, 'the second write to block 0');
      expect(Atomics.load(i32, BACKUP.JOURNALED)).toBe(1);
      // ...a write to the next block of the same chunk saves that block alone.
      const w1 = write(BLOCK, 0xa2);
      await waitFor(() => w1.status() === BlkStatus.OK, 'the write to block 1');
      expect(Atomics.load(i32, BACKUP.JOURNALED)).toBe(2);
      expect(share.claimedMask(0)).toBe(0b11);
      const e1 = i32[share.at.ready + 1];
      expect(i32[share.at.entryBlock + e1]).toBe(1);
      expect(entryOld(e1, 0)).toBe(true);

      // A chunk the copier is done with (COPIED) needs no journal entry.
      share.setBit(share.at.copied, 1);
      const wc = write(CHUNK, 0xb1);
      await waitFor(() => wc.status() === BlkStatus.OK, 'the write to copied chunk 1');
      expect(Atomics.load(i32, BACKUP.JOURNALED)).toBe(2);
      expect(share.claimedMask(1)).toBe(0);

      // Journal of 4 entries, two used: two more blocks fill it, the fifth block's write is held.
      const fills = [2, 3].map((c) => write(c * CHUNK, 0xc0 + c));
      await waitFor(() => fills.every((w) => w.status() === BlkStatus.OK), 'two journaled writes');
      const held = write(5 * CHUNK, 0xc5);
      await waitFor(() => Atomics.load(i32, BACKUP.FULL_WAITS) === 1, 'the full-journal wait');
      expect(held.status()).toBe(0xff);
      expect(Atomics.load(i32, BACKUP.DEVICE_WAITING)).toBe(1);
      expect(allBytes(onDisk(image, 5 * CHUNK, 4096), oldByte(5))).toBe(true);
      // The copier drains entry e0 and hands it back: FREE ring, FREE_HEAD, doorbell.
      i32[share.at.free] = e0;
      Atomics.store(i32, BACKUP.FREE_HEAD, 1);
      native.eventfdWrite(share.init.doorbellFd, 1);
      await waitFor(() => held.status() === BlkStatus.OK, 'the held write after a free entry');
      expect(Atomics.load(i32, BACKUP.READY_HEAD)).toBe(5);
      const e5 = i32[share.at.ready + (4 % share.entries)];
      expect(i32[share.at.entryBlock + e5]).toBe(5 * (CHUNK / BLOCK));
      expect(entryOld(e5, 5)).toBe(true);
      expect(allBytes(onDisk(image, 5 * CHUNK, 4096), 0xc5)).toBe(true);

      // The end: writes go straight to disk, nothing more is journaled.
      await device.command({ type: 'backup-end', ok: true });
      const after = write(6 * CHUNK, 0xd6);
      await waitFor(() => after.status() === BlkStatus.OK, 'a write after the end');
      expect(Atomics.load(i32, BACKUP.JOURNALED)).toBe(5);
    } finally {
      await device.close();
      share.release();
    }
  });

  it("reads around: a chunk's second write saves the rest of the chunk while the journal is at most half full, then only its blocks", async () => {
    const chunks = 8;
    const image = oldImage('around.img', chunks);
    const { device, write } = embedded(image);
    const perChunk = CHUNK / BLOCK;
    // A journal of three chunks' blocks: one read-around leaves it over half free, two do not.
    const share = BackupShare.create(chunks * CHUNK, 3 * perChunk * BLOCK);
    const i32 = share.i32;
    const journal = new Uint8Array(share.init.journal);
    const all = (1 << perChunk) - 1;
    try {
      await device.command({
        type: 'backup-start',
        share: share.init,
        sync: 'full',
        readAround: true,
      });
      // The first write to chunk 0 (block 3) saves its own block: no sign of locality yet.
      const w = write(3 * BLOCK, 0xe0);
      await waitFor(() => w.status() === BlkStatus.OK, 'the first write to chunk 0');
      expect(share.claimedMask(0)).toBe(0b1000);
      expect(Atomics.load(i32, BACKUP.JOURNALED)).toBe(1);
      // The second (block 9) saves the rest of chunk 0: one read per run of blocks not yet
      // saved (0..2 and 4..15; block 3 already holds the guest's new bytes).
      const w2 = write(9 * BLOCK, 0xe3);
      await waitFor(() => w2.status() === BlkStatus.OK, 'the second write to chunk 0');
      expect(share.claimedMask(0)).toBe(all);
      expect(Atomics.load(i32, BACKUP.JOURNAL_READS)).toBe(3);
      expect(Atomics.load(i32, BACKUP.JOURNALED)).toBe(perChunk);
      // Every entry holds its block's OLD bytes (blocks 3 and 9 too: saved before the writes),
      // and a run's blocks sit in adjacent entries, ascending: the copier writes a run in one.
      const entryOf = new Map<number, number>();
      for (let t = 0; t < perChunk; t++) {
        const e = i32[share.at.ready + t];
        entryOf.set(i32[share.at.entryBlock + e], e);
        expect(allBytes(journal.subarray(e * BLOCK, (e + 1) * BLOCK), oldByte(0))).toBe(true);
      }
      expect([...entryOf.keys()].sort((a, b) => a - b)).toEqual([...Array(perChunk).keys()]);
      for (const g of [0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
        expect(entryOf.get(g + 1)).toBe((entryOf.get(g) as number) + 1);
      expect(allBytes(onDisk(image, 3 * BLOCK, BLOCK), 0xe0)).toBe(true);
      expect(allBytes(onDisk(image, 9 * BLOCK, BLOCK), 0xe3)).toBe(true);
      // More writes to chunk 0 wait for nothing and read nothing.
      const more = [0, 7, 15].map((b) => write(b * BLOCK, 0xe1));
      await waitFor(() => more.every((m) => m.status() === BlkStatus.OK), 'writes to chunk 0');
      expect(Atomics.load(i32, BACKUP.JOURNAL_READS)).toBe(3);
      // The journal is now a third full: a second chunk's read-around would leave a third
      // free, under half: chunk 1's second write saves its own block only.
      for (const b of [2, 5]) {
        const w1 = write(CHUNK + b * BLOCK, 0xe2);
        await waitFor(() => w1.status() === BlkStatus.OK, 'a write to chunk 1');
      }
      expect(share.claimedMask(1)).toBe(0b100100);
      expect(Atomics.load(i32, BACKUP.JOURNAL_READS)).toBe(5);
      expect(Atomics.load(i32, BACKUP.JOURNALED)).toBe(perChunk + 2);
    } finally {
      await device.close();
      share.release();
    }
  });
});
