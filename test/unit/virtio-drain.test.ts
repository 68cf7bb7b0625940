import { describe, expect, it } from 'vitest';
import { DescriptorChain } from '../../src/virtio/descriptor-chain.js';
import { type ChainHandler, DrainResult, DrainStop, drainQueue } from '../../src/virtio/drain.js';
import { ChainErrorCode, QueueBrokenError, QueueErrorCode } from '../../src/virtio/errors.js';
import { VIRTQ_USED_F_NO_NOTIFY } from '../../src/virtio/split-ring.js';
import { SplitVirtqueue } from '../../src/virtio/virtqueue.js';
import { DriverQueue } from '../support/driver-queue.js';
import { GuestRam } from '../support/guest-ram.js';

/**
 * A queue whose "kicks back on" can run driver code first: the driver
 * publishing a chain after the device's last pop found the ring empty and
 * before kicks are enabled again, the race the re-check exists for. Also
 * records every setNotification, like the worker runtime's override.
 */
class RacyQueue extends SplitVirtqueue {
  beforeEnable: (() => void) | null = null;
  calls: boolean[] = [];

  override setNotification(enabled: boolean): void {
    this.calls.push(enabled);
    const race = this.beforeEnable;
    if (enabled && race !== null) {
      this.beforeEnable = null;
      race();
    }
    super.setNotification(enabled);
  }
}

interface Setup {
  ram: GuestRam;
  drv: DriverQueue;
  q: RacyQueue;
  chain: DescriptorChain;
  handler: Recorder;
  result: DrainResult;
}

/** Completes every chain it is handed with addUsed (never publishing); stops when told to. */
class Recorder implements ChainHandler {
  heads: number[] = [];
  errors: (string | null)[] = [];
  /** Handle this many more chains, then ask to stop. */
  slots = Number.POSITIVE_INFINITY;
  onChain: (() => void) | null = null;

  constructor(private readonly q: SplitVirtqueue) {}

  handleChain(chain: DescriptorChain): boolean {
    this.heads.push(chain.head);
    this.errors.push(chain.error);
    this.q.addUsed(chain.head, 0);
    this.onChain?.();
    this.slots--;
    return this.slots > 0;
  }
}

function setup(eventIdx: boolean): Setup {
  const ram = new GuestRam([{ guestPhysAddr: 0, size: 0x10000 }]);
  const drv = new DriverQueue(ram, 16, { eventIdx });
  const q = new RacyQueue(ram.toGuestMemory(), drv.config());
  return {
    ram,
    drv,
    q,
    chain: new DescriptorChain(16),
    handler: new Recorder(q),
    result: new DrainResult(),
  };
}

/** Publishes `n` one-buffer chains; returns their heads. */
function publish(s: Setup, n: number): number[] {
  const heads: number[] = [];
  for (let i = 0; i < n; i++) {
    heads.push(s.drv.addChain([{ addr: s.ram.alloc(64), len: 64, write: true }]));
  }
  return heads;
}

/** Whether the driver would kick for one more chain now (and publishes it). */
function wouldKick(s: Setup): boolean {
  s.drv.needsKick();
  publish(s, 1);
  return s.drv.needsKick();
}

describe('SplitVirtqueue.enableNotification', () => {
  it('turns used.flags NO_NOTIFY off and says whether chains wait (no EVENT_IDX)', () => {
    const s = setup(false);
    s.q.setNotification(false);
    expect(s.drv.usedFlags).toBe(VIRTQ_USED_F_NO_NOTIFY);
    expect(s.q.enableNotification()).toBe(false);
    expect(s.drv.usedFlags).toBe(0);
    s.q.setNotification(false);
    publish(s, 1);
    expect(s.drv.needsKick()).toBe(false); // published while kicks were off: no kick
    expect(s.q.enableNotification()).toBe(true);
    expect(s.drv.usedFlags).toBe(0);
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.q.enableNotification()).toBe(false);
  });

  it('publishes avail_event and says whether chains wait (EVENT_IDX)', () => {
    const s = setup(true);
    publish(s, 2);
    s.q.setNotification(false);
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.q.pop(s.chain)).toBe(true);
    expect(s.q.pop(s.chain)).toBe(false);
    expect(s.drv.availEvent).toBe(0); // kicks off: avail_event left behind
    expect(s.q.enableNotification()).toBe(false);
    expect(s.drv.availEvent).toBe(2);
    expect(wouldKick(s)).toBe(true);
    s.q.setNotification(false);
    expect(s.q.pop(s.chain)).toBe(true);
    expect(wouldKick(s)).toBe(false);
    expect(s.q.enableNotification()).toBe(true);
    expect(s.drv.availEvent).toBe(3);
  });

  it('goes through setNotification, so an override (adaptive polling) still decides', () => {
    const s = setup(false);
    s.q.calls = [];
    s.q.enableNotification();
    expect(s.q.calls).toEqual([true]);
  });

  it('throws QueueBrokenError when avail.idx ran ahead', () => {
    const s = setup(false);
    s.drv.setAvailIdx(100);
    try {
      s.q.enableNotification();
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(QueueBrokenError);
      expect((err as QueueBrokenError).code).toBe(QueueErrorCode.AVAIL_AHEAD);
    }
  });
});

