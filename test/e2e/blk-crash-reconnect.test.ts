/**
 * Crash-safe reconnect with zero lost I/O (issue 9), end to end: a QEMU TCG guest
 * whose disk is served by `vhost-rt blk` over `-chardev socket,...,reconnect=1`
 * runs scripts/guest/blkcrash.c (built static here, put in as /bin/blkcrash), which
 * writes a numbered, checksummed sequence of blocks with O_DIRECT through Linux AIO
 * at queue depth 16: every data block is overwritten generation after generation,
 * read back before each overwrite (a replayed earlier write that lands on a later
 * one fails that read-back), and every acknowledged write is printed.
 *
 * Meanwhile the test SIGKILLs the daemon at random points of the guest's progress
 * (read from the image: each block names its generation), at least 5 times, and
 * starts a new daemon on the same socket each time; QEMU reconnects and hands the
 * inflight region over (SET_INFLIGHT_FD), and the new daemon resubmits what its
 * predecessor had in flight. Then the guest issues back-to-back FLUSHes, then
 * DISCARDs, and the daemon is killed until one restart resubmits a request of that
 * phase (the only requests then in flight are flushes, or discards).
 *
 * Asserted: no I/O error in the guest, every write acknowledged exactly once, every
 * read-back held exactly the last acknowledged generation (none older: nothing lost,
 * nothing replayed over a later write), and the image holds the last generation of
 * every block with the right content.
 */
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  mkdtempSync,
  openSync,
  readSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Daemon, daemonStats, startDaemon } from '../support/daemon.js';
import { ensureGuestImage, runGuest } from '../support/qemu.js';
import { waitFor } from '../support/wait.js';

const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
const BS = 4096;
const BLOCKS = 64;
const GENS = 80;
const DEPTH = 16;
/** Block indexes of the image, as blkcrash.c lays them out. */
const CONTROL = BLOCKS;
const MARKER = BLOCKS + 1;
const MAGIC = 0x56525449;
/** Kills while the guest writes (the issue asks for at least 5)... */
const WRITE_KILLS = 6;
/** ...and more, until this many restarts found requests in flight (or MAX_WRITE_KILLS). */
const MIN_RESUBMITTING = 2;
const MAX_WRITE_KILLS = 48;
/**
 * Restarts tried per FLUSH / DISCARD phase until one resubmits a request of that phase. A
 * kill finds one in flight by chance: on a loaded machine the TCG guest, not the disk, takes
 * most of each request's time, and 8 attempts were seen to miss (1 run in 12 with the CPUs busy).
 */
const PHASE_ATTEMPTS = 24;

let dir: string;
let program: string;
let image: string;
let socket: string;
let daemon: Daemon | null = null;

beforeAll(() => {
  ensureGuestImage();
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-crash-'));
  program = join(dir, 'blkcrash');
  execFileSync('gcc', [
    '-static',
    '-O2',
    '-o',
    program,
    join(ROOT, 'scripts', 'guest', 'blkcrash.c'),
  ]);
  image = join(dir, 'disk.img');
  socket = join(dir, 'blk.sock');
  writeFileSync(image, Buffer.alloc(8 * 1024 * 1024));
});

