/**
 * SIGHUP and logrotate (issue 10 "Signals"): a `vhost-rt serial` daemon logs
 * what its chardev receives to a file; the file is renamed away (as
 * logrotate does), the daemon gets SIGHUP, and the lines that follow land in
 * a new file at the old path while the renamed one keeps the earlier lines.
 * The daemon lives through SIGHUP. A plain socket client plays QEMU's chardev.
 */
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { waitFor } from '../support/wait.js';

let dir: string;
let daemon: Daemon;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-log-reopen-'));
  daemon = await startDaemon([
    'serial',
    '--socket-path',
    join(dir, 'uart.sock'),
    '--log',
    join(dir, 'guest.log'),
  ]);
}, 30_000);

afterAll(async () => {
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function open(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path, () => resolve(s));
    s.once('error', reject);
  });
}

function read(path: string): string {
  return existsSync(path) ? readFileSync(path, 'utf8') : '';
}

describe('SIGHUP', () => {
  it('reopens the log file at its path after a rename, and the daemon goes on', async () => {
    const log = join(dir, 'guest.log');
    const rotated = join(dir, 'guest.log.1');
    const uart = await open(join(dir, 'uart.sock'));
    uart.write('before rotation\n');
    await waitFor(() => read(log).includes('before rotation\n'), 'the first line in the log');

    renameSync(log, rotated);
    const seen = daemon.log().length;
    daemon.proc.kill('SIGHUP');
    await waitFor(
      () => /SIGHUP: done \(1 log file\(s\) reopened\)/.test(daemon.log().slice(seen)),
      'the daemon to report the reopened log file',
    );
    expect(existsSync(log)).toBe(true);

    uart.write('after rotation\n');
    await waitFor(() => read(log).includes('after rotation\n'), 'the next line in the new file');
    expect(read(log)).toBe('after rotation\n');
    expect(read(rotated)).toBe('before rotation\n');
    expect(daemon.proc.exitCode).toBeNull();
    expect(daemon.proc.signalCode).toBeNull();
    uart.destroy();
  });
});
