/**
 * End to end, live migration on one machine (issue 9): a TCG guest is
 * migrated (QMP `migrate` over a unix socket) from one QEMU to a second one
 * started with the same command line plus `-incoming`, each attached to its
 * own back end on shared storage or on the same switch.
 *
 * - blk: the guest runs a checksummed O_DIRECT write/read loop on its disk
 *   while it moves; the destination's disk is served by a second `vhost-rt blk`
 *   daemon on the same image (through a loop device: see the test). After the migration the host writes a marker
 *   into the image's first sector; the guest, now on the destination, sees it,
 *   finishes its loop there and checks every slot it wrote: no mismatch, no
 *   I/O error. The same harness first migrates a guest whose disks are on
 *   qemu-storage-daemon (which supports it), to prove the harness itself.
 *   Before the destination runs (it starts paused, -S), its RAM is compared
 *   page by page with the paused source's and every stale page is printed:
 *   QEMU 7.2's TCG loses guest CPU stores (see the vhost-rt cases' retry rule),
 *   which is the only reason a vhost-rt case may be retried.
 * - net: the guest's NIC moves from one port of a `vhost-rt net` switch to
 *   another while a network namespace behind the switch's TAP port pings it;
 *   the destination QEMU's SEND_RARP makes the switch announce the guest's MAC
 *   from the new port, so the TAP port's table moves and the pings resume.
 *
 * Reports (console): QEMU's downtime and total time per migration, pings lost.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  appendFileSync,
  closeSync,
  copyFileSync,
  fsyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { type Daemon, startDaemon } from '../support/daemon.js';
import {
  guestImageDir,
  guestQemuArgs,
  newcArchive,
  parseGuestExit,
  qemuCommand,
  type StorageDaemon,
  startStorageDaemon,
} from '../support/qemu.js';
import { type QmpClient as Qmp, QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-migrate-'));
const MiB = 1024 * 1024;
const PAGE = 4096;
const MEM_MB = 256;
/**
 * 8 KiB more guest RAM than MEM_MB: a RAM block whose length is not a multiple of 256 KiB
 * (64 pages, one bitmap word) makes QEMU 7.2's migration bitmap sync take its per-page path,
 * which resets the TCG TLB's dirty state; its whole-word fast path does not, and stores
 * through a stale TLB entry are then lost to the migration (see excusedByLostWrites).
 */
const MEM_TAIL_KIB = 8;
const MEM_BYTES = MEM_MB * MiB + MEM_TAIL_KIB * 1024;
/** 64 KiB slots the guest cycles through, after the marker's first 64 KiB. */
const SLOTS = 32;
/** Loop iterations the guest runs after it saw the marker (all on the destination). */
const AFTER_MARKER = 8;
const MARKER = 'MIGRATED';
/** The pattern region the guest reads through its page cache: 64 KiB slots 64..127 (4 MiB at 4 MiB). */
const REGION_SLOT = 64;
const REGION_SLOTS = 64;

const children: ChildProcess[] = [];
const cleanups: (() => Promise<void> | void)[] = [];

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const f of cleanups.reverse()) await f();
  rmSync(dir, { recursive: true, force: true });
});

/** A running QEMU: its console output, a QMP client, its exit. */
interface Qemu {
  proc: ChildProcess;
  qmp: Qmp;
  output(): string;
  exited: Promise<void>;
}

function writeInitrd(path: string, script: string): void {
  const base = join(guestImageDir(), 'initramfs.cpio.gz');
  copyFileSync(base, path);
  const run = newcArchive([{ name: 'run.sh', mode: 0o100755, data: Buffer.from(script) }]);
  const pad = Buffer.alloc((4 - (statSync(base).size % 4)) % 4);
  appendFileSync(path, Buffer.concat([pad, gzipSync(run)]));
}

