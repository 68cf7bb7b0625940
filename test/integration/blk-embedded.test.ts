/**
 * The virtio-blk device model embedded directly, as a VMM author would use it:
 * no vhost-user, no worker thread — guest memory, a split virtqueue on a
 * Vring whose signal callback stands for the VMM's interrupt, and the
 * linux-aio engine on a real O_DIRECT file.
 */
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BLK_STAT_NAMES,
  BlkDevice,
  BlkStatus,
  createVrings,
  LinuxAioEngine,
  SplitVirtqueue,
  StatCounters,
} from '../../src/index.js';
import { DriverQueue } from '../support/driver-queue.js';
import { GuestRam } from '../support/guest-ram.js';

const MiB = 1024 * 1024;

describe('BlkDevice embedded without vhost-user', () => {
  let dir: string;
  let image: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'vhost-rt-embed-'));
    image = join(dir, 'disk.img');
    writeFileSync(image, Buffer.alloc(8 * MiB));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('serves a write and a read through guest memory, with one notification per batch', async () => {
    const ram = new GuestRam([{ guestPhysAddr: 0, size: 4 * MiB }]);
    const driver = new DriverQueue(ram, 64);
    const memory = ram.toGuestMemory();
    const engine = new LinuxAioEngine({
      path: image,
      readonly: false,
      direct: true,
      depth: 64,
      maxIovs: 1024,
      warn: () => {},
    });
    let notified = 0;
    let wake: () => void = () => {};
    const stats = StatCounters.create(BLK_STAT_NAMES);
    const device = new BlkDevice({
      engine,
      geometry: {
        imageBytes: engine.sizeBytes,
        blockSize: 512,
        numQueues: 1,
        segMax: 62,
        readonly: false,
      },
      serial: 'embedded',
      queueSize: 64,
      stats,
      warn: (m) => {
        throw new Error(`unexpected warning: ${m}`);
      },
    });
    const vrings = createVrings(device.numQueues, () => {
      notified++;
      wake();
    });
    device.activate(vrings);
    device.setMemory(memory);
    vrings[0].start(new SplitVirtqueue(memory, driver.config(), 64));
    vrings[0].enabled = true;
    device.kick(0);

    const request = (type: number, sector: number, dataLen: number, write: boolean) => {
      const header = ram.alloc(16, 16);
      const data = ram.alloc(dataLen, 4096);
      const status = ram.alloc(1, 1);
      const h = new DataView(new ArrayBuffer(16));
      h.setUint32(0, type, true);
      h.setUint32(8, sector, true);
      ram.write(header, new Uint8Array(h.buffer));
      driver.addChain([
        { addr: header, len: 16, write: false },
        { addr: data, len: dataLen, write },
        { addr: status, len: 1, write: true },
      ]);
      return { data, status };
    };
    const waitForNotify = () =>
      new Promise<void>((resolve) => {
        wake = resolve;
      });

    const payload = new Uint8Array(8192).map((_, i) => (i * 7) & 0xff);
    const w = request(1, 100, payload.length, false);
    ram.write(w.data, payload);
    const r = request(0, 100, payload.length, true);
    // Both requests in one kick: the write is submitted before the read in the same io_submit.
    const done = waitForNotify();
    device.kick(0);
    await done;
    const used: { id: number; len: number }[] = [];
    for (let u = driver.popUsed(); u !== null; u = driver.popUsed()) used.push(u);
    if (used.length < 2) {
      await waitForNotify();
      for (let u = driver.popUsed(); u !== null; u = driver.popUsed()) used.push(u);
    }
    expect(used).toHaveLength(2);
    expect(ram.read(w.status, 1)[0]).toBe(BlkStatus.OK);
    expect(ram.read(r.status, 1)[0]).toBe(BlkStatus.OK);

    const fd = openSync(image, 'r');
    const onDisk = Buffer.alloc(payload.length);
    readSync(fd, onDisk, 0, payload.length, 100 * 512);
    closeSync(fd);
    expect(onDisk.equals(payload)).toBe(true);
    expect(notified).toBeLessThanOrEqual(2);
    expect(stats.snapshot()).toMatchObject({ requests: 2, bytesWritten: 8192 });
    await device.close();
  });
});
