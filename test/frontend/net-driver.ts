/**
 * A virtio-net driver on top of {@link Vmm}: transmits frames with the
 * 12-byte virtio_net_hdr (VERSION_1) on transmitq 0, keeps receive buffers
 * posted on receiveq 0, and reassembles received frames from one or several
 * buffers (num_buffers, MRG_RXBUF) as Linux does (virtio 1.x §5.1.6).
 */
import type { DriverBuffer } from '../support/driver-queue.js';
import { FrontendError } from './errors.js';
import { GuestHeap } from './guest-heap.js';
import { bitsOf, Vmm, type VmmOptions, type VmmQueue } from './vmm.js';

/** Feature bits this driver knows (§5.1.3) and the transport bits it uses. */
export const NetDriverFeature = {
  MAC: 5,
  MRG_RXBUF: 15,
  STATUS: 16,
  MQ: 22,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  VERSION_1: 32,
} as const;

/** What the driver accepts by default. */
export const NET_DRIVER_FEATURES = bitsOf(Object.values(NetDriverFeature));
/** virtio_net_hdr with num_buffers. */
export const NET_HDR_BYTES = 12;

/** One received frame: the header and the Ethernet frame, and how many buffers carried it. */
export interface ReceivedFrame {
  header: Uint8Array;
  frame: Uint8Array;
  buffers: number;
  /** The receive queue it arrived on (0 for pair 0, 2 for pair 1, ...). */
  queue: number;
}

/** Options of {@link NetDriver.create}. */
export interface NetDriverOptions extends Omit<VmmOptions, 'driverFeatures' | 'queues'> {
  driverFeatures?: bigint;
  /** Receive buffers to keep posted; default 64. 0 posts none (a driver that never receives). */
  rxBuffers?: number;
  /** Bytes of each receive buffer (header included); default 1530 (header + a 1518-byte frame). */
  rxBufferBytes?: number;
  /** Descriptors each receive buffer is split into; default 1. */
  rxSegments?: number;
  /** Bytes of guest RAM for buffers; default 8 MiB. */
  heapBytes?: number;
  /** Queue pairs to set up (more than 1 needs MQ); default 1. Receive buffers go to pair 0 ... */
  pairs?: number;
  /** ... and to the next pairs up to this many (default 1: pair 0 only; at most `pairs`). */
  rxPairs?: number;
  /** Also set up the control queue (queue 2 * pairs); default false. */
  ctrl?: boolean;
}

/** A virtio-net driver bound to one started {@link Vmm}. */
export class NetDriver {
  /** Frames received so far, in order. */
  readonly received: ReceivedFrame[] = [];
  /** Used receive buffers with a length the driver cannot accept, for tests to assert on. */
  readonly violations: string[] = [];
  private readonly heap: GuestHeap;
  /** Posted receive buffers by `queue:head`. */
  private readonly rxAddr = new Map<string, { gpa: number; segments: DriverBuffer[] }>();
  /** In-flight transmissions by `queue:head`. */
  private readonly txAddr = new Map<string, { gpa: number; resolve: (len: number) => void }>();
  /** A frame being reassembled, per receive queue. */
  private readonly pending = new Map<
    number,
    { header: Uint8Array; parts: Uint8Array[]; left: number }
  >();
  private waiters: (() => void)[] = [];
  /** Pairs whose receive queue gets buffers. */
  private readonly rxPairs: number;
  private readonly o: Required<
    Pick<NetDriverOptions, 'rxBuffers' | 'rxBufferBytes' | 'rxSegments'>
  >;

  private constructor(
    readonly vmm: Vmm,
    options: NetDriverOptions,
  ) {
    this.o = { rxBuffers: 64, rxBufferBytes: 1530, rxSegments: 1, ...options };
    const heapBytes = options.heapBytes ?? 8 * 1024 * 1024;
    this.heap = new GuestHeap(vmm.ram.alloc(heapBytes, 4096), heapBytes);
    this.rxPairs = Math.min(options.rxPairs ?? 1, options.pairs ?? 1);
    for (let p = 0; p < this.rxPairs; p++) {
      const rxq = vmm.queues[2 * p];
      rxq.onUsed = (used) => this.onReceive(rxq, used.id, used.len);
    }
    const dataQueues = 2 * (options.pairs ?? 1);
    if (options.ctrl) {
      const ctrlq = vmm.queues[dataQueues];
      ctrlq.onUsed = (used) => this.onTransmitted(ctrlq, used.id, used.len);
    }
    for (let q = 1; q < dataQueues; q += 2) {
      const txq = vmm.queues[q];
      txq.onUsed = (used) => this.onTransmitted(txq, used.id, used.len);
    }
  }

