/**
 * Question: what does the device pay per request on a packed ring — pop a
 * chain and return it — next to the split ring, directly and through a
 * Vring (addUsed per request, one flush per batch, as the devices do)?
 *
 * Both drivers publish 3-descriptor chains (header, data, status, as
 * virtio-blk sends them) in batches of 64. Run standalone:
 * `node dist/bench/micro/packed-virtqueue.js [--quick]`.
 */
import {
  DescriptorChain,
  PackedVirtqueue,
  SplitVirtqueue,
  type Virtqueue,
  Vring,
} from '../../src/virtio/index.js';
import { DriverQueue } from '../../test/support/driver-queue.js';
import { GuestRam } from '../../test/support/guest-ram.js';
import { PackedDriverQueue } from '../../test/support/packed-driver.js';
import { isMain, type MicroCase, type MicroRow, runMicro } from './common.js';

const QUEUE_SIZE = 256;
const BATCH = 64;

interface Rig {
  publish(): void;
  vq: Virtqueue;
}

function rig(packed: boolean, eventIdx: boolean): Rig {
  const ram = new GuestRam([{ guestPhysAddr: 0, size: 4 * 1024 * 1024 }]);
  const dq = packed
    ? new PackedDriverQueue(ram, QUEUE_SIZE, { eventIdx })
    : new DriverQueue(ram, QUEUE_SIZE, { eventIdx });
  const data = ram.alloc(BATCH * 4096, 4096);
  const chains = Array.from({ length: BATCH }, (_, i) => [
    { addr: ram.alloc(16), len: 16, write: false },
    { addr: data + i * 4096, len: 4096, write: true },
    { addr: ram.alloc(1), len: 1, write: true },
  ]);
  const memory = ram.toGuestMemory();
  const vq = packed
    ? new PackedVirtqueue(memory, dq.config())
    : new SplitVirtqueue(memory, dq.config());
  // The driver takes its used elements back after each batch, so ids and slots recycle.
  const publish = () => {
    while (dq.popUsed() !== null);
    for (const c of chains) dq.addChain(c);
  };
  return { publish, vq };
}

function directCase(name: string, packed: boolean, eventIdx: boolean): MicroCase {
  const { publish, vq } = rig(packed, eventIdx);
  const chain = new DescriptorChain(16);
  return {
    name,
    opsPerCall: BATCH,
    fn: () => {
      publish();
      vq.setNotification(false);
      while (vq.pop(chain)) vq.addUsed(chain.head, 4097);
      vq.publishUsed();
      vq.setNotification(true);
      vq.needsInterrupt();
    },
  };
}

function vringCase(name: string, packed: boolean): MicroCase {
  const { publish, vq } = rig(packed, true);
  const v = new Vring(0, () => {});
  v.start(vq);
  v.enabled = true;
  const chain = new DescriptorChain(16);
  return {
    name,
    opsPerCall: BATCH,
    fn: () => {
      publish();
      vq.setNotification(false);
      while (vq.pop(chain)) v.addUsed(chain.head, 4097);
      v.flush();
      vq.setNotification(true);
    },
  };
}

/** Runs the question and prints its table. */
export function run(): Promise<MicroRow[]> {
  return runMicro(
    'packed vs split: publish (driver) + pop + addUsed of a 3-descriptor chain, one publish per batch of 64',
    [
      directCase('split, flags', false, false),
      directCase('packed, flags', true, false),
      directCase('split, EVENT_IDX', false, true),
      directCase('packed, EVENT_IDX', true, true),
      vringCase('split through a Vring', false),
      vringCase('packed through a Vring', true),
    ],
  );
}

if (isMain(import.meta.url)) await run();
