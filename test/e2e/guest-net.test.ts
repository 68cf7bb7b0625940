/**
 * End to end: real QEMU TCG guests on the ports of one `vhost-rt net` switch.
 * Two guests ping each other and move 10 MB with busybox nc (checksums
 * compared on both sides); one guest is killed (SIGKILL) and started again and
 * the other reaches it. Then a guest reaches the host through the TAP port,
 * whose TAP lives in a network namespace the test creates and deletes.
 * Only link-local addresses (169.254.0.0/16) are used, nothing leaves the machine.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Daemon, startDaemon } from '../support/daemon.js';
import {
  bootNetGuest,
  type NetGuest,
  netUp,
  vhostUserNic,
  waitPeer,
} from '../support/net-guests.js';
import { waitFor } from '../support/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-net-e2e-'));
const SOCK_A = join(dir, 'a.sock');
const SOCK_B = join(dir, 'b.sock');
const MAC_A = '52:54:00:00:aa:01';
const MAC_B = '52:54:00:00:bb:02';
const IP_A = '169.254.10.1';
const IP_B = '169.254.10.2';

/**
 * Boots a guest with one vhost-user NIC (`pairs` queue pairs and as many
 * CPUs, packed rings with `packed`) on `socket` running `script`.
 */
function boot(
  name: string,
  socket: string,
  mac: string,
  script: string,
  pairs = 1,
  packed = false,
): NetGuest {
  const nic = vhostUserNic(socket, mac, packed ? 'packed=on' : '', pairs);
  return bootNetGuest(name, dir, nic, script, 256, pairs);
}

const kill = (g: NetGuest): Promise<void> => g.kill();

let daemon: Daemon | undefined;
const guests: NetGuest[] = [];

beforeAll(async () => {
  daemon = await startDaemon(['net', '--socket-path', SOCK_A, '--socket-path', SOCK_B]);
}, 120_000);

