/**
 * Proves the real-QEMU harness against qemu-storage-daemon, the reference vhost-user-blk
 * backend: data the host put in the image is read by the guest with O_DIRECT, data the
 * guest writes with O_DIRECT lands at the right offset of the image, with 1 and 2 queues.
 */

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ensureGuestImage,
  GuestNoExitMarkerError,
  GuestTimeoutError,
  newcArchive,
  parseDdThroughput,
  runGuest,
  startStorageDaemon,
} from '../support/qemu.js';
import { waitFor } from '../support/wait.js';

const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..');

const MiB = 1024 * 1024;
const IMAGE_SIZE = 64 * MiB;
const HOST_OFFSET = 4 * MiB; // pattern the host writes before boot
const GUEST_OFFSET = 32 * MiB; // pattern the guest writes
const PATTERN_SIZE = MiB;

let dir = '';

beforeAll(async () => {
  ensureGuestImage();
  dir = await mkdtemp(join(tmpdir(), 'vhost-rt-e2e-'));
});

afterAll(async () => {
  if (dir !== '') await rm(dir, { recursive: true, force: true });
});

/** The bytes `yes LINE | head -c SIZE` produces in the guest. */
function yesPattern(line: string, size: number): Buffer {
  const text = `${line}\n`.repeat(Math.ceil(size / (line.length + 1)));
  return Buffer.from(text.slice(0, size), 'ascii');
}

/** A sparse raw image holding `pattern` at HOST_OFFSET. */
async function makeImage(path: string, pattern: Buffer): Promise<void> {
  const file = await open(path, 'w');
  try {
    await file.truncate(IMAGE_SIZE);
    await file.write(pattern, 0, pattern.length, HOST_OFFSET);
  } finally {
    await file.close();
  }
}

/**
 * Reads the host pattern with O_DIRECT 4 KiB reads (two readers pinned to different vCPUs
 * when there are two, so both virtqueues carry requests), checks its md5 in the guest, then
 * writes the guest pattern with O_DIRECT 64 KiB writes.
 */
function guestScript(md5: string, queues: number, line: string): string {
  const half = PATTERN_SIZE / 4096 / 2;
  const skip = HOST_OFFSET / 4096;
  const read = (cpu: number, part: number) =>
    `taskset ${1 << cpu} dd if=/dev/vda of=/tmp/a${part} bs=4096 skip=${skip + part * half} count=${half} iflag=direct 2>/dev/null`;
  const cpuOf = (part: number) => (queues > 1 ? part : 0);
  return `set -e
wait_dev /dev/vda
echo "SIZE=$(blockdev --getsize64 /dev/vda) MQ=$(ls /sys/block/vda/mq | wc -l)"
${read(cpuOf(0), 0)} &
${read(cpuOf(1), 1)} &
wait
cat /tmp/a0 /tmp/a1 > /tmp/a
sum=$(md5sum < /tmp/a | cut -d' ' -f1)
echo "READ_MD5=$sum"
[ "$sum" = ${md5} ]
yes '${line}' | head -c ${PATTERN_SIZE} > /tmp/b
dd if=/tmp/b of=/dev/vda bs=65536 seek=${GUEST_OFFSET / 65536} oflag=direct conv=fsync 2>/dev/null
echo GUEST_WROTE
`;
}

async function checkImage(path: string, hostPattern: Buffer, guestPattern: Buffer) {
  const image = await readFile(path);
  expect(image.length).toBe(IMAGE_SIZE);
  const at = (off: number) => image.subarray(off, off + PATTERN_SIZE);
  expect(at(GUEST_OFFSET).equals(guestPattern)).toBe(true);
  expect(at(HOST_OFFSET).equals(hostPattern)).toBe(true);
  // Nothing spilled past the guest's write.
  expect(at(GUEST_OFFSET + PATTERN_SIZE).equals(Buffer.alloc(PATTERN_SIZE))).toBe(true);
}

describe('guest on qemu-storage-daemon', () => {
  for (const queues of [1, 2]) {
    it(`reads and writes with O_DIRECT over ${queues} queue(s)`, async () => {
      const image = join(dir, `disk-q${queues}.raw`);
      const socket = join(dir, `qsd-q${queues}.sock`);
      const hostPattern = randomBytes(PATTERN_SIZE);
      const md5 = createHash('md5').update(hostPattern).digest('hex');
      const line = `vhost-rt guest pattern q=${queues}`;
      await makeImage(image, hostPattern);
      const qsd = await startStorageDaemon({ image, socket, queues });
      let result: Awaited<ReturnType<typeof runGuest>>;
      try {
        const script = guestScript(md5, queues, line);
        result = await runGuest({ script, blk: [{ socket, queues }], cpus: queues });
      } finally {
        await qsd.close();
      }
      console.info(
        `qsd q=${queues}: boot ${result.bootMs.toFixed(0)} ms, total ${result.durationMs.toFixed(0)} ms`,
      );
      expect(result.output).toContain(`SIZE=${IMAGE_SIZE} MQ=${queues}`);
      expect(result.output).toContain(`READ_MD5=${md5}`);
      expect(result.output).toContain('GUEST_WROTE');
      expect(result.exitCode).toBe(0);
      await checkImage(image, hostPattern, yesPattern(line, PATTERN_SIZE));
    }, 180_000);
  }
});

