/**
 * End to end under libvirt, as an operator deploys vhost-rt: libvirtd (and
 * virtlogd) started by the test, a `type='qemu'` domain booting the test
 * kernel directly with shared memfd RAM, its `<disk type='vhostuser'>`,
 * `<interface type='vhostuser'>` and 16550 `<serial type='unix'>` served by
 * `vhost-rt blk` / `net` / `serial` whose sockets were created with
 * `--socket-group libvirt-qemu --socket-mode 0660` (QEMU runs as
 * libvirt-qemu; no chmod by hand). The guest sees its disk and NIC and does
 * I/O on both; and `virsh start` fails at once, naming the socket, when a
 * back end is missing and reconnect is off.
 */
import {
  chmodSync,
  closeSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseSocketGroup } from '../../src/sockets/listen.js';
import { NetDriver } from '../frontend/net-driver.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { domainXml, guestBootFiles, Libvirt, libvirtMissing } from '../support/libvirt.js';
import { ensureGuestImage } from '../support/qemu.js';
import { waitFor } from '../support/wait.js';

const GUEST_MAC = '52:54:00:12:34:56';
const PEER_MAC = '52:54:00:aa:bb:02';
const GUEST_IP = [169, 254, 7, 1];
const PEER_IP = [169, 254, 7, 2];
const DISK_MARK = 'vhost-rt-under-libvirt';
const SOCKET_FLAGS = ['--socket-group', 'libvirt-qemu', '--socket-mode', '0660'];
/** Per test: a TCG boot, a save and a restore take tens of seconds, more on a loaded machine. */
const GUEST_TEST_MS = 180_000;

/**
 * The guest: reports its disk, writes a marker to sector 0, and pings the
 * peer until it knows the peer's MAC (learned from the test's ARP request).
 */
const SCRIPT = `
wait_dev /dev/vda || exit 1
echo "VHOST_RT_DISK_SECTORS=$(cat /sys/block/vda/size)"
echo ${DISK_MARK} | dd of=/dev/vda bs=512 count=1 conv=sync oflag=direct 2>/dev/null || exit 2
[ -e /sys/class/net/eth0 ] || exit 3
echo "VHOST_RT_NIC=$(cat /sys/class/net/eth0/address)"
ip link set eth0 up
ip addr add ${GUEST_IP.join('.')}/16 dev eth0
i=0
while [ $i -lt 60 ]; do
  ping -c 1 -W 1 ${PEER_IP.join('.')} >/dev/null 2>&1
  mac=$(awk '$1 == "${PEER_IP.join('.')}" && $3 == "0x2" { print $4 }' /proc/net/arp)
  [ -n "$mac" ] && { echo "VHOST_RT_PEER=$mac"; exit 0; }
  i=$((i + 1))
done
exit 4
`;

/**
 * A guest that writes `tick-N` to a sector with O_DIRECT, reads it back and
 * prints VHOST_RT_TICK=N, ten times a second, until it is stopped.
 */
const TICK_SCRIPT = `
wait_dev /dev/vda || exit 1
i=0
while [ $i -lt 100000 ]; do
  i=$((i + 1))
  s=$((i % 512 + 1))
  want=$(printf 'tick-%08d' $i)
  printf '%s' "$want" | dd of=/dev/vda bs=512 seek=$s count=1 conv=sync oflag=direct 2>/dev/null || { echo "VHOST_RT_BAD=$i write"; exit 2; }
  got=$(dd if=/dev/vda bs=512 skip=$s count=1 iflag=direct 2>/dev/null | head -c 13)
  [ "$got" = "$want" ] || { echo "VHOST_RT_BAD=$i read $got"; exit 3; }
  echo "VHOST_RT_TICK=$i"
  usleep 100000
done
`;

/** An Ethernet ARP request: who has `target` tell `sender` (from `mac`). */
function arpRequest(mac: string, sender: number[], target: number[]): Uint8Array {
  const m = mac.split(':').map((h) => Number.parseInt(h, 16));
  const frame = new Uint8Array(60);
  frame.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 0);
  frame.set(m, 6);
  frame.set([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1], 12);
  frame.set(m, 22);
  frame.set(sender, 28);
  frame.set(target, 38);
  return frame;
}

