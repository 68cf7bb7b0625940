/**
 * What the three device targets (blk, net, console) share: guarded guest RAM,
 * driver queues, a recording split queue on the device side, hostile chains
 * built from a request's byte stream, and the checks made after every step.
 *
 * {@link RecordingQueue} is the device's SplitVirtqueue, recording every
 * chain it pops (and forgetting those a device rewinds over, as net does when
 * a frame does not fit); its `addUsed` checks that the head was popped and
 * not completed since, and that the used length is at most the chain's
 * writable bytes (0 for a chain with an error). So "every popped chain is
 * completed exactly once" is checked where it happens, and the writable
 * segments of the popped chains are exactly where the device may write.
 */
import type { VirtioDeviceModel } from '../../src/devices/index.js';
import {
  createVrings,
  type DescriptorChain,
  type GuestMemory,
  SplitVirtqueue,
  type Vring,
} from '../../src/virtio/index.js';
import { usedRingBytes } from '../../src/virtio/split-ring.js';
import type { DriverBuffer, RawDescriptor } from '../support/driver-queue.js';
import { DriverQueue } from '../support/driver-queue.js';
import type { GuestRam } from '../support/guest-ram.js';
import { type AllowedRange, GUARD, GuardedRam } from './guarded-ram.js';
import { check } from './harness.js';
import type { Prng } from './prng.js';

/** r0 (rings, then buffers) and r1 adjacent at 0x10000, r2 after a gap. */
const LAYOUT = [
  { guestPhysAddr: 0x0, size: 0x10000, checked: true },
  { guestPhysAddr: 0x10000, size: 0x4000, checked: true },
  { guestPhysAddr: 0x40000, size: 0x8000, checked: true },
];
/** Buffers are bump-allocated from here in r0 (rings come first), and in r2. */
const R0_BUFFERS = 0x6000;
const R0_END = 0xf000;
const R2 = 0x40000;
const R2_END = 0x48000;
/** A straddling buffer starts this far before the r0/r1 boundary at most. */
const STRADDLE = 0x800;

let shared: GuardedRam | null = null;

/** One popped chain as the device got it. */
interface Popped {
  /** avail position it was popped from (u16). */
  pos: number;
  head: number;
  writable: number;
  ok: boolean;
  done: boolean;
}

/** The device-side split queue, recording pops and checking completions. */
export class RecordingQueue extends SplitVirtqueue {
  readonly pops: Popped[] = [];
  /** Writable segments of every chain popped (where the device may write). */
  readonly allowed: AllowedRange[] = [];
  /** Called with every chain popped without error (content checks of a target). */
  onPop: ((chain: DescriptorChain) => void) | null = null;

  override get lastAvailIdx(): number {
    return super.lastAvailIdx;
  }

  override set lastAvailIdx(value: number) {
    // A rewind hands back the chains popped since `value`: they will be popped again.
    const back = (super.lastAvailIdx - value) & 0xffff;
    if (back > 0 && back <= this.size) {
      for (const p of this.pops) {
        if (!p.done && ((p.pos - value) & 0xffff) < back) p.done = true;
      }
    }
    super.lastAvailIdx = value;
  }

  override pop(chain: DescriptorChain): boolean {
    const pos = super.lastAvailIdx;
    if (!super.pop(chain)) return false;
    const ok = chain.error === null;
    this.pops.push({ pos, head: chain.head, writable: chain.writableBytes, ok, done: false });
    for (let s = chain.firstWritable; s < chain.segments; s++) {
      this.allowed.push({
        region: chain.region[s],
        offset: chain.offset[s],
        length: chain.length[s],
      });
    }
    if (ok) this.onPop?.(chain);
    return true;
  }

  override addUsed(head: number, len: number): void {
    // A hostile driver may publish a head again while its chain is in flight:
    // the completion then belongs to one of that head's open pops that fits,
    // the most constrained first (failed chains, then the fewest writable bytes).
    const open = this.pops.filter((x) => !x.done && x.head === head);
    check(open.length > 0, `chain ${head} completed but not popped (or completed twice)`);
    open.sort((a, b) => Number(a.ok) - Number(b.ok) || a.writable - b.writable);
    const p = open.find((x) => len <= x.writable && (x.ok || len === 0));
    check(p !== undefined, () => {
      const has = open.map((x) => `${x.writable}${x.ok ? '' : ' (error)'}`).join(', ');
      return `chain ${head} completed with ${len} bytes, it has ${has} writable`;
    });
    p.done = true;
    super.addUsed(head, len);
  }

  /** Chains popped and not completed (nor rewound over). */
  get outstanding(): number {
    return this.pops.filter((p) => !p.done).length;
  }
}

/** A buffer of a generated chain: its length, whether the device may write it, and where it goes. */
export interface BufferSpec {
  len: number;
  write: boolean;
  /** 0: anywhere, 1: straddling the r0/r1 boundary, 2: in r2. */
  place: number;
}

/** One chain: readable bytes cut into buffers, then writable buffers. */
export interface ChainSpec {
  queue: number;
  /** Readable bytes (hex in JSON). */
  data: Uint8Array;
  buffers: BufferSpec[];
  indirect: boolean;
}

/** A raw descriptor move (any address, length, flags) and a publish of its index. */
export interface RawSpec {
  queue: number;
  index: number;
  d: RawDescriptor;
}

/** Cuts `data` into readable buffers and adds writable ones of the given lengths. */
export function chainOf(rng: Prng, queue: number, data: Uint8Array, writable: number[]): ChainSpec {
  const buffers: BufferSpec[] = [];
  let left = data.length;
  while (left > 0) {
    const len = rng.chance(0.5)
      ? left
      : Math.max(1, Math.min(left, rng.pick([1, 2, 3, 4, 8, 11, 12, 13, 16, rng.range(1, left)])));
    buffers.push({ len, write: false, place: placeOf(rng) });
    left -= len;
  }
  for (const len of writable) buffers.push({ len, write: true, place: placeOf(rng) });
  if (buffers.length === 0) buffers.push({ len: 0, write: rng.chance(0.5), place: 0 });
  return { queue, data, buffers, indirect: rng.chance(0.25) };
}

