/**
 * End to end: a real QEMU TCG guest with vhost-user-blk-pci served by the
 * `vhost-rt blk` daemon. The guest reads what the host wrote before boot,
 * writes with O_DIRECT dd and reads back; the host checks the image; a second
 * QEMU then reuses the same running daemon.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { ensureGuestImage, runGuest } from '../support/qemu.js';

const MiB = 1024 * 1024;
const IMAGE_BYTES = 64 * MiB;
const GUEST_PATTERN_OFFSET = 8 * MiB;

function md5(data: Uint8Array): string {
  return createHash('md5').update(data).digest('hex');
}

function readImage(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    readSync(fd, buf, 0, length, offset);
    return buf;
  } finally {
    closeSync(fd);
  }
}

/** Reads the host pattern, writes its own with O_DIRECT and checks the read-back. */
function guestScript(cpus: number): string {
  const writers = Array.from({ length: cpus }, (_, cpu) => {
    const seek = GUEST_PATTERN_OFFSET / 4096 + cpu * 128;
    const pin = cpus > 1 ? `taskset ${1 << cpu} ` : '';
    return `${pin}dd if=/tmp/g.bin of=/dev/vda bs=4096 count=128 skip=${cpu * 128} seek=${seek} oflag=direct conv=notrunc 2>/dev/null`;
  });
  return `
wait_dev /dev/vda
echo "QUEUES=$(ls /sys/block/vda/mq | wc -l)"
echo "FEATURES=$(cat /sys/block/vda/device/features)"
echo "SERIAL=$(cat /sys/block/vda/serial)"
dd if=/dev/vda of=/tmp/host.bin bs=4096 count=256 iflag=direct 2>/dev/null
echo "HOST_MD5=$(md5sum /tmp/host.bin | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/g.bin bs=4096 count=${cpus * 128} 2>/dev/null
${writers.join('\n')}
dd if=/dev/vda of=/tmp/r.bin bs=4096 skip=${GUEST_PATTERN_OFFSET / 4096} count=${cpus * 128} iflag=direct 2>/dev/null
cmp /tmp/g.bin /tmp/r.bin && echo READBACK_OK
echo "GUEST_MD5=$(md5sum /tmp/g.bin | cut -d' ' -f1)"
sync
`;
}

function field(output: string, name: string): string {
  const m = new RegExp(`${name}=(\\S+)`).exec(output);
  return m?.[1] ?? '';
}

/**
 * linux-aio (the default) runs the whole scenario with 1 and 2 queues; every
 * other engine runs the data check once with 1 queue (reconnects do not
 * depend on the engine).
 */
describe.each(
  [
    { aio: 'linux-aio', queues: 1, cpus: 1, reconnect: true },
    { aio: 'linux-aio', queues: 2, cpus: 2, reconnect: true },
    { aio: 'io_uring', queues: 1, cpus: 1, reconnect: false },
    { aio: 'threads', queues: 1, cpus: 1, reconnect: false },
    { aio: 'sync', queues: 1, cpus: 1, reconnect: false },
    // packed=on: the guest drives packed rings (offered without inflight tracking only).
    { aio: 'linux-aio', queues: 2, cpus: 2, reconnect: true, packed: true },
  ].map((v) => ({ packed: false, ...v })),
)(
  'vhost-rt blk --aio $aio with a QEMU guest, $queues queue(s), packed $packed',
  ({ aio, queues, cpus, reconnect, packed }) => {
    let dir: string;
    let image: string;
    let socket: string;
    let daemon: Daemon;
    let hostPattern: Buffer;

    beforeAll(async () => {
      ensureGuestImage();
      dir = mkdtempSync(join(tmpdir(), 'vhost-rt-e2e-'));
      image = join(dir, 'disk.img');
      socket = join(dir, 'blk.sock');
      hostPattern = randomBytes(MiB);
      writeFileSync(image, Buffer.alloc(IMAGE_BYTES));
      const fd = openSync(image, 'r+');
      writeFileSync(fd, hostPattern);
      closeSync(fd);
      // Packed rings are offered only with inflight tracking off (VHOST_RT_INFLIGHT=off).
      daemon = await startDaemon(
        [
          'blk',
          '--socket-path',
          socket,
          '--image',
          image,
          '--queues',
          String(queues),
          '--serial',
          'e2e-disk',
          '--aio',
          aio,
        ],
        undefined,
        packed ? { VHOST_RT_INFLIGHT: 'off' } : {},
      );
    });

    afterAll(async () => {
      await daemon?.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    it('reads the host pattern, writes with O_DIRECT, and the image matches', async () => {
      const result = await runGuest({
        script: guestScript(cpus),
        blk: [{ socket, queues, packed }],
        cpus,
        timeoutMs: 120_000,
      });
      expect(result.exitCode, result.output).toBe(0);
      expect(field(result.output, 'QUEUES')).toBe(String(queues));
      // The guest's negotiated feature bits, bit 0 first: VIRTIO_F_RING_PACKED is bit 34.
      expect(field(result.output, 'FEATURES')[34]).toBe(packed ? '1' : '0');
      expect(field(result.output, 'SERIAL')).toBe('e2e-disk');
      expect(field(result.output, 'HOST_MD5')).toBe(md5(hostPattern.subarray(0, MiB)));
      expect(result.output).toContain('READBACK_OK');
      const onDisk = readImage(image, GUEST_PATTERN_OFFSET, cpus * 128 * 4096);
      expect(md5(onDisk)).toBe(field(result.output, 'GUEST_MD5'));
    });

    if (!reconnect) return;

    it('serves a second QEMU after the first powered off', async () => {
      const script = `
wait_dev /dev/vda
dd if=/dev/vda of=/tmp/r.bin bs=4096 count=256 iflag=direct 2>/dev/null
echo "HOST_MD5=$(md5sum /tmp/r.bin | cut -d' ' -f1)"
echo second > /tmp/s.txt
dd if=/tmp/s.txt of=/dev/vda bs=512 seek=${(40 * MiB) / 512} conv=sync,notrunc oflag=direct 2>/dev/null
`;
      const result = await runGuest({
        script,
        blk: [{ socket, queues, packed }],
        cpus,
        timeoutMs: 120_000,
      });
      expect(result.exitCode, result.output).toBe(0);
      expect(field(result.output, 'HOST_MD5')).toBe(md5(hostPattern.subarray(0, MiB)));
      expect(readImage(image, 40 * MiB, 7).toString()).toBe('second\n');
      expect(daemon.log()).toMatch(/front end connected[\s\S]*front end connected/);
    });
  },
);
