/**
 * The virtio-console device model (virtio 1.x §5.3). Transport-agnostic: it
 * is handed virtqueues and guest memory and signals the driver through a
 * callback. Output (transmitq) goes into each port's log ring, never to a
 * file or socket; input waits in a bounded buffer until the guest posts
 * receive buffers. With MULTIPORT the control queues carry the port
 * life cycle (§5.3.6.2). Per kick: one batch, one interrupt per queue.
 */
import type { StatCounters } from '../../locking/index.js';
import { type OutputStream, PortStat } from '../../logger/index.js';
import { DescriptorChain, type GuestMemory, type SplitVirtqueue } from '../../virtio/index.js';
import type { QueueDevice } from '../queue-device.js';
import {
  breakRing,
  newRingState,
  notifyDirty,
  type RingState,
  ringAt,
  ringUsable,
  setRingsMemory,
  startRing,
} from '../rings.js';
import type { InputBuffer } from '../serial/input-buffer.js';
import {
  CONTROL_HEADER_SIZE,
  CONTROL_RX_QUEUE,
  CONTROL_TX_QUEUE,
  ControlEvent,
  consoleQueueCount,
  controlEventName,
  MAX_PORT_NAME_BYTES,
  portOfQueue,
  RESIZE_PAYLOAD_SIZE,
  rxQueueOf,
  txQueueOf,
} from './config.js';
import { ConsoleStat } from './stats.js';

/** What the worker gives the device per port. */
export interface ConsolePortIo {
  output: OutputStream;
  input: InputBuffer;
  stats: StatCounters;
  /** Encoded PORT_NAME payload, or null. */
  name: Uint8Array | null;
}

export interface ConsoleDeviceOptions {
  ports: ConsolePortIo[];
  multiport: boolean;
  cols: number;
  rows: number;
  /** Largest queue size: bounds the segments of one chain. */
  queueSize: number;
  notify: (queue: number) => void;
  stats: StatCounters;
  /** Reports guest protocol violations (rate limiting is the caller's business). */
  warn: (message: string) => void;
}

type QueueState = RingState;

interface PortState {
  io: ConsolePortIo;
  tx: DescriptorChain;
  rx: DescriptorChain;
  /** A transmit chain popped and partly in the ring ('lossless' stall): resume at heldSeg/heldWithin. */
  held: boolean;
  heldSeg: number;
  heldWithin: number;
  /** Waiting for ring space; the port resumes by itself. */
  waiting: boolean;
  present: boolean;
  guestOpen: boolean;
}

/** Queued device → driver control messages, preallocated. */
const CONTROL_SLOTS_PER_PORT = 8;

export class ConsoleDevice implements QueueDevice {
  private readonly ports: PortState[];
  private readonly queues: QueueState[];
  private readonly multiport: boolean;
  private readonly notify: (queue: number) => void;
  private readonly stats: StatCounters;
  private readonly warn: (message: string) => void;
  private bytes: readonly Uint8Array[] = [];
  private cols: number;
  private rows: number;
  // Control messages waiting for control-receiveq buffers: a ring of records.
  private readonly ctlEvent: Uint16Array;
  private readonly ctlId: Uint32Array;
  private readonly ctlValue: Uint16Array;
  private ctlHead = 0;
  private ctlCount = 0;
  private readonly ctlChain: DescriptorChain;
  private readonly ctlScratch = new Uint8Array(CONTROL_HEADER_SIZE + MAX_PORT_NAME_BYTES);
  private readonly ctlView = new DataView(this.ctlScratch.buffer);
  private readonly oneByte = new Uint8Array(1);

