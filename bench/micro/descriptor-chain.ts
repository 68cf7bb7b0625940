/**
 * Question: how does walking a descriptor chain scale with its length, and
 * what does an indirect table cost over direct descriptors?
 *
 * Each call publishes one chain of N descriptors (a readable header, N-2
 * writable 4 KiB data segments, a status byte), pops it — the walk, with
 * every address translated and bounds-checked — and returns it used.
 */
import { DescriptorChain, SplitVirtqueue } from '../../src/virtio/index.js';
import { type DriverBuffer, DriverQueue } from '../../test/support/driver-queue.js';
import { GuestRam } from '../../test/support/guest-ram.js';
import { isMain, type MicroCase, type MicroRow, runMicro } from './common.js';

const QUEUE_SIZE = 256;

function walkCase(length: number, indirect: boolean): MicroCase {
  const ram = new GuestRam([{ guestPhysAddr: 0, size: 8 * 1024 * 1024 }]);
  const dq = new DriverQueue(ram, QUEUE_SIZE);
  const buffers: DriverBuffer[] = [{ addr: ram.alloc(16), len: 16, write: false }];
  for (let i = 0; i < length - 2; i++)
    buffers.push({ addr: ram.alloc(4096, 4096), len: 4096, write: true });
  buffers.push({ addr: ram.alloc(1), len: 1, write: true });
  // Lay the chain out once; each call republishes the same head.
  const head = dq.addChain(buffers, { indirect });
  const vq = new SplitVirtqueue(ram.toGuestMemory(), dq.config({ indirect }), length + 2);
  const chain = new DescriptorChain(length + 2);
  vq.pop(chain);
  vq.pushUsed(chain.head, 0);
  if (chain.error !== null || chain.segments !== length)
    throw new Error(`bench setup: chain ${chain.error ?? chain.segments}`);
  return {
    name: `${indirect ? 'indirect' : 'direct'}, ${length} descriptors`,
    opsPerCall: 1,
    fn: () => {
      dq.publish(head);
      vq.pop(chain);
      vq.pushUsed(chain.head, 1);
    },
  };
}

/** Runs the question and prints its table. */
export function run(): Promise<MicroRow[]> {
  return runMicro('descriptor chain: pop (walk + translate + check) of one chain, by length', [
    walkCase(3, false),
    walkCase(3, true),
    walkCase(18, false),
    walkCase(18, true),
    walkCase(130, true),
  ]);
}

if (isMain(import.meta.url)) await run();