describe.each([false, true])('drainQueue (EVENT_IDX %s)', (eventIdx) => {
  it('pops everything, in order, then turns kicks back on', () => {
    const s = setup(eventIdx);
    const heads = publish(s, 5);
    const stop = drainQueue(s.q, s.chain, s.handler, Number.POSITIVE_INFINITY, s.result);
    expect(stop).toBe(DrainStop.EMPTY);
    expect(s.result.stop).toBe(DrainStop.EMPTY);
    expect(s.result.popped).toBe(5);
    expect(s.handler.heads).toEqual(heads);
    expect(s.q.calls.at(-1)).toBe(true);
    expect(wouldKick(s)).toBe(true);
  });

  it('publishes nothing itself: used.idx moves only at publishUsed', () => {
    const s = setup(eventIdx);
    publish(s, 4);
    drainQueue(s.q, s.chain, s.handler, Number.POSITIVE_INFINITY, s.result);
    expect(s.q.usedIdx).toBe(4); // four entries added...
    expect(s.drv.usedIdx).toBe(0); // ...none visible to the driver
    expect(s.drv.popUsed()).toBeNull();
    s.q.publishUsed();
    expect(s.drv.usedIdx).toBe(4);
  });

  it('stops at the budget with kicks still off; the next run goes on', () => {
    const s = setup(eventIdx);
    const heads = publish(s, 5);
    expect(drainQueue(s.q, s.chain, s.handler, 3, s.result)).toBe(DrainStop.BUDGET);
    expect(s.result.popped).toBe(3);
    expect(s.q.pending()).toBe(2);
    expect(wouldKick(s)).toBe(false);
    expect(drainQueue(s.q, s.chain, s.handler, 3, s.result)).toBe(DrainStop.BUDGET);
    expect(drainQueue(s.q, s.chain, s.handler, 3, s.result)).toBe(DrainStop.EMPTY);
    expect(s.result.popped).toBe(0);
    expect(s.handler.heads.slice(0, 5)).toEqual(heads);
    expect(s.handler.heads).toHaveLength(6);
    expect(wouldKick(s)).toBe(true);
  });

  it('stops when the handler says so, leaving the rest in the ring and kicks off', () => {
    const s = setup(eventIdx);
    publish(s, 5);
    s.handler.slots = 2; // a blk device with two free request slots
    expect(drainQueue(s.q, s.chain, s.handler, 2, s.result)).toBe(DrainStop.HANDLER);
    expect(s.result.popped).toBe(2);
    expect(s.q.pending()).toBe(3);
    expect(wouldKick(s)).toBe(false);
    s.handler.slots = Number.POSITIVE_INFINITY; // slots freed: the device runs again
    expect(drainQueue(s.q, s.chain, s.handler, Number.POSITIVE_INFINITY, s.result)).toBe(
      DrainStop.EMPTY,
    );
    expect(s.result.popped).toBe(4);
    expect(wouldKick(s)).toBe(true);
  });

  it('leaves kicks off after a handler stop on the last chain, until the next run', () => {
    const s = setup(eventIdx);
    publish(s, 1);
    s.handler.slots = 1;
    expect(drainQueue(s.q, s.chain, s.handler, 8, s.result)).toBe(DrainStop.HANDLER);
    expect(s.q.pending()).toBe(0);
    expect(wouldKick(s)).toBe(false); // hence: the caller must always run again
    s.handler.slots = Number.POSITIVE_INFINITY;
    expect(drainQueue(s.q, s.chain, s.handler, 8, s.result)).toBe(DrainStop.EMPTY);
    expect(s.result.popped).toBe(1);
    expect(wouldKick(s)).toBe(true);
  });

  it('finds a chain published between the last pop and kicks back on', () => {
    const s = setup(eventIdx);
    const heads = publish(s, 3);
    s.drv.needsKick();
    s.q.beforeEnable = () => {
      heads.push(...publish(s, 1));
      expect(s.drv.needsKick()).toBe(false); // the driver sent no kick for it
    };
    expect(drainQueue(s.q, s.chain, s.handler, Number.POSITIVE_INFINITY, s.result)).toBe(
      DrainStop.EMPTY,
    );
    expect(s.result.popped).toBe(4);
    expect(s.handler.heads).toEqual(heads);
    expect(s.q.calls).toEqual([false, true, false, true]);
  });

  it('hands error chains to the handler like any other', () => {
    const s = setup(eventIdx);
    s.drv.writeDescriptor(15, { addr: 0xdead_0000, len: 16, flags: 0, next: 0 });
    s.drv.publish(15);
    publish(s, 1);
    drainQueue(s.q, s.chain, s.handler, Number.POSITIVE_INFINITY, s.result);
    expect(s.handler.heads[0]).toBe(15);
    expect(s.handler.errors).toEqual([ChainErrorCode.DESC_UNMAPPED, null]);
  });

  it('passes a broken ring on, with the chains popped before it counted', () => {
    const s = setup(eventIdx);
    publish(s, 2);
    s.handler.onChain = () => {
      if (s.handler.heads.length === 1) s.drv.setAvailIdx(s.drv.availIdx + 100);
    };
    expect(() => drainQueue(s.q, s.chain, s.handler, Number.POSITIVE_INFINITY, s.result)).toThrow(
      QueueBrokenError,
    );
    expect(s.result.popped).toBe(2);
  });

  it('refuses a budget that is not a positive integer', () => {
    const s = setup(eventIdx);
    for (const budget of [0, -1, 1.5, Number.NaN]) {
      expect(() => drainQueue(s.q, s.chain, s.handler, budget, s.result)).toThrow(RangeError);
    }
    expect(s.q.calls).toEqual([]);
  });
});