describe('harness', () => {
  it('returns the script exit code and output', async () => {
    const r = await runGuest({ script: 'echo out-$((6 * 7))\nexit 7\n' });
    expect(r.exitCode).toBe(7);
    expect(r.output).toContain('out-42');
    expect(r.bootMs).toBeGreaterThan(0);
  }, 120_000);

  it('kills QEMU and rejects on timeout, with the output tail', async () => {
    // Long enough to boot even when parallel test files share the two cores.
    const run = runGuest({ script: 'echo sleeping-now\nsleep 600\n', timeoutMs: 20_000 });
    await expect(run).rejects.toBeInstanceOf(GuestTimeoutError);
    await expect(run).rejects.toThrow(/sleeping-now/);
  }, 120_000);

  it('kills QEMU when its abort signal fires, and rejects', async () => {
    const stop = new AbortController();
    const run = runGuest({ script: 'sleep 600\n', timeoutMs: 100_000, signal: stop.signal });
    stop.abort();
    await expect(run).rejects.toBeInstanceOf(GuestNoExitMarkerError);
    await expect(run).rejects.toThrow(/QEMU exited \(SIGKILL\)/);
  }, 60_000);

  it('QEMU dies with the process that started it, even one killed with SIGKILL', async () => {
    // A process that starts QEMU as the harness does, prints its pid, and is then killed.
    const support = pathToFileURL(join(ROOT, 'dist', 'test', 'support', 'qemu.js')).href;
    const starter = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const { qemuCommand } = await import(${JSON.stringify(support)});
         const { spawn } = await import('node:child_process');
         const q = spawn(...qemuCommand(['-accel', 'tcg', '-display', 'none', '-nodefaults', '-S']), { stdio: 'ignore' });
         console.log(q.pid);
         setInterval(() => {}, 1000);`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    starter.stdout.on('data', (b: Buffer) => {
      out += b.toString();
    });
    const pid = await waitFor(() => Number(/^(\d+)\n/.exec(out)?.[1] ?? 0), 'the QEMU pid');
    const alive = () => {
      try {
        // A zombie (state Z) has ended: nobody here reaps a reparented child.
        return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
      } catch {
        return false;
      }
    };
    const cmdline = () => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'latin1');
      } catch {
        return '';
      }
    };
    await waitFor(() => cmdline().startsWith('qemu-system'), 'setpriv to exec QEMU');
    expect(alive()).toBe(true);
    starter.kill('SIGKILL');
    await waitFor(() => !alive(), `QEMU (pid ${pid}) ending after its starter was killed`, 10_000);
  }, 60_000);

  it('rejects when QEMU exits without the marker, with its stderr', async () => {
    const blk = [{ socket: join(dir, 'nobody-listens.sock') }];
    const run = runGuest({ script: 'exit 0\n', blk });
    await expect(run).rejects.toBeInstanceOf(GuestNoExitMarkerError);
    await expect(run).rejects.toThrow(/nobody-listens\.sock/);
  });

  it('times dd in the guest and parses the rate', async () => {
    const script = 'timed_dd zero 8388608 if=/dev/zero of=/dev/null bs=1M count=8\n';
    const r = await runGuest({ script });
    const [dd] = parseDdThroughput(r.output);
    expect(dd).toMatchObject({ label: 'zero', bytes: 8 * MiB, rc: 0 });
    expect(dd.seconds).toBeGreaterThan(0);
    expect(dd.mbPerSec).toBeCloseTo(dd.bytes / 1e6 / dd.seconds);
  }, 120_000);

  it('parses GNU-style dd summaries', () => {
    const out = '67108864 bytes (67 MB, 64 MiB) copied, 0.5 s, 134 MB/s\n';
    expect(parseDdThroughput(out)).toEqual([
      { label: 'dd#0', bytes: 67108864, seconds: 0.5, mbPerSec: 67108864 / 1e6 / 0.5, rc: 0 },
    ]);
  });

  it('writes newc archives with 4-byte alignment and a trailer', () => {
    const a = newcArchive([{ name: 'run.sh', mode: 0o100755, data: Buffer.from('abc') }]);
    expect(a.length % 4).toBe(0);
    expect(a.subarray(0, 6).toString()).toBe('070701');
    expect(a.includes('TRAILER!!!')).toBe(true);
    // header 110 + "run.sh\0" 7 = 117, padded to 120; data at 120.
    expect(a.subarray(120, 123).toString()).toBe('abc');
  });
});
