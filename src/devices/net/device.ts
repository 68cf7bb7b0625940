/**
 * The virtio-net device model (virtio 1.x §5.1) of one switch port.
 * Transport-agnostic: it is handed virtqueues and guest memory, forwards what
 * the driver transmits into its {@link NetBackendPort}, and delivers what the
 * port holds for it into the driver's receive buffers. It knows nothing of
 * the switch behind the port: no ring, no port number, no forwarding table.
 *
 * Queues: receiveq N = 2N, transmitq N = 2N + 1, then the control queue
 * (§5.1.2, control.ts). Every frame carries the 12-byte virtio_net_hdr
 * (VERSION_1). Received frames larger than one buffer are spread over
 * several (MRG_RXBUF) and num_buffers says how many.
 *
 * Offloads (issue 13, policy in src/net/offload.ts): CSUM / GUEST_CSUM and
 * GUEST_TSO4/6 are offered, HOST_TSO4/6 when the switch's rings take 64 KiB
 * frames. A transmitted header is checked against what the driver
 * negotiated (a header asking for an offload it did not take, or offsets
 * outside the frame: dropped as malformed, counted); a frame that asks for
 * nothing travels without its header (the fast path), one that asks for work
 * travels with it. On receive, a frame's header passes through when this
 * driver took what it asks for; otherwise this port completes the checksum
 * or segments the frame in software before delivering it.
 *
 * Processing is synchronous on the port's worker: nothing is ever in flight,
 * so stopping a queue is immediate. Work per wake-up is bounded by a budget,
 * and what is left continues on the next loop turn, so a busy queue cannot
 * starve the others or the control commands.
 *
 * Fast path (issue 13), two levels:
 * - The native frame loop (native/net-burst.cc, through the port's
 *   {@link PortBurst}): on a split ring with no dirty log (and, on receive,
 *   one ready queue), one native call per batch pops the chains, routes
 *   and copies every bare frame and writes the used elements; TypeScript
 *   publishes. It stops at the first frame it does not fully understand — a
 *   header that asks for work, a chain of unusual shape or out of bounds, a
 *   full destination, a frame the filter's tables decide — which then goes
 *   the TypeScript way below, with every check, counter and warning; a
 *   differential fuzz test (test/unit/net-burst.test.ts) holds the two to
 *   the same results. Why native: with the per-frame work in TypeScript a
 *   64-byte frame cost ~0.29 µs of switch CPU, ~70 % of it compiled JS;
 *   the loop costs ~0.1 µs (bench/results/net-burst-first.md).
 * - The TypeScript path: the frame bytes of a whole batch move between guest
 *   RAM and the packet rings in ONE native call (FrameCopyBatch, `memcpy`),
 *   made before the batch's ring indexes and used index are published; every
 *   chain is walked once (its segments give the copy ops directly); counters
 *   are plain fields published once per batch.
 *
 * Backpressure: a unicast frame whose destination ring is full is left in
 * the transmit ring (the chain is "un-popped": net keeps no inflight
 * region) and the queue is retried when the destination frees room (its
 * doorbell) or at the port's hold deadline, after which the port drops for
 * that destination (switch-port.ts).
 *
 * Multiqueue: with several receive queues enabled, each frame goes to the
 * queue its flow hash picks (addresses, and for IPv4 the IP addresses and
 * TCP/UDP ports), so one flow keeps its order and flows spread; when that
 * queue has no buffer posted, the next ready queue that has one takes it (a
 * driver may post on some queues only).
 */