  constructor(o: ConsoleDeviceOptions) {
    this.multiport = o.multiport;
    this.notify = o.notify;
    this.stats = o.stats;
    this.warn = o.warn;
    this.cols = o.cols;
    this.rows = o.rows;
    // A chain may be split at region boundaries: a few more segments than descriptors.
    const segments = o.queueSize + 16;
    this.ports = o.ports.map((io) => ({
      io,
      tx: new DescriptorChain(segments),
      rx: new DescriptorChain(segments),
      held: false,
      heldSeg: 0,
      heldWithin: 0,
      waiting: false,
      present: true,
      guestOpen: !o.multiport,
    }));
    const n = consoleQueueCount(o.ports.length, o.multiport);
    this.queues = Array.from({ length: n }, newRingState);
    const slots = CONTROL_SLOTS_PER_PORT * o.ports.length + 16;
    this.ctlEvent = new Uint16Array(slots);
    this.ctlId = new Uint32Array(slots);
    this.ctlValue = new Uint16Array(slots);
    this.ctlChain = new DescriptorChain(segments);
  }

  setMemory(memory: GuestMemory): void {
    this.bytes = memory.bytes;
    setRingsMemory(this.queues, memory);
  }

  startQueue(index: number, vq: SplitVirtqueue): void {
    startRing(this.queue(index), vq);
  }

  setEnabled(index: number, enabled: boolean): void {
    this.queue(index).enabled = enabled;
    if (enabled) this.kick(index);
  }

  /** A held transmit chain is completed; what it still carried is counted as dropped. */
  stopQueue(index: number): Promise<number> {
    const q = this.queue(index);
    const p = portOfQueue(index);
    if (p >= 0 && index === txQueueOf(p)) this.releaseHeld(this.ports[p], q);
    const last = q.vq?.lastAvailIdx ?? 0;
    q.vq = null;
    return Promise.resolve(last);
  }

  async close(): Promise<void> {
    for (let i = 0; i < this.queues.length; i++) await this.stopQueue(i);
  }

  /** The driver signalled queue `index`. */
  kick(index: number): void {
    if (!this.usable(index)) return;
    this.stats.add(ConsoleStat.kicks, 1);
    this.serve(index);
    this.flushNotifications();
  }

  // ── host-side operations (from the worker's input sockets and commands) ──

  /** Host → guest bytes for `port`: buffered, then delivered as receive buffers allow. Returns bytes taken. */
  queueInput(port: number, buf: Uint8Array, off: number, len: number): number {
    const taken = this.ports[port].io.input.push(buf, off, len);
    this.serve(rxQueueOf(port));
    this.flushNotifications();
    return taken;
  }

  /** New console size: the host already updated the config space; multiport also sends RESIZE. */
  resize(cols: number, rows: number): void {
    this.cols = cols;
    this.rows = rows;
    if (!this.multiport) return;
    this.queueControl(0, ControlEvent.RESIZE, 0);
    this.flushControl();
  }

  /** A byte the driver wrote to emerg_wr: into port 0's stream, never waiting. */
  emergencyWrite(byte: number): void {
    this.stats.add(ConsoleStat.emergWrites, 1);
    const io = this.ports[0].io;
    this.oneByte[0] = byte;
    if (io.output.offer(this.oneByte, 0, 1) === 0) io.stats.add(PortStat.bytesDropped, 1);
    io.output.flush();
  }

  /** Hot-unplug (PORT_REMOVE) or re-plug (PORT_ADD) of port `id` (> 0). */
  setPortPresent(id: number, present: boolean): void {
    const p = this.ports[id];
    if (!this.multiport || id === 0 || p === undefined || p.present === present) return;
    p.present = present;
    p.guestOpen = false;
    this.queueControl(id, present ? ControlEvent.PORT_ADD : ControlEvent.PORT_REMOVE, 0);
    this.flushControl();
  }

  // ── transmitq: guest → ring ──────────────────────────────────────────────

  private transmit(p: number): void {
    const port = this.ports[p];
    const q = this.queues[txQueueOf(p)];
    const vq = q.vq;
    if (vq === null || port.waiting) return;
    if (port.held && !this.sendChain(port, q, vq, port.heldSeg, port.heldWithin)) return;
    for (;;) {
      vq.setNotification(false);
      while (vq.pop(port.tx)) {
        if (!this.sendChain(port, q, vq, 0, 0)) return;
      }
      vq.setNotification(true);
      if (vq.pending() === 0) break;
    }
    port.io.output.flush();
  }

