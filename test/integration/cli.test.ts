/**
 * The `vhost-rt` command as a user meets it: help, one-line errors for bad
 * flags and paths, RT options applied to (or refused for) the worker thread,
 * and a clean shutdown on SIGINT/SIGTERM that removes the socket.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkDriver, BlkStatus } from '../frontend/index.js';
import { CLI, runCli, startDaemon } from '../support/daemon.js';

let dir: string;
let image: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-cli-'));
  image = join(dir, 'disk.img');
  writeFileSync(image, Buffer.alloc(16 * 1024 * 1024));
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** The last line the CLI printed on stderr, which must be the whole error. */
function errorLine(stderr: string): string {
  const lines = stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  return lines[0];
}

describe('vhost-rt --help', () => {
  it('documents every blk flag', async () => {
    const { code, stdout } = await runCli(['--help']);
    expect(code).toBe(0);
    for (const flag of [
      '--socket-path',
      '--image',
      '--readonly',
      '--queues',
      '--queue-size',
      '--aio',
      '--no-direct',
      '--serial',
      '--rt-policy',
      '--rt-priority',
      '--cpus',
      '--mlock',
      '--device',
      '--single-thread',
    ]) {
      expect(stdout, flag).toContain(flag);
    }
    const blk = await runCli(['blk', '--help']);
    expect(blk.code).toBe(0);
    expect(blk.stdout).toContain('vhost-user-blk-pci');
  });
});

