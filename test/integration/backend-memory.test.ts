/**
 * Memory-table handling of the vhost-user back end as QEMU exercises it: a
 * multi-queue-pair net device is one vhost device per pair over one socket,
 * so the same region arrives in several ADD_MEM_REG messages and leaves in
 * several REM_MEM_REG messages.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import { encodeMemRegion, encodeU64 } from '../../src/vhost-user/codec.js';
import { ProtocolFeature, Request } from '../../src/vhost-user/protocol.js';
import { BlkDriver, BlkStatus, FrontendConnection } from '../frontend/index.js';
import { type Daemon, startDaemon } from '../support/daemon.js';

describe('vhost-user memory slots', () => {
  let dir: string;
  let socket: string;
  let daemon: Daemon;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vhost-rt-mem-'));
    const image = join(dir, 'disk.img');
    socket = join(dir, 'blk.sock');
    writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
    daemon = await startDaemon(['blk', '--socket-path', socket, '--image', image]);
  });
  afterAll(async () => {
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('counts a region added twice and unmaps it only on the last removal', async () => {
    const d = await BlkDriver.create({ socketPath: socket, memory: 'add-mem-reg' });
    try {
      const region = d.vmm.regions[0];
      await d.vmm.addMemReg(region);
      await d.vmm.remMemReg(region);
      const data = new Uint8Array(4096).fill(0x5a);
      expect((await d.write(64, data)).status).toBe(BlkStatus.OK);
      const back = await d.read(64, 4096);
      expect(Buffer.from(back.data!).equals(Buffer.from(data))).toBe(true);
      expect(d.violations).toEqual([]);
    } finally {
      await d.close();
    }
    expect(daemon.log()).not.toMatch(/ADD_MEM_REG|REM_MEM_REG/);
  });

  it('refuses a region larger than the file behind it, and keeps serving', async () => {
    const conn = await FrontendConnection.connect(socket, { replyTimeoutMs: 5000 });
    const fd = native.memfdCreate('short', 1024 * 1024);
    try {
      await conn.request(
        Request.SET_PROTOCOL_FEATURES,
        encodeU64(1n << BigInt(ProtocolFeature.REPLY_ACK)),
      );
      conn.replyAck = true;
      const region = {
        guestPhysAddr: 0,
        size: 16 * 1024 * 1024,
        userAddr: 0x7f0000000000,
        mmapOffset: 0,
      };
      const outcome = await conn
        .request(Request.ADD_MEM_REG, encodeMemRegion(region), [fd], { needReply: true })
        .then(
          () => 'ack',
          (e: { code?: string }) => e.code,
        );
      expect(outcome).toBe('FRONTEND_NACK');
    } finally {
      native.close(fd);
      conn.close();
    }
    expect(daemon.log()).toMatch(
      /claims 16777216 bytes of a 1048576-byte file \(VHOST_USER_BAD_REGION\)/,
    );
    const d = await BlkDriver.create({ socketPath: socket });
    try {
      expect((await d.flush()).status).toBe(BlkStatus.OK);
    } finally {
      await d.close();
    }
  });
});
