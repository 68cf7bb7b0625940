/**
 * The virtio-console device model (virtio 1.x §5.3). Transport-agnostic: it
 * is handed virtqueues and guest memory and signals the driver through a
 * callback. Output (transmitq) goes into each port's log ring, never to a
 * file or socket; input waits in a bounded buffer until the guest posts
 * receive buffers. With MULTIPORT the control queues carry the port
 * life cycle (§5.3.6.2). Per kick: one batch, one interrupt per queue.
 */
import type { InputBuffer } from '../../chardev/input-buffer.js';
import type { StatCounters } from '../../locking/index.js';
import { type OutputStream, PortStat } from '../../logger/index.js';
import {
  type ChainHandler,
  ChainReader,
  ChainWriter,
  DescriptorChain,
  DrainResult,
  DrainStop,
  drainQueue,
  type GuestMemory,
  takeVrings,
  type Vring,
  vringAt,
} from '../../virtio/index.js';
import { readConfigBytes, type VirtioDeviceModel } from '../device.js';
import {
  CONSOLE_CONFIG_SIZE,
  CONTROL_HEADER_SIZE,
  CONTROL_RX_QUEUE,
  CONTROL_TX_QUEUE,
  ConsoleConfigOffset,
  ControlEvent,
  consoleDeviceFeatures,
  consoleQueueCount,
  controlEventName,
  encodeConsoleConfig,
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

/** Options of a {@link ConsoleDevice}: `ports[0]` is the console; several ports need multiport. */
export interface ConsoleDeviceOptions {
  ports: ConsolePortIo[];
  multiport: boolean;
  cols: number;
  rows: number;
  /** Largest queue size: bounds the segments of one chain. */
  queueSize: number;
  stats: StatCounters;
  /** Reports guest protocol violations (rate limiting is the caller's business). */
  warn: (message: string) => void;
  /** The config space changed (a resize): the transport tells the driver. */
  configChanged?: () => void;
  /** Called once by {@link ConsoleDevice.close}, e.g. to close the ports' input sockets. */
  onClose?: () => void;
}

/** Run-time commands of a console device. */
export type ConsoleCommand =
  /** New console size: config space, a config-change notification and (multiport) RESIZE. */
  | { type: 'resize'; cols: number; rows: number }
  /** Hot-unplug (false) or re-plug (true) of port `port` > 0 (multiport). */
  | { type: 'port-present'; port: number; present: boolean };

type QueueState = Vring;

interface PortState {
  io: ConsolePortIo;
  tx: DescriptorChain;
  /** Reads {@link tx}; while held, its position is where the output resumes. */
  txReader: ChainReader;
  /** Takes each transmit chain popped by {@link drainQueue}; made once. */
  txHandler: ChainHandler;
  rx: DescriptorChain;
  /** A transmit chain popped and partly in the ring ('lossless' stall): resume at txReader's position. */
  held: boolean;
  /** Waiting for ring space; the port resumes by itself. */
  waiting: boolean;
  present: boolean;
  guestOpen: boolean;
}

/** Queued device → driver control messages, preallocated. */
const CONTROL_SLOTS_PER_PORT = 8;

/**
 * The virtio-console device model: each port's transmitq output into its log ring,
 * its buffered input into receiveq, and (multiport) the control queues' port life cycle.
 */
export class ConsoleDevice implements VirtioDeviceModel<ConsoleCommand> {
  readonly kind = 'console';
  readonly features: bigint;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly configSize = CONSOLE_CONFIG_SIZE;
  private config: Uint8Array;
  private readonly ports: PortState[];
  private queues: readonly QueueState[] = [];
  private readonly multiport: boolean;
  private readonly configChanged: () => void;
  private onClose: (() => void) | undefined;
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
  private readonly ctlHandler: ChainHandler = { handleChain: (c) => this.receiveOneControl(c) };
  /** Control headers; re-pointed per chain. */
  private readonly reader = new ChainReader();
  /** Receive buffers and control messages to the driver; re-pointed per chain. */
  private readonly writer = new ChainWriter();
  private readonly drained = new DrainResult();
  private readonly ctlScratch = new Uint8Array(CONTROL_HEADER_SIZE + MAX_PORT_NAME_BYTES);
  private readonly ctlView = new DataView(this.ctlScratch.buffer);
  private readonly oneByte = new Uint8Array(1);

  constructor(o: ConsoleDeviceOptions) {
    this.multiport = o.multiport;
    this.configChanged = o.configChanged ?? (() => {});
    this.onClose = o.onClose;
    this.features = consoleDeviceFeatures(o.multiport);
    this.numQueues = consoleQueueCount(o.ports.length, o.multiport);
    this.maxQueueSize = o.queueSize;
    this.config = encodeConsoleConfig(o.cols, o.rows, o.ports.length);
    this.stats = o.stats;
    this.warn = o.warn;
    this.cols = o.cols;
    this.rows = o.rows;
    // A chain may be split at region boundaries: a few more segments than descriptors.
    const segments = o.queueSize + 16;
    this.ports = o.ports.map((io, p) => ({
      io,
      tx: new DescriptorChain(segments),
      txReader: new ChainReader(),
      txHandler: { handleChain: () => this.sendPopped(p) },
      rx: new DescriptorChain(segments),
      held: false,
      waiting: false,
      present: true,
      guestOpen: !o.multiport,
    }));
    const slots = CONTROL_SLOTS_PER_PORT * o.ports.length + 16;
    this.ctlEvent = new Uint16Array(slots);
    this.ctlId = new Uint32Array(slots);
    this.ctlValue = new Uint16Array(slots);
    this.ctlChain = new DescriptorChain(segments);
  }

  /** virtio_console_config as it stands; zeroes past its end. */
  readConfig(offset: number, out: Uint8Array): void {
    readConfigBytes(this.config, offset, out);
  }

  /** Only emerg_wr is writable: its low byte goes to port 0's log (F_EMERG_WRITE, §5.3.4). */
  writeConfig(offset: number, data: Uint8Array): boolean {
    const at = ConsoleConfigOffset.EMERG_WR;
    if (offset < at || offset + data.length > CONSOLE_CONFIG_SIZE || data.length === 0)
      return false;
    if (offset === at) this.emergencyWrite(data[0]);
    return true;
  }

  /** Takes the device's rings, one per queue. */
  activate(vrings: readonly Vring[]): void {
    this.queues = takeVrings(vrings, this.numQueues);
  }

  setMemory(memory: GuestMemory): void {
    this.bytes = memory.bytes;
  }

  /** A held transmit chain is completed; what it still carried is counted as dropped. */
  quiesce(index: number): Promise<void> {
    const q = this.queue(index);
    const p = portOfQueue(index);
    if (p >= 0 && index === txQueueOf(p)) this.releaseHeld(this.ports[p], q);
    return Promise.resolve();
  }

  /** Run-time commands from the control plane. */
  command(cmd: ConsoleCommand): void {
    if (cmd.type === 'resize') this.resize(cmd.cols, cmd.rows);
    else this.setPortPresent(cmd.port, cmd.present);
  }

  /** Releases held output and stops waiting for ring space, so nothing keeps the thread alive. */
  async close(): Promise<void> {
    for (let i = 0; i < this.queues.length; i++) await this.quiesce(i);
    this.onClose?.();
    this.onClose = undefined;
    for (const p of this.ports) {
      p.io.output.cancelWait();
      p.io.output.flush();
    }
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

  /** New console size: config space, config-change notification; multiport also sends RESIZE. */
  resize(cols: number, rows: number): void {
    if (!isU16(cols) || !isU16(rows))
      throw new RangeError(`console size ${cols}x${rows}: each must be 0..65535`);
    this.cols = cols;
    this.rows = rows;
    this.config = encodeConsoleConfig(cols, rows, this.ports.length);
    this.configChanged();
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
    if (!this.multiport || !Number.isInteger(id) || id < 1 || id >= this.ports.length)
      throw new RangeError(
        `port ${id}: only ports 1..${this.ports.length - 1} of a multiport device`,
      );
    const p = this.ports[id];
    if (p.present === present) return;
    p.present = present;
    p.guestOpen = false;
    this.queueControl(id, present ? ControlEvent.PORT_ADD : ControlEvent.PORT_REMOVE, 0);
    this.flushControl();
  }

  // ── transmitq: guest → ring ──────────────────────────────────────────────

  private transmit(p: number): void {
    const port = this.ports[p];
    const q = this.queues[txQueueOf(p)];
    const vq = q.queue;
    if (vq === null || port.waiting) return;
    if (port.held && !this.sendChain(port, q)) return;
    // HANDLER: stalled on a full ring with kicks off; the stall's wait drains again.
    const stop = drainQueue(vq, port.tx, port.txHandler, Number.POSITIVE_INFINITY, this.drained);
    if (stop === DrainStop.HANDLER) return;
    port.io.output.flush();
  }

  /** drainQueue's handler for port `p`'s transmitq: sends the chain just popped into its `tx`. */
  private sendPopped(p: number): boolean {
    const port = this.ports[p];
    port.txReader.reset(port.tx, this.bytes);
    return this.sendChain(port, this.queues[txQueueOf(p)]);
  }

  /**
   * Offers the chain's readable bytes from the reader's position to the
   * ring, piece by piece. True when the chain is done (and completed); false
   * on a 'lossless' stall, after arranging to resume once the logger has made room.
   */
  private sendChain(port: PortState, q: QueueState): boolean {
    const c = port.tx;
    if (c.error !== null) return this.badChain(q, c);
    const r = port.txReader;
    for (let len = r.peekPiece(); len > 0; len = r.peekPiece()) {
      const n = port.io.output.offer(r.pieceBytes, r.pieceOffset, len);
      r.skip(n);
      if (n < len) {
        this.stall(port, len - n);
        return false;
      }
    }
    port.held = false;
    q.addUsed(c.head, 0);
    port.io.stats.add(PortStat.transmits, 1);
    return true;
  }

  private stall(port: PortState, missing: number): void {
    port.held = true;
    port.waiting = true;
    port.io.output.flush();
    const p = this.ports.indexOf(port);
    void port.io.output.waitWritable(missing).then((writable) => {
      port.waiting = false;
      // false: the device closed and cancelled the wait.
      if (!writable || !this.usable(txQueueOf(p))) return;
      this.serve(txQueueOf(p));
      this.flushNotifications();
    });
  }

  private releaseHeld(port: PortState, q: QueueState): void {
    if (!port.held || q.queue === null) return;
    port.io.stats.add(PortStat.bytesDropped, port.txReader.available);
    port.held = false;
    q.addUsed(port.tx.head, 0);
    this.flushNotifications();
  }

  // ── receiveq: input → guest ──────────────────────────────────────────────

  private deliverInput(p: number): void {
    const port = this.ports[p];
    const q = this.queues[rxQueueOf(p)];
    const vq = q.queue;
    // A Linux driver discards data for a port the guest has not opened; it opens a
    // console port itself (PORT_OPEN after CONSOLE_PORT). Without multiport port 0 is always open.
    if (vq === null || !q.ready || !port.present || !port.guestOpen) return;
    const input = port.io.input;
    while (input.length > 0 && vq.pop(port.rx)) {
      const c = port.rx;
      if (c.error !== null) {
        this.badChain(q, c);
        continue;
      }
      const n = this.fillFromInput(this.writer.reset(c, this.bytes), input);
      q.addUsed(c.head, n);
      port.io.stats.add(PortStat.bytesIn, n);
      port.io.stats.add(PortStat.receives, 1);
    }
  }

  /** Moves buffered input into the receive buffer `w` until one of them runs out; returns bytes moved. */
  private fillFromInput(w: ChainWriter, input: InputBuffer): number {
    let written = 0;
    while (input.length > 0) {
      const n = w.write(input.bytes, input.contiguousStart, input.contiguousLength);
      if (n === 0) break;
      input.consume(n);
      written += n;
    }
    return written;
  }

  // ── control queues (MULTIPORT) ───────────────────────────────────────────

  private receiveControl(): void {
    const q = this.queues[CONTROL_TX_QUEUE];
    const vq = q.queue;
    if (vq === null) return;
    drainQueue(vq, this.ctlChain, this.ctlHandler, Number.POSITIVE_INFINITY, this.drained);
    this.flushControl();
  }

  /** drainQueue's handler for control-transmitq: one driver → device message, never stops. */
  private receiveOneControl(c: DescriptorChain): boolean {
    this.stats.add(ConsoleStat.controlIn, 1);
    this.handleControl(c);
    this.queues[CONTROL_TX_QUEUE].addUsed(c.head, 0);
    return true;
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

  /** Copies struct virtio_console_control (id, event, value) into the scratch buffer. */
  private readHeader(c: DescriptorChain): void {
    this.reader.reset(c, this.bytes).read(this.ctlScratch, 0, CONTROL_HEADER_SIZE);
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
    const vq = q?.queue ?? null;
    if (vq === null || !q.ready) return;
    while (this.ctlCount > 0 && vq.pop(this.ctlChain)) {
      const c = this.ctlChain;
      const len = this.encodeControl(this.ctlHead);
      this.ctlHead = (this.ctlHead + 1) % this.ctlEvent.length;
      this.ctlCount--;
      // A chain with `error` set has no room: nothing is written.
      const n = this.writer.reset(c, this.bytes).write(this.ctlScratch, 0, len);
      if (n < len) this.warn(`control buffer of ${c.writableBytes} bytes too small for ${len}`);
      q.addUsed(c.head, n);
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

  // ── shared ───────────────────────────────────────────────────────────────

  private badChain(q: QueueState, c: DescriptorChain): true {
    this.stats.add(ConsoleStat.badChains, 1);
    this.warn(`malformed chain completed unused: ${c.error}`);
    q.addUsed(c.head, 0);
    return true;
  }

  private usable(index: number): boolean {
    return this.queues[index]?.ready ?? false;
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
      this.queues[index].fail(err, this.warn);
      this.stats.add(ConsoleStat.brokenQueues, 1);
    }
  }

  private flushNotifications(): void {
    let sent = 0;
    for (const q of this.queues) if (q.flush()) sent++;
    if (sent > 0) this.stats.add(ConsoleStat.interrupts, sent);
  }

  private queue(index: number): QueueState {
    return vringAt(this.queues, index);
  }
}

function isU16(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffff;
}
