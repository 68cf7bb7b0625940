/**
 * Back ends the benchmarks measure, each a child process with a pid whose CPU time is charged
 * per I/O: the vhost-rt daemon (compiled CLI) and qemu-storage-daemon (one or more exports).
 * Also: the engines the installed vhost-rt offers, and the benchmark image.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { VhostRtError } from '../../src/errors.js';

/** A back end failed to start or to stop. */
export class BackendError extends VhostRtError {}

/** A running back-end process. */
export interface Backend {
  /** The label used in tables. */
  label: string;
  pid: number;
  /** Sockets, one per exported image, in the order given. */
  sockets: string[];
  /** SIGTERM (SIGKILL after 5 s) and wait until reaped; returns everything it logged. */
  stop(): Promise<string>;
}

/** The repository root (dist/bench/loadgen → ../../..). */
export const REPO_ROOT = join(import.meta.dirname, '..', '..', '..');
/** The compiled vhost-rt CLI. */
export const VHOST_RT_CLI = join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');

/** Engine names vhost-rt may list after `--aio` in `vhost-rt blk --help`. */
export const KNOWN_ENGINES = ['linux-aio', 'io_uring', 'threads', 'sync'] as const;

/** The engines `vhost-rt blk --help` lists on its `--aio` line(s), in {@link KNOWN_ENGINES} order. */
export function parseEngines(help: string): string[] {
  const start = help.indexOf('--aio');
  if (start < 0) return [];
  // The --aio entry runs until the next option line.
  const rest = help.slice(start + 5);
  const end = rest.search(/\n\s*--/);
  const entry = end < 0 ? rest : rest.slice(0, end);
  return KNOWN_ENGINES.filter((e) => new RegExp(`(^|[^\\w-])${e}([^\\w-]|$)`).test(entry));
}

/** Engines the compiled vhost-rt offers now. */
export function availableEngines(): string[] {
  const r = spawnSync(process.execPath, [VHOST_RT_CLI, 'blk', '--help'], { encoding: 'utf8' });
  return parseEngines(`${r.stdout}${r.stderr}`);
}

function watchExit(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('close', () => resolve());
  });
}

function stopper(child: ChildProcess, log: () => string): () => Promise<string> {
  const closed = watchExit(child);
  return async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
      child.kill('SIGTERM');
      await closed;
      clearTimeout(kill);
    }
    return log();
  };
}