function placeOf(rng: Prng): number {
  return rng.chance(0.15) ? 1 : rng.chance(0.2) ? 2 : 0;
}

/** Splits `len` writable bytes into 1..3 buffers (sometimes with a zero-length one). */
export function writableParts(rng: Prng, len: number): number[] {
  if (len <= 1 || rng.chance(0.6)) return [len];
  const cut = rng.range(1, len - 1);
  return rng.chance(0.8) ? [cut, len - cut] : [cut, 0, len - cut];
}

/** A raw descriptor aimed at the edges of guest RAM. */
export function rawDescriptor(rng: Prng, queue: number, size: number): RawSpec {
  const r = rng.pick(LAYOUT);
  const edge = rng.chance(0.5) ? r.guestPhysAddr : r.guestPhysAddr + r.size;
  const addr = rng.pick([
    edge,
    Math.max(0, edge - rng.range(1, 64)),
    rng.u32(),
    R2 + rng.below(0x1000),
    2 ** 40,
  ]);
  const len = rng.pick([0, 1, 12, 16, 17, 512, 0x1000, 0x8000, 0xffff_ffff, rng.below(600)]);
  const flags = rng.pick([0, 1, 2, 3, 4, 6, 7, rng.below(8)]);
  return { queue, index: rng.below(size), d: { addr, len, flags, next: rng.below(size + 2) } };
}

/** One device in guarded RAM with a driver queue and a recording queue per virtqueue. */
export class Rig {
  readonly g: GuardedRam;
  readonly ram: GuestRam;
  readonly memory: GuestMemory;
  readonly vrings: Vring[];
  readonly drivers: DriverQueue[] = [];
  readonly queues: RecordingQueue[] = [];
  /** Queues the rig restarted after the guest broke them. */
  restarts = 0;
  private r0 = R0_BUFFERS;
  private r2 = R2;

  constructor(
    readonly device: VirtioDeviceModel<unknown>,
    readonly size: number,
    readonly eventIdx: boolean,
  ) {
    shared ??= new GuardedRam(LAYOUT);
    this.g = shared;
    this.g.clear(0xc3);
    this.ram = this.g.ram();
    this.memory = this.ram.toGuestMemory();
    this.vrings = createVrings(device.numQueues, () => {});
    device.activate(this.vrings);
    device.setMemory(this.memory);
    for (let i = 0; i < device.numQueues; i++) this.restart(i);
  }

  /** (Re)starts queue `i` on a fresh driver ring (as SET_VRING_KICK + ENABLE after a reset). */
  restart(i: number): void {
    const drv = new DriverQueue(this.ram, this.size, { eventIdx: this.eventIdx });
    const q = new RecordingQueue(this.memory, drv.config({ indirect: true }), this.size + 16);
    this.drivers[i] = drv;
    this.queues[i] = q;
    this.vrings[i].start(q);
    this.vrings[i].enabled = true;
  }

  /** Bump-allocates a buffer of `len` bytes at `place`. */
  private place(len: number, place: number): number {
    if (place === 1 && len >= 2) return 0x10000 - 1 - ((len * 7) % Math.min(len - 1, STRADDLE));
    if (place === 2 || this.r0 + len > R0_END) {
      if (this.r2 + len > R2_END) this.r2 = R2;
      const at = this.r2;
      this.r2 += len + 1;
      return at;
    }
    const at = this.r0;
    this.r0 += len + 1;
    return at;
  }

  /** Puts a chain in guest RAM and publishes it (skipped when the ring is full). */
  add(c: ChainSpec): void {
    const drv = this.drivers[c.queue];
    const buffers: DriverBuffer[] = [];
    let done = 0;
    for (const b of c.buffers) {
      const len = Math.min(b.len, 0x8000);
      const addr = this.place(len, b.place);
      if (!b.write) {
        const part = c.data.subarray(done, done + len);
        if (part.length > 0) this.ram.write(addr, part);
        done += part.length;
      }
      buffers.push({ addr, len, write: b.write });
    }
    const indirect = c.indirect && buffers.length > 1;
    if (drv.numFree < (indirect ? 1 : buffers.length)) return;
    drv.addChain(buffers, { indirect });
  }

  /** Writes a raw descriptor and publishes its index. */
  raw(r: RawSpec): void {
    const drv = this.drivers[r.queue];
    drv.writeDescriptor(r.index % this.size, r.d);
    drv.publish(r.index % this.size);
  }

  /** Returns used elements to the driver (frees descriptors). */
  reap(): void {
    for (const d of this.drivers) while (d.popUsed() !== null);
  }

  /** Snapshot before a device step. */
  begin(): void {
    this.g.snapshot();
  }

  /** After a device step: guards and every byte outside writable buffers and used rings. */
  verify(what: string): void {
    const allowed: AllowedRange[] = [];
    for (let i = 0; i < this.queues.length; i++) {
      allowed.push(...this.queues[i].allowed);
      const used = this.drivers[i].usedRing;
      allowed.push({ region: 0, offset: GUARD + used, length: usedRingBytes(this.size, true) });
    }
    this.g.verify(allowed, what);
  }

  /** Restarts every queue the guest broke; returns how many. */
  restartBroken(): number {
    let n = 0;
    this.vrings.forEach((v, i) => {
      if (v.broken) {
        this.restart(i);
        n++;
      }
    });
    this.restarts += n;
    return n;
  }
}
