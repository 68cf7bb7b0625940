/**
 * Questions: (1) how many packets per second does vhost-rt's switch move
 * between two vhost-user ports, driven by the project's own front end, at 64-
 * and 1500-byte frames? (2) what TCP throughput and ping round-trip time do
 * two QEMU TCG guests see through the switch, against QEMU's own built-in
 * guest-to-guest networking (`-netdev stream` over a unix socket), same run,
 * same guests?
 *
 *   npx tsc -p tsconfig.json && node dist/bench/net-switch.js [--frames N] [--mb N] [--no-guests]
 *
 * Nothing leaves the machine: guests use 169.254.0.0/16 and the built-in
 * comparison runs over a unix socket.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { ethFrame, NetDriver } from '../test/frontend/net-driver.js';
import { CLI } from '../test/support/daemon.js';
import { ensureGuestImage, runGuest } from '../test/support/qemu.js';

const MAC_A = '02:00:00:00:01:0a';
const MAC_B = '02:00:00:00:01:0b';

/** Starts `vhost-rt net` on two sockets and resolves once it is ready. */
async function startSwitch(dir: string): Promise<{ socks: string[]; stop: () => Promise<void> }> {
  const socks = [join(dir, 'a.sock'), join(dir, 'b.sock')];
  const args = [CLI, 'net', '--quiet', ...socks.flatMap((s) => ['--socket-path', s])];
  const proc = spawn(process.execPath, args, { stdio: 'ignore' });
  for (let i = 0; i < 200 && !socks.every(existsSync); i++) await sleep(50);
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  return {
    socks,
    stop: async () => {
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

/** Frames per second from A to B, sent in batches of `batch` that B must fully receive. */
async function packetsPerSecond(socks: string[], size: number, frames: number): Promise<number> {
  const a = await NetDriver.create({ socketPath: socks[0], queueSize: 256, heapBytes: 8 << 20 });
  const b = await NetDriver.create({ socketPath: socks[1], queueSize: 256, rxBuffers: 256 });
  try {
    // Teach both ports each other's address, so the run is unicast, not flooding.
    await a.send(ethFrame('ff:ff:ff:ff:ff:ff', MAC_A, 60));
    await b.waitReceived(1);
    await b.send(ethFrame(MAC_A, MAC_B, 60));
    await a.waitReceived(1);
    const frame = ethFrame(MAC_B, MAC_A, size);
    const batch = 128;
    b.received.length = 0;
    const t0 = performance.now();
    for (let sent = 0; sent < frames; sent += batch) {
      await Promise.all(Array.from({ length: batch }, () => a.send(frame)));
      await b.waitReceived(batch, 10_000);
      b.received.length = 0;
    }
    return frames / ((performance.now() - t0) / 1000);
  } finally {
    await a.close();
    await b.close();
  }
}

interface GuestFigures {
  mbPerSec: number;
  rttAvgMs: number;
}

function guestScripts(mb: number): { a: string; b: string } {
  const up = (ip: string) => `ip link set eth0 up && ip addr add ${ip}/16 dev eth0 || exit 10\n`;
  const wait = (ip: string) =>
    `n=0; until ping -c 1 -W 1 ${ip} >/dev/null 2>&1; do n=$((n+1)); [ $n -lt 90 ] || exit 11; done\n`;
  return {
    b: `${up('169.254.30.2')}nc -l -p 5000 > /dev/null\necho B_DONE\n`,
    a: `${up('169.254.30.1')}${wait('169.254.30.2')}
ping -c 20 -i 0.2 169.254.30.2 | tail -1 | sed 's/^/RTT /'
t0=$(now_ns); dd if=/dev/zero bs=64k count=${mb * 16} 2>/dev/null | nc 169.254.30.2 5000; t1=$(now_ns)
echo "XFER bytes=${mb * 1048576} ns=$((t1 - t0))"
`,
  };
}

/** Boots B then A with the given NIC arguments and reads A's figures. */
async function guestPair(nicA: string[], nicB: string[], mb: number): Promise<GuestFigures> {
  const s = guestScripts(mb);
  const b = runGuest({ script: s.b, extraArgs: nicB, timeoutMs: 300_000 });
  await sleep(1500); // B's QEMU listens before A's connects (the stream server side)
  const [ra] = await Promise.all([
    runGuest({ script: s.a, extraArgs: nicA, timeoutMs: 300_000 }),
    b,
  ]);
  const rtt = ra.output.match(/RTT .*= [\d.]+\/([\d.]+)\//);
  const xfer = ra.output.match(/XFER bytes=(\d+) ns=(\d+)/);
  if (rtt === null || xfer === null) throw new Error(`guest A failed:\n${ra.output.slice(-2000)}`);
  return {
    rttAvgMs: Number(rtt[1]),
    mbPerSec: Number(xfer[1]) / 1048576 / (Number(xfer[2]) / 1e9),
  };
}

// vectors=0: QEMU 7.2 + TCG segfaults unmasking MSI-X of a vhost-backed virtio-net (see README).
const nic = (netdev: string, mac: string) => [
  '-netdev',
  netdev,
  '-device',
  `virtio-net-pci,netdev=n0,mac=${mac},romfile=,vectors=0`,
];

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      frames: { type: 'string', default: '20000' },
      mb: { type: 'string', default: '32' },
      'no-guests': { type: 'boolean', default: false },
    },
  });
  const frames = Number(values.frames);
  const mb = Number(values.mb);
  const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-net-bench-'));
  const rows: string[] = [];
  try {
    const sw = await startSwitch(dir);
    try {
      for (const size of [64, 1500]) {
        const pps = await packetsPerSecond(sw.socks, size, frames);
        rows.push(
          `| front end → switch → front end, ${size}-byte frames | ${Math.round(pps)} pps | ${((pps * size * 8) / 1e6).toFixed(0)} Mbit/s |`,
        );
      }
      if (!values['no-guests']) {
        ensureGuestImage();
        const chardev = (i: number) => ['-chardev', `socket,id=c0,path=${sw.socks[i]},reconnect=1`];
        const viaSwitch = await guestPair(
          [...chardev(0), ...nic('vhost-user,id=n0,chardev=c0', MAC_A)],
          [...chardev(1), ...nic('vhost-user,id=n0,chardev=c0', MAC_B)],
          mb,
        );
        const path = join(dir, 'stream.sock');
        const builtIn = await guestPair(
          nic(`stream,id=n0,server=off,addr.type=unix,addr.path=${path}`, MAC_A),
          nic(`stream,id=n0,server=on,addr.type=unix,addr.path=${path}`, MAC_B),
          mb,
        );
        for (const [label, f] of [
          ['vhost-rt switch (vhost-user)', viaSwitch],
          ['QEMU built-in (-netdev stream, unix)', builtIn],
        ] as const) {
          rows.push(
            `| TCG guest → guest TCP, ${label} | ${f.mbPerSec.toFixed(1)} MB/s | ping avg ${f.rttAvgMs.toFixed(3)} ms |`,
          );
        }
      }
    } finally {
      await sw.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  console.log('| path | rate | other |\n| --- | --- | --- |');
  for (const r of rows) console.log(r);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