  /**
   * Offers the chain's readable bytes from (seg, within) to the ring. True
   * when the chain is done (and completed); false on a 'lossless' stall,
   * after arranging to resume once the logger has made room.
   */
  private sendChain(
    port: PortState,
    q: QueueState,
    vq: SplitVirtqueue,
    seg: number,
    within: number,
  ): boolean {
    const c = port.tx;
    if (c.error !== null) return this.badChain(q, vq, c);
    for (let s = seg; s < c.firstWritable; s++) {
      const start = s === seg ? within : 0;
      const len = c.length[s] - start;
      const n = port.io.output.offer(this.bytes[c.region[s]], c.offset[s] + start, len);
      if (n < len) {
        this.stall(port, s, start + n, len - n);
        return false;
      }
    }
    port.held = false;
    vq.pushUsed(c.head, 0);
    q.dirty = true;
    port.io.stats.add(PortStat.transmits, 1);
    return true;
  }

  private stall(port: PortState, seg: number, within: number, missing: number): void {
    port.held = true;
    port.heldSeg = seg;
    port.heldWithin = within;
    port.waiting = true;
    port.io.output.flush();
    const p = this.ports.indexOf(port);
    void port.io.output.waitWritable(missing).then(() => {
      port.waiting = false;
      if (!this.usable(txQueueOf(p))) return;
      this.serve(txQueueOf(p));
      this.flushNotifications();
    });
  }

  private releaseHeld(port: PortState, q: QueueState): void {
    if (!port.held || q.vq === null) return;
    const c = port.tx;
    let rest = c.length[port.heldSeg] - port.heldWithin;
    for (let s = port.heldSeg + 1; s < c.firstWritable; s++) rest += c.length[s];
    port.io.stats.add(PortStat.bytesDropped, rest);
    port.held = false;
    q.vq.pushUsed(c.head, 0);
    q.dirty = true;
    this.flushNotifications();
  }

  // ── receiveq: input → guest ──────────────────────────────────────────────

  private deliverInput(p: number): void {
    const port = this.ports[p];
    const q = this.queues[rxQueueOf(p)];
    const vq = q.vq;
    // A Linux driver discards data for a port the guest has not opened; it opens a
    // console port itself (PORT_OPEN after CONSOLE_PORT). Without multiport port 0 is always open.
    if (vq === null || !q.enabled || q.broken || !port.present || !port.guestOpen) return;
    const input = port.io.input;
    while (input.length > 0 && vq.pop(port.rx)) {
      const c = port.rx;
      if (c.error !== null) {
        this.badChain(q, vq, c);
        continue;
      }
      const n = this.fillFromInput(c, input);
      vq.pushUsed(c.head, n);
      q.dirty = true;
      port.io.stats.add(PortStat.bytesIn, n);
      port.io.stats.add(PortStat.receives, 1);
    }
  }

  private fillFromInput(c: DescriptorChain, input: InputBuffer): number {
    let written = 0;
    for (let s = c.firstWritable; s < c.segments && input.length > 0; s++) {
      let within = 0;
      while (within < c.length[s] && input.length > 0) {
        const n = Math.min(c.length[s] - within, input.contiguousLength);
        const start = input.contiguousStart;
        this.bytes[c.region[s]].set(input.bytes.subarray(start, start + n), c.offset[s] + within);
        input.consume(n);
        within += n;
        written += n;
      }
    }
    return written;
  }

  // ── control queues (MULTIPORT) ───────────────────────────────────────────

  private receiveControl(): void {
    const q = this.queues[CONTROL_TX_QUEUE];
    const vq = q.vq;
    if (vq === null) return;
    while (vq.pop(this.ctlChain)) {
      this.stats.add(ConsoleStat.controlIn, 1);
      this.handleControl(this.ctlChain);
      vq.pushUsed(this.ctlChain.head, 0);
      q.dirty = true;
    }
    this.flushControl();
  }