/** Waits until every socket exists (qsd) or the process logged "ready" (vhost-rt). */
async function waitReady(
  child: ChildProcess,
  ready: () => boolean,
  what: string,
  log: () => string,
): Promise<void> {
  const deadline = performance.now() + 20_000;
  while (!ready()) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new BackendError('BENCH_BACKEND_EXIT', `${what} exited before ready:\n${log()}`);
    if (performance.now() > deadline)
      throw new BackendError('BENCH_BACKEND_TIMEOUT', `${what} not ready in 20 s:\n${log()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function spawnLogged(cmd: string, args: string[], prefix: string[] = []) {
  const child = spawn(
    prefix[0] ?? cmd,
    [...prefix.slice(1), ...(prefix.length ? [cmd] : []), ...args],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let text = '';
  child.stdout?.on('data', (d: Buffer) => {
    text += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    text += d.toString();
  });
  return { child, log: () => text };
}

/** Options of {@link startVhostRt}. */
export interface VhostRtSpec {
  label: string;
  /** `--device` specs (socket-path=...,image=...,...), one per device. */
  devices: string[];
  /** Flags for every device and the process (e.g. --aio threads, --single-thread). */
  flags?: string[];
  /** Extra node flags (e.g. --cpu-prof --cpu-prof-dir=DIR). */
  nodeFlags?: string[];
  /** The CLI to run (another build's dist/src/cli/main.js); default this checkout's. */
  cli?: string;
}

/** Socket path of a `socket-path=...` device spec. */
function specSocket(spec: string): string {
  const m = /(?:^|,)socket-path=([^,]+)/.exec(spec);
  if (!m) throw new BackendError('BENCH_BAD_SPEC', `no socket-path in ${spec}`);
  return m[1];
}

/** Starts `vhost-rt blk --device ... FLAGS` and resolves when it printed "ready". */
export async function startVhostRt(spec: VhostRtSpec): Promise<Backend> {
  const args = [...(spec.nodeFlags ?? []), spec.cli ?? VHOST_RT_CLI, 'blk'];
  for (const d of spec.devices) args.push('--device', d);
  args.push(...(spec.flags ?? []));
  const { child, log } = spawnLogged(process.execPath, args);
  const stop = stopper(child, log);
  try {
    await waitReady(child, () => /\bready\b/.test(log()), 'vhost-rt', log);
  } catch (err) {
    await stop();
    throw err;
  }
  return { label: spec.label, pid: child.pid ?? -1, sockets: spec.devices.map(specSocket), stop };
}

/** One exported image of qemu-storage-daemon. */
export interface QsdExport {
  image: string;
  socket: string;
}

/** qemu-storage-daemon arguments: one file node (O_DIRECT, `aio`) and one export per image. */
export function qsdArgs(exports: QsdExport[], aio: 'native' | 'io_uring'): string[] {
  const esc = (v: string) => v.replaceAll(',', ',,');
  const args: string[] = [];
  exports.forEach((e, i) => {
    // QEMU opens block devices (e.g. a loop device) only through host_device.
    const driver = isBlockDevice(e.image) ? 'host_device' : 'file';
    const file = `driver=${driver},node-name=f${i},filename=${esc(e.image)},cache.direct=on,aio=${aio}`;
    const addr = `addr.type=unix,addr.path=${esc(e.socket)}`;
    args.push('--blockdev', file);
    args.push('--export', `type=vhost-user-blk,id=e${i},node-name=f${i},${addr},writable=on`);
  });
  return args;
}

function isBlockDevice(path: string): boolean {
  return existsSync(path) && statSync(path).isBlockDevice();
}

/** An image file on a RAM-backed file system (ext4 on a loop device over /dev/shm). */
export interface RamDisk {
  /** The image file, `bytes` long and fully written. */
  path: string;
  /** Unmounts, detaches the loop device and frees the RAM. */
  close(): void;
}

/**
 * Makes a `bytes`-byte image whose I/O never touches the host's disk: ext4 (so O_DIRECT and
 * a regular file work as on disk) on a loop device over a file in /dev/shm. Throws when
 * losetup or mount is not permitted.
 */
export function mountRamDisk(bytes: number, mountPoint: string): RamDisk {
  const backing = `/dev/shm/vhost-rt-bench-${process.pid}.img`;
  const undo: (() => void)[] = [];
  const run = (cmd: string, args: string[]) => {
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    if (r.status !== 0)
      throw new BackendError('BENCH_RAMDISK', `${cmd} ${args.join(' ')}: ${r.stderr.trim()}`);
    return r.stdout.trim();
  };
  const close = () => {
    for (const u of undo.splice(0).reverse()) u();
  };
  try {
    run('truncate', ['-s', String(bytes + 128 * 2 ** 20), backing]);
    undo.push(() => spawnSync('rm', ['-f', backing]));
    const loop = run('losetup', ['--find', '--show', backing]);
    undo.push(() => spawnSync('losetup', ['-d', loop]));
    run('mkfs.ext4', ['-q', '-F', loop]);
    run('mkdir', ['-p', mountPoint]);
    run('mount', [loop, mountPoint]);
    undo.push(() => spawnSync('umount', [mountPoint]));
    const path = `${mountPoint}/image.raw`;
    run('dd', ['if=/dev/zero', `of=${path}`, 'bs=1M', `count=${bytes / 2 ** 20}`, 'status=none']);
    return { path, close };
  } catch (err) {
    close();
    throw err;
  }
}

/** Starts qemu-storage-daemon exporting `exports` and resolves when every socket exists. */
export async function startQsd(
  label: string,
  exports: QsdExport[],
  aio: 'native' | 'io_uring',
): Promise<Backend> {
  for (const e of exports) await rm(e.socket, { force: true });
  const { child, log } = spawnLogged('qemu-storage-daemon', qsdArgs(exports, aio));
  const stop = stopper(child, log);
  const ready = () => exports.every((e) => existsSync(e.socket));
  try {
    await waitReady(child, ready, 'qemu-storage-daemon', log);
  } catch (err) {
    await stop();
    throw err;
  }
  return { label, pid: child.pid ?? -1, sockets: exports.map((e) => e.socket), stop };
}

/**
 * Makes `path` a fully written file of `bytes` (random data, so nothing is sparse and reads
 * hit real blocks); a file of the right size is reused. Written with O_DIRECT in `writeBytes`
 * writes (default 1 MiB; a divisor of `bytes`). The size of those first writes matters on
 * this machine's disk: it later takes 4k random writes into a file first written in 4 KiB
 * writes at 1.6-1.9x the rate of one written in 1 MiB writes (bench/file-write-spread.sh), so
 * a bench that compares against another file made in 4 KiB writes (a prefilled redirect
 * overlay) makes its image the same way (bench/results/backup-redirect.md §5; a rerun on
 * another region of the disk did not show the buffered/direct difference).
 */
export function ensureImage(path: string, bytes: number, writeBytes = 1024 * 1024): void {
  if (existsSync(path) && statSync(path).size === bytes) return;
  const count = Math.ceil(bytes / writeBytes);
  const r = spawnSync(
    'dd',
    [
      'if=/dev/urandom',
      `of=${path}`,
      `bs=${writeBytes}`,
      `count=${count}`,
      'iflag=fullblock',
      'oflag=direct',
      'status=none',
    ],
    { stdio: 'inherit' },
  );
  if (r.status !== 0) throw new BackendError('BENCH_IMAGE', `cannot write ${path}`);
}
