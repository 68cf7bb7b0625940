/**
 * Real-QEMU harness: boots a TCG guest (Debian kernel + busybox initramfs built by
 * scripts/build-guest.sh) attached to vhost-user-blk sockets, runs one shell script inside
 * it and returns the script's exit code and the serial console output.
 *
 * The script becomes /run.sh in a tiny per-run newc archive appended to the base
 * initramfs (Linux unpacks concatenated archives in order). scripts/guest-init sources it
 * in a subshell, so it can use the helpers `now_ns`, `timed_dd LABEL BYTES DD-ARGS...` and
 * `wait_dev PATH [SECONDS]`. Disks appear as /dev/vda, /dev/vdb, ... in `blk` order.
 *
 * Also starts qemu-storage-daemon, the reference vhost-user-blk backend, for comparisons.
 */

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { appendFile, copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { VhostRtError } from '../../src/errors.js';
import { waitFor } from './wait.js';

/** One vhost-user-blk-pci device whose backend listens on a unix socket. */
export interface GuestBlk {
  /** Path of the backend's vhost-user socket (QEMU connects as the front end). */
  socket: string;
  /** Virtqueues the device offers (`num-queues`); default 1. */
  queues?: number;
  /** Offer the guest packed virtqueues (`packed=on`, VIRTIO_F_RING_PACKED); default off. */
  packed?: boolean;
}

/** What to boot and run. */
export interface GuestOptions {
  /** Shell script run as /run.sh by busybox ash inside the guest. */
  script: string;
  /** vhost-user-blk disks, in /dev/vda, /dev/vdb, ... order. */
  blk?: GuestBlk[];
  /** Guest RAM in MiB (a shared memfd, as vhost-user needs); default 512. */
  memMb?: number;
  /**
   * KiB of guest RAM beyond `memMb`, a multiple of 8 (QEMU rounds `-m` up to 8 KiB); default
   * 0. A RAM size that is not a multiple of 256 KiB keeps QEMU 7.2's migration bitmap sync
   * off its fast path, which loses TCG guest stores (see test/e2e/migration.test.ts).
   */
  memTailKiB?: number;
  /** Kill QEMU and reject after this long; default 60 000 ms. */
  timeoutMs?: number;
  /**
   * Kills QEMU when aborted (the run then rejects): a test that failed before its guest
   * finished ends the guest in its `finally` instead of leaving it to the timeout.
   */
  signal?: AbortSignal;
  /** Extra QEMU arguments appended to the command line (e.g. a vhost-user net device). */
  extraArgs?: string[];
  /** Virtual CPUs; default 1. */
  cpus?: number;
  /**
   * Extra host files copied into the guest's root file system (e.g. a program and its shared
   * libraries), in an uncompressed archive appended to the per-run initramfs. Parent
   * directories are created. Default: none (the initramfs is exactly as without this option).
   */
  files?: GuestFile[];
}

/** A host file to put into the guest. */
export interface GuestFile {
  /** Path on the host (read at boot time; symlinks are followed). */
  source: string;
  /** Absolute path inside the guest, e.g. /opt/fio/bin/fio. */
  path: string;
  /** Permission bits; default 0o755. */
  mode?: number;
}

/** Outcome of a guest run that reached the end of its script. */
export interface GuestResult {
  /** Exit status of /run.sh inside the guest. */
  exitCode: number;
  /** Serial console output (CR and terminal escapes removed). */
  output: string;
  /** Wall time from spawning QEMU until it exited. */
  durationMs: number;
  /** Wall time from spawning QEMU until the guest started /run.sh (-1 if not seen). */
  bootMs: number;
}

/** Base class of harness failures, so callers can tell them from assertion failures. */
export class GuestError extends VhostRtError {}

/** The guest image (.cache/guest) is missing and could not be built. */
export class GuestImageError extends GuestError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_GUEST_IMAGE', message, options);
  }
}

/** QEMU could not be started at all. */
export class GuestSpawnError extends GuestError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_GUEST_SPAWN', message, options);
  }
}

