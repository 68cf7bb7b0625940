/**
 * End to end (issue 12): a QEMU TCG guest on a vhost-rt disk writes
 * continuously — 4 KiB blocks, each carrying its sequence number, at
 * scattered places, read back and checked — while the host takes a full
 * backup, an incremental one, and a full one with `method: redirect` (the
 * guest's writes and its reads of them go through the overlay, which then
 * merges back) through the control socket.
 *
 * The reference for "the disk at the start instant" is taken by freezing
 * the guest: QMP `stop` (QEMU stops the vhost-user rings: every request in
 * flight completes first), a copy of the image, `blockdev-backup`, QMP
 * `cont`. The guest writes on during the copy; the target must equal the
 * frozen copy exactly. The guest sees no I/O error throughout.
 */
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onDisk } from '../support/bytes.js';
import { type Daemon, startBlkDaemon } from '../support/daemon.js';
import { ensureGuestImage, runGuest } from '../support/qemu.js';
import { type Json, QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;
const IMAGE_BYTES = 32 * MiB;
/** The guest writes START here once its loop runs; the host writes DONE here to end it. */
const START_AT = 30 * MiB;
const DONE_AT = 31 * MiB;
/** Blocks (4 KiB) the loop writes over: the first 28 MiB. */
const LOOP_BLOCKS = (28 * MiB) / 4096;

function field(output: string, name: string): string {
  return new RegExp(`${name}=(\\S+)`).exec(output)?.[1] ?? '';
}

const SCRIPT = `
wait_dev /dev/vda
echo START > /tmp/start
dd if=/tmp/start of=/dev/vda bs=512 seek=${START_AT / 512} conv=sync,notrunc oflag=direct 2>/dev/null
i=1
bad=0
while :; do
  b=$(( (i * 7919) % ${LOOP_BLOCKS} ))
  echo "SEQ $i BLOCK $b" > /tmp/w
  dd if=/tmp/w of=/dev/vda bs=4096 seek=$b conv=sync,notrunc oflag=direct 2>/dev/null || bad=$((bad+1))
  dd if=/dev/vda of=/tmp/r bs=4096 skip=$b count=1 iflag=direct 2>/dev/null || bad=$((bad+1))
  head -c 4096 /tmp/r | head -1 | grep -q "^SEQ $i BLOCK $b\\$" || bad=$((bad+1))
  i=$((i+1))
  if [ $((i % 8)) = 0 ]; then
    dd if=/dev/vda of=/tmp/d bs=512 skip=${DONE_AT / 512} count=1 iflag=direct 2>/dev/null
    grep -q DONE /tmp/d && break
  fi
done
echo "LOOPS=$i BAD=$bad IOERRORS=$(dmesg | grep -ci 'i/o error')"
`;

describe('live backup with a QEMU guest writing', () => {
  let dir: string;
  let image: string;
  let socket: string;
  let control: string;
  let qmpPath: string;
  let daemon: Daemon;

  beforeAll(async () => {
    ensureGuestImage();
    dir = mkdtempSync(join(tmpdir(), 'vhost-rt-e2e-backup-'));
    image = join(dir, 'disk.img');
    socket = join(dir, 'blk.sock');
    control = join(dir, 'blk.qmp');
    qmpPath = join(dir, 'qemu.qmp');
    writeFileSync(image, Buffer.alloc(IMAGE_BYTES));
    daemon = await startBlkDaemon(image, socket, control);
  });

  afterAll(async () => {
    await daemon?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Freezes the guest, copies the image, starts a backup, lets the guest go; returns the copy and the reply. */
  async function frozenBackup(qemu: QmpClient, c: QmpClient, args: Json) {
    expect((await qemu.execute('stop')).return).toEqual({});
    const reference = readFileSync(image);
    const from = c.messages.length;
    const reply = await c.execute('blockdev-backup', { device: 0, ...args });
    expect((await qemu.execute('cont')).return).toEqual({});
    const end = await waitFor(
      () => c.messages.slice(from).find((m) => /^BACKUP_(COMPLETED|FAILED)$/.test(String(m.event))),
      'the end of the backup',
      60_000,
    );
    return { reference, reply, end };
  }

  it('full and incremental backups equal the frozen disk while the guest writes on', async () => {
    const guest = runGuest({
      script: SCRIPT,
      blk: [{ socket }],
      timeoutMs: 120_000,
      extraArgs: ['-qmp', `unix:${qmpPath},server=on,wait=off`],
    });
    let ended: string | null = null;
    void guest.then(
      (r) => {
        ended = `the guest ended early (${r.exitCode}):\n${r.output}`;
      },
      (e: Error) => {
        ended = `the guest failed: ${e.message}`;
      },
    );
    await waitFor(
      () => {
        if (ended !== null) throw new Error(ended);
        return Buffer.from(onDisk(image, START_AT, 5)).toString() === 'START';
      },
      'the guest to start its write loop',
      60_000,
    );
    await waitFor(() => existsSync(qmpPath), 'the QEMU QMP socket');
    const qemu = await QmpClient.connect(qmpPath);
    const c = await QmpClient.connect(control);
    const target = join(dir, 'backup.img');
    try {
      const full = await frozenBackup(qemu, c, { target, sync: 'full', speed: 8 * MiB });
      expect(full.reply.return).toMatchObject({ sync: 'full', 'total-bytes': IMAGE_BYTES });
      expect(full.end.event).toBe('BACKUP_COMPLETED');
      expect(Buffer.compare(readFileSync(target), full.reference)).toBe(0);
      // The guest wrote during the backup: the live disk moved on from the reference.
      await waitFor(
        () => Buffer.compare(readFileSync(image), full.reference) !== 0,
        'the guest to write on',
      );

      const inc = await frozenBackup(qemu, c, { target, sync: 'incremental', speed: 8 * MiB });
      expect(inc.reply.return).toMatchObject({ sync: 'incremental' });
      expect((inc.reply.return as Json)['total-bytes'] as number).toBeLessThan(IMAGE_BYTES);
      expect(inc.end.event).toBe('BACKUP_COMPLETED');
      expect(Buffer.compare(readFileSync(target), inc.reference)).toBe(0);

      // Redirect-on-write: the guest's writes (and the reads of them) go through the overlay
      // while the copier reads the untouched image; then the overlay merges back.
      const from = c.messages.length;
      const red = await frozenBackup(qemu, c, {
        target,
        sync: 'full',
        method: 'redirect',
        speed: 16 * MiB,
      });
      expect(red.reply.return).toMatchObject({ method: 'redirect', 'total-bytes': IMAGE_BYTES });
      expect(red.end.event).toBe('BACKUP_COMPLETED');
      expect(Buffer.compare(readFileSync(target), red.reference)).toBe(0);
      const merged = await waitFor(
        () => c.messages.slice(from).find((m) => m.event === 'BACKUP_MERGED'),
        'the overlay to merge back',
        60_000,
      );
      expect(merged.data).toMatchObject({ merged: true, 'remaining-bytes': 0 });
      expect(existsSync(`${image}.vhost-rt-redirect`)).toBe(false);
      await waitFor(
        () => Buffer.compare(readFileSync(image), red.reference) !== 0,
        "the guest's writes in the image",
      );
    } finally {
      const fd = openSync(image, 'r+');
      writeSync(fd, Buffer.from('DONE\n'), 0, 5, DONE_AT);
      closeSync(fd);
      qemu.close();
      c.close();
    }
    const result = await guest;
    expect(result.exitCode, result.output).toBe(0);
    expect(Number(field(result.output, 'LOOPS'))).toBeGreaterThan(1);
    expect(field(result.output, 'BAD')).toBe('0');
    expect(field(result.output, 'IOERRORS')).toBe('0');
  }, 150_000);
});
