/**
 * End to end with a real QEMU (issue 9, protocol hygiene): QEMU's
 * vhost-user-blk-pci with more `num-queues` than the daemon's --queues gives
 * up after GET_QUEUE_NUM without telling the back end why; the daemon logs a
 * line naming --queues. No guest is booted (-S): QEMU stops at realize.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { waitFor } from '../support/wait.js';

let dir: string;
let socket: string;
let daemon: Daemon;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-e2e-queues-'));
  socket = join(dir, 'blk.sock');
  const image = join(dir, 'disk.img');
  writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
  daemon = await startDaemon(['blk', '--socket-path', socket, '--image', image, '--queues', '1']);
});

afterAll(async () => {
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Runs QEMU to its exit; resolves with its stderr. */
function qemu(args: string[]): Promise<string> {
  return new Promise((resolve) => {
    execFile('qemu-system-x86_64', args, { timeout: 60_000 }, (_err, _stdout, stderr) =>
      resolve(stderr),
    );
  });
}

describe('QEMU asking for more queues than vhost-rt blk serves', () => {
  it('fails in QEMU, and the daemon logs a line naming --queues', async () => {
    const seen = daemon.log().length;
    const stderr = await qemu([
      ...['-accel', 'tcg', '-machine', 'q35', '-nodefaults', '-nographic', '-S', '-m', '128'],
      ...['-object', 'memory-backend-memfd,id=mem,size=128M,share=on', '-numa', 'node,memdev=mem'],
      ...['-chardev', `socket,id=c0,path=${socket}`],
      ...['-device', 'vhost-user-blk-pci,chardev=c0,num-queues=4'],
    ]);
    expect(stderr).toMatch(/maximum number of queues supported by the backend is 1/);
    const line = await waitFor(
      () =>
        daemon
          .log()
          .slice(seen)
          .split('\n')
          .find((l) => l.includes('--queues')),
      'the --queues hint in the daemon log',
    );
    expect(line).toMatch(/warn: the front end left right after GET_QUEUE_NUM \(answered 1\)/);
    expect(daemon.proc.exitCode).toBeNull();
  }, 90_000);
});
