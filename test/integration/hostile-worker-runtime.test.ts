/**
 * One device's failure never stops the others (issue 11): an exception out of
 * a device model while it handles a kick or a completion is caught at the
 * worker runtime's boundary. The device breaks (every ring, DEVICE_BROKEN,
 * now and whenever a ring starts again), commands that would wait on the
 * model forever give up, and the thread — with the other devices it serves,
 * as in --single-thread mode — goes on. The runtime runs here on the test's
 * own thread with real eventfds, as it does in a device worker.
 */
import { describe, expect, it } from 'vitest';
import { BlkDevice } from '../../src/devices/blk/device.js';
import { BLK_STAT_NAMES } from '../../src/devices/blk/stats.js';
import type { VirtioDeviceModel } from '../../src/devices/index.js';
import type { IoCompletion, IoEngine } from '../../src/io/engine.js';
import { StatCounters } from '../../src/locking/index.js';
import { native } from '../../src/native.js';
import type { Vring } from '../../src/virtio/index.js';
import { RingBreak } from '../../src/worker/messages.js';
import { DeviceRuntime, type RuntimeEvents } from '../../src/worker/runtime.js';
import { DriverQueue } from '../support/driver-queue.js';
import { GuestRam } from '../support/guest-ram.js';
import { waitFor } from '../support/wait.js';

/** A model that counts kicks, throws when told to, and (unless `settles`) never settles what it owes. */
class FaultyModel implements VirtioDeviceModel {
  readonly kind = 'faulty';
  readonly features = 0n;
  readonly numQueues = 2;
  readonly maxQueueSize = 16;
  readonly configSize = 0;
  readonly kicks: number[] = [];
  throwOnKick = false;
  vrings: readonly Vring[] = [];

  constructor(private readonly settles = false) {}

  readConfig(_offset: number, out: Uint8Array): void {
    out.fill(0);
  }
  writeConfig(): boolean {
    return false;
  }
  activate(vrings: readonly Vring[]): void {
    this.vrings = vrings;
  }
  setMemory(): void {}
  kick(index: number): void {
    this.kicks.push(index);
    if (this.throwOnKick) throw new TypeError('model bug: undefined is not a function');
  }
  /** A model that lost count of its requests: quiesce and close never settle. */
  quiesce(): Promise<void> {
    return this.settles ? Promise.resolve() : new Promise(() => {});
  }
  close(): Promise<void> {
    return this.quiesce();
  }
}

/** What a runtime reported. */
function recorder(): RuntimeEvents & { broken_: string[]; logs: string[] } {
  const broken_: string[] = [];
  const logs: string[] = [];
  return {
    broken_,
    logs,
    broken: (queue, code, reason) => broken_.push(`${queue} ${code} ${reason}`),
    log: (level, message) => logs.push(`${level}: ${message}`),
  };
}

/** A runtime over `model` with memory, both rings started and enabled; returns the kick fds. */
async function started(runtime: DeviceRuntime, ram: GuestRam, queues: DriverQueue[]) {
  await runtime.handle({ op: 'memory', device: 0, regions: [...ram.regions] });
  const kickFds: number[] = [];
  for (const [index, q] of queues.entries()) {
    const kickFd = native.eventfd(0);
    kickFds.push(kickFd);
    await runtime.handle({
      op: 'start-queue',
      device: 0,
      index,
      config: q.config(),
      lastAvailIdx: 0,
      kickFd,
      callFd: -1,
      errFd: -1,
      inflight: null,
    });
    await runtime.handle({ op: 'enable', device: 0, index, enabled: true });
  }
  return kickFds;
}

