/**
 * End to end, offloads (issue 13): two QEMU TCG guests on one `vhost-rt net`
 * switch move 10 MB over TCP (busybox nc; md5 compared on both sides) with
 * checksum and segmentation offloads on for both, off for both, and on for
 * the sender only — where the switch segments the sender's 64 KiB TCP frames
 * and completes their checksums in software for the receiver. The switch's
 * counters say which path the frames took: passed through with their
 * header, or worked on by the switch. Then the host sends 4 MB to a guest
 * through the TAP uplink (its TAP in a network namespace the test creates):
 * the kernel hands the switch 64 KiB TCP frames with partial checksums
 * (TUNSETOFFLOAD), which pass through to a guest with offloads and are
 * segmented for one without.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type Daemon, daemonStats, startDaemon } from '../support/daemon.js';
import {
  bootNetGuest,
  type NetGuest,
  NO_OFFLOADS,
  netUp,
  printFeatures,
  vhostUserNic,
  waitPeer,
} from '../support/net-guests.js';
import { waitFor } from '../support/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-net-offload-e2e-'));
const IP_A = '169.254.11.1';
const IP_B = '169.254.11.2';
const MAC_A = '52:54:00:00:aa:11';
const MAC_B = '52:54:00:00:bb:12';
const BYTES = 10 * 1024 * 1024;
/** Feature bits (virtio 1.x §5.1.3). */
const CSUM = 0;
const GUEST_CSUM = 1;
const GUEST_TSO4 = 7;
const HOST_TSO4 = 11;

const guests: NetGuest[] = [];
const daemons: Daemon[] = [];