  private handleControl(c: DescriptorChain): void {
    const problem = this.parseControl(c);
    if (problem !== null) {
      this.badControl(problem);
      return;
    }
    const id = this.ctlView.getUint32(0, true);
    const event = this.ctlView.getUint16(4, true);
    const value = this.ctlView.getUint16(6, true);
    if (event === ControlEvent.DEVICE_READY) this.deviceReady(value);
    else if (event === ControlEvent.PORT_READY) this.portReady(id, value);
    else this.portOpen(id, value === 1);
  }

  /** Reads the header into the scratch buffer; returns what is wrong with it, or null. */
  private parseControl(c: DescriptorChain): string | null {
    if (c.error !== null) return `unusable chain (${c.error})`;
    if (c.readableBytes < CONTROL_HEADER_SIZE)
      return `${c.readableBytes} bytes, a control message has at least ${CONTROL_HEADER_SIZE}`;
    this.readHeader(c);
    const id = this.ctlView.getUint32(0, true);
    const event = this.ctlView.getUint16(4, true);
    const value = this.ctlView.getUint16(6, true);
    if (event === ControlEvent.DEVICE_READY) return null;
    if (event !== ControlEvent.PORT_READY && event !== ControlEvent.PORT_OPEN)
      return `${controlEventName(event)} is not an event a driver sends`;
    if (this.ports[id] === undefined || !this.ports[id].present) return `no port ${id}`;
    if (value > 1) return `${controlEventName(event)} value ${value} is not 0 or 1`;
    return null;
  }

  /** The guest opened (or closed) the port: input held for it can flow now. */
  private portOpen(id: number, open: boolean): void {
    this.ports[id].guestOpen = open;
    if (open) this.serve(rxQueueOf(id));
  }

  private readHeader(c: DescriptorChain): void {
    let got = 0;
    for (let s = 0; s < c.firstWritable && got < CONTROL_HEADER_SIZE; s++) {
      const n = Math.min(c.length[s], CONTROL_HEADER_SIZE - got);
      const src = this.bytes[c.region[s]];
      for (let i = 0; i < n; i++) this.ctlScratch[got + i] = src[c.offset[s] + i];
      got += n;
    }
  }

  private deviceReady(value: number): void {
    if (value !== 1) {
      this.warn('console driver reported DEVICE_READY 0: it failed to initialise');
      return;
    }
    this.ports.forEach((p, id) => {
      if (p.present) this.queueControl(id, ControlEvent.PORT_ADD, 0);
    });
  }

  /** The guest set the port up: tell it which is the console, its name, and that the host side is open. */
  private portReady(id: number, value: number): void {
    if (value !== 1) {
      this.warn(`console driver could not add port ${id} (PORT_READY 0)`);
      return;
    }
    if (id === 0) this.queueControl(0, ControlEvent.CONSOLE_PORT, 1);
    if (this.ports[id].io.name !== null) this.queueControl(id, ControlEvent.PORT_NAME, 0);
    this.queueControl(id, ControlEvent.PORT_OPEN, 1);
  }

  private badControl(why: string): void {
    this.stats.add(ConsoleStat.badControl, 1);
    this.warn(`malformed control message ignored: ${why} (CONSOLE_BAD_CONTROL)`);
  }

  private queueControl(id: number, event: number, value: number): void {
    const slots = this.ctlEvent.length;
    if (this.ctlCount === slots) {
      this.stats.add(ConsoleStat.controlDropped, 1);
      this.warn(`control message ${controlEventName(event)} for port ${id} dropped: queue full`);
      return;
    }
    const i = (this.ctlHead + this.ctlCount) % slots;
    this.ctlEvent[i] = event;
    this.ctlId[i] = id;
    this.ctlValue[i] = value;
    this.ctlCount++;
  }