import type { StatCounters } from '../../locking/index.js';
import { BURST_CTL, BURST_STATUS } from '../../native.js';
import { type NetBackendPort, type PortBurst, RESERVE_HOLD } from '../../net/backend-port.js';
import { FrameCopyBatch } from '../../net/frame-copy.js';
import {
  checkTxHeader,
  completeChecksum,
  describeHeader,
  describeHeaderError,
  HeaderError,
  MAX_GSO_FRAME,
  Offload,
  TcpSegmenter,
  VNET_F_NEEDS_CSUM,
  VNET_GSO_NONE,
  VNET_GSO_TCPV4,
  VNET_GSO_TCPV6,
  VNET_HDR,
} from '../../net/offload.js';
import { NetStat } from '../../net/port-stats.js';
import { RARP_FRAME_BYTES, writeRarpAnnouncement } from '../../net/rarp.js';
import {
  type ChainHandler,
  ChainReader,
  ChainWriter,
  DescriptorChain,
  DrainResult,
  DrainStop,
  drainQueue,
  featureBit,
  type GuestMemory,
  SplitVirtqueue,
  takeVrings,
  type Virtqueue,
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
  NetFeature,
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
/** virtio_net_hdr plus the Ethernet addresses: what a transmitted frame is routed by. */
const HEAD_BYTES = NET_HDR_SIZE + 12;
/** Most copy ops one received frame takes: its header and its bytes, at least one byte each. */
const MAX_FRAME_OPS = 2 * (NET_HDR_SIZE + MAX_FRAME);
/** FNV-1a's 32-bit prime, for the flow hash. */
const FNV_PRIME = 0x01000193;

type QueueState = Vring;

/** Fewer frames waiting than this are not prefetched (a native call costs more than it hides). */
const PREFETCH_MIN = 4;
const DELIVERED = 0;
const NO_BUFFERS = 1;
const BAD_BUFFERS = 2;
/** The frame's headers do not match what its virtio_net_hdr asks for (offload.ts). */
const BAD_FRAME = 3;
/**
 * The frame needs more receive buffers than the whole ring holds: it can
 * never be placed as it is, so waiting for the driver would stall the port
 * for good. A GSO frame is segmented instead; any other frame is dropped.
 */
const TOO_BIG = 4;

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
      const q = this.txQueue as QueueState;
      if (!this.transmitChain()) {
        // Held (backpressure): un-pop the chain, it stays in the guest's ring
        // for the retry. Safe: net keeps no inflight region, nothing else saw it.
        const vq = q.queue as Virtqueue;
        vq.lastAvailIdx = (vq.lastAvailIdx - 1) & 0xffff;
        return false;
      }
      q.addUsed(this.chain.head, 0);
      return true;
    },
  };
  /** Frame copies of the batch in progress, done natively in one call before anything is published. */
  private readonly copies: FrameCopyBatch;
  // Counters of the batch in progress, published once per batch (publishCounts).
  private txPacketCount = 0;
  private txByteCount = 0;
  private rxPacketCount = 0;
  private rxByteCount = 0;
  private stallDropsSeen = 0;
  private holdsSeen = 0;
  private checksummedCount = 0;
  private segmentedCount = 0;
  private segmentCount = 0;
  /** {@link Offload} bits the driver may send (CSUM, HOST_TSO4/6 negotiated). */
  private txOffloads = 0;
  /** {@link Offload} bits the driver takes (GUEST_CSUM, GUEST_TSO4/6 negotiated). */
  private rxOffloads = 0;
  /** Cuts frames for a driver without GUEST_TSO; one per port, reused. */
  private readonly segmenter = new TcpSegmenter();
  /**
   * Where the header of the frame being delivered is copied from: view and
   * offset (template 1 of {@link headerTemplates}, or the frame's own
   * virtio_net_hdr in its ring).
   */
  private hdrView = 0;
  private hdrFrom = NET_HDR_SIZE;
  /** Transmit queues whose frame is held for a full destination (retried on doorbell or timer). */
  private readonly txHeld: boolean[];
  private holdTimer: ReturnType<typeof setTimeout> | null = null;
  /** Receive queues ready in this batch, and how many. */
  private readonly rxReady: Int32Array;
  private rxReadyCount = 0;
  /** The transmit queue being drained (read by txHandler). */
  private txQueue: QueueState | null = null;
  /** Answers each control command; made once. */
  private readonly ctrlHandler: ChainHandler = {
    handleChain: () => {
      this.queues[this.ctrlIndex].addUsed(this.chain.head, this.controlCommand());
      return true;
    },
  };
  /** The port's native frame loop (null: every frame goes the TypeScript way). */
  private readonly burst: PortBurst | null;
  /** The native loop's control array (BURST_CTL), reused by every call. */
  private readonly burstCtl: Float64Array;
  /** (region, offset) of the frames {@link prefetchFrames} asks for. */
  private readonly peeked = new Float64Array(2 * BUDGET);
  /** A transmitted frame's header and addresses, copied out of guest memory once. */
  private readonly head = new Uint8Array(HEAD_BYTES);
  /**
   * Headers of received frames, copied into guest memory with the frame: for
   * every count n of buffers a frame may take, a virtio_net_hdr that is all
   * zero but num_buffers = n, at n * NET_HDR_SIZE (JS stores into guest
   * memory cost more per byte than the native copy).
   */
  private readonly headerTemplates: Uint8Array;
  /** Copy-view index of {@link headerTemplates}. */
  private readonly templateView: number;
  /** The ops that copy the header of the frame being placed: first op, count, copy generation. */
  private headerOp = 0;
  private headerOps = 0;
  private headerGeneration = 0;
  /** Where num_buffers (le16) of the frame being placed lives: region and offset of each byte. */
  private readonly numBuffersAt = new Float64Array(4);
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
    const geometry = {
      mac: options.mac,
      queuePairs: options.queuePairs,
      linkUp: true,
      // 64 KiB frames only when every ring towards the other ports takes them.
      gso: options.port.maxFrame >= MAX_GSO_FRAME + NET_HDR_SIZE,
    };
    this.features = netDeviceFeatures(geometry);
    this.numQueues = n;
    this.maxQueueSize = options.queueSize;
    this.config = encodeNetConfig(geometry);
    this.configSize = this.config.length;
    this.ctrlIndex = n - 1;
    this.filter = new RxFilter(options.mac, options.queuePairs);
    this.txScheduled = Array.from({ length: n }, () => false);
    this.txHeld = Array.from({ length: n }, () => false);
    this.rxReady = new Int32Array(options.queuePairs);
    this.headerTemplates = new Uint8Array(NET_HDR_SIZE * (options.queueSize + 1));
    for (let n = 1; n <= options.queueSize; n++) {
      this.headerTemplates[n * NET_HDR_SIZE + NET_HDR_NUM_BUFFERS] = n & 0xff;
      this.headerTemplates[n * NET_HDR_SIZE + NET_HDR_NUM_BUFFERS + 1] = n >> 8;
    }
    this.templateView = this.port.frameViews.length;
    this.hdrView = this.templateView;
    this.burst = options.port.burst ?? null;
    // Three slots per port: a switch of P ports gives 2 (P - 1) frame views.
    this.burstCtl = new Float64Array(BURST_CTL.RING_STATE + 3 * (this.port.frameViews.length + 2));
    this.copies = new FrameCopyBatch();
    this.copies.setViews([...this.port.frameViews, this.headerTemplates], []);
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

  /**
   * The features the driver accepted (SET_FEATURES): which offloads it may
   * send and which it takes. Until called, none (every header must be all zero).
   */
  setFeatures(features: bigint): void {
    const has = (bit: number): boolean => (features & featureBit(bit)) !== 0n;
    let tx = 0;
    if (has(NetFeature.CSUM)) tx |= Offload.CSUM;
    if (has(NetFeature.HOST_TSO4)) tx |= Offload.TSO4;
    if (has(NetFeature.HOST_TSO6)) tx |= Offload.TSO6;
    let rx = 0;
    // GUEST_TSO4/6 depend on GUEST_CSUM (§5.1.3.1): a 64 KiB frame always has a partial checksum.
    if (has(NetFeature.GUEST_CSUM)) {
      rx |= Offload.CSUM;
      if (has(NetFeature.GUEST_TSO4)) rx |= Offload.TSO4;
      if (has(NetFeature.GUEST_TSO6)) rx |= Offload.TSO6;
    }
    this.txOffloads = tx;
    this.rxOffloads = rx;
  }

  /** Takes the device's rings, one per queue. */
  activate(vrings: readonly Vring[]): void {
    this.queues = takeVrings(vrings, this.numQueues);
    // The ack is the last writable byte, its used length 1.
    this.queues[this.ctrlIndex].logsWholeWritablePart = true;
  }

  setMemory(memory: GuestMemory): void {
    this.bytes = memory.bytes;
    this.copies.setGuest(memory.bytes);
    const regions = memory.regions;
    this.burst?.setGuest(
      [...memory.bytes],
      Float64Array.from(regions, (r) => r.guestPhysAddr),
      Float64Array.from(regions, (r) => r.guestPhysAddr + r.size),
      Float64Array.from(regions, (r) => r.guestPhysAddr - r.mmapOffset),
    );
  }

  /** Nothing is ever in flight: every chain is completed in the batch that popped it. */
  quiesce(index: number): Promise<void> {
    vringAt(this.queues, index);
    return Promise.resolve();
  }

  async close(): Promise<void> {
    if (this.holdTimer !== null) clearTimeout(this.holdTimer);
    this.holdTimer = null;
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
        q.queue as Virtqueue,
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

  /**
   * Another port rang this port's doorbell (PortPeer): frames wait in the
   * backend port, or a destination this port waits for has freed room.
   */
  doorbell(): void {
    this.guard(this.receiveNow);
    this.guard(this.retryHeldNow);
  }

  /** {@link retryHeld}, made once. */
  private readonly retryHeldNow = (): void => this.retryHeld();

  /** Transmits again on every queue holding a frame for a full destination. */
  private retryHeld(): void {
    for (let i = 1; i < this.ctrlIndex; i += 2) if (this.txHeld[i]) this.transmit(i);
  }

  /** Queue `index` holds a frame: retry at the port's hold deadline at the latest. */
  private holdTx(index: number): void {
    this.txHeld[index] = true;
    if (this.holdTimer !== null) return;
    const deadline = this.port.holdDeadline();
    // +1 ms: the deadline is measured from the batch's clock, which is a little behind.
    this.holdTimer = setTimeout(this.onHoldTimer, Math.max(0, deadline) + 1);
  }

  private readonly onHoldTimer = (): void => {
    this.holdTimer = null;
    this.guard(this.retryHeldNow);
  };

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
    this.txHeld[index] = false;
    if (q === undefined || !q.ready) return;
    this.port.beginBatch();
    // One seqlock section for the whole batch: readers see its counters together.
    this.stats.beginBatch();
    let stop: number = DrainStop.EMPTY;
    this.txQueue = q;
    try {
      const vq = this.burstQueue(q);
      if (vq !== null) stop = this.transmitBurst(q, vq);
      else {
        this.prefetchFrames(q.queue as Virtqueue);
        // Up to BUDGET chains; a budget stop leaves kicks off and continues on the next loop turn.
        // A handler stop is a held frame: kicks stay off, the doorbell or the hold timer retries.
        stop = drainQueue(q.queue as Virtqueue, this.chain, this.txHandler, BUDGET, this.drained);
      }
      if (this.drained.popped > 0) this.stats.add(NetStat.kicks, 1);
    } catch (err) {
      this.breakQueue(q, err);
    } finally {
      this.txQueue = null;
      // The frames' bytes go into the rings before endBatch publishes their HEADs.
      this.copies.flush();
      this.port.endBatch();
      this.flush(q);
      this.publishCounts();
      this.stats.endBatch();
    }
    if (stop === DrainStop.BUDGET) this.scheduleTx(index);
    else if (stop === DrainStop.HANDLER) this.holdTx(index);
  }

  /**
   * The split queue the native frame loop may serve for `q`, else null: a
   * packed ring, a dirty log (migration: TypeScript marks what it writes)
   * or a port without the loop keep the TypeScript path.
   */
  private burstQueue(q: QueueState): SplitVirtqueue | null {
    if (this.burst === null || q.dirtyLog !== null) return null;
    return q.queue instanceof SplitVirtqueue ? q.queue : null;
  }

  /**
   * {@link drainQueue} with the native loop: each turn moves the bare
   * frames of the avail snapshot in one native call, and the frame it
   * leaves goes through {@link txHandler} (the full checks, offloads,
   * holds); then the loop continues. Same budget and notification protocol.
   */
  private transmitBurst(q: QueueState, vq: SplitVirtqueue): number {
    const burst = this.burst as PortBurst;
    const ctl = this.burstCtl;
    const C = BURST_CTL;
    let popped = 0;
    this.drained.popped = 0;
    do {
      vq.setNotification(false);
      for (;;) {
        vq.burstLocation(ctl, 0);
        if (ctl[C.AVAIL_IDX] === ctl[C.LAST_AVAIL]) break;
        if (burst.txReady) {
          ctl[C.MAX] = BUDGET - popped;
          ctl[C.MAX_FRAME] = this.maxFrame;
          ctl[C.MIN_FRAME] = MIN_FRAME;
          const status = burst.tx(ctl);
          const k = ctl[C.FRAMES];
          if (k > 0) {
            vq.advanceBurst(k, k);
            q.addedUsed();
            popped += k;
            this.drained.popped = popped;
            this.txPacketCount += k;
            this.txByteCount += ctl[C.BYTES];
          }
          if (popped >= BUDGET) return DrainStop.BUDGET;
          if (status === BURST_STATUS.DONE) continue;
        }
        // The frame the loop left: the TypeScript way, one chain.
        if (!vq.pop(this.chain)) break;
        this.drained.popped = ++popped;
        if (!this.txHandler.handleChain(this.chain)) return DrainStop.HANDLER;
        if (popped >= BUDGET) return DrainStop.BUDGET;
      }
    } while (vq.enableNotification());
    return DrainStop.EMPTY;
  }

  /**
   * Asks the CPU for the first cache line of every frame waiting in `vq` (up
   * to BUDGET), all at once, before the drain reads them one by one: each is
   * a miss (the driver's CPU just wrote it), and overlapped they cost about
   * one (bench/results/net-prefetch.md). Not worth a native call for a few.
   */
  private prefetchFrames(vq: Virtqueue): void {
    const n = vq.peekHeads(this.peeked, BUDGET);
    if (n >= PREFETCH_MIN) this.copies.prefetchGuest(this.peeked, n);
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

  /**
   * Validates one transmitted chain and forwards its frame; false when the
   * frame is held (its destination is full: leave the chain in the ring).
   */
  private transmitChain(): boolean {
    const chain = this.chain;
    const length = chain.readableBytes - NET_HDR_SIZE;
    if (chain.error !== null || length < MIN_FRAME || length > MAX_GSO_FRAME) {
      this.malformed(chain.error ?? `frame of ${length} bytes`);
      return true;
    }
    // Header and addresses, read once out of guest memory (the guest may
    // rewrite them meanwhile: only this copy is looked at).
    const head = this.head;
    const b = this.bytes[chain.region[0]];
    const o = chain.offset[0];
    if (chain.length[0] >= HEAD_BYTES) {
      // flags, gso_type and the addresses: the rest of the header is not looked at.
      head[0] = b[o];
      head[1] = b[o + 1];
      for (let i = NET_HDR_SIZE; i < HEAD_BYTES; i++) head[i] = b[o + i];
    } else this.reader.reset(chain, this.bytes).read(head, 0, HEAD_BYTES);
    // flags and gso_type 0: nothing asked of anyone, the frame travels bare (the fast path).
    let withHeader = false;
    if (head[0] !== 0 || head[1] !== 0) {
      if (chain.length[0] >= HEAD_BYTES) for (let i = 2; i < NET_HDR_SIZE; i++) head[i] = b[o + i];
      const bad = checkTxHeader(head, 0, length, this.txOffloads, this.maxFrame);
      if (bad !== HeaderError.OK) {
        this.malformed(describeHeaderError(bad, head, 0));
        return true;
      }
      withHeader = true;
    } else if (length > this.maxFrame) {
      this.malformed(`frame of ${length} bytes without segmentation offload`);
      return true;
    }
    const port = this.port;
    const taken = port.reserve(head, NET_HDR_SIZE, length, withHeader);
    if (taken === RESERVE_HOLD) return false;
    if (taken > 0) {
      // Out of guest memory once, into the first reservation; the others are
      // copied from there (the ops run in order, in one native call).
      const view = port.reservedView(0);
      const at = port.reservedOffset(0);
      // The header that was checked (this copy, not guest memory the guest
      // may have rewritten since) goes in front of the frame.
      if (withHeader) this.writeRingHeader(port.frameViews[view], at);
      const frameAt = withHeader ? at + NET_HDR_SIZE : at;
      this.copyFromChain(view, frameAt, length);
      const bytes = frameAt - at + length;
      for (let i = 1; i < taken; i++)
        this.copies.add(view, at, port.reservedView(i), port.reservedOffset(i), bytes);
      port.commitWritten();
    }
    this.txPacketCount++;
    this.txByteCount += length;
    return true;
  }

  /** The checked header (flags .. csum_offset; num_buffers 0) into a ring reservation. */
  private writeRingHeader(data: Uint8Array, at: number): void {
    const head = this.head;
    for (let i = 0; i < VNET_HDR.NUM_BUFFERS; i++) data[at + i] = head[i];
    data[at + VNET_HDR.NUM_BUFFERS] = 0;
    data[at + VNET_HDR.NUM_BUFFERS + 1] = 0;
  }

  /** Records the copy of the chain's frame (its readable part after the header) to `view[at...]`. */
  private copyFromChain(view: number, at: number, length: number): void {
    const c = this.chain;
    const copies = this.copies;
    let skip = NET_HDR_SIZE;
    let left = length;
    for (let s = 0; s < c.firstWritable && left > 0; s++) {
      let segLength = c.length[s];
      if (skip >= segLength) {
        skip -= segLength;
        continue;
      }
      segLength -= skip;
      const take = Math.min(segLength, left);
      copies.add(copies.guestView(c.region[s]), c.offset[s] + skip, view, at, take);
      skip = 0;
      at += take;
      left -= take;
    }
  }

  /** Publishes the batch's counters (inside the stats section). */
  private publishCounts(): void {
    const stats = this.stats;
    if (this.txPacketCount > 0) {
      stats.add(NetStat.txPackets, this.txPacketCount);
      stats.add(NetStat.txBytes, this.txByteCount);
      this.txPacketCount = 0;
      this.txByteCount = 0;
    }
    if (this.rxPacketCount > 0) {
      stats.add(NetStat.rxPackets, this.rxPacketCount);
      stats.add(NetStat.rxBytes, this.rxByteCount);
      this.rxPacketCount = 0;
      this.rxByteCount = 0;
    }
    const port = this.port;
    if (port.stallDrops !== this.stallDropsSeen) {
      stats.add(NetStat.txStallDrops, port.stallDrops - this.stallDropsSeen);
      this.stallDropsSeen = port.stallDrops;
    }
    if (port.holds !== this.holdsSeen) {
      stats.add(NetStat.txHolds, port.holds - this.holdsSeen);
      this.holdsSeen = port.holds;
    }
    if (this.checksummedCount + this.segmentedCount > 0) {
      stats.add(NetStat.rxChecksummed, this.checksummedCount);
      stats.add(NetStat.rxSegmented, this.segmentedCount);
      stats.add(NetStat.rxSegments, this.segmentCount);
      this.checksummedCount = 0;
      this.segmentedCount = 0;
      this.segmentCount = 0;
    }
  }

  private malformed(what: string): void {
    this.stats.add(NetStat.malformed, 1);
    this.warn(`malformed frame dropped: ${what}`);
  }

  // --- receive: switch → driver ----------------------------------------------

  /** Delivers the port's frames until none is left, buffers run out, or the budget. */
  private receive(): void {
    this.readyRxQueues();
    this.port.beginBatch();
    this.stats.beginBatch();
    let delivered = 0;
    try {
      delivered = this.drainPort();
    } catch (err) {
      // A ring the guest broke: which one is in `rxCurrent`.
      const q = this.rxCurrent;
      if (q === null) throw err;
      // Frames delivered before the break keep their copies (flushed below).
      this.breakQueue(q, err);
    } finally {
      // The frames' bytes go into guest memory before the used indexes (flush)
      // expose them and before endBatch hands the ring space back.
      this.copies.flush();
      for (let i = 0; i < this.rxReadyCount; i++) this.flush(this.queues[this.rxReady[i]]);
      this.port.endBatch();
      this.publishCounts();
      this.stats.endBatch();
      this.rxCurrent = null;
    }
    if (delivered >= BUDGET) this.scheduleRx();
  }

  /** The receive queue of the frame being delivered (for a guest's ring break). */
  private rxCurrent: QueueState | null = null;

  /** Moves frames from the port to the driver, up to BUDGET; returns how many left the port. */
  private drainPort(): number {
    const port = this.port;
    const ready = this.rxReadyCount;
    // No kicks for new receive buffers while frames find buffers: the driver
    // is asked for one only when they run out (armRx), as vhost-net does.
    for (let i = 0; i < ready; i++) {
      const q = this.queues[this.rxReady[i]];
      this.rxCurrent = q;
      (q.queue as Virtqueue).setNotification(false);
    }
    let n = 0;
    let retried = false;
    const vq = ready === 1 ? this.burstQueue(this.queues[this.rxReady[0]]) : null;
    for (;;) {
      if (vq !== null && n < BUDGET) {
        const moved = this.receiveBurst(this.queues[this.rxReady[0]], vq, BUDGET - n);
        n += moved;
        if (moved > 0) retried = false;
      }
      if (n >= BUDGET) break;
      const length = port.peek();
      if (length < 0) break;
      const bytes = port.rxBytes;
      const at = port.rxOffset;
      const accepted = this.filter.accepts(bytes, at);
      let result = BAD_BUFFERS;
      if (ready > 0 && accepted) {
        const pick = ready === 1 ? 0 : flowHash(bytes, at, length) % ready;
        const h = port.rxHeader;
        if (h < 0) {
          // No virtio_net_hdr: the all-zero header template (the fast path).
          this.hdrView = this.templateView;
          this.hdrFrom = NET_HDR_SIZE;
          result = this.deliverAny(pick, port.rxView, at, length);
        } else result = this.deliverOffloaded(pick, bytes, port.rxView, at, length, h);
      }
      // No buffers: the frame stays in the port (peek returns it again) until
      // the driver posts some and kicks; buffers posted before kicks were back
      // on are tried once more here.
      if (result === NO_BUFFERS) {
        if (retried || !this.armRx()) return n;
        retried = true;
        continue;
      }
      retried = false;
      if (ready === 0) this.stats.add(NetStat.rxDropsDown, 1);
      else if (!accepted) this.stats.add(NetStat.rxFiltered, 1);
      else if (result === BAD_FRAME) this.badOffloadFrame(bytes, port.rxHeader);
      else if (result === TOO_BIG) this.frameTooBig(length);
      // Whatever became of it, a frame being segmented is finished with.
      if (this.segmenter.count !== 0) this.segmenter.reset();
      port.release();
      n++;
    }
    return n;
  }

  /**
   * Delivers up to `max` frames with the native loop into the one ready
   * receive queue `q`; returns how many. The frame it stops at (one with a
   * header, one the filter's tables decide, no buffers in the snapshot, a
   * chain it does not take) is then peek()'s, for the TypeScript way.
   */
  private receiveBurst(q: QueueState, vq: SplitVirtqueue, max: number): number {
    const ctl = this.burstCtl;
    const C = BURST_CTL;
    this.rxCurrent = q;
    vq.burstLocation(ctl, 0);
    ctl[C.MAX] = max;
    ctl[C.MAX_CHAINS] = Math.min(this.rxHeads.length, vq.size);
    this.filter.summarize(ctl);
    (this.burst as PortBurst).rx(ctl);
    const k = ctl[C.FRAMES];
    const chains = ctl[C.POPPED];
    if (chains > 0) {
      vq.advanceBurst(chains, chains);
      q.addedUsed();
    }
    this.rxPacketCount += k;
    this.rxByteCount += ctl[C.BYTES];
    return k;
  }

  /**
   * Places one frame (view, at, length), header from {@link hdrView} /
   * {@link hdrFrom}: into its flow's queue (`pick`), or when that has no
   * buffers, the next ready one that has.
   */
  private deliverAny(pick: number, view: number, at: number, length: number): number {
    const ready = this.rxReadyCount;
    // A queue too small for the frame is passed over like one without
    // buffers; the frame waits only if some queue may still take it.
    let waiting = false;
    for (let k = 0; k < ready; k++) {
      const q = this.queues[this.rxReady[(pick + k) % ready]];
      this.rxCurrent = q;
      const result = this.deliver(q, view, at, length);
      if (result === NO_BUFFERS) waiting = true;
      else if (result !== TOO_BIG) return result;
    }
    return waiting ? NO_BUFFERS : TOO_BIG;
  }

  /**
   * A frame with a virtio_net_hdr at `b[h]`: passed through as it is when the
   * driver takes what the header asks for; otherwise its checksum completed,
   * or the frame segmented, here (in place in the ring: offload.ts).
   */
  private deliverOffloaded(
    pick: number,
    b: Uint8Array,
    view: number,
    at: number,
    length: number,
    h: number,
  ): number {
    const gso = b[h + VNET_HDR.GSO_TYPE];
    if (
      gso !== VNET_GSO_NONE &&
      ((this.rxOffloads & gsoOffload(gso)) === 0 || this.segmenter.isCurrent(view, at))
    )
      return this.deliverSegments(pick, b, view, at, length, h);
    if ((b[h] & VNET_F_NEEDS_CSUM) !== 0 && (this.rxOffloads & Offload.CSUM) === 0) {
      const start = b[h + VNET_HDR.CSUM_START] | (b[h + VNET_HDR.CSUM_START + 1] << 8);
      const offset = b[h + VNET_HDR.CSUM_OFFSET] | (b[h + VNET_HDR.CSUM_OFFSET + 1] << 8);
      if (!completeChecksum(b, at, length, start, offset)) return BAD_FRAME;
      // Done: the driver is told nothing is left (and a retry, when buffers
      // run out now, finds nothing to do).
      for (let i = 0; i < VNET_HDR.NUM_BUFFERS; i++) b[h + i] = 0;
      this.checksummedCount++;
    }
    this.hdrView = view;
    this.hdrFrom = h;
    const result = this.deliverAny(pick, view, at, length);
    // A GSO frame the driver's whole ring cannot hold (it took GUEST_TSO but
    // posts few, small buffers): cut into segments that fit, rather than wait forever.
    if (result === TOO_BIG && gso !== VNET_GSO_NONE) {
      return this.deliverSegments(pick, b, view, at, length, h);
    }
    return result;
  }

  /**
   * A frame to segment for a driver without the matching GUEST_TSO: its
   * segments, each a complete frame, one after the other; when buffers run
   * out the frame waits and continues with the next segment later.
   */
  private deliverSegments(
    pick: number,
    b: Uint8Array,
    view: number,
    at: number,
    length: number,
    h: number,
  ): number {
    const seg = this.segmenter;
    if (!seg.isCurrent(view, at)) {
      if (seg.begin(b, view, at, length, b, h) < 0) return BAD_FRAME;
      this.segmentedCount++;
    }
    this.hdrView = this.templateView;
    this.hdrFrom = NET_HDR_SIZE;
    while (seg.next < seg.count) {
      // The previous segment's bytes leave the ring before its tail is overwritten.
      this.copies.flush();
      const k = seg.next;
      const result = this.deliverAny(pick, view, seg.writeSegment(b, at, k), seg.segmentLength(k));
      if (result !== DELIVERED) return result;
      seg.next++;
      this.segmentCount++;
    }
    return DELIVERED;
  }

  /** Counts and reports a frame larger than all the receive buffers the driver's ring can hold. */
  private frameTooBig(length: number): void {
    this.stats.add(NetStat.rxDropsBadBuffers, 1);
    this.warn(`frame of ${length} bytes dropped: larger than the whole receive ring's buffers`);
  }

  /** Counts and reports a frame dropped because its headers contradict its virtio_net_hdr. */
  private badOffloadFrame(b: Uint8Array, h: number): void {
    this.stats.add(NetStat.rxDropsOffload, 1);
    this.warn(`frame dropped: its headers do not match its ${describeHeader(b, h)}`);
  }

  private scheduleRx(): void {
    if (this.rxScheduled) return;
    this.rxScheduled = true;
    setImmediate(this.runReceive);
  }

  /**
   * Turns receive kicks back on for every ready receive queue; true when one
   * of them had buffers posted meanwhile (try again rather than sleep).
   */
  private armRx(): boolean {
    let posted = false;
    for (let i = 0; i < this.rxReadyCount; i++) {
      const q = this.queues[this.rxReady[i]];
      this.rxCurrent = q;
      if ((q.queue as Virtqueue).enableNotification()) posted = true;
    }
    return posted;
  }

  /** Notes the enabled, unbroken receive queues in {@link rxReady} (none: the link is down). */
  private readyRxQueues(): void {
    let n = 0;
    for (let i = 0; i < this.ctrlIndex; i += 2) if (this.queues[i].ready) this.rxReady[n++] = i;
    this.rxReadyCount = n;
  }

  /**
   * Writes header + frame into as many receive chains as it takes. Nothing
   * is published until the whole frame is placed; when buffers run out the
   * ring is rewound to where the frame started and the frame waits.
   */
  private deliver(q: QueueState, view: number, offset: number, length: number): number {
    const vq = q.queue as Virtqueue;
    const start = vq.lastAvailIdx;
    // The ops of a frame of up to MAX_FRAME bytes stay unflushed until it is
    // placed: they can be rolled back or patched (see setNumBuffers for others).
    this.copies.ensureRoom(MAX_FRAME_OPS);
    const mark = this.copies.count;
    let written = 0;
    let count = 0;
    while (written < length || count === 0) {
      // Every buffer the ring can hold taken and the frame still not placed:
      // no amount of waiting makes it fit (TOO_BIG).
      const full = count === this.rxHeads.length || count === vq.size;
      if (full || !vq.pop(this.chain)) {
        vq.lastAvailIdx = start;
        this.copies.rollback(mark);
        return full ? TOO_BIG : NO_BUFFERS;
      }
      const used = this.fillChain(count, view, offset + written, length - written);
      if (used < 0) {
        this.copies.rollback(mark);
        return this.dropBadBuffers(q, count);
      }
      this.rxHeads[count] = this.chain.head;
      this.rxLens[count] = used;
      written += count === 0 ? used - NET_HDR_SIZE : used;
      count++;
    }
    if (count > 1 || this.hdrView !== this.templateView) this.setNumBuffers(count);
    for (let i = 0; i < count; i++) q.addUsed(this.rxHeads[i], this.rxLens[i]);
    this.rxPacketCount++;
    this.rxByteCount += length;
    return DELIVERED;
  }

  /**
   * Fills the popped chain's writable part, walked once: the header (first
   * chain of a frame: zeroes, num_buffers located for later) written here,
   * the frame's bytes from ring view `view` recorded as copies. Returns the
   * bytes placed, or -1 for an unusable chain.
   */
  private fillChain(count: number, view: number, from: number, left: number): number {
    const c = this.chain;
    if (c.error !== null || c.writableBytes === 0) return -1;
    let s = c.firstWritable;
    let within = 0;
    let placed = 0;
    const copies = this.copies;
    if (count === 0) {
      if (c.writableBytes < NET_HDR_SIZE) return -1;
      // The header from template 1 (num_buffers 1; deliver re-points it when
      // the frame takes more buffers), or from the frame's own header in the
      // ring (setNumBuffers writes num_buffers there). Segments are never empty.
      this.headerOp = copies.count;
      this.headerGeneration = copies.generation;
      const hdrView = this.hdrView;
      const hdrFrom = this.hdrFrom;
      let h = 0;
      while (h < NET_HDR_SIZE) {
        const room = c.length[s];
        const take = Math.min(room, NET_HDR_SIZE - h);
        const region = c.region[s];
        copies.add(hdrView, hdrFrom + h, copies.guestView(region), c.offset[s], take);
        for (let b = 0; b < 2; b++) {
          const k = NET_HDR_NUM_BUFFERS + b - h;
          if (k < 0 || k >= take) continue;
          this.numBuffersAt[2 * b] = region;
          this.numBuffersAt[2 * b + 1] = c.offset[s] + k;
        }
        h += take;
        if (take === room) s++;
        else within = take;
      }
      this.headerOps = copies.count - this.headerOp;
      placed = NET_HDR_SIZE;
    }
    const end = c.segments;
    let done = 0;
    while (done < left && s < end) {
      const room = c.length[s] - within;
      const take = Math.min(room, left - done);
      copies.add(view, from + done, copies.guestView(c.region[s]), c.offset[s] + within, take);
      done += take;
      s++;
      within = 0;
    }
    return placed + done;
  }

  /**
   * num_buffers of a frame placed in `count` > 1 buffers: its header is
   * copied from template `count` instead of 1 — or, when the header's copy
   * already went out (a batch flushed mid-frame: only for frames of
   * thousands of tiny buffers), written here after it.
   */
  private setNumBuffers(count: number): void {
    const copies = this.copies;
    if (copies.generation === this.headerGeneration) {
      if (this.hdrView === this.templateView)
        copies.shiftSource(this.headerOp, this.headerOps, (count - 1) * NET_HDR_SIZE);
      else {
        // The frame's own header, in its ring (the receiver's until release).
        const ring = this.port.frameViews[this.hdrView];
        ring[this.hdrFrom + NET_HDR_NUM_BUFFERS] = count & 0xff;
        ring[this.hdrFrom + NET_HDR_NUM_BUFFERS + 1] = count >> 8;
      }
      return;
    }
    copies.flush();
    const at = this.numBuffersAt;
    this.bytes[at[0]][at[1]] = count & 0xff;
    this.bytes[at[2]][at[3]] = count >> 8;
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

/**
 * A frame's flow hash (FNV-1a): its Ethernet addresses, and for IPv4 its IP
 * addresses and, for TCP and UDP, its ports. Frames of one flow hash alike,
 * so they reach one receive queue in order.
 */
export function flowHash(b: Uint8Array, o: number, length: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < 12; i++) h = Math.imul(h ^ b[o + i], FNV_PRIME);
  if (length >= 34 && b[o + 12] === 0x08 && b[o + 13] === 0x00) {
    for (let i = 26; i < 34; i++) h = Math.imul(h ^ b[o + i], FNV_PRIME);
    const l4 = 14 + (b[o + 14] & 0xf) * 4;
    const proto = b[o + 23];
    if ((proto === 6 || proto === 17) && length >= l4 + 4)
      for (let i = l4; i < l4 + 4; i++) h = Math.imul(h ^ b[o + i], FNV_PRIME);
  }
  return (h ^ (h >>> 16)) >>> 0;
}

/** The {@link Offload} bit a gso_type needs of its receiver; 0 for a type the switch does not know. */
function gsoOffload(gso: number): number {
  if (gso === VNET_GSO_TCPV4) return Offload.TSO4;
  if (gso === VNET_GSO_TCPV6) return Offload.TSO6;
  return 0;
}
