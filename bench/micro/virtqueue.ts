/**
 * Question: what does the device pay per request on the ring itself — pop a
 * chain and push it to the used ring — with and without EVENT_IDX?
 *
 * The driver side publishes ready-made 3-descriptor chains (header, data,
 * status, as virtio-blk sends them); a call publishes a batch, pops it and
 * pushes it used, then asks once whether to interrupt, as BlkDevice does.
 */
import { DescriptorChain, SplitVirtqueue } from '../../src/virtio/index.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/virtio/split-ring.js';
import { DriverQueue } from '../../test/support/driver-queue.js';
import { GuestRam } from '../../test/support/guest-ram.js';
import { isMain, type MicroCase, type MicroRow, runMicro } from './common.js';

const QUEUE_SIZE = 256;
const BATCH = 64;

/** A queue with BATCH fixed chains of 3 descriptors each, heads 0, 3, 6, ... */
function setup(eventIdx: boolean): { dq: DriverQueue; vq: SplitVirtqueue; heads: number[] } {
  const ram = new GuestRam([{ guestPhysAddr: 0, size: 4 * 1024 * 1024 }]);
  const dq = new DriverQueue(ram, QUEUE_SIZE, { eventIdx });
  const data = ram.alloc(BATCH * 4096, 4096);
  const heads: number[] = [];
  for (let i = 0; i < BATCH; i++) {
    const d = 3 * i;
    const hdr = ram.alloc(16);
    const status = ram.alloc(1);
    dq.writeDescriptor(d, { addr: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT, next: d + 1 });
    dq.writeDescriptor(d + 1, {
      addr: data + i * 4096,
      len: 4096,
      flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
      next: d + 2,
    });
    dq.writeDescriptor(d + 2, { addr: status, len: 1, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    heads.push(d);
  }
  const vq = new SplitVirtqueue(ram.toGuestMemory(), dq.config());
  return { dq, vq, heads };
}

function popPushCase(name: string, eventIdx: boolean): MicroCase {
  const { dq, vq, heads } = setup(eventIdx);
  const chain = new DescriptorChain(16);
  return {
    name,
    opsPerCall: BATCH,
    fn: () => {
      for (const h of heads) dq.publish(h);
      vq.setNotification(false);
      while (vq.pop(chain)) vq.pushUsed(chain.head, 4097);
      vq.setNotification(true);
      vq.needsInterrupt();
    },
  };
}

/** Runs the question and prints its table. */
export function run(): Promise<MicroRow[]> {
  return runMicro('virtqueue: publish + pop + pushUsed of a 3-descriptor chain, batches of 64', [
    popPushCase('flags (no EVENT_IDX)', false),
    popPushCase('EVENT_IDX', true),
  ]);
}

if (isMain(import.meta.url)) await run();
