/**
 * The virtio-net device model (virtio 1.x §5.1) of one switch port.
 * Transport-agnostic: it is handed virtqueues and guest memory, forwards what
 * the driver transmits into its {@link NetBackendPort}, and delivers what the
 * port holds for it into the driver's receive buffers. It knows nothing of
 * the switch behind the port: no ring, no port number, no forwarding table.
 *
 * Queues: receiveq N = 2N, transmitq N = 2N + 1, then the control queue
 * (§5.1.2, control.ts). Every frame carries
 * the 12-byte virtio_net_hdr (VERSION_1). No offload is offered, so a
 * transmitted header must say "no checksum to complete, no segmentation";
 * anything else is malformed. Received frames larger than one buffer are
 * spread over several (MRG_RXBUF) and num_buffers says how many.
 *
 * Processing is synchronous on the port's worker: nothing is ever in flight,
 * so stopping a queue is immediate. Work per wake-up is bounded by a budget,
 * and what is left continues on the next loop turn, so a busy queue cannot
 * starve the others or the control commands.
 */
import type { StatCounters } from '../../locking/index.js';
import type { NetBackendPort } from '../../net/backend-port.js';
import { NetStat } from '../../net/port-stats.js';
import { RARP_FRAME_BYTES, writeRarpAnnouncement } from '../../net/rarp.js';
import {
  type ByteLocation,
  type ChainHandler,
  ChainReader,
  ChainWriter,
  DescriptorChain,
  DrainResult,
  DrainStop,
  drainQueue,
  type GuestMemory,
  type SplitVirtqueue,
  takeVrings,
  type Vring,
  vringAt,
} from '../../virtio/index.js';
import { readConfigBytes, type VirtioDeviceModel } from '../device.js';
import {
  encodeNetConfig,
  MAX_FRAME,
  MIN_FRAME,
  NET_HDR_NUM_BUFFERS,
  NET_HDR_SIZE,
  netDeviceFeatures,
  netQueueCount,
} from './config.js';
import { CTRL_ERR, RxFilter } from './control.js';

/** Options of a {@link NetDevice}. */
export interface NetDeviceOptions {
  queuePairs: number;
  /** The port's MAC (config space), the receive filter's primary address. */
  mac: Uint8Array;
  /** Largest ring size: bounds the chains merged into one received frame. */
  queueSize: number;
  /** What carries the port's frames (a switch port): the device touches nothing else of the switch. */
  port: NetBackendPort;
  stats: StatCounters;
  /** Reports guest protocol violations (rate limiting is the caller's business). */
  warn: (message: string) => void;
  /** Largest frame accepted from the driver (default {@link MAX_FRAME}). */
  maxFrame?: number;
  /** Called once by {@link NetDevice.close}, e.g. to stop the port's doorbell watcher (PortRuntime.close). */
  onClose?: () => void;
  /**
   * Takes an exception thrown by work the device runs on its own — a
   * doorbell, a batch deferred to the next loop turn (DeviceEnv.fault): its
   * host then stops serving the device. Without it the exception propagates.
   */
  fault?: (error: unknown) => void;
}

/**
 * Run-time commands of a net device. `announce`: the guest with MAC `mac`
 * now lives behind this port (vhost-user SEND_RARP after a live migration):
 * a RARP broadcast from it goes out through the port, so every other port
 * learns the address here.
 */
export type NetCommand = { type: 'announce'; mac: Uint8Array };

/** Chains popped per wake-up before yielding to the loop. */
const BUDGET = 256;

type QueueState = Vring;

const DELIVERED = 0;
const NO_BUFFERS = 1;
const BAD_BUFFERS = 2;

/**
 * The virtio-net device model of one switch port: transmitted frames go to its
 * NetBackendPort, the port's frames into receive buffers; synchronous, budgeted per wake-up.
 */
