/**
 * End to end (issue 9): a real QEMU TCG guest on a `vhost-rt blk` disk sees
 * the disk grow while it runs — `block-resize` on the daemon's control socket
 * → config space + VHOST_USER_BACKEND_CONFIG_CHANGE_MSG → QEMU's config
 * interrupt → /sys/block/vda/size — without a reboot, and switches the write
 * cache to writethrough (VIRTIO_BLK_F_CONFIG_WCE: SET_CONFIG of the
 * `writeback` byte), reading the mode back from the device.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onDisk } from '../support/bytes.js';
import { type Daemon, startBlkDaemon } from '../support/daemon.js';
import { ensureGuestImage, runGuest } from '../support/qemu.js';
import { QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;
/** The guest writes RESIZE_ME here once it has read the size before: the host resizes then. */
const MARKER_SECTOR = 2048;

/** Waits (inside the guest) for the size to change, then switches the cache to writethrough. */
const SCRIPT = `
wait_dev /dev/vda
before=$(cat /sys/block/vda/size)
echo "SIZE_BEFORE=$before"
echo RESIZE_ME > /tmp/m.txt
dd if=/tmp/m.txt of=/dev/vda bs=512 seek=${MARKER_SECTOR} conv=sync,notrunc oflag=direct 2>/dev/null
echo "CACHE_BEFORE=$(cat /sys/block/vda/queue/write_cache | tr ' ' _)"
echo "write through" > /sys/block/vda/queue/write_cache
echo "CACHE_AFTER=$(cat /sys/block/vda/queue/write_cache | tr ' ' _)"
dd if=/dev/urandom of=/tmp/w.bin bs=4096 count=16 2>/dev/null
dd if=/tmp/w.bin of=/dev/vda bs=4096 count=16 oflag=direct conv=notrunc 2>/dev/null
dd if=/dev/vda of=/tmp/r.bin bs=4096 count=16 iflag=direct 2>/dev/null
cmp /tmp/w.bin /tmp/r.bin && echo WRITETHROUGH_READBACK_OK
i=0
while [ "$(cat /sys/block/vda/size)" = "$before" ] && [ $i -lt 600 ]; do
  usleep 100000 2>/dev/null || sleep 1
  i=$((i + 1))
done
echo "SIZE_AFTER=$(cat /sys/block/vda/size)"
dd if=/dev/vda of=/dev/null bs=4096 skip=$(( $(cat /sys/block/vda/size) / 8 - 1 )) count=1 iflag=direct 2>/dev/null && echo TAIL_READ_OK
`;

function field(output: string, name: string): string {
  return new RegExp(`${name}=(\\S+)`).exec(output)?.[1] ?? '';
}

describe('vhost-rt blk resized under a running QEMU guest', () => {
  let dir: string;
  let image: string;
  let socket: string;
  let control: string;
  let daemon: Daemon;

  beforeAll(async () => {
    ensureGuestImage();
    dir = mkdtempSync(join(tmpdir(), 'vhost-rt-e2e-resize-'));
    image = join(dir, 'disk.img');
    socket = join(dir, 'blk.sock');
    control = join(dir, 'blk.qmp');
    writeFileSync(image, Buffer.alloc(32 * MiB));
    daemon = await startBlkDaemon(image, socket, control);
  });

  afterAll(async () => {
    await daemon?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('the guest sees the new size in /sys/block/vda/size and switches to writethrough', async () => {
    const qmp = await QmpClient.connect(control);
    const guest = runGuest({ script: SCRIPT, blk: [{ socket }], timeoutMs: 150_000 });
    await waitFor(
      () => Buffer.from(onDisk(image, MARKER_SECTOR * 512, 9)).toString() === 'RESIZE_ME',
      'the guest to write its marker (it has read the size before the resize)',
      120_000,
    );
    const resized = await qmp.execute('block-resize', { device: 0, size: 48 * MiB });
    expect(resized.return).toEqual({ size: 48 * MiB, previous: 32 * MiB });
    const result = await guest;
    qmp.close();
    expect(result.exitCode, result.output).toBe(0);
    expect(field(result.output, 'SIZE_BEFORE')).toBe(String((32 * MiB) / 512));
    expect(field(result.output, 'SIZE_AFTER')).toBe(String((48 * MiB) / 512));
    expect(result.output).toContain('TAIL_READ_OK');
    expect(field(result.output, 'CACHE_BEFORE')).toBe('write_back');
    expect(field(result.output, 'CACHE_AFTER')).toBe('write_through');
    expect(result.output).toContain('WRITETHROUGH_READBACK_OK');
  }, 180_000);
});