afterAll(async () => {
  await daemon?.stop('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

function start(): Promise<Daemon> {
  return startDaemon(['blk', '--socket-path', socket, '--image', image, '--queues', '1']);
}

/** SIGKILL, reaped; then a new daemon on the same socket. Returns the new one. */
async function crashAndRestart(): Promise<Daemon> {
  await daemon?.stop('SIGKILL');
  daemon = await start();
  return daemon;
}

function fnv1a(b: Uint8Array, n: number): number {
  let h = 2166136261;
  for (let i = 0; i < n; i++) h = Math.imul(h ^ b[i], 16777619) >>> 0;
  return h;
}

function readBlock(fd: number, block: number): Buffer {
  const b = Buffer.alloc(BS);
  readSync(fd, b, 0, BS, block * BS);
  return b;
}

/** The generation block `block` holds: 0 never written, -1 corrupt (header or checksum). */
function generationOf(b: Buffer, block: number): number {
  if (b.every((x) => x === 0)) return 0;
  const ok =
    b.readUInt32LE(0) === MAGIC &&
    b.readUInt32LE(4) === block &&
    b.readUInt32LE(BS - 4) === fnv1a(b, BS - 4);
  return ok ? b.readUInt32LE(8) : -1;
}

/** Writes the guest has completed so far, as the image shows: the sum of the generations. */
function progress(): number {
  const fd = openSync(image, 'r');
  try {
    let sum = 0;
    for (let b = 0; b < BLOCKS; b++) sum += Math.max(0, generationOf(readBlock(fd, b), b));
    return sum;
  } finally {
    closeSync(fd);
  }
}

function blockText(block: number): string {
  const fd = openSync(image, 'r');
  try {
    const b = readBlock(fd, block);
    return b.subarray(0, b.indexOf(0) < 0 ? BS : b.indexOf(0)).toString('latin1');
  } finally {
    closeSync(fd);
  }
}

function writeControl(text: string): void {
  const fd = openSync(image, 'r+');
  try {
    const b = Buffer.alloc(BS);
    b.write(text, 'latin1');
    writeSync(fd, b, 0, BS, CONTROL * BS);
  } finally {
    closeSync(fd);
  }
}

/** Requests the daemon has popped, from its SIGUSR1 stats line. */
async function served(d: Daemon): Promise<number> {
  const line = await daemonStats(d);
  return Number(/\brequests=(\d+)/.exec(line)?.[1] ?? 0);
}

const RESUBMIT = /resubmitting (\d+) request\(s\)/;

/** How many requests a daemon resubmitted when QEMU reconnected to it (0: none, or not yet started). */
function resubmitted(d: Daemon): number {
  return Number(RESUBMIT.exec(d.log())?.[1] ?? 0);
}

/**
 * While the guest is in phase `phase` (its marker block says so), kills and
 * restarts the daemon, each time once the new one has served requests again,
 * until a restart resubmits something: the request then in flight was one of
 * this phase. Returns the attempts it took.
 */
async function killDuring(phase: 'F' | 'D'): Promise<number> {
  await waitFor(
    () => blockText(MARKER) === `PHASE ${phase}`,
    `the guest's PHASE ${phase} marker`,
    60_000,
  );
  const restarted: Daemon[] = [];
  for (let attempt = 0; attempt <= PHASE_ATTEMPTS; attempt++) {
    const d = daemon as Daemon;
    // The device runs (QEMU reconnected, the guest's requests flow) before it is judged or
    // killed; by then a restarted daemon has logged what it resubmitted at ring start.
    const before = await served(d);
    await waitFor(
      async () => (await served(d)) >= before + 4,
      // The daemon's own account of the reconnect tells a stuck QEMU from a stuck daemon.
      () =>
        `requests on the daemon in phase ${phase} (attempt ${attempt}, marker ` +
        `${JSON.stringify(blockText(MARKER))}); its log, less the stats lines this asked ` +
        `for, ends:\n${d
          .log()
          .split('\n')
          .filter((l) => !l.includes(' stats: '))
          .slice(-30)
          .join('\n')}`,
      30_000,
    );
    if (restarted.includes(d) && resubmitted(d) > 0) return restarted.length;
    if (attempt === PHASE_ATTEMPTS) break;
    restarted.push(await crashAndRestart());
  }
  throw new Error(
    `no restart in phase ${phase} found a request in flight in ${PHASE_ATTEMPTS} attempts`,
  );
}

describe('vhost-rt blk: SIGKILL and restart under a running guest (INFLIGHT_SHMFD, reconnect=1)', () => {
  it('loses and repeats no write across 6+ kills, and survives kills during FLUSH and DISCARD', async () => {
    daemon = await start();
    // Ends the guest when the test fails before it finished: it would otherwise go on
    // reconnecting to a dead socket until its timeout, or past it if the test process is killed.
    const stopGuest = new AbortController();
    const guest = runGuest({
      script: `wait_dev /dev/vda 20 || exit 9\n/bin/blkcrash /dev/vda ${BLOCKS} ${GENS} ${DEPTH}\n`,
      extraArgs: [
        '-chardev',
        `socket,id=rc0,path=${socket},reconnect=1`,
        '-device',
        'vhost-user-blk-pci,chardev=rc0,num-queues=1',
      ],
      files: [{ source: program, path: '/bin/blkcrash' }],
      timeoutMs: 200_000,
      signal: stopGuest.signal,
    });
    try {
      const failed = guest.then(
        () => 'the guest finished',
        (err: Error) => `the guest failed: ${err.message}`,
      );

      // Kill points: random gaps of 2-6 % of the writes (a fresh seed each run, logged).
      const seed = Date.now() >>> 0;
      let x = seed;
      const random = () => {
        x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
        return x / 2 ** 32;
      };
      const total = BLOCKS * GENS;
      const writeKills: { at: number; resubmitted: number }[] = [];
      const resubmitting = () => writeKills.filter((k) => k.resubmitted > 0).length;
      let target = Math.floor(total * (0.02 + 0.04 * random()));
      while (
        writeKills.length < MAX_WRITE_KILLS &&
        target < total * 0.92 &&
        (writeKills.length < WRITE_KILLS || resubmitting() < MIN_RESUBMITTING)
      ) {
        const at = await waitFor(
          async () => {
            const p = progress();
            if (p >= target) return p;
            const g = await Promise.race([failed, Promise.resolve('')]);
            if (g !== '') throw new Error(`${g} before write ${target} (seed ${seed})`);
            return 0;
          },
          () => `the guest's write ${target} of ${total} (seed ${seed})`,
          60_000,
        );
        const next = await crashAndRestart();
        await waitFor(() => progress() > at, 'the guest writing again after the restart', 60_000);
        writeKills.push({ at, resubmitted: resubmitted(next) });
        // Past the first kills, closer ones while too few restarts have found writes in flight,
        // so that enough kills fit in the writes left (seen: 1 in 20 on a loaded machine).
        const gap =
          writeKills.length < WRITE_KILLS ? 0.02 + 0.04 * random() : 0.004 + 0.008 * random();
        target = at + Math.floor(total * gap);
      }
      const flushAttempts = await killDuring('F');
      writeControl('STOP F');
      const discardAttempts = await killDuring('D');
      writeControl('STOP D');

      const result = await guest;
      const out = result.output;
      const summary = `seed ${seed}, write kills ${JSON.stringify(writeKills)}, flush attempts ${flushAttempts}, discard attempts ${discardAttempts}`;
      console.log(`blk-crash-reconnect: ${summary}`);
      expect(result.exitCode, `${summary}\n${out.slice(-3000)}`).toBe(0);
      // No I/O error, no wrong read-back: nothing lost, nothing replayed over a later write.
      expect(out.match(/^(E|BAD) .*$/gm) ?? []).toEqual([]);
      expect(out).toMatch(/PHASE W DONE failures=0/);
      expect(out).toMatch(/PHASE F DONE flushes=\d+ failures=0/);
      expect(out).toMatch(/PHASE D DONE discards=\d+ failures=0/);
      expect(out).toMatch(/VERIFY OK/);
      // Every write acknowledged exactly once, in generation order per block.
      const acks = [...out.matchAll(/^A (\d+) (\d+)$/gm)].map((m) => [Number(m[1]), Number(m[2])]);
      expect(acks).toHaveLength(total);
      const last = new Array<number>(BLOCKS).fill(0);
      for (const [b, g] of acks) {
        expect(g, `block ${b}`).toBe(last[b] + 1);
        last[b] = g;
      }
      // The image holds the last acknowledged generation of every block, intact.
      const fd = openSync(image, 'r');
      try {
        for (let b = 0; b < BLOCKS; b++)
          expect(generationOf(readBlock(fd, b), b), `block ${b}`).toBe(GENS);
      } finally {
        closeSync(fd);
      }
      expect(writeKills.length).toBeGreaterThanOrEqual(WRITE_KILLS);
      expect(resubmitting(), summary).toBeGreaterThanOrEqual(MIN_RESUBMITTING);
    } finally {
      stopGuest.abort();
      // A guest ended here failed the test already; its console and QEMU's stderr say why.
      await guest.catch((err: Error) => console.log(`blk-crash-reconnect: guest: ${err.message}`));
    }
  }, 260_000);
});