export class NetDevice implements VirtioDeviceModel<NetCommand> {
  readonly kind = 'net';
  readonly features: bigint;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly configSize: number;
  private readonly config: Uint8Array;
  private readonly port: NetBackendPort;
  private readonly stats: StatCounters;
  private readonly warn: (message: string) => void;
  private readonly maxFrame: number;
  private queues: readonly QueueState[] = [];
  private readonly chain: DescriptorChain;
  private readonly reader = new ChainReader();
  private readonly writer = new ChainWriter();
  private readonly drained = new DrainResult();
  /** Forwards each transmitted chain; made once. */
  private readonly txHandler: ChainHandler = {
    handleChain: () => {
      this.transmitChain();
      this.txQueue?.addUsed(this.chain.head, 0);
      return true;
    },
  };
  /** The transmit queue being drained (read by txHandler). */
  private txQueue: QueueState | null = null;
  /** Answers each control command; made once. */
  private readonly ctrlHandler: ChainHandler = {
    handleChain: () => {
      this.queues[this.ctrlIndex].addUsed(this.chain.head, this.controlCommand());
      return true;
    },
  };
  private readonly header = new Uint8Array(NET_HDR_SIZE);
  private readonly addresses = new Uint8Array(12);
  private readonly numBuffersAt: ByteLocation[] = [
    { region: -1, offset: 0 },
    { region: -1, offset: 0 },
  ];
  /** Heads and used lengths of the chains holding the frame being received. */
  private readonly rxHeads: Int32Array;
  private readonly rxLens: Int32Array;
  private bytes: readonly Uint8Array[] = [];
  private onClose: (() => void) | undefined;
  private readonly fault: ((error: unknown) => void) | undefined;
  private rxScheduled = false;
  private readonly txScheduled: boolean[];
  /** Index of the control queue. */
  private readonly ctrlIndex: number;
  /** Receive mode and MAC filter set through the control queue. */
  readonly filter: RxFilter;
  /** Scratch for one control command's payload (a full MAC table fits). */
  private readonly ctrlData = new Uint8Array(1024);
  /** {@link receive}, made once for {@link guard}. */
  private readonly receiveNow = (): void => this.receive();
  private readonly runReceive = (): void => {
    this.rxScheduled = false;
    this.guard(this.receiveNow);
  };

  constructor(options: NetDeviceOptions) {
    this.port = options.port;
    this.stats = options.stats;
    this.warn = options.warn;
    this.maxFrame = options.maxFrame ?? MAX_FRAME;
    this.onClose = options.onClose;
    this.fault = options.fault;
    const n = netQueueCount(options.queuePairs);
    const geometry = { mac: options.mac, queuePairs: options.queuePairs, linkUp: true };
    this.features = netDeviceFeatures(geometry);
    this.numQueues = n;
    this.maxQueueSize = options.queueSize;
    this.config = encodeNetConfig(geometry);
    this.configSize = this.config.length;
    this.ctrlIndex = n - 1;
    this.filter = new RxFilter(options.mac, options.queuePairs);
    this.txScheduled = Array.from({ length: n }, () => false);
    this.chain = new DescriptorChain(options.queueSize + 16);
    this.rxHeads = new Int32Array(options.queueSize);
    this.rxLens = new Int32Array(options.queueSize);
  }

  /** virtio_net_config: MAC, status (link up), max_virtqueue_pairs; zeroes past its end. */
  readConfig(offset: number, out: Uint8Array): void {
    readConfigBytes(this.config, offset, out);
  }

  /** The MAC is writable only through the control queue. */
  writeConfig(_offset: number, _data: Uint8Array): boolean {
    return false;
  }

  /** Takes the device's rings, one per queue. */
  activate(vrings: readonly Vring[]): void {
    this.queues = takeVrings(vrings, this.numQueues);
    // The ack is the last writable byte, its used length 1.
    this.queues[this.ctrlIndex].logsWholeWritablePart = true;
  }

  setMemory(memory: GuestMemory): void {
    this.bytes = memory.bytes;
  }

  /** Nothing is ever in flight: every chain is completed in the batch that popped it. */
  quiesce(index: number): Promise<void> {
    vringAt(this.queues, index);
    return Promise.resolve();
  }

  async close(): Promise<void> {
    this.onClose?.();
    this.onClose = undefined;
  }

  /** The driver kicked: transmit on odd queues, new receive buffers on even ones, or a command. */
  kick(index: number): void {
    if (index === this.ctrlIndex) this.control();
    else if (index % 2 === 1) this.transmit(index);
    else this.receive();
  }

  // --- control queue ---------------------------------------------------------

  private control(): void {
    const q = this.queues[this.ctrlIndex];
    if (!q.ready) return;
    this.stats.beginBatch();
    try {
      drainQueue(
        q.queue as SplitVirtqueue,
        this.chain,
        this.ctrlHandler,
        Number.POSITIVE_INFINITY,
        this.drained,
      );
    } catch (err) {
      this.breakQueue(q, err);
    } finally {
      this.flush(q);
      this.stats.endBatch();
    }
  }

  /**
   * One command: `{u8 class, u8 command}` and its data in the readable part,
   * the ack byte as the last writable byte. Returns the used length.
   */
  private controlCommand(): number {
    const chain = this.chain;
    const length = chain.readableBytes - 2;
    if (chain.error !== null || chain.writableBytes < 1) {
      this.stats.add(NetStat.ctrlErrors, 1);
      this.warn(`control command dropped: ${chain.error ?? 'no room for the ack'}`);
      return 0;
    }
    let ack = CTRL_ERR;
    if (length >= 0 && length <= this.ctrlData.length) {
      const r = this.reader.reset(chain, this.bytes);
      const cls = r.readU8();
      const cmd = r.readU8();
      r.read(this.ctrlData, 0, length);
      ack = this.filter.command(cls, cmd, this.ctrlData, length);
    }
    this.stats.add(NetStat.ctrlCommands, 1);
    if (ack === CTRL_ERR) this.stats.add(NetStat.ctrlErrors, 1);
    const w = this.writer.reset(chain, this.bytes);
    w.seek(w.length - 1);
    w.writeU8(ack);
    return 1;
  }

