/**
 * The real `vhost-rt console` command driven by the project's front end: two
 * ports (one named), output in each port's log, per-port counters on SIGUSR1
 * and at exit, and a malformed control message that only costs a warning.
 * Also `vhost-rt attach` typing into the console's input socket.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CONSOLE_DRIVER_FEATURES,
  ConsoleDriver,
  ControlEvent,
} from '../frontend/console-driver.js';
import { CLI, type Daemon, daemonStats, runCli, startDaemon } from '../support/daemon.js';
import { waitFor } from '../support/wait.js';

let dir: string;
let daemon: Daemon;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-console-cli-'));
  daemon = await startDaemon([
    'console',
    '--socket-path',
    join(dir, 'c.sock'),
    '--log',
    join(dir, 'port0.log'),
    '--input',
    join(dir, 'port0.in'),
    '--port',
    `org.vhost-rt.data=${join(dir, 'data.log')}`,
    '--size',
    '100x30',
  ]);
}, 30_000);

afterAll(async () => {
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const fileText = (name: string) => {
  try {
    return readFileSync(join(dir, name), 'utf8');
  } catch {
    return '';
  }
};

describe('vhost-rt console daemon', () => {
  it('prints its ports in the ready lines and documents every flag', async () => {
    expect(daemon.log()).toMatch(/ready: console socket .*2 port\(s\) \(multiport\), size 100x30/);
    // startDaemon returns at the first ready line; the per-port lines follow it.
    await waitFor(
      () => /port 1 'org.vhost-rt.data': log file:.*data\.log/.test(daemon.log()),
      'port lines',
    );
    const help = await runCli(['console', '--help']);
    expect(help.code).toBe(0);
    for (const flag of ['--ports', '--port', '--policy', '--ring-size', '--input', '--log-rotate'])
      expect(help.stdout).toContain(flag);
  });

  it('serves both ports, types through attach, survives a malformed control message', async () => {
    const d = await ConsoleDriver.create({ socketPath: join(dir, 'c.sock'), ports: 2 });
    try {
      await waitFor(() => d.ports.every((p) => p.hostOpen), 'ports open');
      expect(d.ports[1].name).toBe('org.vhost-rt.data');
      await d.write(0, Buffer.from('console says hi\n'));
      await d.write(1, Buffer.from('data port\n'));
      await waitFor(() => fileText('port0.log') === 'console says hi\n', 'logs');
      await waitFor(() => fileText('data.log') === 'data port\n', 'data log');

      const attach = spawn(process.execPath, [CLI, 'attach', join(dir, 'port0.in')], {
        stdio: ['pipe', 'ignore', 'inherit'],
      });
      attach.stdin.end('typed\n');
      await waitFor(() => d.text(0) === 'typed\n', 'typed input');

      await d.sendRawControl(Uint8Array.of(9, 9));
      await d.sendControl(5, ControlEvent.PORT_READY, 1);
      await waitFor(
        () => (daemon.log().match(/CONSOLE_BAD_CONTROL/g) ?? []).length >= 2,
        'warning',
      );
      await d.write(0, Buffer.from('after\n'));
      await waitFor(() => fileText('port0.log').endsWith('after\n'), 'still serving');

      const stats = await daemonStats(daemon);
      expect(stats).toMatch(/badControl=2/);
      expect(stats).toMatch(/\[port 0\] bytesIn=6 bytesOut=22 bytesDropped=0/);
      expect(stats).toMatch(/\[port 1\] bytesIn=0 bytesOut=10 .*ringHighWater=10/);
    } finally {
      await d.close();
    }
  });

  it('serves both ports over packed rings (VIRTIO_F_RING_PACKED), output and input', async () => {
    const d = await ConsoleDriver.create({
      socketPath: join(dir, 'c.sock'),
      ports: 2,
      driverFeatures: CONSOLE_DRIVER_FEATURES | (1n << 34n),
    });
    try {
      expect(d.vmm.hasFeature(34)).toBe(true);
      await waitFor(() => d.ports.every((p) => p.hostOpen), 'ports open');
      for (let i = 0; i < 40; i++) await d.write(0, Buffer.from(`packed line ${i}\n`));
      await d.write(1, Buffer.from('packed data\n'));
      await waitFor(() => fileText('port0.log').endsWith('packed line 39\n'), 'packed output');
      await waitFor(() => fileText('data.log').endsWith('packed data\n'), 'packed data port');
      expect(fileText('port0.log')).toContain('packed line 0\npacked line 1\n');
      const attach = spawn(process.execPath, [CLI, 'attach', join(dir, 'port0.in')], {
        stdio: ['pipe', 'ignore', 'inherit'],
      });
      attach.stdin.end('typed on packed\n');
      await waitFor(() => d.text(0) === 'typed on packed\n', 'typed input');
    } finally {
      await d.close();
    }
  });

  it('refuses bad flags with one line', async () => {
    const r = await runCli(['console', '--socket-path', join(dir, 'x.sock'), '--ports', 'two']);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe('vhost-rt console: --ports two: not a whole number');
  });
});
