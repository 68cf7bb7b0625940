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
import { BlkDriver, BlkStatus } from '../frontend/index.js';
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
});
