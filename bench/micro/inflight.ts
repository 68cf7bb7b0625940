/**
 * Question: what does inflight tracking (INFLIGHT_SHMFD, issue 9) add per
 * request on the ring itself — the counter and flag stores at pop, the
 * last-batch link when the used entry is written, the clearing walk after
 * used.idx is published — against the same ring without a region?
 *
 * Two shapes, each with and without a region (a real memfd mapping, as
 * SET_INFLIGHT_FD gives): one request per batch (QD1: publish, pop, add used,
 * publish used) and 32 per batch (QD32: 32 popped, 32 used entries, one
 * publish), as BlkDevice drives the ring. Rounds interleave the cases.
 *
 *   node dist/bench/micro/inflight.js [--quick] [--rounds N]
 */
import { native } from '../../src/native.js';
import { DescriptorChain, SplitVirtqueue } from '../../src/virtio/index.js';
import { InflightQueue, inflightAreaBytes } from '../../src/virtio/inflight.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/virtio/split-ring.js';
import { DriverQueue } from '../../test/support/driver-queue.js';
import { GuestRam } from '../../test/support/guest-ram.js';
import { isMain, type MicroCase, type MicroRow, runMicro } from './common.js';

const QUEUE_SIZE = 256;

/** A queue with `batch` fixed 3-descriptor chains (header, data, status), optionally tracked. */
function setup(batch: number, tracked: boolean) {
  const ram = new GuestRam([{ guestPhysAddr: 0, size: 4 * 1024 * 1024 }]);
  const dq = new DriverQueue(ram, QUEUE_SIZE);
  const data = ram.alloc(batch * 4096, 4096);
  const heads: number[] = [];
  for (let i = 0; i < batch; i++) {
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
  if (tracked) {
    const bytes = inflightAreaBytes(1, QUEUE_SIZE);
    const fd = native.memfdCreate('bench-inflight', bytes);
    const buffer = native.mmapShared(fd, bytes, 0);
    native.close(fd);
    vq.attachInflight(new InflightQueue({ buffer, offset: 0, queueSize: QUEUE_SIZE }));
  }
  return { dq, vq, heads };
}

function batchCase(name: string, batch: number, tracked: boolean): MicroCase {
  const { dq, vq, heads } = setup(batch, tracked);
  const chain = new DescriptorChain(16);
  return {
    name,
    opsPerCall: batch,
    fn: () => {
      for (const h of heads) dq.publish(h);
      while (vq.pop(chain)) vq.addUsed(chain.head, 4097);
      vq.publishUsed();
      vq.needsInterrupt();
    },
  };
}

/** Runs the question (interleaved rounds) and prints one table per round. */
export async function run(rounds = 3): Promise<MicroRow[][]> {
  const all: MicroRow[][] = [];
  for (let r = 1; r <= rounds; r++) {
    all.push(
      await runMicro(`inflight tracking, round ${r}: ns per request on the ring`, [
        batchCase('QD1  off', 1, false),
        batchCase('QD1  on', 1, true),
        batchCase('QD32 off', 32, false),
        batchCase('QD32 on', 32, true),
      ]),
    );
  }
  return all;
}

if (isMain(import.meta.url)) {
  const i = process.argv.indexOf('--rounds');
  await run(i > 0 ? Number(process.argv[i + 1]) : 3);
}