  /** Connects, starts the device (one queue pair) and posts the receive buffers. */
  static async create(options: NetDriverOptions): Promise<NetDriver> {
    const vmm = await Vmm.connect({
      // Wait for SET_VRING_ENABLE to be processed (as QEMU 8.1+ does): a frame sent to
      // this port before its receive queue is enabled is dropped as "link down".
      ackVringEnable: true,
      ...options,
      queues: 2 * (options.pairs ?? 1) + (options.ctrl ? 1 : 0),
      driverFeatures: options.driverFeatures ?? NET_DRIVER_FEATURES,
    });
    try {
      const driver = new NetDriver(vmm, options);
      await vmm.start();
      for (let p = 0; p < driver.rxPairs; p++) driver.postRxBuffers(driver.o.rxBuffers, p);
      return driver;
    } catch (err) {
      vmm.close();
      throw err;
    }
  }

  get rxq(): VmmQueue {
    return this.vmm.queues[0];
  }

  /** transmitq of queue pair `pair`. */
  txq(pair = 0): VmmQueue {
    return this.vmm.queues[2 * pair + 1];
  }

  /** Posts `count` receive buffers (as configured) on pair `pair` and kicks if the device asks for it. */
  postRxBuffers(count: number, pair = 0): void {
    const size = this.o.rxBufferBytes;
    const seg = Math.ceil(size / this.o.rxSegments);
    const rxq = this.vmm.queues[2 * pair];
    for (let i = 0; i < count && rxq.driver.numFree >= this.o.rxSegments; i++) {
      const gpa = this.heap.alloc(size);
      const segments: DriverBuffer[] = [];
      for (let off = 0; off < size; off += seg) {
        segments.push({ addr: gpa + off, len: Math.min(seg, size - off), write: true });
      }
      const head = rxq.driver.addChain(segments);
      this.rxAddr.set(`${rxq.index}:${head}`, { gpa, segments });
    }
    rxq.kickIfNeeded();
  }

  /**
   * Transmits `frame` behind `header` (default: all zero) and resolves with
   * the used length once the device returned the buffer.
   */
  send(frame: Uint8Array, header?: Uint8Array, segments = 1, pair = 0): Promise<number> {
    const hdr = header ?? new Uint8Array(NET_HDR_BYTES);
    const total = hdr.length + frame.length;
    const gpa = this.heap.alloc(Math.max(total, 1));
    this.vmm.ram.write(gpa, hdr);
    this.vmm.ram.write(gpa + hdr.length, frame);
    const buffers: DriverBuffer[] = [];
    const step = Math.ceil(total / segments);
    for (let off = 0; off < total; off += step) {
      buffers.push({ addr: gpa + off, len: Math.min(step, total - off), write: false });
    }
    const txq = this.txq(pair);
    return new Promise((resolve) => {
      const head = txq.driver.addChain(buffers);
      this.txAddr.set(`${txq.index}:${head}`, { gpa, resolve });
      txq.kickIfNeeded();
    });
  }