describe('DeviceRuntime boundary', () => {
  it('breaks a device whose model throws on a kick; the thread and a neighbour go on', async () => {
    const ram = new GuestRam([{ guestPhysAddr: 0, size: 1 << 16 }]);
    const queues = [new DriverQueue(ram, 16), new DriverQueue(ram, 16)];
    const faulty = new FaultyModel();
    const healthy = new FaultyModel(true);
    const events = recorder();
    const runtime = new DeviceRuntime(faulty, { pollUs: 0 }, events);
    const neighbour = new DeviceRuntime(healthy, { pollUs: 0 }, recorder());
    const fds = [
      ...(await started(runtime, ram, queues)),
      ...(await started(neighbour, ram, queues)),
    ];
    try {
      expect(faulty.kicks).toEqual([0, 1]);
      faulty.throwOnKick = true;
      native.eventfdWrite(fds[0], 1);
      await waitFor(() => events.broken_.length === 2, 'both rings of the faulty device to break');
      expect(events.broken_).toEqual([
        `0 ${RingBreak.DEVICE_FAULT} the faulty device model threw TypeError: model bug: undefined is not a function`,
        `1 ${RingBreak.DEVICE_FAULT} the faulty device model threw TypeError: model bug: undefined is not a function`,
      ]);
      expect(events.logs[0]).toMatch(/^error: TypeError: model bug[\s\S]*FaultyModel\.kick/);
      expect(runtime.isFaulted).toBe(true);
      expect(faulty.vrings.every((v) => v.broken)).toBe(true);

      // The neighbour on the same thread is still served.
      native.eventfdWrite(fds[2], 1);
      await waitFor(() => healthy.kicks.length === 3, 'the neighbour to be kicked');
      expect(neighbour.isFaulted).toBe(false);

      // Stopping does not wait for a quiesce the model will never settle.
      await runtime.handle({ op: 'stop-queue', device: 0, index: 0 });
      // A ring started again on a faulted model breaks at once.
      await runtime.handle({
        op: 'start-queue',
        device: 0,
        index: 0,
        config: queues[0].config(),
        lastAvailIdx: 0,
        kickFd: fds[0],
        callFd: -1,
        errFd: -1,
        inflight: null,
      });
      expect(events.broken_.length).toBe(3);
      expect(events.logs.length).toBe(1);
    } finally {
      // Watchers first: libuv must not watch an fd that is closed under it.
      await runtime.close();
      await neighbour.close();
      for (const fd of fds) native.close(fd);
    }
  });

  it('signals the err fd of a ring that breaks', async () => {
    const ram = new GuestRam([{ guestPhysAddr: 0, size: 1 << 16 }]);
    const queues = [new DriverQueue(ram, 16), new DriverQueue(ram, 16)];
    const model = new FaultyModel();
    const events = recorder();
    const runtime = new DeviceRuntime(model, { pollUs: 0 }, events);
    const fds = await started(runtime, ram, queues);
    const errFd = native.eventfd(0);
    try {
      await runtime.handle({ op: 'set-err', device: 0, index: 1, fd: errFd });
      runtime.fault(new Error('engine completion threw'));
      expect(native.eventfdRead(errFd)).toBe(1);
      expect(events.broken_.map((e) => e.split(' ')[0])).toEqual(['0', '1']);
    } finally {
      await runtime.close();
      for (const fd of [...fds, errFd]) native.close(fd);
    }
  });
});

/** An engine that only keeps the completion handler the device installs. */
class CapturingEngine implements IoEngine {
  readonly name = 'sync' as const;
  readonly direct = false;
  readonly sizeBytes = 1 << 20;
  readonly alignment = 1;
  readonly inFlight = 0;
  readonly stagedIovs = 0;
  handler: IoCompletion = () => {};
  batchDone: () => void = () => {};
  setBuffers(): void {}
  addIov(): boolean {
    return true;
  }
  queueReadWrite(): boolean {
    return true;
  }
  queueSlowOp(): void {}
  submit(): void {}
  onComplete(handler: IoCompletion, batchDone: () => void): void {
    this.handler = handler;
    this.batchDone = batchDone;
  }
  close(): void {}
}

describe('BlkDevice completion boundary', () => {
  const geometry = {
    imageBytes: 1 << 20,
    blockSize: 512,
    numQueues: 1,
    segMax: 14,
    readonly: false,
  };

  function device(fault?: (error: unknown) => void): CapturingEngine {
    const engine = new CapturingEngine();
    new BlkDevice({
      engine,
      geometry,
      serial: 'x',
      queueSize: 16,
      stats: StatCounters.create(BLK_STAT_NAMES),
      warn: () => {},
      fault,
    });
    return engine;
  }

  it('hands an exception out of a completion to its host (DeviceEnv.fault)', () => {
    const faults: unknown[] = [];
    const engine = device((e) => faults.push(e));
    // A completion for a request that was never started: the model trips over it.
    expect(() => engine.handler(1e6, 0)).not.toThrow();
    expect(() => engine.batchDone()).not.toThrow();
    expect(faults.length).toBe(1);
    expect(faults[0]).toBeInstanceOf(RangeError);
  });

  it('lets it propagate when the host gives no fault hook', () => {
    const engine = device();
    expect(() => engine.handler(1e6, 0)).toThrow(RangeError);
  });
});
