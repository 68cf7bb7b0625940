/**
 * QEMU TCG guests with one virtio-net NIC, for the network end-to-end tests
 * and the guest-to-guest TCP benchmark: boot a guest running a shell script
 * (the test image's /run.sh), wait for lines on its console, kill it. The NIC
 * is a vhost-user port of a `vhost-rt net` switch ({@link vhostUserNic}) or
 * one end of QEMU's own `-netdev stream` pair ({@link streamNic}: the
 * QEMU-native reference). Only link-local addresses are used.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { appendFileSync, copyFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { guestImageDir, guestQemuArgs, newcArchive, qemuCommand } from './qemu.js';

/** A running guest whose console can be waited on. */
export interface NetGuest {
  proc: ChildProcess;
  /** Console (and QEMU's stderr) so far, CRs removed. */
  output(): string;
  /** Resolves with the first match of `pattern` in the output; rejects after `timeoutMs` or at exit. */
  waitFor(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  exited: Promise<void>;
  /** SIGKILL (if still running) and wait for the exit. */
  kill(): Promise<void>;
}

/** virtio-net-pci properties that turn every offload off (and what depends on them). */
export const NO_OFFLOADS =
  'csum=off,guest_csum=off,gso=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off,' +
  'host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off,ctrl_guest_offloads=off';

/**
 * QEMU arguments of a virtio-net-pci NIC on a vhost-user socket. `props` is
 * appended to the device (e.g. {@link NO_OFFLOADS}, `packed=on`); `pairs` > 1
 * gives it that many queue pairs (mq=on; the guest uses min(pairs, CPUs)).
 * vectors=0 (INTx): QEMU 7.2 under TCG segfaults in virtio_pci_vector_unmask
 * when a vhost-backed virtio-net unmasks its MSI-X vectors (no irqfd), whatever
 * the back end; romfile= skips the unused iPXE ROM.
 */
export function vhostUserNic(socket: string, mac: string, props = '', pairs = 1): string[] {
  const mq = pairs > 1 ? `,queues=${pairs}` : '';
  const device = `virtio-net-pci,netdev=n0,mac=${mac},romfile=,vectors=0${pairs > 1 ? ',mq=on' : ''}`;
  return [
    '-chardev',
    `socket,id=n0,path=${socket},reconnect=1`,
    '-netdev',
    `vhost-user,id=n0,chardev=n0${mq}`,
    '-device',
    `${device}${props === '' ? '' : `,${props}`}`,
  ];
}

/**
 * QEMU arguments of a virtio-net-pci NIC on one end of a `-netdev stream`
 * pair over a Unix socket (`server`: the listening end). QEMU's own
 * userspace virtio-net: the stream carries no vnet header, so QEMU offers
 * the guest no offloads.
 */
export function streamNic(path: string, server: boolean, mac: string): string[] {
  return [
    '-netdev',
    `stream,id=n0,server=${server ? 'on' : 'off'},addr.type=unix,addr.path=${path}`,
    '-device',
    `virtio-net-pci,netdev=n0,mac=${mac},romfile=`,
  ];
}

function writeInitrd(path: string, script: string): void {
  const base = join(guestImageDir(), 'initramfs.cpio.gz');
  copyFileSync(base, path);
  const run = newcArchive([{ name: 'run.sh', mode: 0o100755, data: Buffer.from(script) }]);
  const pad = Buffer.alloc((4 - (statSync(base).size % 4)) % 4);
  appendFileSync(path, Buffer.concat([pad, gzipSync(run)]));
}

/** Boots guest `name` (files in `dir`) with `nic` (QEMU arguments) and `cpus` CPUs running `script`. */
export function bootNetGuest(
  name: string,
  dir: string,
  nic: string[],
  script: string,
  memMb = 256,
  cpus = 1,
): NetGuest {
  const initrd = join(dir, `${name}.initrd`);
  writeInitrd(initrd, script);
  const args = guestQemuArgs({ script, memMb, cpus, extraArgs: nic }, initrd);
  const proc = spawn(...qemuCommand(args), { stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  const waiters = new Set<() => void>();
  const onData = (b: Buffer) => {
    text += b.toString('latin1').replace(/\r/g, '');
    for (const w of waiters) w();
  };
  proc.stdout?.on('data', onData);
  proc.stderr?.on('data', onData);
  const exited = new Promise<void>((resolve) => proc.once('close', () => resolve()));
  const waitFor = (pattern: RegExp, timeoutMs: number) =>
    new Promise<RegExpMatchArray>((resolve, reject) => {
      const check = () => {
        const m = text.match(pattern);
        if (m === null) return;
        cleanup();
        resolve(m);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${name}: no ${pattern} within ${timeoutMs} ms:\n${text.slice(-3000)}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      void exited.then(() => {
        if (text.match(pattern) === null) {
          cleanup();
          reject(new Error(`${name}: exited before ${pattern}:\n${text.slice(-3000)}`));
        }
      });
      check();
    });
  const kill = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await exited;
  };
  return { proc, output: () => text, waitFor, exited, kill };
}

/** Shell: bring eth0 up with a static link-local address. */
export function netUp(ip: string): string {
  return `ip link set eth0 up && ip addr add ${ip}/16 dev eth0 || exit 10
echo NET_UP
`;
}

/** Shell: ping until one reply arrives (ARP learning, peer booting), up to `tries` times. */
export function waitPeer(ip: string, tries = 60): string {
  return `n=0; until ping -c 1 -W 1 ${ip} >/dev/null 2>&1; do n=$((n+1)); [ $n -lt ${tries} ] || { echo PEER_UNREACHABLE; exit 11; }; done
echo PEER_UP
`;
}

/**
 * Shell: prints `TAG_FEATURES <bits>`, the virtio features the guest's
 * driver negotiated, bit 0 first (/sys/class/net/eth0/device/features).
 */
export function printFeatures(tag: string): string {
  return `echo "${tag}_FEATURES $(cat /sys/class/net/eth0/device/features)"\n`;
}
