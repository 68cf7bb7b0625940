/**
 * The README's first command: serve a fresh disk image with `vhost-rt blk`,
 * boot a QEMU guest on it, do some I/O in the guest and summarise what the
 * daemon did. Run through scripts/demo.sh, which builds everything first.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../src/native.js';
import { startDaemon } from '../test/support/daemon.js';
import { ensureGuestImage, parseDdThroughput, runGuest } from '../test/support/qemu.js';

const MiB = 1024 * 1024;
const GREETING = 'Hello from the host, through vhost-rt!';

const GUEST_SCRIPT = `
wait_dev /dev/vda
echo "DISK_SECTORS=$(cat /sys/block/vda/size)"
echo "DISK_QUEUES=$(ls /sys/block/vda/mq | wc -l)"
echo "DISK_SERIAL=$(cat /sys/block/vda/serial)"
echo "GREETING=$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c ${GREETING.length})"
dd if=/dev/urandom of=/tmp/pattern bs=1M count=32 2>/dev/null
timed_dd write-32MiB-1M ${32 * MiB} if=/tmp/pattern of=/dev/vda bs=1M seek=16 oflag=direct conv=notrunc
timed_dd read-32MiB-1M ${32 * MiB} if=/dev/vda of=/tmp/back bs=1M skip=16 count=32 iflag=direct
cmp /tmp/pattern /tmp/back && echo VERIFY=ok || echo VERIFY=MISMATCH
timed_dd write-4MiB-4k ${4 * MiB} if=/tmp/pattern of=/dev/vda bs=4k count=1024 seek=20480 oflag=direct conv=notrunc
timed_dd read-4MiB-4k ${4 * MiB} if=/dev/vda of=/dev/null bs=4k count=1024 skip=20480 iflag=direct
`;

function field(text: string, name: string): string {
  return new RegExp(`${name}=([^\\n]*)`).exec(text)?.[1]?.trim() ?? '?';
}

async function main(): Promise<void> {
  ensureGuestImage();
  const dir = join(projectRoot, '.cache', 'demo');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const image = join(dir, 'disk.img');
  const socket = join(dir, 'blk.sock');
  const disk = Buffer.alloc(128 * MiB);
  disk.write(GREETING, 0);
  writeFileSync(image, disk);

  console.log(`vhost-rt demo: serving ${image} (128 MiB) on ${socket} with 2 queues`);
  const daemon = await startDaemon([
    'blk',
    '--socket-path',
    socket,
    '--image',
    image,
    '--queues',
    '2',
    '--serial',
    'demo-disk',
  ]);
  console.log('vhost-rt is ready; booting a QEMU (TCG) guest with vhost-user-blk-pci ...');
  let guest: Awaited<ReturnType<typeof runGuest>>;
  try {
    guest = await runGuest({
      script: GUEST_SCRIPT,
      blk: [{ socket, queues: 2 }],
      cpus: 2,
      timeoutMs: 180_000,
    });
  } finally {
    await daemon.stop('SIGTERM');
  }
  const log = daemon.log();
  const stats = Object.fromEntries(
    [...(/stats: ([^\n]*)/.exec(log)?.[1] ?? '').matchAll(/(\w+)=(\d+)/g)].map((m) => [
      m[1],
      Number(m[2]),
    ]),
  );
  const worker = /worker tid (\d+) policy (\S+) priority (\d+) cpus (\S+)/.exec(log);
  const dd = parseDdThroughput(guest.output);

  console.log('\n== What happened');
  console.log(
    `guest booted in ${(guest.bootMs / 1000).toFixed(1)} s, ran its script, powered off (exit ${guest.exitCode})`,
  );
  console.log(
    `guest saw /dev/vda: ${Number(field(guest.output, 'DISK_SECTORS')) / 2048} MiB, ` +
      `${field(guest.output, 'DISK_QUEUES')} queues, serial "${field(guest.output, 'DISK_SERIAL')}"`,
  );
  console.log(`guest read the host's greeting: "${field(guest.output, 'GREETING')}"`);
  for (const r of dd)
    console.log(
      `guest dd ${r.label.padEnd(16)} ${r.mbPerSec.toFixed(1).padStart(7)} MB/s${r.rc ? ' (FAILED)' : ''}`,
    );
  console.log(`read-back of 32 MiB written with O_DIRECT: ${field(guest.output, 'VERIFY')}`);
  console.log(
    `daemon served ${stats.requests ?? '?'} requests in ${stats.kicks ?? '?'} batches: ` +
      `${((stats.bytesRead ?? 0) / MiB).toFixed(1)} MiB read, ${((stats.bytesWritten ?? 0) / MiB).toFixed(1)} MiB written, ` +
      `${stats.interrupts ?? '?'} interrupts, ${stats.ioErrors ?? '?'} I/O errors`,
  );
  if (worker) {
    console.log(
      `device worker thread: tid ${worker[1]}, policy ${worker[2]}, priority ${worker[3]}, cpus ${worker[4]}`,
    );
  }
  const ok =
    guest.exitCode === 0 && field(guest.output, 'VERIFY') === 'ok' && dd.every((r) => r.rc === 0);
  console.log(ok ? '\ndemo finished: OK' : '\ndemo finished: FAILED');
  if (!ok) {
    console.log(guest.output);
    process.exitCode = 1;
  }
}

main().catch((err: unknown) => {
  console.error(`demo failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