/** The guest did not finish its script in time; QEMU was killed. */
export class GuestTimeoutError extends GuestError {
  constructor(message: string) {
    super('ERR_GUEST_TIMEOUT', message);
  }
}

/** QEMU exited before the guest printed its exit marker (crash, panic, QEMU error). */
export class GuestNoExitMarkerError extends GuestError {
  constructor(message: string) {
    super('ERR_GUEST_NO_EXIT_MARKER', message);
  }
}

/** qemu-storage-daemon failed to start or to export its socket. */
export class StorageDaemonError extends GuestError {
  constructor(message: string) {
    super('ERR_QSD', message);
  }
}

const EXIT_MARKER = /VHOST_RT_GUEST_EXIT=(\d+)/g;
const START_MARKER = 'VHOST_RT_GUEST_START';
const TAIL_LINES = 40;
const KERNEL_CMDLINE = 'console=ttyS0 quiet panic=-1';

/** Children still running; killed if the test process exits without reaping them. */
const liveChildren = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of liveChildren) child.kill('SIGKILL');
});

/** The repository root: the nearest ancestor holding package.json (works from src and dist). */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new GuestImageError('no package.json above test/support');
    dir = parent;
  }
  return dir;
}

/** Where build-guest.sh puts vmlinuz, vmlinux and initramfs.cpio.gz. */
export function guestImageDir(): string {
  return process.env.VHOST_RT_GUEST_DIR ?? join(repoRoot(), '.cache', 'guest');
}

/** True when the guest kernel and base initramfs exist in .cache/guest. */
export function guestImageReady(): boolean {
  const dir = guestImageDir();
  return existsSync(join(dir, 'initramfs.cpio.gz')) && existsSync(join(dir, 'vmlinuz'));
}

/**
 * Runs scripts/build-guest.sh (a no-op when the image is fresh; ~10 s and a 70 MB kernel
 * download otherwise). Throws {@link GuestImageError} when it fails.
 */