  /**
   * Sends one control command (§5.1.6.5) `{class, command}` + `data` on the
   * control queue and resolves with the ack byte the device wrote (0 OK).
   */
  async command(cls: number, cmd: number, data: Uint8Array): Promise<number> {
    const ctrlq = this.vmm.queues[this.vmm.queues.length - 1];
    const gpa = this.heap.alloc(2 + data.length + 1);
    this.vmm.ram.write(gpa, Uint8Array.from([cls, cmd]));
    this.vmm.ram.write(gpa + 2, data);
    this.vmm.ram.write(gpa + 2 + data.length, Uint8Array.from([0xff]));
    const buffers: DriverBuffer[] = [
      { addr: gpa, len: 2, write: false },
      { addr: gpa + 2, len: data.length, write: false },
      { addr: gpa + 2 + data.length, len: 1, write: true },
    ].filter((b) => b.len > 0);
    const len = await new Promise<number>((resolve) => {
      const head = ctrlq.driver.addChain(buffers);
      // The ack buffer must outlive onTransmitted's free: read it first.
      this.txAddr.set(`${ctrlq.index}:${head}`, {
        gpa: -1,
        resolve: (n) => resolve(n),
      });
      ctrlq.kickIfNeeded();
    });
    const ack = this.vmm.ram.read(gpa + 2 + data.length, 1)[0];
    this.heap.free(gpa);
    if (len !== 1) this.violations.push(`control command used len ${len}`);
    return ack;
  }

  /** Resolves once `count` frames in all have been received, or rejects after `timeoutMs`. */
  async waitReceived(count: number, timeoutMs = 5000): Promise<ReceivedFrame[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.received.length < count) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new FrontendError(
          'FRONTEND_TIMEOUT',
          `received ${this.received.length} of ${count} frames within ${timeoutMs} ms`,
        );
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 50));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.received.slice(0, count);
  }

  private onTransmitted(txq: VmmQueue, id: number, len: number): void {
    const key = `${txq.index}:${id}`;
    const t = this.txAddr.get(key);
    if (t === undefined) {
      this.violations.push(`tx used id ${id} on queue ${txq.index} was never submitted`);
      return;
    }
    this.txAddr.delete(key);
    if (t.gpa >= 0) this.heap.free(t.gpa);
    t.resolve(len);
  }

  private onReceive(rxq: VmmQueue, id: number, len: number): void {
    const key = `${rxq.index}:${id}`;
    const b = this.rxAddr.get(key);
    if (b === undefined) {
      this.violations.push(`rx used id ${id} on queue ${rxq.index} was never posted`);
      return;
    }
    this.rxAddr.delete(key);
    if (len > this.o.rxBufferBytes) this.violations.push(`rx used len ${len} exceeds the buffer`);
    const data = this.vmm.ram.read(b.gpa, Math.min(len, this.o.rxBufferBytes));
    this.heap.free(b.gpa);
    this.assemble(rxq.index, data);
    // Refill as Linux does: every consumed buffer is replaced.
    this.postRxBuffers(1, rxq.index / 2);
  }

  private assemble(queue: number, data: Uint8Array): void {
    let p = this.pending.get(queue);
    if (p === undefined) {
      if (data.length < NET_HDR_BYTES) {
        this.violations.push(`rx buffer of ${data.length} bytes holds no header`);
        return;
      }
      const header = data.slice(0, NET_HDR_BYTES);
      const buffers = header[10] | (header[11] << 8);
      p = { header, parts: [data.slice(NET_HDR_BYTES)], left: buffers - 1 };
      this.pending.set(queue, p);
    } else {
      p.parts.push(data);
      p.left--;
    }
    if (p.left > 0) return;
    this.pending.delete(queue);
    const frame = Buffer.concat(p.parts);
    this.received.push({ header: p.header, frame, buffers: p.parts.length, queue });
    for (const w of this.waiters.splice(0)) w();
  }

  /** Stops the device and drops the connection. */
  async close(): Promise<void> {
    try {
      await this.vmm.stop();
    } finally {
      this.vmm.close();
    }
  }
}

/** An Ethernet frame of `length` bytes (>= 14): addresses, EtherType 0x88b5 (local experimental), a pattern. */
export function ethFrame(dst: string, src: string, length: number, seed = 0): Uint8Array {
  const f = new Uint8Array(length);
  f.set(macBytes(dst), 0);
  f.set(macBytes(src), 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  for (let i = 14; i < length; i++) f[i] = (i * 31 + seed) & 0xff;
  return f;
}

/** `aa:bb:cc:dd:ee:ff` as bytes. */
export function macBytes(mac: string): Uint8Array {
  return Uint8Array.from(mac.split(':'), (p) => Number.parseInt(p, 16));
}
