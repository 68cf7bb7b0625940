/**
 * Dirty logging at a ring stop (issue 9, the packed-ring migration failure):
 * QEMU reads the bitmap one last time after GET_VRING_BASE, so what the
 * device marks in that reply is all the front end still learns. A batch marks
 * its ring slots before it stores the flags (packed) or used.idx (split) that
 * publish them; a bitmap read and cleared between the two loses that store,
 * so the stop must mark every area the device writes: the split ring's used
 * ring, and for a packed ring its device area AND its descriptor ring (the
 * used elements are written there). Driven over real sockets by the
 * project's own front end, as QEMU's vhost_migration_log and vhost_dev_stop.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { packedRingBytes } from '../../src/virtio/packed-ring.js';
import { usedRingBytes } from '../../src/virtio/split-ring.js';
import { BLK_DRIVER_FEATURES, BlkDriver } from '../frontend/blk-driver.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { markedPages, pagesOf } from '../support/dirty-pages.js';

const PAGE = 4096;
const MiB = 1024 * 1024;
/** VIRTIO_F_RING_PACKED. */
const RING_PACKED = 1n << 34n;
const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-dirty-stop-'));
const daemons: Daemon[] = [];

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  rmSync(dir, { recursive: true, force: true });
});

/** The pages the ranges `[gpa, gpa + len)` touch, sorted, once each. */
function pagesOfAll(...ranges: [number, number][]): number[] {
  return [...new Set(ranges.flatMap(([gpa, len]) => pagesOf(gpa, len)))].sort((x, y) => x - y);
}

describe.each([
  { rings: 'split', packed: false },
  { rings: 'packed', packed: true },
])('blk, $rings rings', ({ rings, packed }) => {
  it('GET_VRING_BASE while logging marks every area the device writes into the ring: the last look of the front end finds them', async () => {
    const image = join(dir, `${rings}.img`);
    const socket = join(dir, `${rings}.sock`);
    writeFileSync(image, Buffer.alloc(16 * MiB));
    // Packed rings are offered only without inflight tracking.
    daemons.push(
      await startDaemon(
        ['blk', '--socket-path', socket, '--image', image, '--queue-size', '512'],
        undefined,
        packed ? { VHOST_RT_INFLIGHT: 'off' } : {},
      ),
    );
    // 512 slots: an 8 KiB descriptor ring, so it has pages the device area does not share.
    const drv = await BlkDriver.create({
      socketPath: socket,
      driverFeatures: BLK_DRIVER_FEATURES | (packed ? RING_PACKED : 0n),
      queueSize: 512,
    });
    try {
      expect(drv.vmm.hasFeature(34)).toBe(packed);
      const q = drv.vmm.queues[0].driver;
      const bits = await drv.vmm.startDirtyLog();
      // Used elements in the ring, as a running guest's: a few reads while logging.
      for (let i = 0; i < 4; i++) expect((await drv.read(i * 8, PAGE)).status).toBe(0);
      // As if QEMU had just read and cleared the bitmap (its sync between a batch's
      // marks and its publishing store): only the stop's own marks are left to see.
      bits.fill(0);
      await drv.vmm.stop();
      const expected = packed
        ? pagesOfAll([q.descTable, packedRingBytes(q.size)], [q.usedRing, 4])
        : pagesOfAll([q.usedRing, usedRingBytes(q.size, q.eventIdx)]);
      expect(markedPages(bits)).toEqual(expected);
      if (packed) {
        // Not vacuous: the descriptor ring has pages of its own, apart from the device area's.
        const device = pagesOfAll([q.usedRing, 4]);
        expect(expected.some((p) => !device.includes(p))).toBe(true);
      }
    } finally {
      await drv.close();
    }
  });
});