afterAll(async () => {
  await Promise.all(guests.map((g) => g.kill()));
  for (const d of daemons) await d.stop().catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

/** Port `port`'s counters from the daemon's stats line. */
async function portStats(daemon: Daemon, port: number): Promise<Record<string, number>> {
  const line = await daemonStats(daemon);
  const part = line.split(' | ').find((p) => p.includes(`[${port}] `)) ?? '';
  return Object.fromEntries([...part.matchAll(/(\w+)=(\d+)/g)].map((m) => [m[1], Number(m[2])]));
}

const bit = (features: string, n: number) => features[n] === '1';

describe.each([
  { name: 'offloads on for both', a: '', b: '' },
  { name: 'offloads off for both', a: NO_OFFLOADS, b: NO_OFFLOADS },
  { name: 'offloads on for the sender only', a: '', b: NO_OFFLOADS },
])('two guests, $name', ({ name, a: propsA, b: propsB }) => {
  it('move 10 MB over TCP with matching checksums', async () => {
    const tag = name.replace(/\W+/g, '-');
    const sa = join(dir, `${tag}-a.sock`);
    const sb = join(dir, `${tag}-b.sock`);
    const daemon = await startDaemon(['net', '--socket-path', sa, '--socket-path', sb]);
    daemons.push(daemon);
    const scriptB = `${netUp(IP_B)}${printFeatures('B')}${waitPeer(IP_A)}
nc -l -p 5000 > /tmp/f
echo "B_MD5 $(md5sum < /tmp/f | cut -d' ' -f1) $(wc -c < /tmp/f)"
sleep 600
`;
    const scriptA = `${netUp(IP_A)}${printFeatures('A')}${waitPeer(IP_B)}
dd if=/dev/urandom of=/tmp/f bs=1M count=${BYTES >> 20} 2>/dev/null
echo "A_MD5 $(md5sum < /tmp/f | cut -d' ' -f1) $(wc -c < /tmp/f)"
t0=$(now_ns)
n=0; until nc ${IP_B} 5000 < /tmp/f; do n=$((n+1)); [ $n -lt 20 ] || exit 12; sleep 1; done
echo "A_SENT ns=$(($(now_ns) - t0))"
sleep 600
`;
    const b = bootNetGuest(`${tag}-b`, dir, vhostUserNic(sb, MAC_B, propsB), scriptB);
    const a = bootNetGuest(`${tag}-a`, dir, vhostUserNic(sa, MAC_A, propsA), scriptA);
    guests.push(a, b);
    const fa = (await a.waitFor(/A_FEATURES ([01]+)\n/, 60_000))[1];
    const fb = (await b.waitFor(/B_FEATURES ([01]+)\n/, 60_000))[1];
    const onA = propsA === '';
    const onB = propsB === '';
    for (const n of [CSUM, GUEST_CSUM, GUEST_TSO4, HOST_TSO4]) {
      expect(bit(fa, n), `A's feature bit ${n} of ${fa}`).toBe(onA);
      expect(bit(fb, n), `B's feature bit ${n} of ${fb}`).toBe(onB);
    }
    const sent = await a.waitFor(/A_MD5 ([0-9a-f]{32}) (\d+)\n/, 60_000);
    const got = await b.waitFor(/B_MD5 ([0-9a-f]{32}) (\d+)\n/, 90_000);
    expect(sent[2]).toBe(String(BYTES));
    expect(got[2]).toBe(String(BYTES));
    expect(got[1]).toBe(sent[1]);
    const ns = Number((await a.waitFor(/A_SENT ns=(\d+)\n/, 30_000))[1]);
    console.log(`${name}: 10 MB in ${(ns / 1e9).toFixed(2)} s (guest clock)`);
    const [pa, pb] = [await portStats(daemon, 0), await portStats(daemon, 1)];
    // Nothing a real Linux guest sends is malformed, nothing is dropped for its offload header.
    expect(pa.malformed + pb.malformed).toBe(0);
    expect(pa.rxDropsOffload + pb.rxDropsOffload).toBe(0);
    const averageFromA = pa.txBytes / pa.txPackets;
    if (onA) {
      // The sender's TCP frames are mostly 64 KiB ones (HOST_TSO4 used).
      expect(averageFromA).toBeGreaterThan(1514);
    } else expect(averageFromA).toBeLessThanOrEqual(1514);
    if (onA && !onB) {
      // The switch cut them into MTU-sized frames for B, with complete checksums.
      expect(pb.rxSegmented).toBeGreaterThan(0);
      expect(pb.rxSegments).toBeGreaterThan(pb.rxSegmented);
    } else {
      // Passed through (both took the offloads) or nothing asked (neither did).
      expect(pb.rxSegmented + pb.rxChecksummed).toBe(0);
      expect(pa.rxSegmented + pa.rxChecksummed).toBe(0);
    }
    await Promise.all([a.kill(), b.kill()]);
  }, 150_000);
});

describe.each([
  { name: 'with offloads', props: '' },
  { name: 'without offloads', props: NO_OFFLOADS },
])('the host sends to a guest $name through the TAP uplink', ({ name, props }) => {
  const tag = name.replace(/\W+/g, '-');
  const ns = `vhrt-off-${process.pid}-${props === '' ? 1 : 0}`;
  const tap = `vhro${process.pid % 10000}${props === '' ? 1 : 0}`;
  const HOST_IP = '169.254.21.1';
  const GUEST_IP = '169.254.21.2';

  afterAll(() => {
    spawnSync('ip', ['netns', 'delete', ns]);
  });

  it('4 MB over TCP arrive intact', async () => {
    execFileSync('ip', ['netns', 'add', ns]);
    const sock = join(dir, `${tag}-tap.sock`);
    const daemon = await startDaemon(['net', '--socket-path', sock, '--tap', tap]);
    daemons.push(daemon);
    await waitForLog(daemon, `tap ${tap}`);
    execFileSync('ip', ['link', 'set', tap, 'netns', ns]);
    const inNs = (...args: string[]) => execFileSync('ip', ['netns', 'exec', ns, ...args]);
    inNs('ip', 'addr', 'add', `${HOST_IP}/16`, 'dev', tap);
    inNs('ip', 'link', 'set', tap, 'up');
    const data = randomBytes(4 << 20);
    const file = join(dir, `${tag}.bin`);
    writeFileSync(file, data);
    const g = bootNetGuest(
      `${tag}-t`,
      dir,
      vhostUserNic(sock, '52:54:00:00:cc:13', props),
      `${netUp(GUEST_IP)}${waitPeer(HOST_IP)}
nc -l -p 6001 > /tmp/f
echo "G_MD5 $(md5sum < /tmp/f | cut -d' ' -f1) $(wc -c < /tmp/f)"
sleep 600
`,
    );
    guests.push(g);
    await g.waitFor(/PEER_UP\n/, 90_000);
    // The guest's listener may not be up yet: the sender retries a refused connection.
    const sender = spawn('ip', [
      'netns',
      'exec',
      ns,
      'sh',
      '-c',
      `n=0; until busybox nc ${GUEST_IP} 6001 < ${file}; do n=$((n+1)); [ $n -lt 40 ] || exit 1; sleep 0.5; done`,
    ]);
    const got = await g.waitFor(/G_MD5 ([0-9a-f]{32}) (\d+)\n/, 90_000);
    sender.kill('SIGKILL');
    expect(got[2]).toBe(String(data.length));
    expect(got[1]).toBe(createHash('md5').update(data).digest('hex'));
    const guestPort = await portStats(daemon, 0);
    const tapPort = await portStats(daemon, 1);
    // The kernel sent 64 KiB frames (TUNSETOFFLOAD TSO4): more bytes per frame than an MTU.
    expect(tapPort.txBytes / tapPort.txPackets).toBeGreaterThan(1514);
    if (props === '') expect(guestPort.rxSegmented).toBe(0);
    else expect(guestPort.rxSegmented).toBeGreaterThan(0);
    expect(guestPort.rxDropsOffload + tapPort.malformed).toBe(0);
    await g.kill();
  }, 150_000);
});

/** Waits until the daemon's log contains `text` (its ready lines may come in several chunks). */
async function waitForLog(daemon: Daemon, text: string): Promise<void> {
  await waitFor(() => daemon.log().includes(text), `"${text}" in the daemon's log`, 5000);
}
