/**
 * End to end with an independent front end (issue 13): one `dpdk-testpmd`
 * with two `net_virtio_user` ports asking for packed rings (`packed_vq=1`)
 * on the two ports of `vhost-rt net`. Both ports negotiate
 * VIRTIO_F_RING_PACKED (query-devices on the control socket) and frames
 * go both ways through the switch (flowgen). Skipped where dpdk-testpmd
 * is not installed (Debian: dpdk librte-net-virtio23).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

const HAVE_TESTPMD = spawnSync('sh', ['-c', 'command -v dpdk-testpmd']).stdout.length > 0;
const RING_PACKED = 1n << 34n;
const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-dpdk-packed-'));
const prefix = `vhrt-packed-${process.pid}`;

let daemon: Daemon | undefined;
let pmd: ChildProcess | undefined;
let out = '';

afterAll(async () => {
  if (pmd !== undefined && pmd.exitCode === null) {
    const exited = new Promise((r) => pmd?.once('exit', r));
    pmd.stdin?.write('quit\n');
    const kill = setTimeout(() => pmd?.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(kill);
  }
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
  rmSync(`/var/run/dpdk/${prefix}`, { recursive: true, force: true });
});

/** Sends a testpmd command and waits until its output (after the command) matches `until`. */
async function command(line: string, until: RegExp): Promise<string> {
  const from = out.length;
  pmd?.stdin?.write(`${line}\n`);
  await waitFor(() => until.test(out.slice(from)), `testpmd: ${line}`, 30_000);
  return out.slice(from);
}

/** RX-packets of each port in `show port stats all`. */
function rxPackets(stats: string): number[] {
  return [...stats.matchAll(/RX-packets:\s+(\d+)/g)].map((m) => Number(m[1]));
}

describe.skipIf(!HAVE_TESTPMD)('dpdk-testpmd net_virtio_user packed_vq=1 on vhost-rt net', () => {
  it('negotiates packed rings on both ports and exchanges frames through the switch', async () => {
    const socks = [join(dir, 'p0.sock'), join(dir, 'p1.sock')];
    const control = join(dir, 'control.sock');
    daemon = await startDaemon([
      'net',
      '--socket-path',
      socks[0],
      '--socket-path',
      socks[1],
      '--control-socket',
      control,
    ]);
    const macs = ['02:00:00:00:dd:00', '02:00:00:00:dd:01'];
    const args = ['--no-pci', '--no-huge', '-m', '256', `--file-prefix=${prefix}`, '-l', '0,1'];
    for (const [i, s] of socks.entries())
      args.push(
        '--vdev',
        `net_virtio_user${i},path=${s},mac=${macs[i]},queues=1,queue_size=256,packed_vq=1`,
      );
    args.push('--', '-i', '--forward-mode=flowgen', '--nb-cores=1', '--total-num-mbufs=8192');
    args.push(`--eth-peer=0,${macs[1]}`, `--eth-peer=1,${macs[0]}`);
    pmd = spawn('stdbuf', ['-o0', '-e0', 'dpdk-testpmd', ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    pmd.stdout?.setEncoding('utf8');
    pmd.stderr?.setEncoding('utf8');
    pmd.stdout?.on('data', (d: string) => {
      out += d;
    });
    pmd.stderr?.on('data', (d: string) => {
      out += d;
    });
    await waitFor(
      () => /testpmd> /.test(out),
      () => `the testpmd prompt: ${out.slice(-2000)}`,
      60_000,
    );

    const qmp = await QmpClient.connect(control);
    try {
      const devices = (await qmp.execute('query-devices')).return as { features: string | null }[];
      expect(devices).toHaveLength(2);
      for (const d of devices) expect(BigInt(d.features ?? '0') & RING_PACKED).toBe(RING_PACKED);
    } finally {
      qmp.close();
    }

    // flowgen: each port sends a stream of 64-byte frames to the other's MAC.
    await command('start', /testpmd> /);
    await waitFor(
      async () => {
        const rx = rxPackets(
          await command('show port stats all', /RX-packets[\s\S]*RX-packets[\s\S]*testpmd> /),
        );
        return rx.length === 2 && rx[0] >= 10_000 && rx[1] >= 10_000;
      },
      'frames received on both testpmd ports',
      60_000,
    );
    await command('stop', /Done|testpmd> /);
    expect(daemon.log()).not.toMatch(/DEVICE_BROKEN|VIRTQ_/);
    expect(out).not.toMatch(/packed.*not supported|Failed to .*virtio_user/i);
  }, 180_000);
});