/** Starts QEMU with `args` plus a QMP socket of its own; resolves once QMP answers. */
async function launch(name: string, args: string[]): Promise<Qemu> {
  const qmpPath = join(dir, `${name}.qmp`);
  const proc = spawn(...qemuCommand([...args, '-qmp', `unix:${qmpPath},server=on,wait=off`]), {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(proc);
  let text = '';
  const onData = (b: Buffer) => {
    text += b.toString('latin1').replace(/\r/g, '');
  };
  proc.stdout?.on('data', onData);
  proc.stderr?.on('data', onData);
  const exited = new Promise<void>((resolve) => proc.once('close', () => resolve()));
  const qmp = await waitFor(
    async () => {
      if (proc.exitCode !== null) throw new Error(`${name} exited:\n${text}`);
      return QmpClient.connect(qmpPath).catch(() => undefined);
    },
    () => `${name}'s QMP socket; output:\n${text.slice(-2000)}`,
    30_000,
  );
  cleanups.push(() => qmp.close());
  return { proc, qmp, output: () => text, exited };
}

/** The result of one migration, as QEMU's query-migrate reports it. */
interface Migrated {
  downtimeMs: number;
  totalMs: number;
  setupMs: number;
}

/** Migrates `src` to the QEMU listening on `uri`, polling query-migrate until it completes. */
async function migrate(src: Qemu, uri: string): Promise<Migrated> {
  // Unthrottled over a unix socket; QEMU's default downtime limit (300 ms).
  await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 4 * 1024 * MiB });
  const started = await src.qmp.execute('migrate', { uri });
  expect(started, JSON.stringify(started)).toHaveProperty('return');
  const info = await waitFor(
    async () => {
      const r = (await src.qmp.execute('query-migrate')).return as Record<string, unknown>;
      if (r.status === 'failed' || r.status === 'cancelled')
        throw new Error(
          `migration ${r.status}: ${JSON.stringify(r)}\n${src.output().slice(-2000)}`,
        );
      return r.status === 'completed' ? r : undefined;
    },
    'the migration to complete',
    90_000,
  );
  return {
    downtimeMs: Number(info.downtime),
    totalMs: Number(info['total-time']),
    setupMs: Number(info['setup-time']),
  };
}

/** Ends the (paused, migrated-away) source QEMU. */
async function quit(q: Qemu): Promise<void> {
  if (q.proc.exitCode === null) await q.qmp.execute('quit').catch(() => undefined);
  await q.exited;
}

/**
 * The guest's loop: write 64 KiB of random data to a slot with O_DIRECT, read
 * it back and compare checksums, remember the checksum; stop AFTER_MARKER
 * iterations after the host wrote the marker into sector 0 (which happens only
 * after the migration completed), then check every slot once more.
 */
const LOOP = `
wait_dev /dev/vda
# Beside the loop: buffered reads of the host's pattern region, which the back end writes
# straight into page-cache pages (DMA), each checked three times from the cache after. A
# page written so after QEMU last copied it, and not in the dirty log, would reach the
# destination stale: the check from the cache there catches it.
(
  c=0; cbad=0
  while [ ! -f /tmp/stop ]; do
    echo 1 > /proc/sys/vm/drop_caches
    dd if=/dev/vda of=/dev/null bs=65536 skip=${REGION_SLOT} count=${REGION_SLOTS} 2>/dev/null
    for v in 1 2 3; do
      got=$(dd if=/dev/vda bs=65536 skip=${REGION_SLOT} count=${REGION_SLOTS} 2>/dev/null | md5sum | cut -d' ' -f1)
      [ "$got" = "$1" ] || { echo "CACHE_MISMATCH cycle $c check $v"; cbad=$((cbad+1)); }
    done
    c=$((c+1))
  done
  echo "$c $cbad" > /tmp/cache.result
) &
i=0; bad=0; seen=0
while :; do
  i=$((i+1)); s=$((i % ${SLOTS}))
  dd if=/dev/urandom of=/tmp/w bs=65536 count=1 2>/dev/null
  sum=$(md5sum < /tmp/w | cut -d' ' -f1)
  dd if=/tmp/w of=/dev/vda bs=65536 seek=$((s + 1)) count=1 oflag=direct conv=notrunc 2>/dev/null || { echo "IO_ERROR write $i"; bad=$((bad+1)); }
  echo $sum > /tmp/sum.$s
  got=$(dd if=/dev/vda bs=65536 skip=$((s + 1)) count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
  [ "$got" = "$sum" ] || { echo "MISMATCH iteration $i slot $s"; bad=$((bad+1)); }
  [ $i = 3 ] && echo LOOP_RUNNING
  m=$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c 8)
  [ "$m" = ${MARKER} ] && seen=$((seen+1))
  [ $seen -ge ${AFTER_MARKER} ] && break
  [ $i -ge 20000 ] && break
done
s=0
while [ $s -lt ${SLOTS} ]; do
  if [ -f /tmp/sum.$s ]; then
    got=$(dd if=/dev/vda bs=65536 skip=$((s + 1)) count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$got" = "$(cat /tmp/sum.$s)" ] || { echo "FINAL_MISMATCH slot $s"; bad=$((bad+1)); }
  fi
  s=$((s+1))
done
touch /tmp/stop
wait
read cycles cbad < /tmp/cache.result
echo "CACHE_CYCLES=$cycles CACHE_BAD=$cbad"
bad=$((bad + cbad))
echo "KERNEL_IO_ERRORS=$(dmesg | grep -ci 'i/o error')"
echo "LOOP_DONE iterations=$i bad=$bad seen=$seen"
[ $seen -ge ${AFTER_MARKER} ] && [ $bad = 0 ]
`;