function macOf(frame: Uint8Array, at: number): string {
  return [...frame.subarray(at, at + 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

let dir: string;
let libvirt: Libvirt;

beforeAll(async () => {
  const missing = libvirtMissing();
  if (missing !== null) throw new Error(`libvirt is not installed: ${missing}`);
  ensureGuestImage();
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-libvirt-'));
  // QEMU runs as libvirt-qemu: it must reach the sockets' directory and read the kernel.
  chmodSync(dir, 0o755);
  libvirt = await Libvirt.start(dir);
}, 90_000);

afterAll(async () => {
  await libvirt?.stop();
  rmSync(dir, { recursive: true, force: true });
}, 60_000);

describe('vhost-rt under libvirt', () => {
  it(
    'serves a domain its vhostuser disk, NIC and serial; the guest does I/O on both',
    async () => {
      const image = join(dir, 'disk.img');
      writeFileSync(image, Buffer.alloc(16 * 1024 * 1024));
      const sock = (name: string) => join(dir, `${name}.sock`);
      const consoleLog = join(dir, 'console.log');
      const daemons: Daemon[] = [];
      let peer: NetDriver | null = null;
      try {
        daemons.push(
          await startDaemon([
            'blk',
            '--socket-path',
            sock('disk'),
            '--image',
            image,
            ...SOCKET_FLAGS,
          ]),
          await startDaemon([
            'net',
            '--socket-path',
            sock('net'),
            '--socket-path',
            sock('peer'),
            ...SOCKET_FLAGS,
          ]),
          await startDaemon([
            'serial',
            '--socket-path',
            sock('serial'),
            '--log',
            `file:${consoleLog}`,
            ...SOCKET_FLAGS,
          ]),
        );
        const group = parseSocketGroup('libvirt-qemu');
        for (const name of ['disk', 'net', 'serial']) {
          const st = statSync(sock(name));
          expect({ mode: st.mode & 0o777, gid: st.gid }).toEqual({ mode: 0o660, gid: group });
        }
        // The test is the other port of the switch: it sees the guest's frames and answers ARP.
        peer = await NetDriver.create({ socketPath: sock('peer') });
        const boot = guestBootFiles(dir, SCRIPT);
        await libvirt.define(
          'vhost-rt-e2e',
          domainXml({
            name: 'vhost-rt-e2e',
            ...boot,
            disk: { socket: sock('disk') },
            net: { socket: sock('net'), mac: GUEST_MAC },
            serial: { socket: sock('serial') },
          }),
        );
        const started = await libvirt.virsh(['start', 'vhost-rt-e2e']);
        expect(started.code, started.stderr).toBe(0);
        // The guest's first ARP request for the peer crosses vhost-rt's switch to the test.
        const drv = peer;
        await waitFor(
          () =>
            drv.received.some(
              (f) =>
                macOf(f.frame, 6) === GUEST_MAC && f.frame[12] === 0x08 && f.frame[13] === 0x06,
            ),
          () => `an ARP frame from the guest (console: ${readText(consoleLog).slice(-400)})`,
          60_000,
        );
        await drv.send(arpRequest(PEER_MAC, PEER_IP, GUEST_IP));
        const out = await waitFor(
          () => (/VHOST_RT_GUEST_EXIT=\d+/.test(readText(consoleLog)) ? readText(consoleLog) : ''),
          () => `the guest to finish (console: ${readText(consoleLog).slice(-600)})`,
          60_000,
        );
        expect(out, out).toContain('VHOST_RT_GUEST_EXIT=0');
        expect(out).toContain(`VHOST_RT_DISK_SECTORS=${(16 * 1024 * 1024) / 512}`);
        expect(out).toContain(`VHOST_RT_NIC=${GUEST_MAC}`);
        expect(out).toContain(`VHOST_RT_PEER=${PEER_MAC}`);
        // The guest's answer to the test's ARP request came back through the switch.
        expect(
          drv.received.some(
            (f) =>
              macOf(f.frame, 0) === PEER_MAC &&
              macOf(f.frame, 6) === GUEST_MAC &&
              f.frame[21] === 2,
          ),
        ).toBe(true);
        expect(readSector0(image).toString('latin1')).toContain(DISK_MARK);
        await waitFor(
          async () => (await libvirt.state('vhost-rt-e2e')) === 'shut off',
          'the domain to power off',
          30_000,
        );
      } finally {
        if (peer !== null) await peer.close();
        await libvirt.undefine('vhost-rt-e2e').catch(() => {});
        for (const d of daemons) await d.stop();
      }
    },
    GUEST_TEST_MS,
  );

  it(
    'with reconnect on, virsh start waits for the back end and completes once vhost-rt listens',
    async () => {
      const image = join(dir, 'late.img');
      writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
      const late = join(dir, 'late.sock');
      const boot = guestBootFiles(dir, 'exit 0\n');
      await libvirt.define(
        'vhost-rt-late',
        domainXml({ name: 'vhost-rt-late', ...boot, disk: { socket: late, reconnect: 1 } }),
      );
      let daemon: Daemon | null = null;
      try {
        const start = libvirt.virsh(['start', 'vhost-rt-late'], 60_000);
        // QEMU exists (paused, creating its devices) and keeps retrying the missing socket.
        await waitFor(
          async () => (await libvirt.state('vhost-rt-late')) === 'paused',
          'QEMU to wait for the back end',
          30_000,
        );
        daemon = await startDaemon([
          'blk',
          '--socket-path',
          late,
          '--image',
          image,
          ...SOCKET_FLAGS,
        ]);
        const r = await start;
        expect(r.code, r.stderr).toBe(0);
        await waitFor(() => /front end connected/.test(daemon?.log() ?? ''), 'QEMU to connect');
      } finally {
        await libvirt.undefine('vhost-rt-late');
        await daemon?.stop();
      }
    },
    GUEST_TEST_MS,
  );

  it(
    "virsh save / virsh restore a domain with a vhost-rt disk: the guest's I/O goes on",
    async () => {
      const image = join(dir, 'save.img');
      writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
      const disk = join(dir, 'save-disk.sock');
      const serial = join(dir, 'save-serial.sock');
      const consoleLog = join(dir, 'save-console.log');
      const daemons: Daemon[] = [];
      const ticks = () =>
        [...readText(consoleLog).matchAll(/VHOST_RT_TICK=(\d+)/g)].map((m) => Number(m[1]));
      const lastTick = () => Math.max(0, ...ticks());
      try {
        daemons.push(
          await startDaemon(['blk', '--socket-path', disk, '--image', image, ...SOCKET_FLAGS]),
          await startDaemon([
            'serial',
            '--socket-path',
            serial,
            '--log',
            `file:${consoleLog}`,
            ...SOCKET_FLAGS,
          ]),
        );
        const boot = guestBootFiles(dir, TICK_SCRIPT);
        await libvirt.define(
          'vhost-rt-save',
          domainXml({
            name: 'vhost-rt-save',
            ...boot,
            disk: { socket: disk },
            serial: { socket: serial },
          }),
        );
        const started = await libvirt.virsh(['start', 'vhost-rt-save']);
        expect(started.code, started.stderr).toBe(0);
        await waitFor(
          () => lastTick() >= 3,
          () => `three ticks (console: ${readText(consoleLog).slice(-400)})`,
          60_000,
        );
        const saved = await libvirt.virsh([
          'save',
          'vhost-rt-save',
          join(dir, 'vhost-rt-save.state'),
        ]);
        expect(saved.code, saved.stderr).toBe(0);
        expect(await libvirt.state('vhost-rt-save')).toBe('shut off');
        const before = lastTick();
        const restored = await libvirt.virsh(['restore', join(dir, 'vhost-rt-save.state')]);
        expect(restored.code, restored.stderr).toBe(0);
        await waitFor(
          () => lastTick() >= before + 3,
          () => `ticks after the restore (console: ${readText(consoleLog).slice(-400)})`,
          60_000,
        );
        const out = readText(consoleLog);
        expect(out).not.toMatch(/VHOST_RT_BAD/);
        // Every tick the guest counted was written and read back; none repeated or skipped.
        const seen = ticks();
        expect(seen).toEqual(seen.map((_, i) => i + 1));
      } finally {
        await libvirt.undefine('vhost-rt-save').catch(() => {});
        for (const d of daemons) await d.stop();
      }
    },
    GUEST_TEST_MS,
  );

  it(
    'virsh start fails at once, naming the socket, when the back end is missing and reconnect is off',
    async () => {
      const boot = guestBootFiles(dir, 'exit 0\n');
      const missing = join(dir, 'missing.sock');
      await libvirt.define(
        'vhost-rt-missing',
        domainXml({ name: 'vhost-rt-missing', ...boot, disk: { socket: missing } }),
      );
      try {
        const r = await libvirt.virsh(['start', 'vhost-rt-missing'], 30_000);
        expect(r.code).toBe(1);
        expect(r.stderr).toContain(`Failed to connect to '${missing}'`);
        expect(await libvirt.state('vhost-rt-missing')).toBe('shut off');
      } finally {
        await libvirt.undefine('vhost-rt-missing');
      }
    },
    GUEST_TEST_MS,
  );
});

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function readSector0(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(512);
    readSync(fd, buf, 0, 512, 0);
    return buf;
  } finally {
    closeSync(fd);
  }
}