export function ensureGuestImage(): void {
  const script = join(repoRoot(), 'scripts', 'build-guest.sh');
  const run = spawnSync('bash', [script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (run.status !== 0 || !guestImageReady()) {
    const detail = `${run.stdout ?? ''}${run.stderr ?? ''}${run.error?.message ?? ''}`;
    throw new GuestImageError(`build-guest.sh failed (status ${run.status}):\n${detail}`);
  }
}

/** The kernel to boot: the uncompressed ELF (PVH entry, ~4 s faster under TCG) if present. */
function guestKernel(dir: string): string {
  const vmlinux = join(dir, 'vmlinux');
  return existsSync(vmlinux) && statSync(vmlinux).size > 0 ? vmlinux : join(dir, 'vmlinuz');
}

/** One file of a newc ("070701") cpio archive. */
export interface CpioEntry {
  /** Path inside the archive, without a leading slash. */
  name: string;
  /** st_mode including the file type, e.g. 0o100755. */
  mode: number;
  data: Buffer;
}

/** Appends zero bytes so the buffers' total length becomes a multiple of 4 (newc alignment). */
function pad4(parts: Buffer[], length: number): number {
  const pad = (4 - (length % 4)) % 4;
  if (pad > 0) parts.push(Buffer.alloc(pad));
  return length + pad;
}

/** The 110-byte ASCII newc header: thirteen 8-digit hex fields after the magic. */
function newcHeader(ino: number, mode: number, size: number, nameSize: number): Buffer {
  // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
  const fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, nameSize, 0];
  const hex = fields.map((f) => f.toString(16).padStart(8, '0')).join('');
  return Buffer.from(`070701${hex}`, 'ascii');
}

/** Builds an uncompressed newc archive (the format the kernel's initramfs unpacker reads). */
export function newcArchive(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let length = 0;
  const trailer = { name: 'TRAILER!!!', mode: 0, data: Buffer.alloc(0) };
  [...entries, trailer].forEach((entry, i) => {
    const name = Buffer.from(`${entry.name}\0`, 'utf8');
    parts.push(
      newcHeader(entry === trailer ? 0 : i + 1, entry.mode, entry.data.length, name.length),
    );
    parts.push(name);
    length = pad4(parts, length + 110 + name.length);
    parts.push(entry.data);
    length = pad4(parts, length + entry.data.length);
  });
  return Buffer.concat(parts);
}

/** newc entries for `files` and every parent directory they need (parents first). */
export async function guestFileEntries(files: readonly GuestFile[]): Promise<CpioEntry[]> {
  const dirs = new Set<string>();
  const entries: CpioEntry[] = [];
  for (const f of files) {
    const parts = f.path.replace(/^\/+/, '').split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
    const data = await readFile(f.source);
    entries.push({ name: parts.join('/'), mode: 0o100000 | (f.mode ?? 0o755), data });
  }
  const dirEntries = [...dirs]
    .sort()
    .map((name) => ({ name, mode: 0o40755, data: Buffer.alloc(0) }));
  return [...dirEntries, ...entries];
}

/** Writes base initramfs + (aligned) gzip'd archive holding /run.sh into `path`. */
async function writeInitrd(path: string, script: string, files?: GuestFile[]): Promise<void> {
  const base = join(guestImageDir(), 'initramfs.cpio.gz');
  await copyFile(base, path);
  const run = newcArchive([{ name: 'run.sh', mode: 0o100755, data: Buffer.from(script) }]);
  // The kernel skips zero padding between archives only at 4-byte boundaries.
  const baseSize = statSync(base).size;
  const pad = Buffer.alloc((4 - (baseSize % 4)) % 4);
  await appendFile(path, Buffer.concat([pad, gzipSync(run)]));
  if (files && files.length > 0) await appendFiles(path, files);
}

/** Appends `files` as an uncompressed archive at a 4-byte boundary (big binaries gzip slowly). */
async function appendFiles(path: string, files: GuestFile[]): Promise<void> {
  const archive = newcArchive(await guestFileEntries(files));
  const pad = Buffer.alloc((4 - (statSync(path).size % 4)) % 4);
  await appendFile(path, Buffer.concat([pad, archive]));
}

/** QEMU's option parser treats ',' as a separator; ',,' is a literal comma. */
function qemuEscape(value: string): string {
  return value.replaceAll(',', ',,');
}

/** Validates the options, naming the one at fault (RangeError/TypeError). */
function checkOptions(options: GuestOptions): void {
  if (typeof options.script !== 'string') throw new TypeError('options.script must be a string');
  const positive = (name: string, v: number | undefined, min: number, max: number): void => {
    if (v !== undefined && (!Number.isInteger(v) || v < min || v > max)) {
      throw new RangeError(`options.${name} must be an integer in [${min}, ${max}], got ${v}`);
    }
  };
  positive('memMb', options.memMb, 64, 65536);
  positive('memTailKiB', options.memTailKiB, 0, 1024);
  if ((options.memTailKiB ?? 0) % 8 !== 0) {
    throw new RangeError(`options.memTailKiB must be a multiple of 8, got ${options.memTailKiB}`);
  }
  positive('cpus', options.cpus, 1, 64);
  positive('timeoutMs', options.timeoutMs, 1, 3_600_000);
  for (const [i, blk] of (options.blk ?? []).entries()) {
    if (typeof blk.socket !== 'string' || blk.socket === '') {
      throw new TypeError(`options.blk[${i}].socket must be a non-empty path`);
    }
    positive(`blk[${i}].queues`, blk.queues, 1, 64);
  }
}

/** The full QEMU argument list for `options`, booting `initrd`. */
export function guestQemuArgs(options: GuestOptions, initrd: string): string[] {
  const memKiB = (options.memMb ?? 512) * 1024 + (options.memTailKiB ?? 0);
  const dir = guestImageDir();
  const args = ['-accel', 'tcg', '-machine', 'q35', '-cpu', 'max'];
  args.push('-smp', String(options.cpus ?? 1), '-m', `${memKiB}K`);
  // vhost-user backends map guest RAM, so it must be a shareable memfd.
  args.push('-object', `memory-backend-memfd,id=mem,size=${memKiB}K,share=on`);
  args.push('-numa', 'node,memdev=mem');
  // No default NIC/VGA (their ROMs and drivers only cost boot time); serial on stdout.
  args.push('-nographic', '-nodefaults', '-no-user-config', '-serial', 'stdio', '-no-reboot');
  args.push('-kernel', guestKernel(dir), '-initrd', initrd, '-append', KERNEL_CMDLINE);
  for (const [i, blk] of (options.blk ?? []).entries()) {
    args.push('-chardev', `socket,id=blk${i},path=${qemuEscape(blk.socket)}`);
    const packed = blk.packed === true ? ',packed=on' : '';
    args.push(
      '-device',
      `vhost-user-blk-pci,chardev=blk${i},num-queues=${blk.queues ?? 1}${packed}`,
    );
  }
  return args.concat(options.extraArgs ?? []);
}

/** Removes CRs and the terminal escapes SeaBIOS prints. */
function cleanSerial(raw: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching ESC is the point
  return raw.replace(/\x1b(\[[0-9;?]*[A-Za-z]|c)/g, '').replace(/\r/g, '');
}

/** The last `n` lines of `text`, for error messages. */
export function lastLines(text: string, n = TAIL_LINES): string {
  return text.split('\n').slice(-n).join('\n');
}

/** Serial output + QEMU's own stderr, shown when a run fails. */
function failureTail(stdout: string, stderr: string): string {
  const qemu = stderr.trim() === '' ? '' : `\n--- qemu stderr ---\n${lastLines(stderr, 10)}`;
  return `--- last ${TAIL_LINES} lines of guest output ---\n${lastLines(stdout)}${qemu}`;
}

/** The exit code in the last exit marker of `output`, or undefined. */
export function parseGuestExit(output: string): number | undefined {
  let code: number | undefined;
  for (const m of output.matchAll(EXIT_MARKER)) code = Number(m[1]);
  return code;
}

/** Resolves with QEMU's exit description once it has been reaped. */
interface Reaped {
  status: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * The command that starts QEMU: under `setpriv --pdeathsig KILL`, so that QEMU dies with the
 * test process however that ends. A vitest fork that is killed runs no 'exit' handler, and a
 * guest left running after its test failed was seen in CI still reconnecting 23 minutes later.
 */
export function qemuCommand(args: string[]): [string, string[]] {
  return ['setpriv', ['--pdeathsig', 'KILL', '--', 'qemu-system-x86_64', ...args]];
}

/** Spawns QEMU, collects stdout/stderr, enforces the timeout, always reaps the process. */
function spawnQemu(args: string[], timeoutMs: number, signal: AbortSignal | undefined) {
  const started = performance.now();
  const [command, argv] = qemuCommand(args);
  const child = spawn(command, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  liveChildren.add(child);
  const abort = () => child.kill('SIGKILL');
  signal?.addEventListener('abort', abort, { once: true });
  if (signal?.aborted === true) abort();
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let bootMs = -1;
  let timedOut = false;
  // The serial port often delivers a byte per chunk, so the marker is looked for in a
  // rolling window rather than in single chunks.
  let window = '';
  child.stdout.on('data', (b: Buffer) => {
    out.push(b);
    if (bootMs >= 0) return;
    window += b.toString('latin1');
    if (window.includes(START_MARKER)) bootMs = performance.now() - started;
    window = window.slice(-START_MARKER.length);
  });
  child.stderr.on('data', (b: Buffer) => err.push(b));
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeoutMs);
  const reaped = new Promise<Reaped>((resolve, reject) => {
    child.once('error', (e) => {
      clearTimeout(timer);
      liveChildren.delete(child);
      reject(new GuestSpawnError(`cannot run qemu-system-x86_64: ${e.message}`, { cause: e }));
    });
    // 'close' fires after exit *and* after stdio has drained, so the output is complete.
    child.once('close', (status, signalCode) => {
      clearTimeout(timer);
      liveChildren.delete(child);
      signal?.removeEventListener('abort', abort);
      resolve({ status, signal: signalCode });
    });
  });
  const collected = () => ({
    stdout: cleanSerial(Buffer.concat(out).toString('utf8')),
    stderr: Buffer.concat(err).toString('utf8'),
    durationMs: performance.now() - started,
    bootMs,
    timedOut,
  });
  return { reaped, collected };
}

/**
 * Boots a guest, runs `options.script` as /run.sh and resolves with its exit code and the
 * console output. Rejects with {@link GuestTimeoutError} (QEMU killed) or
 * {@link GuestNoExitMarkerError} (QEMU exited early), each with the output's last lines.
 * A non-zero script exit code resolves normally: callers assert on it.
 */
export async function runGuest(options: GuestOptions): Promise<GuestResult> {
  checkOptions(options);
  if (!guestImageReady()) {
    throw new GuestImageError(`no guest image in ${guestImageDir()}: run scripts/build-guest.sh`);
  }
  const tmp = await mkdtemp(join(tmpdir(), 'vhost-rt-guest-'));
  try {
    const initrd = join(tmp, 'initrd');
    await writeInitrd(initrd, options.script, options.files);
    const timeoutMs = options.timeoutMs ?? 60_000;
    const run = spawnQemu(guestQemuArgs(options, initrd), timeoutMs, options.signal);
    const reaped = await run.reaped;
    const c = run.collected();
    const exitCode = parseGuestExit(c.stdout);
    // A script that finished but whose power-off hung still counts as finished.
    if (c.timedOut && exitCode === undefined) {
      const msg = `guest did not finish within ${timeoutMs} ms (QEMU killed)`;
      throw new GuestTimeoutError(`${msg}\n${failureTail(c.stdout, c.stderr)}`);
    }
    if (exitCode === undefined) {
      const how = reaped.signal ?? `status ${reaped.status}`;
      const msg = `QEMU exited (${how}) before the guest printed VHOST_RT_GUEST_EXIT`;
      throw new GuestNoExitMarkerError(`${msg}\n${failureTail(c.stdout, c.stderr)}`);
    }
    return { exitCode, output: c.stdout, durationMs: c.durationMs, bootMs: c.bootMs };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** One dd measurement printed by the guest's `timed_dd` (or a GNU-style dd summary). */
export interface DdThroughput {
  /** `timed_dd`'s LABEL, or `dd#N` for a GNU-style summary line. */
  label: string;
  bytes: number;
  seconds: number;
  /** Decimal megabytes (10^6 bytes) per second, as dd itself reports. */
  mbPerSec: number;
  /** dd's exit status (0 for GNU-style lines, which dd prints only on success). */
  rc: number;
}

const TIMED_DD = /VHOST_RT_DD label=(\S+) bytes=(\d+) ns=(-?\d+) rc=(\d+)/g;
const GNU_DD = /^(\d+) bytes \([^)]*\) copied, ([\d.]+) s(?:econds)?, /gm;

function throughput(label: string, bytes: number, seconds: number, rc: number): DdThroughput {
  const mbPerSec = seconds > 0 ? bytes / 1e6 / seconds : Number.POSITIVE_INFINITY;
  return { label, bytes, seconds, mbPerSec, rc };
}

/**
 * Pulls dd throughput out of guest output. Busybox dd (1.35, as built by Debian) prints no
 * rate, so guest scripts time it with `timed_dd`, which prints `VHOST_RT_DD ...` lines;
 * GNU-style "N bytes (...) copied, S s, R/s" lines are understood too.
 */
export function parseDdThroughput(output: string): DdThroughput[] {
  const results: DdThroughput[] = [];
  for (const m of output.matchAll(TIMED_DD)) {
    results.push(throughput(m[1], Number(m[2]), Number(m[3]) / 1e9, Number(m[4])));
  }
  let n = 0;
  for (const m of output.matchAll(GNU_DD)) {
    results.push(throughput(`dd#${n++}`, Number(m[1]), Number(m[2]), 0));
  }
  return results;
}

/** A running qemu-storage-daemon exporting one image as a vhost-user-blk socket. */
export interface StorageDaemon {
  /** The vhost-user socket to give to {@link GuestBlk}. */
  socket: string;
  pid: number;
  /** Stops the daemon (SIGTERM, SIGKILL after 5 s) and waits until it is reaped. */
  close(): Promise<void>;
}

/** How to start qemu-storage-daemon. */
export interface StorageDaemonOptions {
  /** Raw image file to export. */
  image: string;
  /** Unix socket path to listen on (must not exist yet). */
  socket: string;
  /** Virtqueues the export offers; must be >= the guest device's num-queues. Default 1. */
  queues?: number;
  /** Open the image with O_DIRECT and Linux AIO (DESIGN.md's reference setup). Default true. */
  direct?: boolean;
  /** How long to wait for the socket to appear; default 10 000 ms. */
  readyTimeoutMs?: number;
  /**
   * QEMU's image locks (default true). False (`locking=off`) lets a second
   * daemon export the same image, as shared storage for a live migration.
   */
  locking?: boolean;
}

/** The qemu-storage-daemon arguments of DESIGN.md's reference backend. */
export function storageDaemonArgs(options: StorageDaemonOptions): string[] {
  const direct = options.direct ?? true;
  const cache = direct ? 'cache.direct=on,aio=native' : 'cache.direct=off,aio=threads';
  const lock = options.locking === false ? ',locking=off' : '';
  const file = `driver=file,node-name=f0,filename=${qemuEscape(options.image)},${cache}${lock}`;
  const addr = `addr.type=unix,addr.path=${qemuEscape(options.socket)}`;
  const queues = `num-queues=${options.queues ?? 1}`;
  const exp = `type=vhost-user-blk,id=e0,node-name=f0,${addr},writable=on,${queues}`;
  return ['--blockdev', file, '--export', exp];
}

/** Resolves once `path` exists; rejects if `child` exits first or `timeoutMs` passes. */
async function waitForSocket(child: ChildProcess, path: string, timeoutMs: number) {
  const exists = () => {
    if (existsSync(path)) return true;
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new StorageDaemonError(`qemu-storage-daemon exited (${child.exitCode})`);
    }
    return false;
  };
  await waitFor(exists, `the socket ${path}`, timeoutMs).catch((err: unknown) => {
    if (err instanceof StorageDaemonError) throw err;
    throw new StorageDaemonError(`no socket ${path} after ${timeoutMs} ms`);
  });
}

/** Sends SIGTERM, escalates to SIGKILL after 5 s, and resolves once the child is reaped. */
function stopChild(child: ChildProcess, closed: Promise<void>): Promise<void> {
  if (child.pid === undefined) return Promise.resolve();
  const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
  child.kill('SIGTERM');
  return closed.finally(() => clearTimeout(kill));
}

/**
 * Starts qemu-storage-daemon on `options.image` and resolves once its vhost-user socket
 * exists (qsd binds and listens in one step while setting up the export).
 */
export async function startStorageDaemon(options: StorageDaemonOptions): Promise<StorageDaemon> {
  const child = spawn('qemu-storage-daemon', storageDaemonArgs(options), {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  liveChildren.add(child);
  const closed = new Promise<void>((resolve) => {
    child.once('close', () => {
      liveChildren.delete(child);
      resolve();
    });
  });
  let stderr = '';
  child.stderr?.on('data', (b: Buffer) => {
    stderr += b.toString('utf8');
  });
  const spawned = new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  try {
    await spawned;
    await waitForSocket(child, options.socket, options.readyTimeoutMs ?? 10_000);
  } catch (e) {
    await stopChild(child, closed);
    const why = e instanceof Error ? e.message : String(e);
    throw new StorageDaemonError(`qemu-storage-daemon failed: ${why}\n${stderr}`);
  }
  return { socket: options.socket, pid: child.pid ?? -1, close: () => stopChild(child, closed) };
}