  private flushControl(): void {
    this.serve(CONTROL_RX_QUEUE);
    this.flushNotifications();
  }

  /** Moves queued control messages into the driver's control-receiveq buffers. */
  private sendControl(): void {
    const q = this.queues[CONTROL_RX_QUEUE];
    const vq = q?.vq ?? null;
    if (vq === null || !q.enabled || q.broken) return;
    while (this.ctlCount > 0 && vq.pop(this.ctlChain)) {
      const c = this.ctlChain;
      const len = this.encodeControl(this.ctlHead);
      this.ctlHead = (this.ctlHead + 1) % this.ctlEvent.length;
      this.ctlCount--;
      const n = c.error === null ? this.copyToChain(c, len) : 0;
      if (n < len) this.warn(`control buffer of ${c.writableBytes} bytes too small for ${len}`);
      vq.pushUsed(c.head, n);
      q.dirty = true;
      this.stats.add(ConsoleStat.controlOut, 1);
    }
  }

  /** Encodes record `i` into the scratch buffer; returns its length. */
  private encodeControl(i: number): number {
    const v = this.ctlView;
    const event = this.ctlEvent[i];
    const id = this.ctlId[i];
    v.setUint32(0, id, true);
    v.setUint16(4, event, true);
    v.setUint16(6, this.ctlValue[i], true);
    if (event === ControlEvent.RESIZE) {
      // struct virtio_console_resize as the spec has it: cols, then rows.
      v.setUint16(CONTROL_HEADER_SIZE, this.cols, true);
      v.setUint16(CONTROL_HEADER_SIZE + 2, this.rows, true);
      return CONTROL_HEADER_SIZE + RESIZE_PAYLOAD_SIZE;
    }
    const name = event === ControlEvent.PORT_NAME ? this.ports[id].io.name : null;
    if (name === null) return CONTROL_HEADER_SIZE;
    this.ctlScratch.set(name, CONTROL_HEADER_SIZE);
    return CONTROL_HEADER_SIZE + name.length;
  }

  private copyToChain(c: DescriptorChain, len: number): number {
    let done = 0;
    for (let s = c.firstWritable; s < c.segments && done < len; s++) {
      const n = Math.min(c.length[s], len - done);
      this.bytes[c.region[s]].set(this.ctlScratch.subarray(done, done + n), c.offset[s]);
      done += n;
    }
    return done;
  }

  // ── shared ───────────────────────────────────────────────────────────────

  private badChain(q: QueueState, vq: SplitVirtqueue, c: DescriptorChain): true {
    this.stats.add(ConsoleStat.badChains, 1);
    this.warn(`malformed chain completed unused: ${c.error}`);
    vq.pushUsed(c.head, 0);
    q.dirty = true;
    return true;
  }

  private usable(index: number): boolean {
    return ringUsable(this.queues, index);
  }

  /**
   * Does what queue `index` needs (pop transmits, fill receive buffers, read
   * or write control messages); a guest that broke the ring stops that queue
   * only. A switch rather than callbacks: nothing is allocated per kick.
   */
  private serve(index: number): void {
    if (!this.usable(index)) return;
    try {
      if (this.multiport && index === CONTROL_TX_QUEUE) this.receiveControl();
      else if (this.multiport && index === CONTROL_RX_QUEUE) this.sendControl();
      else if (index === rxQueueOf(portOfQueue(index))) this.deliverInput(portOfQueue(index));
      else this.transmit(portOfQueue(index));
    } catch (err) {
      breakRing(this.queues[index], index, err, this.warn);
      this.stats.add(ConsoleStat.brokenQueues, 1);
    }
  }

  private flushNotifications(): void {
    const sent = notifyDirty(this.queues, this.notify);
    if (sent > 0) this.stats.add(ConsoleStat.interrupts, sent);
  }

  private queue(index: number): QueueState {
    return ringAt(this.queues, index);
  }
}