/** The loop for an image whose pattern region has MD5 `md5`. */
function loopScript(md5: string): string {
  return `set -- ${md5}\n${LOOP}`;
}

/** Writes a random pattern into the image's region (after the loop's slots); returns its MD5. */
function writePattern(image: string): string {
  const data = randomBytes(REGION_SLOTS * 65536);
  const fd = openSync(image, 'r+');
  try {
    writeSync(fd, data, 0, data.length, REGION_SLOT * 65536);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return createHash('md5').update(data).digest('hex');
}

/** Writes the marker into the image's first sector, as another host on the shared storage would. */
function writeMarker(image: string): void {
  const fd = openSync(image, 'r+');
  try {
    writeSync(fd, Buffer.from(MARKER), 0, MARKER.length, 0);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * `init_on_alloc=0`: the guest kernel does not zero a page it hands to the page cache.
 * Zeroing is a CPU write, which QEMU's own dirty tracking sees; without it, a page the
 * back end writes (DMA) is dirty in the back end's log only, as in a real guest's
 * steady state.
 */
function withKernelArgs(args: string[]): string[] {
  const i = args.indexOf('-append');
  return args.map((a, j) => (j === i + 1 ? `${a} init_on_alloc=0` : a));
}

/**
 * Keeps the whole of a failed migration's consoles and daemon logs (the failure message
 * shows only their tail, and an oops's first lines are what tells whose bug it is):
 * written under the system temp directory, which outlives `dir`; returns the path.
 */
function keepFailure(name: string, parts: Record<string, string>): string {
  const keep = join(tmpdir(), 'vhost-rt-migration-failures');
  mkdirSync(keep, { recursive: true });
  const path = join(keep, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.log`);
  writeFileSync(
    path,
    Object.entries(parts)
      .map(([k, v]) => `===== ${k} =====\n${v}\n`)
      .join(''),
  );
  return path;
}

/**
 * What differs between the paused source's RAM after the migration and the paused
 * destination's before it runs. The source's back end stopped at GET_VRING_BASE and
 * nothing else writes either RAM then, so every page listed reached the destination stale:
 * a write that neither QEMU's own tracking nor a back end's dirty log reported.
 * `kernelPages` counts those holding kernel data (at least two 8-byte kernel addresses:
 * direct map, vmemmap, vmalloc, kernel image), which only the guest's CPU writes (a back
 * end writes disk data, ring entries of guest-physical addresses and status bytes): one
 * of them shows the migration lost CPU stores (QEMU's bug: see the vhost-rt cases). Ring
 * pages are flagged in the details (QEMU's view of queue 0).
 */
interface RamCheck {
  pages: number[];
  kernelPages: number;
  details: string;
}

/** 8-byte words of `page` that look like x86-64 kernel addresses (one in 2^30 for random data). */
function kernelWords(page: Buffer): number {
  let n = 0;
  for (let i = 0; i + 8 <= page.length; i += 8) {
    const hi = page.readUInt32LE(i + 4);
    if (hi === 0xffff8880 || hi === 0xffffea00 || hi === 0xffffc900 || hi === 0xffffffff) n++;
  }
  return n;
}

async function compareRam(name: string, src: Qemu, dst: Qemu): Promise<RamCheck> {
  await waitFor(
    async () => {
      const r = (await dst.qmp.execute('query-status')).return as { status: string };
      return r.status !== 'inmigrate';
    },
    'the destination to finish loading the migration',
    30_000,
  );
  const files = ['src', 'dst'].map((side) => join(dir, `${name}-${side}.ram`));
  for (const [i, q] of [src, dst].entries()) {
    const r = await q.qmp.execute('pmemsave', { val: 0, size: MEM_BYTES, filename: files[i] });
    expect(r, JSON.stringify(r)).toHaveProperty('return');
  }
  const [a, b] = files.map((f) => readFileSync(f));
  for (const f of files) rmSync(f);
  const pages: number[] = [];
  for (let at = 0; at < a.length; at += PAGE)
    if (a.compare(b, at, at + PAGE, at, at + PAGE) !== 0) pages.push(at);
  if (pages.length === 0) return { pages, kernelPages: 0, details: '' };
  const rings: [number, number][] = [];
  const devices = ((await src.qmp.execute('x-query-virtio')).return ?? []) as { path: string }[];
  for (const d of devices) {
    const q = (await src.qmp.execute('x-query-virtio-queue-status', { path: d.path, queue: 0 }))
      .return as Record<string, number> | undefined;
    if (q === undefined) continue;
    // Each area at its largest (split or packed) for this size.
    for (const addr of [q['vring-desc'], q['vring-avail'], q['vring-used']])
      rings.push([addr, 16 * q['vring-num'] + 6]);
  }
  let kernelPages = 0;
  const lines: string[] = [];
  for (const at of pages) {
    let first = -1;
    let last = -1;
    let n = 0;
    for (let i = 0; i < PAGE; i++) {
      if (a[at + i] === b[at + i]) continue;
      if (first < 0) first = i;
      last = i;
      n++;
    }
    const ring = rings.some(([addr, len]) => at < addr + len && addr < at + PAGE);
    const kernel =
      Math.max(kernelWords(a.subarray(at, at + PAGE)), kernelWords(b.subarray(at, at + PAGE))) >= 2;
    if (kernel) kernelPages++;
    const row = at + (first & ~15);
    lines.push(
      `${at.toString(16)}: ${n} byte(s) differ in [${first}, ${last}]${kernel ? ', kernel data' : ''}${ring ? ', a ring page' : ''}; ` +
        `at +${first & ~15} source ${a.subarray(row, row + 32).toString('hex')} destination ${b.subarray(row, row + 32).toString('hex')}`,
    );
  }
  return { pages, kernelPages, details: lines.join('\n') };
}

/** Migrates the loop's guest from a disk on `srcSocket` to one on `dstSocket` (both on `image`). */
async function migrateDiskGuest(
  name: string,
  image: string,
  srcSocket: string,
  dstSocket: string,
  packed = false,
  daemonLogs: () => Record<string, string> = () => ({}),
) {
  const initrd = join(dir, `${name}.initrd`);
  const script = loopScript(writePattern(image));
  writeInitrd(initrd, script);
  const args = (socket: string) =>
    withKernelArgs(
      guestQemuArgs(
        { script, memMb: MEM_MB, memTailKiB: MEM_TAIL_KIB, blk: [{ socket, packed }] },
        initrd,
      ),
    );
  const src = await launch(`${name}-src`, args(srcSocket));
  const incoming = join(dir, `${name}.migrate`);
  // -S: the destination stays paused after the migration, until its RAM was compared.
  const dst = await launch(`${name}-dst`, [
    ...args(dstSocket),
    '-S',
    '-incoming',
    `unix:${incoming}`,
  ]);
  await waitFor(
    () => src.output().includes('LOOP_RUNNING'),
    () => `the guest loop; console:\n${src.output().slice(-2000)}`,
    120_000,
  );
  const m = await migrate(src, `unix:${incoming}`);
  const ram = await compareRam(name, src, dst);
  const differ =
    ram.pages.length === 0
      ? 'source and destination RAM are equal'
      : `${ram.pages.length} page(s) differ between source and destination RAM:\n${ram.details}`;
  if (ram.pages.length > 0) console.log(`${name}: ${differ}`);
  await dst.qmp.execute('cont');
  writeMarker(image);
  const keep = () =>
    keepFailure(name, {
      ram: differ,
      destination: dst.output(),
      source: src.output(),
      ...daemonLogs(),
    });
  let finished = true;
  await waitFor(
    () => dst.proc.exitCode !== null || dst.proc.signalCode !== null,
    'the guest to finish its loop on the destination',
    120_000,
  ).catch((err: unknown) => {
    // A guest whose RAM the migration corrupted may hang: the caller decides (see its rule).
    if (ram.pages.length === 0)
      throw new Error(
        `${(err as Error).message} (whole logs: ${keep()}); console:\n${dst.output().slice(-3000)}`,
      );
    finished = false;
    dst.proc.kill('SIGKILL');
  });
  await dst.exited;
  await quit(src);
  const out = dst.output();
  const exit = parseGuestExit(out);
  if (exit !== 0) console.log(`${name}: the guest failed; whole logs: ${keep()}`);
  return { m, src: src.output(), out, exit, ram, finished };
}

describe('blk', () => {
  // The reference back end, proving the harness: retried once, because QEMU 7.2's TCG guest
  // was seen to crash after this migration with qemu-storage-daemon (a GPF in the guest
  // kernel's prepare_creds; stale pages and a SIGSEGV in another CI run): the TCG lost-store
  // bug described at the vhost-rt cases below, which MEM_TAIL_KIB now steers clear of.
  it(
    'the harness migrates a guest whose disk is on qemu-storage-daemon',
    { retry: 1 },
    async () => {
      const image = join(dir, 'qsd.img');
      writeFileSync(image, Buffer.alloc(0));
      execFileSync('truncate', ['-s', `${64 * MiB}`, image]);
      const daemons: StorageDaemon[] = [];
      cleanups.push(() => Promise.all(daemons.map((d) => d.close())).then(() => undefined));
      // Two exports of one image (shared storage): QEMU's image locks would refuse the second.
      for (const s of ['qsd-a', 'qsd-b'])
        daemons.push(
          await startStorageDaemon({ image, socket: join(dir, `${s}.sock`), locking: false }),
        );
      const r = await migrateDiskGuest('qsd', image, daemons[0].socket, daemons[1].socket, false);
      console.log(
        `qemu-storage-daemon migration: downtime ${r.m.downtimeMs} ms, total ${r.m.totalMs} ms`,
      );
      expect(r.out).toMatch(/LOOP_DONE iterations=\d+ bad=0 seen=8/);
      expect(r.exit).toBe(0);
    },
    300_000,
  );

  /** Migrates the loop's guest between two vhost-rt daemons on one new image; `attempt` names the files. */
  async function rtMigration(rings: string, packed: boolean, attempt: number) {
    const tag = `${rings}-${attempt}`;
    const image = join(dir, `rt-${tag}.img`);
    writeFileSync(image, Buffer.alloc(0));
    execFileSync('truncate', ['-s', `${64 * MiB}`, image]);
    // The destination reaches the image through a loop device, as a second host reaches
    // shared storage through its own path: image locks are per host (per inode here), and
    // on one machine the source daemon's write lock on the file would refuse a second writer.
    const loop = execFileSync('losetup', ['--find', '--show', '--direct-io=on', image], {
      encoding: 'utf8',
    }).trim();
    const daemons: Daemon[] = [];
    cleanups.push(async () => {
      await Promise.all(daemons.map((d) => d.stop()));
      spawnSync('losetup', ['-d', loop]);
    });
    for (const [s, path] of [
      [`rt-a-${tag}`, image],
      [`rt-b-${tag}`, loop],
    ])
      daemons.push(
        await startDaemon(
          ['blk', '--socket-path', join(dir, `${s}.sock`), '--image', path],
          undefined,
          packed ? { VHOST_RT_INFLIGHT: 'off' } : {},
        ),
      );
    const r = await migrateDiskGuest(
      `rt-${tag}`,
      image,
      join(dir, `rt-a-${tag}.sock`),
      join(dir, `rt-b-${tag}.sock`),
      packed,
      () => ({ 'source daemon': daemons[0].log(), 'destination daemon': daemons[1].log() }),
    );
    return { ...r, daemons };
  }

  /**
   * The guests' RAM size (MEM_TAIL_KIB) keeps QEMU off the path with this bug: 0 migrations
   * with stale pages in 24 since (2026-12-01, 8 runs of this file). The rule below stays as
   * a guard. Retried once, only when QEMU's own migration demonstrably lost guest CPU stores: QEMU
   * 7.2's TCG misses stores made through a TLB entry that was already dirty when a
   * migration bitmap sync cleared the page's bit (the sync's fast path does not reset the
   * TLB; fixed upstream in QEMU 9.0, commit 03bfc2188f "physmem: Fix migration dirty bitmap
   * coherency with TCG memory access", not in Debian's 7.2.22). Seen on a 2-core machine
   * (2026-12-01) in migrations whose RAM was compared: packed rings 9 of 41, split rings 8
   * of 35 (the same rate: the ring layout does not matter), qemu-storage-daemon 0 of 7 (too
   * few to compare); about half of them then failed the guest. What differs: pages of kernel data (list links, struct page pointers,
   * counters, clocks) older on the destination than on the paused source, none of them a ring
   * page, nothing written on the source after the migration completed; the
   * guest then oopses (list_del corruption in the page allocator, a jump to a wild
   * address), hangs, or reads wrong data from its corrupted page cache.
   * So a retry needs: stale pages (the migration lost writes), no daemon error, no I/O
   * error in the guest (a stale status byte is ours but sits in a kernel page), and no data
   * mismatch unless the kernel oopsed or a process died of SIGSEGV first (a dirty-log miss
   * of ours shows as wrong data with a sound kernel and sound processes). A failure without stale pages is never retried. Stale pages are
   * not attributed automatically: disk data in one may be the device's write or a CPU copy
   * (pipes, user buffers, tmpfs), and user-space pages (stacks, counters) hold no kernel
   * addresses; their details are printed for a human to judge.
   */
  function excusedByLostWrites(r: Awaited<ReturnType<typeof rtMigration>>): boolean {
    // The kernel broke (oops, BUG, GPF), or a guest process died of SIGSEGV (the shell's
    // "Segmentation fault": a stale user page, its stack or heap pointers, which the device
    // never writes — seen here before a CACHE_MISMATCH whose dd had died).
    const oops = r.out.search(
      /\bBUG:|Oops:|general protection fault|kernel BUG|Segmentation fault/,
    );
    const mismatch = r.out.search(/MISMATCH/);
    return (
      r.ram.pages.length > 0 &&
      r.daemons.every((d) => !/broken|VHOST_USER_[A-Z_]+\)|error/i.test(d.log())) &&
      // A stale status byte (ours, in a kernel page) shows as an I/O error: never excused.
      !/IO_ERROR write|I\/O error|KERNEL_IO_ERRORS=[1-9]/i.test(r.out) &&
      // Wrong data only after the guest broke (oops, BUG, GPF, SIGSEGV), or none at all (a hang).
      (mismatch < 0 || (oops >= 0 && oops < mismatch))
    );
  }

  // Packed rings (packed=on) are offered only with inflight tracking off (VHOST_RT_INFLIGHT=off).
  it.each([
    { rings: 'split', packed: false },
    { rings: 'packed', packed: true },
  ])(
    'a guest doing checksummed O_DIRECT I/O on a vhost-rt disk ($rings rings) moves to a second daemon on the same image: no mismatch, no I/O error',
    async ({ rings, packed }) => {
      let r = await rtMigration(rings, packed, 1);
      const passed = (x: typeof r) =>
        x.finished && x.exit === 0 && /LOOP_DONE iterations=\d+ bad=0 seen=8/.test(x.out);
      if (!passed(r) && excusedByLostWrites(r)) {
        console.log(
          `vhost-rt blk migration (${rings} rings): ${r.ram.pages.length} page(s) reached the destination stale ` +
            `(${r.ram.kernelPages} of them kernel data) and the guest failed (${r.finished ? `exit ${r.exit}` : 'hung'}); retrying once:\n${r.ram.details}`,
        );
        r = await rtMigration(rings, packed, 2);
      }
      const done = /LOOP_DONE iterations=(\d+) bad=(\d+) seen=(\d+)/.exec(r.out);
      const cache = /CACHE_CYCLES=(\d+) CACHE_BAD=(\d+)/.exec(r.out);
      console.log(
        `vhost-rt blk migration (${rings} rings): downtime ${r.m.downtimeMs} ms, total ${r.m.totalMs} ms, ` +
          `setup ${r.m.setupMs} ms; guest loop iterations ${done?.[1]}, page-cache cycles ${cache?.[1]}`,
      );
      expect(r.finished, `the guest hung; RAM:\n${r.ram.details}`).toBe(true);
      expect(r.out, r.out.slice(-3000)).toMatch(/LOOP_DONE iterations=\d+ bad=0 seen=8/);
      expect(r.out).toContain('KERNEL_IO_ERRORS=0');
      expect(cache?.[2]).toBe('0');
      expect(r.out).not.toMatch(/MISMATCH|IO_ERROR write/);
      expect(r.exit).toBe(0);
      // The source's last lines came from the source, the loop's end from the destination.
      expect(r.src).toContain('LOOP_RUNNING');
      expect(r.src).not.toContain('LOOP_DONE');
      // No refused request, no broken ring on either side.
      for (const d of r.daemons) expect(d.log()).not.toMatch(/broken|VHOST_USER_[A-Z_]+\)/);
    },
    600_000,
  );
});

describe('net', () => {
  const ns = `vhrt-mig-${process.pid}`;
  const tap = `vhrm${process.pid % 100000}`;
  const HOST_IP = '169.254.30.1';
  const GUEST_IP = '169.254.30.2';
  const MAC = '52:54:00:30:00:02';
  /** An upper bound: the stream is stopped once AFTER replies came after the migration. */
  const PINGS = 1200;
  const AFTER = 30;

  it('a pinged guest moves to another switch port: the switch announces it (SEND_RARP) and the pings follow', async () => {
    execFileSync('ip', ['netns', 'add', ns]);
    cleanups.push(() => {
      spawnSync('ip', ['netns', 'delete', ns]);
    });
    const a = join(dir, 'net-a.sock');
    const b = join(dir, 'net-b.sock');
    const daemon = await startDaemon(['net', '--socket-path', a, '--socket-path', b, '--tap', tap]);
    cleanups.push(() => daemon.stop().then(() => undefined));
    await waitFor(() => daemon.log().includes(`tap ${tap}`), 'the TAP ready line', 5000);
    const inNs = (...args: string[]) => execFileSync('ip', ['netns', 'exec', ns, ...args]);
    execFileSync('ip', ['link', 'set', tap, 'netns', ns]);
    inNs('ip', 'addr', 'add', `${HOST_IP}/16`, 'dev', tap);
    inNs('ip', 'link', 'set', tap, 'up');

    // Nothing but the RARP may tell the switch that the guest moved: the guest sends no
    // IPv6 (router solicitations, MLD) and neither side ARPs (static neighbours), so
    // without the announcement the pings would keep going to the old port.
    const tapMac = /link\/ether ([0-9a-f:]{17})/.exec(
      execFileSync('ip', ['-n', ns, 'link', 'show', tap], { encoding: 'utf8' }),
    )?.[1];
    expect(tapMac).toBeDefined();
    inNs('ip', 'neigh', 'replace', GUEST_IP, 'lladdr', MAC, 'dev', tap, 'nud', 'permanent');
    const script = `echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
ip link set eth0 up && ip addr add ${GUEST_IP}/16 dev eth0 || exit 10
ip neigh replace ${HOST_IP} lladdr ${tapMac} dev eth0 nud permanent || arp -s ${HOST_IP} ${tapMac} || exit 11
echo NET_UP
sleep 600
`;
    const initrd = join(dir, 'net.initrd');
    writeInitrd(initrd, script);
    const args = (socket: string) =>
      guestQemuArgs(
        {
          script,
          memMb: MEM_MB,
          memTailKiB: MEM_TAIL_KIB,
          extraArgs: [
            '-chardev',
            `socket,id=n0,path=${socket}`,
            '-netdev',
            'vhost-user,id=n0,chardev=n0',
            '-device',
            // vectors=0: QEMU 7.2 TCG segfaults when vhost-user virtio-net unmasks MSI-X vectors.
            `virtio-net-pci,netdev=n0,mac=${MAC},romfile=,vectors=0`,
          ],
        },
        initrd,
      );
    const src = await launch('net-src', args(a));
    const incoming = join(dir, 'net.migrate');
    const dst = await launch('net-dst', [...args(b), '-incoming', `unix:${incoming}`]);
    await waitFor(
      () => src.output().includes('NET_UP'),
      () => `the guest network; console:\n${src.output().slice(-2000)}`,
      120_000,
    );
    await waitFor(
      () =>
        spawnSync('ip', ['netns', 'exec', ns, 'busybox', 'ping', '-c', '1', '-W', '1', GUEST_IP])
          .status === 0,
      'a first ping reply',
      120_000,
    );

    // One ping every 100 ms across the migration.
    const ping = spawn(
      'ip',
      [
        'netns',
        'exec',
        ns,
        'busybox',
        'ping',
        '-i',
        '0.1',
        '-c',
        String(PINGS),
        '-W',
        '2',
        GUEST_IP,
      ],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    children.push(ping);
    let pingOut = '';
    ping.stdout?.on('data', (d: Buffer) => {
      pingOut += d.toString();
    });
    const pingDone = new Promise<void>((resolve) => ping.once('close', () => resolve()));
    const replies = () => [...pingOut.matchAll(/seq=(\d+)/g)].map((m) => Number(m[1]));
    await waitFor(() => replies().length >= 10, 'ten ping replies before the migration', 30_000);
    const m = await migrate(src, `unix:${incoming}`);
    const lastBefore = Math.max(...replies());
    // The pings reach the guest on its new port: the TAP port's table moved to it.
    await waitFor(
      () => replies().filter((s) => s > lastBefore).length >= AFTER,
      () =>
        `${AFTER} ping replies after the migration; ping output:\n${pingOut.slice(-1500)}\n` +
        `destination console and QEMU:\n${dst.output().slice(-1500)}\n` +
        `daemon log, stats lines left out:\n${daemon
          .log()
          .split('\n')
          .filter((l) => !l.includes(' stats: '))
          .slice(-25)
          .join('\n')}`,
      60_000,
    );
    ping.kill('SIGINT');
    await pingDone;
    await quit(src);
    const seqs = replies();
    const sent = Math.max(...seqs) + 1;
    const lost = sent - new Set(seqs).size;
    console.log(
      `vhost-rt net migration: downtime ${m.downtimeMs} ms, total ${m.totalMs} ms; ` +
        `pings lost ${lost} of the first ${sent} (every 100 ms)`,
    );
    // At most what was in flight while the guest stopped and its port moved.
    expect(lost).toBeLessThanOrEqual(50);
    // QEMU says so when a back end cannot announce (no VHOST_USER_PROTOCOL_F_RARP, or refused).
    expect(dst.output()).not.toMatch(/fails to broadcast fake RARP/);
    expect(dst.proc.exitCode).toBeNull();
    dst.proc.kill('SIGKILL');
    await dst.exited;
  }, 300_000);
});