describe('vhost-rt blk refuses bad input with one line and a non-zero exit', () => {
  const cases: [string, string[], RegExp][] = [
    // One prefix, the subcommand's: never "vhost-rt: vhost-rt blk: ...".
    ['an unknown flag', ['blk', '--bogus'], /^vhost-rt blk: Unknown option '--bogus' \(see/],
    [
      'a console port count of 0',
      ['console', '--socket-path', 'S', '--ports', '0'],
      /^vhost-rt console: --ports 0: must be 1\.\.31$/,
    ],
    [
      'a console port count too large',
      ['console', '--socket-path', 'S', '--ports', '32'],
      /--ports 32: must be 1\.\.31/,
    ],
    ['an unknown command', ['frobnicate'], /unknown command 'frobnicate'/],
    ['a missing --image', ['blk', '--socket-path', '/tmp/x.sock'], /--image is required/],
    [
      'a missing image file',
      ['blk', '--socket-path', 'S', '--image', '/nonexistent.img'],
      /--image \/nonexistent\.img: cannot open \(ENOENT\)/,
    ],
    [
      'a bad queue count',
      ['blk', '--socket-path', 'S', '--image', 'I', '--queues', 'two'],
      /--queues two: not a whole number/,
    ],
    [
      'a queue size that is not a power of two',
      ['blk', '--socket-path', 'S', '--image', 'IMG', '--queue-size', '100'],
      /--queue-size 100/,
    ],
    [
      'an unknown engine',
      ['blk', '--socket-path', 'S', '--image', 'I', '--aio', 'magic'],
      /--aio magic: unknown engine/,
    ],
    [
      'an unknown policy',
      ['blk', '--socket-path', 'S', '--image', 'I', '--rt-policy', 'fast'],
      /--rt-policy fast/,
    ],
    [
      'a priority out of range',
      ['blk', '--socket-path', 'S', '--image', 'I', '--rt-policy', 'fifo', '--rt-priority', '120'],
      /--rt-priority 120/,
    ],
    [
      'a CPU that does not exist',
      ['blk', '--socket-path', 'S', '--image', 'I', '--cpus', '999'],
      /--cpus/,
    ],
  ];
  for (const [what, args, message] of cases) {
    it(what, async () => {
      const resolved = args.map((a) => (a === 'IMG' ? image : a));
      const { code, stderr } = await runCli(resolved);
      expect(code).toBe(2);
      expect(errorLine(stderr)).toMatch(message);
    });
  }

  it('an existing file at the socket path that is not a socket', async () => {
    const notSocket = join(dir, 'plain-file');
    writeFileSync(notSocket, 'keep me');
    const { code, stderr } = await runCli(['blk', '--socket-path', notSocket, '--image', image]);
    expect(code).toBe(2);
    expect(errorLine(stderr)).toMatch(/exists and is not a socket/);
    expect(existsSync(notSocket)).toBe(true);
  });

  it('an RT policy the kernel refuses (no CAP_SYS_NICE), naming the option', () => {
    const socket = join(dir, 'refused.sock');
    const r = spawnSync(
      'setpriv',
      [
        '--bounding-set',
        '-sys_nice',
        '--inh-caps',
        '-sys_nice',
        process.execPath,
        CLI,
        'blk',
        '--socket-path',
        socket,
        '--image',
        image,
        '--rt-policy',
        'fifo',
        '--rt-priority',
        '10',
      ],
      { encoding: 'utf8', timeout: 20_000 },
    );
    expect(r.status).toBe(2);
    expect(errorLine(r.stderr)).toMatch(/--rt-policy fifo: .*EPERM/);
    expect(existsSync(socket)).toBe(false);
  });
});

describe('vhost-rt blk lifecycle', () => {
  it('applies RT options to the worker thread, not the main thread', async () => {
    const socket = join(dir, 'rt.sock');
    const daemon = await startDaemon([
      'blk',
      '--socket-path',
      socket,
      '--image',
      image,
      '--rt-policy',
      'fifo',
      '--rt-priority',
      '10',
      '--cpus',
      '0',
      '--mlock',
    ]);
    const ready = /worker tid (\d+) policy (\S+) priority (\d+) cpus (\S+)/.exec(daemon.log());
    expect(ready?.slice(2)).toEqual(['fifo', '10', '0']);
    const mainPolicy = spawnSync('chrt', ['-p', String(daemon.proc.pid)], {
      encoding: 'utf8',
    }).stdout;
    expect(mainPolicy).toMatch(/SCHED_OTHER/);
    const workerPolicy = spawnSync('chrt', ['-p', ready![1]], { encoding: 'utf8' }).stdout;
    expect(workerPolicy).toMatch(/SCHED_FIFO/);
    // --mlock pins the guest RAM a front end hands over (not the JS heap: V8 cannot run locked).
    const lockedKb = () =>
      Number(/VmLck:\s+(\d+)/.exec(readFileSync(`/proc/${daemon.proc.pid}/status`, 'utf8'))?.[1]);
    expect(lockedKb()).toBe(0);
    const driver = await BlkDriver.create({ socketPath: socket });
    expect((await driver.read(0, 4096)).status).toBe(BlkStatus.OK);
    expect(lockedKb()).toBeGreaterThanOrEqual(32 * 1024);
    await driver.close();
    const { code } = await daemon.stop('SIGTERM');
    expect(code).toBe(0);
  });

  it('serves a block device with its real size (a loop device)', async () => {
    const backing = join(dir, 'loop-backing.img');
    writeFileSync(backing, Buffer.alloc(8 * 1024 * 1024, 0x42));
    const loop = spawnSync('losetup', ['--find', '--show', backing], { encoding: 'utf8' });
    expect(loop.status, loop.stderr).toBe(0);
    const dev = loop.stdout.trim();
    const socket = join(dir, 'loop.sock');
    try {
      const daemon = await startDaemon(['blk', '--socket-path', socket, '--image', dev]);
      const driver = await BlkDriver.create({ socketPath: socket });
      try {
        expect(driver.config.capacity).toBe(BigInt((8 * 1024 * 1024) / 512));
        const back = await driver.read(100, 4096);
        expect(back.status).toBe(BlkStatus.OK);
        expect(back.data?.every((b) => b === 0x42)).toBe(true);
      } finally {
        await driver.close();
        await daemon.stop();
      }
    } finally {
      spawnSync('losetup', ['-d', dev]);
    }
  });

  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    it(`completes, prints its counters and removes its socket on ${signal}`, async () => {
      const socket = join(dir, `${signal}.sock`);
      const daemon = await startDaemon(['blk', '--socket-path', socket, '--image', image]);
      expect(existsSync(socket)).toBe(true);
      const driver = await BlkDriver.create({ socketPath: socket });
      const writes = Array.from({ length: 16 }, (_, i) => ({
        type: 'write' as const,
        sector: i * 8,
        data: new Uint8Array(4096).fill(i),
      }));
      expect((await driver.submitBatch(writes)).every((r) => r.status === BlkStatus.OK)).toBe(true);
      const { code, log } = await daemon.stop(signal);
      await driver.close().catch(() => undefined);
      expect(code).toBe(0);
      expect(existsSync(socket)).toBe(false);
      expect(log).toMatch(/stats: requests=16 /);
      expect(log).toMatch(/bytesWritten=65536/);
    });
  }
});
