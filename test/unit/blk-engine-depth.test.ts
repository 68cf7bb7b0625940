/**
 * An embedder's engine whose depth is below the device's request slots (the
 * daemon never builds one): a request the engine keeps refusing fails with
 * IOERR, once, instead of recursing until the stack overflows (found by the
 * blk fuzz target).
 */
import { expect, it } from 'vitest';
import { BlkRequestType, BlkStatus } from '../../src/devices/blk/config.js';
import { BlkDevice } from '../../src/devices/blk/device.js';
import { BLK_STAT_NAMES } from '../../src/devices/blk/stats.js';
import type { IoEngine } from '../../src/io/engine.js';
import { StatCounters } from '../../src/locking/index.js';
import { DriverQueue } from '../support/driver-queue.js';
import { embed } from '../support/embedded.js';
import { GuestRam } from '../support/guest-ram.js';

it('a READ the engine refuses (depth 1, one op in flight) fails with IOERR and the device lives', () => {
  let inFlight = 0;
  let staged = 0;
  const engine: IoEngine = {
    name: 'sync',
    direct: false,
    alignment: 1,
    sizeBytes: 1 << 20,
    get inFlight() {
      return inFlight;
    },
    get stagedIovs() {
      return staged;
    },
    setBuffers() {},
    addIov: () => {
      staged++;
      return true;
    },
    // Depth 1: staged + in flight >= 1 refuses, as StagingEngine.stageOp does.
    queueReadWrite: () => {
      if (inFlight >= 1) return false;
      inFlight++;
      return true;
    },
    queueSlowOp() {},
    submit() {
      staged = 0;
    },
    onComplete() {},
    close() {},
  };
  const warnings: string[] = [];
  const ram = new GuestRam([{ guestPhysAddr: 0, size: 1 << 20 }]);
  const device = new BlkDevice({
    engine,
    geometry: { imageBytes: 1 << 20, blockSize: 512, numQueues: 1, segMax: 30, readonly: false },
    serial: 's',
    queueSize: 8,
    stats: StatCounters.create(BLK_STAT_NAMES),
    warn: (m) => warnings.push(m),
  });
  const drv = new DriverQueue(ram, 8);
  embed(device, ram.toGuestMemory()).start(0, drv.config());
  const status: number[] = [];
  for (let i = 0; i < 2; i++) {
    const h = ram.alloc(16, 8);
    status.push(ram.alloc(1, 1));
    ram.write(h, Uint8Array.of(BlkRequestType.IN, 0, 0, 0, 0, 0, 0, 0, i, 0, 0, 0, 0, 0, 0, 0));
    drv.addChain([
      { addr: h, len: 16, write: false },
      { addr: ram.alloc(512, 8), len: 512, write: true },
      { addr: status[i], len: 1, write: true },
    ]);
  }
  // The second READ: refused, submitted, refused again -> IOERR (it used to recurse for ever).
  expect(() => device.kick(0)).not.toThrow();
  expect(drv.popUsed()?.len).toBe(1);
  expect(ram.read(status[1], 1)[0]).toBe(BlkStatus.IOERR);
  expect(warnings.join('\n')).toMatch(/depth is below the request slots/);
});