  /** Run-time commands from the control plane (SEND_RARP). */
  command(cmd: NetCommand): number {
    if (cmd.type !== 'announce') return 0;
    // One frame, made on this (the port's) thread between batches: control path, not per packet.
    const frame = new Uint8Array(RARP_FRAME_BYTES);
    writeRarpAnnouncement(cmd.mac, frame);
    this.port.beginBatch();
    try {
      const sent = this.port.reserve(frame, 0, RARP_FRAME_BYTES);
      if (sent > 0) {
        this.port.txBytes.set(frame, this.port.txOffset);
        this.port.commit();
      }
      return sent;
    } finally {
      this.port.endBatch();
    }
  }

  /** Another port rang this port's doorbell (PortPeer): frames wait in the backend port. */
  doorbell(): void {
    this.guard(this.receiveNow);
  }

  /**
   * Runs `fn`, work the device does on its own (no kick led here): a throw
   * goes to the host's `fault` instead of out of the event loop.
   */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.faulted(err);
    }
  }

  /** Hands `err` to the host's `fault`; without one it is rethrown, as before. */
  private faulted(err: unknown): void {
    if (this.fault === undefined) throw err;
    this.fault(err);
  }

  // --- transmit: driver → switch ---------------------------------------------

  private transmit(index: number): void {
    const q = this.queues[index];
    if (q === undefined || !q.ready) return;
    this.port.beginBatch();
    // One seqlock section for the whole batch: readers see its counters together.
    this.stats.beginBatch();
    let more = false;
    this.txQueue = q;
    try {
      // Up to BUDGET chains; a budget stop leaves kicks off and continues on the next loop turn.
      more =
        drainQueue(q.queue as SplitVirtqueue, this.chain, this.txHandler, BUDGET, this.drained) ===
        DrainStop.BUDGET;
      if (this.drained.popped > 0) this.stats.add(NetStat.kicks, 1);
    } catch (err) {
      this.breakQueue(q, err);
    } finally {
      this.txQueue = null;
      this.port.endBatch();
      this.flush(q);
      this.stats.endBatch();
    }
    if (more) this.scheduleTx(index);
  }

  private scheduleTx(index: number): void {
    if (this.txScheduled[index]) return;
    this.txScheduled[index] = true;
    setImmediate(() => {
      this.txScheduled[index] = false;
      try {
        this.transmit(index);
      } catch (err) {
        this.faulted(err);
      }
    });
  }

  /** Validates one transmitted chain and forwards its frame. */
  private transmitChain(): void {
    const chain = this.chain;
    const length = chain.readableBytes - NET_HDR_SIZE;
    if (chain.error !== null || length < MIN_FRAME || length > this.maxFrame) {
      this.malformed(chain.error ?? `frame of ${length} bytes`);
      return;
    }
    const r = this.reader.reset(chain, this.bytes);
    r.read(this.header, 0, NET_HDR_SIZE);
    // flags and gso_type: without CSUM / HOST_TSO* negotiated both must be 0.
    if (this.header[0] !== 0 || this.header[1] !== 0) {
      this.malformed(`header flags ${this.header[0]} gso_type ${this.header[1]}`);
      return;
    }
    r.read(this.addresses, 0, 12);
    // Once out of guest memory, straight into the port, whatever the number
    // of destinations (the port duplicates a flooded frame on commit).
    if (this.port.reserve(this.addresses, 0, length) > 0) {
      r.seek(NET_HDR_SIZE);
      r.read(this.port.txBytes, this.port.txOffset, length);
      this.port.commit();
    }
    this.stats.add(NetStat.txPackets, 1);
    this.stats.add(NetStat.txBytes, length);
  }

  private malformed(what: string): void {
    this.stats.add(NetStat.malformed, 1);
    this.warn(`malformed frame dropped: ${what}`);
  }

  // --- receive: switch → driver ----------------------------------------------

  /** Delivers the port's frames until none is left, buffers run out, or the budget. */
  private receive(): void {
    const index = this.rxQueue();
    const q = index < 0 ? null : this.queues[index];
    this.port.beginBatch();
    this.stats.beginBatch();
    let delivered = 0;
    try {
      delivered = this.drainPort(q);
    } catch (err) {
      if (q === null) throw err;
      this.breakQueue(q, err);
    } finally {
      if (q !== null) this.flush(q);
      this.port.endBatch();
      this.stats.endBatch();
    }
    if (delivered >= BUDGET) this.scheduleRx();
  }

  /** Moves frames from the port to the driver, up to BUDGET; returns how many left the port. */
  private drainPort(q: QueueState | null): number {
    const port = this.port;
    let n = 0;
    for (let length = port.peek(); length >= 0 && n < BUDGET; length = port.peek()) {
      const accepted = this.filter.accepts(port.rxBytes, port.rxOffset);
      const result =
        q === null || !accepted
          ? BAD_BUFFERS
          : this.deliver(q, port.rxBytes, port.rxOffset, length);
      // No buffers: the frame stays in the port (peek returns it again) until the driver posts some.
      if (result === NO_BUFFERS) return n;
      if (q === null) this.stats.add(NetStat.rxDropsDown, 1);
      else if (!accepted) this.stats.add(NetStat.rxFiltered, 1);
      port.release();
      n++;
    }
    return n;
  }

  private scheduleRx(): void {
    if (this.rxScheduled) return;
    this.rxScheduled = true;
    setImmediate(this.runReceive);
  }

  /** The receive queue frames go to: the first enabled, unbroken one; -1 when the link is down. */
  private rxQueue(): number {
    for (let i = 0; i < this.ctrlIndex; i += 2) {
      if (this.queues[i].ready) return i;
    }
    return -1;
  }

  /**
   * Writes header + frame into as many receive chains as it takes. Nothing
   * is published until the whole frame is placed; when buffers run out the
   * ring is rewound to where the frame started and the frame waits.
   */
  private deliver(q: QueueState, data: Uint8Array, offset: number, length: number): number {
    const vq = q.queue as SplitVirtqueue;
    const start = vq.lastAvailIdx;
    let written = 0;
    let count = 0;
    while (written < length || count === 0) {
      if (count === this.rxHeads.length || !vq.pop(this.chain)) {
        vq.lastAvailIdx = start;
        return NO_BUFFERS;
      }
      const used = this.fillChain(count, data, offset + written, length - written);
      if (used < 0) return this.dropBadBuffers(q, count);
      this.rxHeads[count] = this.chain.head;
      this.rxLens[count] = used;
      written += count === 0 ? used - NET_HDR_SIZE : used;
      count++;
    }
    this.writeNumBuffers(count);
    for (let i = 0; i < count; i++) q.addUsed(this.rxHeads[i], this.rxLens[i]);
    this.stats.add(NetStat.rxPackets, 1);
    this.stats.add(NetStat.rxBytes, length);
    return DELIVERED;
  }

  /** Fills the popped chain; returns the bytes written, or -1 for an unusable chain. */
  private fillChain(count: number, data: Uint8Array, from: number, left: number): number {
    const chain = this.chain;
    if (chain.error !== null || chain.writableBytes === 0) return -1;
    const w = this.writer.reset(chain, this.bytes);
    if (count > 0) return w.write(data, from, left);
    if (chain.writableBytes < NET_HDR_SIZE) return -1;
    w.fill(0, NET_HDR_SIZE);
    w.locate(NET_HDR_NUM_BUFFERS, this.numBuffersAt[0]);
    w.locate(NET_HDR_NUM_BUFFERS + 1, this.numBuffersAt[1]);
    return NET_HDR_SIZE + w.write(data, from, left);
  }

  /** num_buffers (le16) in the first chain's header, which may straddle two buffers. */
  private writeNumBuffers(count: number): void {
    const lo = this.numBuffersAt[0];
    const hi = this.numBuffersAt[1];
    this.bytes[lo.region][lo.offset] = count & 0xff;
    this.bytes[hi.region][hi.offset] = count >> 8;
  }

  /** An unusable receive chain: return it and the frame's earlier chains empty, drop the frame. */
  private dropBadBuffers(q: QueueState, count: number): number {
    for (let i = 0; i < count; i++) q.addUsed(this.rxHeads[i], 0);
    q.addUsed(this.chain.head, 0);
    this.stats.add(NetStat.rxDropsBadBuffers, 1);
    this.warn(`receive buffer unusable: ${this.chain.error ?? 'too small for the header'}`);
    return BAD_BUFFERS;
  }

  // --- common ----------------------------------------------------------------

  /** Ends a batch: used.idx published once, one interrupt if the driver asked for it (EVENT_IDX). */
  private flush(q: QueueState): void {
    if (q.flush()) this.stats.add(NetStat.interrupts, 1);
  }

  private breakQueue(q: QueueState, err: unknown): void {
    q.fail(err, this.warn);
    this.stats.add(NetStat.brokenQueues, 1);
  }
}
