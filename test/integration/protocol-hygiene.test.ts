/**
 * Protocol hygiene found on the way (issue 9): SET_VRING_ERR's eventfd is
 * signalled when the guest breaks a ring (not only when an fd fails), a front
 * end that leaves because the daemon serves too few queues gets a log line
 * naming --queues, the default --queues is one per CPU, and the net device
 * offers VIRTIO_NET_F_MTU for the MTU it writes into its config space.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  encodeNetConfig,
  NET_MTU,
  NetFeature,
  netDeviceFeatures,
} from '../../src/devices/net/config.js';
import { native } from '../../src/native.js';
import { encodeU64, encodeVringFd } from '../../src/vhost-user/codec.js';
import { ProtocolFeature, Request } from '../../src/vhost-user/protocol.js';
import { BlkDriver, FrontendConnection } from '../frontend/index.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { type Json, QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

let dir: string;
let daemon: Daemon;
let socket: string;
let control: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-hygiene-'));
  const image = join(dir, 'disk.img');
  socket = join(dir, 'blk.sock');
  control = join(dir, 'blk.qmp');
  writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
  // No --queues: the default.
  daemon = await startDaemon([
    'blk',
    '--socket-path',
    socket,
    '--image',
    image,
    '--control-socket',
    control,
  ]);
});

afterAll(async () => {
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('protocol hygiene', () => {
  it('serves one queue per CPU by default', async () => {
    const c = await QmpClient.connect(control);
    const [d] = (await c.execute('query-devices')).return as { queues: number }[];
    expect(d.queues).toBe(Math.min(64, availableParallelism()));
    c.close();
  });

  it('signals the err fd of a ring the guest breaks (avail index running ahead)', async () => {
    const c = await QmpClient.connect(control);
    const driver = await BlkDriver.create({ socketPath: socket });
    const errFd = native.eventfd(0);
    try {
      expect((await driver.write(0, new Uint8Array(512).fill(1))).status).toBe(0);
      await driver.vmm.conn.request(Request.SET_VRING_ERR, encodeVringFd(0, false), [errFd], {
        needReply: true,
      });
      const q = driver.vmm.queues[0];
      q.driver.setAvailIdx(q.driver.availIdx + 1000); // more than the ring holds: a ring-level violation
      q.kick();
      await waitFor(() => native.eventfdRead(errFd) > 0, 'the err fd to be signalled');
      const broken = await c.event('DEVICE_BROKEN');
      expect((broken.data as Json).queue).toBe(0);
      expect(String((broken.data as Json).code)).toMatch(/^VIRTQ_/);
    } finally {
      native.close(errFd);
      await driver.close().catch(() => {});
      c.close();
    }
  });

  it('signals the err fd of a ring whose avail entry names a head past the table; a bad chain only fails itself', async () => {
    const driver = await BlkDriver.create({ socketPath: socket });
    const errFd = native.eventfd(0);
    try {
      await driver.vmm.conn.request(Request.SET_VRING_ERR, encodeVringFd(0, false), [errFd], {
        needReply: true,
      });
      const q = driver.vmm.queues[0];
      // A chain-level violation (a buffer outside guest memory) completes that chain with used
      // length 0; the ring serves on and the err fd stays quiet (the read after it proves it).
      const bad = driver.submitRaw([{ addr: 2 ** 40, len: 16, write: false }]);
      expect((await bad).len).toBe(0);
      expect((await driver.read(0, 512)).status).toBe(0);
      expect(native.eventfdRead(errFd)).toBe(0);
      // A head index past the descriptor table: the ring is broken, the err fd signalled.
      q.driver.publish(4096);
      q.kick();
      await waitFor(() => native.eventfdRead(errFd) > 0, 'the err fd to be signalled');
    } finally {
      native.close(errFd);
      await driver.close().catch(() => {});
    }
  });

  it('logs a line naming --queues when a front end leaves after GET_QUEUE_NUM, as QEMU does when it wants more', async () => {
    const seen = daemon.log().length;
    const conn = await FrontendConnection.connect(socket);
    const u64 = async (request: number) => {
      const reply = await conn.call(request);
      return new DataView(reply.payload.buffer, reply.payload.byteOffset).getBigUint64(0, true);
    };
    // QEMU 7.2's vhost_user_backend_init, up to its num-queues check.
    await u64(Request.GET_FEATURES);
    const protocol = await u64(Request.GET_PROTOCOL_FEATURES);
    conn.send(
      Request.SET_PROTOCOL_FEATURES,
      encodeU64(protocol & (1n << BigInt(ProtocolFeature.MQ))),
    );
    expect(Number(await u64(Request.GET_QUEUE_NUM))).toBe(Math.min(64, availableParallelism()));
    conn.close();
    const line = await waitFor(
      () =>
        daemon
          .log()
          .slice(seen)
          .split('\n')
          .find((l) => l.includes('GET_QUEUE_NUM')),
      'the --queues hint in the log',
    );
    expect(line).toMatch(/warn: .*larger --queues/);
  });

  it('offers VIRTIO_NET_F_MTU with the MTU its config space carries', () => {
    const g = { mac: new Uint8Array([2, 0, 0, 0, 0, 1]), queuePairs: 1, linkUp: true };
    expect(netDeviceFeatures(g) & (1n << BigInt(NetFeature.MTU))).not.toBe(0n);
    const config = encodeNetConfig(g);
    expect(new DataView(config.buffer).getUint16(10, true)).toBe(NET_MTU);
  });
});
