/**
 * The backup copier thread (issue 12) on its own, with the test playing the
 * blk device on the shared state, the way the daemon orders things: the
 * copier's thread starts BEFORE the start instant (the device writes NEEDED
 * and turns ACTIVE only afterwards), and a chunk the device claimed gets its
 * journal entries (blocks 3..5 of it) published only after the copier's disk
 * pass is over. The copier must write the chunk's other blocks from disk,
 * wait for those entries and write them, and say it completed only then — the root cause of the threads engine's "last target chunk zero"
 * was a copier that counted the chunks to copy when its thread started (0),
 * so it never waited for late journal entries and completed without them.
 * Real parts: the compiled copier in its own thread, a real image file read
 * with O_DIRECT, a real target written through linux-aio.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BACKUP_BLOCK_BYTES,
  BACKUP_CHUNK_BYTES,
  BackupShare,
  DEFAULT_COPY_MAX_CHUNK,
} from '../../src/io/backup-share.js';
import { BACKUP, BackupState } from '../../src/locking/layout.js';
import { WorkerHost } from '../../src/thread/index.js';
import type {
  BackupCopierCommand,
  BackupCopierEvent,
  BackupCopierInit,
} from '../../src/worker/backup-copier.js';
import { waitFor } from '../support/wait.js';

const CHUNK = BACKUP_CHUNK_BYTES;
const BLOCK = BACKUP_BLOCK_BYTES;
/** The blocks of the chunk the device claims (a run of three). */
const FIRST = 3;
const RUN = 3;
const CHUNKS = 32;
const SIZE = CHUNKS * CHUNK;
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-copier-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Chunk c of the image at the start instant: every byte c + 1. */
const oldByte = (c: number) => c + 1;

describe('the backup copier', () => {
  it.each([
    ['the last chunk', CHUNKS - 1],
    ['a middle chunk', 7],
  ])(
    'waits after its disk pass for the journal entries of blocks of %s claimed by the device, and writes them',
    async (_, claimed) => {
      const image = join(dir, `image-${claimed}.raw`);
      const target = join(dir, `target-${claimed}.raw`);
      const disk = Buffer.alloc(SIZE);
      for (let c = 0; c < CHUNKS; c++) disk.fill(oldByte(c), c * CHUNK, (c + 1) * CHUNK);
      writeFileSync(image, disk);
      writeFileSync(target, Buffer.alloc(0));
      const share = BackupShare.create(SIZE, 16 * BLOCK);
      const events: BackupCopierEvent[] = [];
      const copier = new WorkerHost<
        BackupCopierInit,
        { chunks: number },
        BackupCopierCommand,
        BackupCopierEvent
      >(
        'worker/backup-copier.js',
        {
          share: share.init,
          image,
          imageEngine: 'sync',
          target,
          targetEngine: 'linux-aio',
          diskBytes: SIZE,
          speed: 0,
          policy: 'idle',
          yieldMs: 0,
          maxChunk: DEFAULT_COPY_MAX_CHUNK,
        },
        { name: 'copier-test', log: () => {}, onEvent: (e) => events.push(e) },
      );
      const i32 = share.i32;
      try {
        await copier.ready;
        // The start instant, as the device passes it after the copier's thread started: the
        // device claims blocks FIRST.. of chunk `claimed` (their old bytes go into journal
        // entries 0.., read before the guest's write), then NEEDED (every chunk) and ACTIVE.
        share.claim(claimed, ((1 << RUN) - 1) << FIRST);
        const perChunk = CHUNK / BLOCK;
        for (let i = 0; i < RUN; i++) i32[share.at.entryBlock + i] = claimed * perChunk + FIRST + i;
        new Uint8Array(share.init.journal).fill(oldByte(claimed), 0, RUN * BLOCK);
        // The guest's write that follows the claim lands on disk: a copy from disk would be wrong.
        const written = Buffer.from(disk);
        const at = claimed * CHUNK + FIRST * BLOCK;
        written.fill(0xee, at, at + RUN * BLOCK);
        writeFileSync(image, written);
        for (let w = 0; w < Math.ceil(CHUNKS / 32); w++) i32[share.at.needed + w] = -1;
        Atomics.store(i32, BACKUP.STATE, BackupState.ACTIVE);
        await copier.request({ op: 'run' });
        // The disk pass ends (every chunk done with, the claimed blocks owed) — or, wrongly, the backup.
        await waitFor(
          () =>
            Atomics.load(i32, BACKUP.PASS_DONE) === 1 || events.some((e) => e.type !== 'progress'),
          'the end of the disk pass',
        );
        expect(events.filter((e) => e.type !== 'progress')).toEqual([]);
        expect(Atomics.load(i32, BACKUP.COPIED)).toBe(CHUNKS);
        // Now the device publishes the entries (READY ring slots, READY_HEAD, the wake-up).
        for (let i = 0; i < RUN; i++) i32[share.at.ready + i] = i;
        Atomics.store(i32, BACKUP.READY_HEAD, RUN);
        Atomics.notify(i32, BACKUP.READY_HEAD);
        const end = await waitFor(
          () => events.find((e) => e.type !== 'progress'),
          'the end of the backup',
        );
        expect(end).toMatchObject({ type: 'completed', copiedChunks: CHUNKS, fromJournal: RUN });
        const out = readFileSync(target);
        expect(out.length).toBe(SIZE);
        for (let c = 0; c < CHUNKS; c++) {
          const chunk = out.subarray(c * CHUNK, (c + 1) * CHUNK);
          expect(
            chunk.every((b) => b === oldByte(c)),
            `target chunk ${c}`,
          ).toBe(true);
        }
        // The entries came back to the device.
        expect(Atomics.load(i32, BACKUP.FREE_HEAD)).toBe(RUN);
      } finally {
        await copier.shutdown();
        share.release();
      }
    },
  );
});
