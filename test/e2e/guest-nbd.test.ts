/**
 * End to end: a QEMU TCG guest boots with a vhost-user-blk disk that
 * `vhost-rt blk` serves from an NBD export (qemu-nbd over TCP on 127.0.0.1,
 * serving a raw file). The guest reads what the host put in the file, writes
 * and reads back with O_DIRECT, discards; then, while the guest keeps writing
 * and reading back, the NBD server is killed and started again: the guest
 * sees no I/O error and every read-back matches. The host checks the file.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onDisk } from '../support/bytes.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { type NbdServer, startNbdServer } from '../support/nbd-server.js';
import { ensureGuestImage, runGuest } from '../support/qemu.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;
const IMAGE_BYTES = 64 * MiB;
const GUEST_OFFSET = 8 * MiB;
/** The guest writes START here once its loop runs; the host writes DONE here to end it. */
const START_AT = 30 * MiB;
const DONE_AT = 31 * MiB;
const LOOP_AT = 32 * MiB;

const md5 = (data: Uint8Array) => createHash('md5').update(data).digest('hex');

function field(output: string, name: string): string {
  return new RegExp(`${name}=(\\S+)`).exec(output)?.[1] ?? '';
}

const SCRIPT = `
wait_dev /dev/vda
echo "SIZE=$(blockdev --getsize64 /dev/vda)"
dd if=/dev/vda of=/tmp/host.bin bs=4096 count=256 iflag=direct 2>/dev/null
echo "HOST_MD5=$(md5sum /tmp/host.bin | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/g.bin bs=4096 count=256 2>/dev/null
dd if=/tmp/g.bin of=/dev/vda bs=65536 seek=${GUEST_OFFSET / 65536} oflag=direct conv=notrunc 2>/dev/null
dd if=/dev/vda of=/tmp/r.bin bs=65536 skip=${GUEST_OFFSET / 65536} count=16 iflag=direct 2>/dev/null
cmp /tmp/g.bin /tmp/r.bin && echo READBACK_OK
echo "GUEST_MD5=$(md5sum /tmp/g.bin | cut -d' ' -f1)"
blkdiscard -o ${40 * MiB} -l ${MiB} /dev/vda && echo DISCARD_OK
echo START > /tmp/start
dd if=/tmp/start of=/dev/vda bs=512 seek=${START_AT / 512} conv=sync,notrunc oflag=direct 2>/dev/null
i=0
bad=0
while :; do
  dd if=/dev/urandom of=/tmp/p.bin bs=65536 count=1 2>/dev/null
  dd if=/tmp/p.bin of=/dev/vda bs=65536 seek=$(( ${LOOP_AT / 65536} + i % 64 )) oflag=direct conv=notrunc 2>/dev/null || bad=$((bad+1))
  dd if=/dev/vda of=/tmp/q.bin bs=65536 skip=$(( ${LOOP_AT / 65536} + i % 64 )) count=1 iflag=direct 2>/dev/null || bad=$((bad+1))
  cmp -s /tmp/p.bin /tmp/q.bin || bad=$((bad+1))
  i=$((i+1))
  dd if=/dev/vda of=/tmp/d.bin bs=512 skip=${DONE_AT / 512} count=1 iflag=direct 2>/dev/null
  grep -q DONE /tmp/d.bin && break
done
echo "LOOPS=$i BAD=$bad IOERRORS=$(dmesg | grep -ci 'i/o error')"
sync
`;

describe('vhost-rt blk on an NBD export (qemu-nbd over TCP) with a QEMU guest', () => {
  let dir: string;
  let image: string;
  let nbd: NbdServer;
  let daemon: Daemon;
  let socket: string;
  const hostPattern = randomBytes(MiB);

  beforeAll(async () => {
    ensureGuestImage();
    dir = mkdtempSync(join(tmpdir(), 'vhost-rt-e2e-nbd-'));
    image = join(dir, 'disk.img');
    socket = join(dir, 'blk.sock');
    writeFileSync(image, Buffer.alloc(IMAGE_BYTES));
    const fd = openSync(image, 'r+');
    writeSync(fd, hostPattern, 0, hostPattern.length, 0);
    closeSync(fd);
    nbd = await startNbdServer({ kind: 'qemu-nbd', transport: 'tcp', image });
    daemon = await startDaemon(['blk', '--socket-path', socket, '--image', nbd.uri]);
  });

  afterAll(async () => {
    await daemon?.stop();
    await nbd?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('boots, does I/O, and sees no error while the NBD server restarts', async () => {
    const guest = runGuest({ script: SCRIPT, blk: [{ socket }], timeoutMs: 180_000 });
    let ended: string | null = null;
    void guest.then(
      (r) => {
        ended = `the guest ended early (${r.exitCode}):\n${r.output}`;
      },
      (e: Error) => {
        ended = `the guest failed: ${e.message}`;
      },
    );
    // The guest's loop has started: restart the server under it.
    await waitFor(
      () => {
        if (ended !== null) throw new Error(ended);
        return Buffer.from(onDisk(image, START_AT, 5)).toString() === 'START';
      },
      'the guest to start its write / read-back loop',
      120_000,
    );
    await nbd.restart();
    await waitFor(() => daemon.log().includes('NBD connection back'), 'the daemon to reconnect');
    // Let the guest's loop run over the new connection: the loop slot after the one it is on.
    const after = onDisk(image, LOOP_AT, 64 * 65536);
    await waitFor(
      () => md5(onDisk(image, LOOP_AT, 64 * 65536)) !== md5(after),
      'the guest to write over the new connection',
      60_000,
    );
    const fd = openSync(image, 'r+');
    writeSync(fd, Buffer.from('DONE\n'), 0, 5, DONE_AT);
    closeSync(fd);
    const result = await guest;
    expect(result.exitCode, result.output).toBe(0);
    expect(field(result.output, 'SIZE')).toBe(String(IMAGE_BYTES));
    expect(field(result.output, 'HOST_MD5')).toBe(md5(hostPattern));
    expect(result.output).toContain('READBACK_OK');
    expect(result.output).toContain('DISCARD_OK');
    expect(md5(onDisk(image, GUEST_OFFSET, MiB))).toBe(field(result.output, 'GUEST_MD5'));
    expect(Number(field(result.output, 'LOOPS'))).toBeGreaterThan(0);
    expect(field(result.output, 'BAD')).toBe('0');
    expect(field(result.output, 'IOERRORS')).toBe('0');
    expect(daemon.log()).toMatch(/NBD connection lost/);
  }, 240_000);
});
