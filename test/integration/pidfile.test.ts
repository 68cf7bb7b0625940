/**
 * `--pidfile`: written once the daemon is ready, removed on exit, refused
 * while it names a running process, replaced when stale.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Daemon, runCli, startDaemon } from '../support/daemon.js';

let dir: string;
const daemons: Daemon[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-pidfile-'));
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  rmSync(dir, { recursive: true, force: true });
});

/** The flags of a blk daemon named `name` (its own image and socket). */
function blkArgs(name: string, pidfile: string): string[] {
  const image = join(dir, `${name}.img`);
  writeFileSync(image, Buffer.alloc(1024 * 1024));
  return [
    'blk',
    '--socket-path',
    join(dir, `${name}.sock`),
    '--image',
    image,
    '--pidfile',
    pidfile,
  ];
}

describe('--pidfile', () => {
  it('is written when ready, refuses a second daemon, and is removed on exit', async () => {
    const pidfile = join(dir, 'blk.pid');
    const daemon = await startDaemon(blkArgs('a', pidfile));
    daemons.push(daemon);
    expect(readFileSync(pidfile, 'utf8')).toBe(`${daemon.proc.pid}\n`);

    const second = await runCli(blkArgs('b', pidfile));
    expect(second.code).not.toBe(0);
    const lines = second.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(`--pidfile ${pidfile}: process ${daemon.proc.pid} is running`);
    expect(existsSync(join(dir, 'b.sock'))).toBe(false);
    expect(readFileSync(pidfile, 'utf8')).toBe(`${daemon.proc.pid}\n`);

    const { code } = await daemon.stop('SIGTERM');
    expect(code).toBe(0);
    expect(existsSync(pidfile)).toBe(false);
  });

  it('replaces a stale pid file (serial)', async () => {
    // The pid of a process that has exited: nothing runs with it now.
    const gone = spawnSync(process.execPath, ['-e', '0']).pid as number;
    const pidfile = join(dir, 'uart.pid');
    writeFileSync(pidfile, `${gone}\n`);
    const daemon = await startDaemon([
      'serial',
      '--socket-path',
      join(dir, 'uart.sock'),
      '--log',
      join(dir, 'uart.log'),
      '--pidfile',
      pidfile,
    ]);
    daemons.push(daemon);
    expect(readFileSync(pidfile, 'utf8')).toBe(`${daemon.proc.pid}\n`);
    await daemon.stop('SIGINT');
    expect(existsSync(pidfile)).toBe(false);
  });
});