afterAll(async () => {
  await Promise.all(guests.map(kill));
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('two guests on one switch', () => {
  it('ping both ways with 0% loss, 10 MB over TCP with matching checksums, survive a guest restart', async () => {
    const scriptB = `${netUp(IP_B)}${waitPeer(IP_A)}
ping -c 10 -i 0.2 ${IP_A} | grep -o '[0-9]*% packet loss' | sed 's/^/B_LOSS /'
nc -l -p 5000 > /tmp/f
echo "B_MD5 $(md5sum < /tmp/f | cut -d' ' -f1) $(wc -c < /tmp/f)"
echo B_WAITING
sleep 600
`;
    const scriptA = `${netUp(IP_A)}${waitPeer(IP_B)}
ping -c 10 -i 0.2 ${IP_B} | grep -o '[0-9]*% packet loss' | sed 's/^/A_LOSS /'
dd if=/dev/urandom of=/tmp/f bs=1M count=10 2>/dev/null
echo "A_MD5 $(md5sum < /tmp/f | cut -d' ' -f1) $(wc -c < /tmp/f)"
sleep 1
n=0; until nc ${IP_B} 5000 < /tmp/f; do n=$((n+1)); [ $n -lt 20 ] || exit 12; sleep 1; done
echo A_SENT
read line < /dev/console 2>/dev/null || true
sleep 600
`;
    const b = boot('b', SOCK_B, MAC_B, scriptB);
    guests.push(b);
    const a = boot('a', SOCK_A, MAC_A, scriptA);
    guests.push(a);
    expect((await a.waitFor(/A_LOSS (\d+)%/, 90_000))[1]).toBe('0');
    expect((await b.waitFor(/B_LOSS (\d+)%/, 30_000))[1]).toBe('0');
    const sent = await a.waitFor(/A_MD5 ([0-9a-f]{32}) (\d+)\n/, 60_000);
    const got = await b.waitFor(/B_MD5 ([0-9a-f]{32}) (\d+)\n/, 120_000);
    expect(sent[2]).toBe('10485760');
    expect(got[2]).toBe('10485760');
    expect(got[1]).toBe(sent[1]);

    // B dies without a goodbye; A keeps its address and must reach B's new incarnation.
    await kill(b);
    const b2 = boot(
      'b2',
      SOCK_B,
      MAC_B,
      `${netUp(IP_B)}${waitPeer(IP_A)}
ping -c 5 -i 0.2 ${IP_A} | grep -o '[0-9]*% packet loss' | sed 's/^/B2_LOSS /'
sleep 600
`,
    );
    guests.push(b2);
    expect((await b2.waitFor(/B2_LOSS (\d+)%/, 90_000))[1]).toBe('0');
    await Promise.all([kill(a), kill(b2)]);
    const stats = await daemon?.stop('SIGTERM');
    daemon = undefined;
    expect(stats?.log).toMatch(/stats: \[0\] packets=\d+/);
    // Real Linux guests never send a frame the switch must call malformed.
    expect(stats?.log).not.toMatch(/malformed=[1-9]/);
  }, 300_000);
});

describe.each([
  { rings: 'split', packed: false },
  { rings: 'packed', packed: true },
])('two guests with two queue pairs each, $rings rings', ({ rings, packed }) => {
  it('negotiate multiqueue with QEMU (one vhost device per pair on one socket) and ping both ways', async () => {
    const sa = join(dir, `mq-a-${rings}.sock`);
    const sb = join(dir, `mq-b-${rings}.sock`);
    const mq = await startDaemon([
      'net',
      '--socket-path',
      sa,
      '--socket-path',
      sb,
      '--queues',
      '2',
    ]);
    try {
      const script = (me: string, peer: string, tag: string) => `${netUp(me)}
echo "${tag}_QUEUES $(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)"
echo "${tag}_PACKED $(cut -c35 /sys/class/net/eth0/device/features)"
${waitPeer(peer)}
ping -c 5 -i 0.2 ${peer} | grep -o '[0-9]*% packet loss' | sed 's/^/${tag}_LOSS /'
sleep 600
`;
      const a = boot(`mqa-${rings}`, sa, MAC_A, script(IP_A, IP_B, 'MQA'), 2, packed);
      const b = boot(`mqb-${rings}`, sb, MAC_B, script(IP_B, IP_A, 'MQB'), 2, packed);
      guests.push(a, b);
      // Both guests booted (two TCG guests of two vCPUs share two host cores) before the
      // ping's clock starts; a peer never reached says so instead of timing out.
      expect((await a.waitFor(/MQA_QUEUES (\d+)/, 90_000))[1]).toBe('2');
      expect((await b.waitFor(/MQB_QUEUES (\d+)/, 90_000))[1]).toBe('2');
      expect((await a.waitFor(/MQA_PACKED (\d)/, 30_000))[1]).toBe(packed ? '1' : '0');
      expect((await a.waitFor(/MQA_LOSS (\d+)%|PEER_UNREACHABLE/, 90_000))[0]).toBe('MQA_LOSS 0%');
      expect((await b.waitFor(/MQB_LOSS (\d+)%|PEER_UNREACHABLE/, 60_000))[0]).toBe('MQB_LOSS 0%');
      await Promise.all([kill(a), kill(b)]);
    } finally {
      await mq.stop();
    }
    expect(mq.log()).not.toMatch(/ADD_MEM_REG|GUEST_MEM_OVERLAP/);
  }, 300_000);
});

describe('two guests with packed rings (packed=on)', () => {
  it('negotiate VIRTIO_F_RING_PACKED, ping both ways and move 4 MB over TCP with matching checksums', async () => {
    const sa = join(dir, 'pk-a.sock');
    const sb = join(dir, 'pk-b.sock');
    const pk = await startDaemon(['net', '--socket-path', sa, '--socket-path', sb]);
    try {
      // The guest's negotiated feature bits, bit 0 first: RING_PACKED is bit 34.
      const features = (tag: string) =>
        `echo "${tag}_PACKED $(cut -c35 /sys/class/net/eth0/device/features)"\n`;
      const scriptB = `${netUp(IP_B)}${features('PB')}${waitPeer(IP_A)}
ping -c 5 -i 0.2 ${IP_A} | grep -o '[0-9]*% packet loss' | sed 's/^/PB_LOSS /'
nc -l -p 5001 > /tmp/f
echo "PB_MD5 $(md5sum < /tmp/f | cut -d' ' -f1) $(wc -c < /tmp/f)"
sleep 600
`;
      const scriptA = `${netUp(IP_A)}${features('PA')}${waitPeer(IP_B)}
ping -c 5 -i 0.2 ${IP_B} | grep -o '[0-9]*% packet loss' | sed 's/^/PA_LOSS /'
dd if=/dev/urandom of=/tmp/f bs=1M count=4 2>/dev/null
echo "PA_MD5 $(md5sum < /tmp/f | cut -d' ' -f1) $(wc -c < /tmp/f)"
sleep 1
n=0; until nc ${IP_B} 5001 < /tmp/f; do n=$((n+1)); [ $n -lt 20 ] || exit 12; sleep 1; done
sleep 600
`;
      const b = boot('pkb', sb, MAC_B, scriptB, 1, true);
      const a = boot('pka', sa, MAC_A, scriptA, 1, true);
      guests.push(a, b);
      expect((await a.waitFor(/PA_PACKED (\d)/, 90_000))[1]).toBe('1');
      expect((await b.waitFor(/PB_PACKED (\d)/, 90_000))[1]).toBe('1');
      expect((await a.waitFor(/PA_LOSS (\d+)%/, 90_000))[1]).toBe('0');
      expect((await b.waitFor(/PB_LOSS (\d+)%/, 60_000))[1]).toBe('0');
      const sent = await a.waitFor(/PA_MD5 ([0-9a-f]{32}) (\d+)\n/, 60_000);
      const got = await b.waitFor(/PB_MD5 ([0-9a-f]{32}) (\d+)\n/, 120_000);
      expect(got[2]).toBe('4194304');
      expect(got[1]).toBe(sent[1]);
      await Promise.all([kill(a), kill(b)]);
    } finally {
      await pk.stop();
    }
    expect(pk.log()).not.toMatch(/DEVICE_BROKEN|VIRTQ_/);
  }, 240_000);
});

describe('a guest and the host through the TAP uplink', () => {
  const ns = `vhrt-e2e-${process.pid}`;
  const tap = `vhrt${process.pid % 100000}`;
  const sock = join(dir, 'tap-port.sock');
  const HOST_IP = '169.254.20.1';
  const GUEST_IP = '169.254.20.2';
  let tapDaemon: Daemon | undefined;
  let listener: ChildProcess | undefined;
  const inNs = (...args: string[]) => execFileSync('ip', ['netns', 'exec', ns, ...args]);

  afterAll(async () => {
    listener?.kill('SIGKILL');
    await tapDaemon?.stop();
    spawnSync('ip', ['netns', 'delete', ns]);
  });

  it('pings the namespace and sends it 1 MB over TCP with a matching checksum', async () => {
    execFileSync('ip', ['netns', 'add', ns]);
    tapDaemon = await startDaemon(['net', '--socket-path', sock, '--tap', tap]);
    // The ready lines may arrive in more than one chunk.
    await waitFor(() => tapDaemon?.log().includes(`tap ${tap}`), 'the TAP ready line', 5000);
    expect(tapDaemon.log()).toContain(`tap ${tap}`);
    // Moving a link to another namespace takes it down: bring it up there, with an address.
    execFileSync('ip', ['link', 'set', tap, 'netns', ns]);
    inNs('ip', 'addr', 'add', `${HOST_IP}/16`, 'dev', tap);
    inNs('ip', 'link', 'set', tap, 'up');
    listener = spawn('ip', ['netns', 'exec', ns, 'busybox', 'nc', '-l', '-p', '6000'], {
      // stdin stays open: at stdin EOF busybox nc half-closes, and the sender stops at that FIN.
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    const chunks: Buffer[] = [];
    listener.stdout?.on('data', (b: Buffer) => chunks.push(b));
    const listenerDone = new Promise<void>((resolve) => listener?.once('close', () => resolve()));
    const g = boot(
      't',
      sock,
      '52:54:00:00:cc:03',
      `${netUp(GUEST_IP)}${waitPeer(HOST_IP)}
ping -c 5 -i 0.2 ${HOST_IP} | grep -o '[0-9]*% packet loss' | sed 's/^/T_LOSS /'
dd if=/dev/urandom of=/tmp/f bs=64k count=16 2>/dev/null
echo "T_MD5 $(md5sum < /tmp/f | cut -d' ' -f1)"
n=0; until nc ${HOST_IP} 6000 < /tmp/f; do n=$((n+1)); [ $n -lt 20 ] || exit 12; sleep 1; done
echo T_SENT
sleep 600
`,
    );
    guests.push(g);
    expect((await g.waitFor(/T_LOSS (\d+)%/, 90_000))[1]).toBe('0');
    const md5 = (await g.waitFor(/T_MD5 ([0-9a-f]{32})/, 60_000))[1];
    await g.waitFor(/T_SENT/, 60_000);
    await listenerDone;
    const data = Buffer.concat(chunks);
    expect(data.length).toBe(1 << 20);
    const { createHash } = await import('node:crypto');
    expect(createHash('md5').update(data).digest('hex')).toBe(md5);
    await kill(g);
  }, 180_000);
});
