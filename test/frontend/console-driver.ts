/**
 * A virtio-console driver on top of {@link Vmm} (virtio 1.x §5.3): receive
 * buffers posted per port and re-posted as Linux does, transmit chains that
 * resolve on their used element, and with MULTIPORT the control queues
 * (§5.3.6.2): DEVICE_READY, PORT_READY for each PORT_ADD, PORT_OPEN, and a
 * record of everything the device sent (CONSOLE_PORT, PORT_NAME, PORT_OPEN,
 * RESIZE, PORT_REMOVE).
 */
import type { DriverBuffer } from '../support/driver-queue.js';
import { GuestHeap } from './guest-heap.js';
import { bitsOf, Vmm, type VmmOptions, type VmmQueue } from './vmm.js';

export const ConsoleFeature = { SIZE: 0, MULTIPORT: 1, EMERG_WRITE: 2 } as const;
export const ControlEvent = {
  DEVICE_READY: 0,
  PORT_ADD: 1,
  PORT_REMOVE: 2,
  PORT_READY: 3,
  CONSOLE_PORT: 4,
  RESIZE: 5,
  PORT_OPEN: 6,
  PORT_NAME: 7,
} as const;

/** F_SIZE, F_MULTIPORT, F_EMERG_WRITE, INDIRECT_DESC, EVENT_IDX, VERSION_1. */
export const CONSOLE_DRIVER_FEATURES = bitsOf([0, 1, 2, 28, 29, 32]);
export const CONSOLE_CONFIG_SIZE = 12;

/** One control message the device sent. */
export interface ControlMessage {
  id: number;
  event: number;
  value: number;
  /** Bytes after the 8-byte header (a name, a resize payload). */
  payload: Uint8Array;
}

/** What the driver knows about a port. */
export interface DriverPort {
  added: boolean;
  removed: boolean;
  console: boolean;
  hostOpen: boolean;
  name: string | null;
  /** Bytes received on the port's receiveq, in order. */
  received: Buffer;
}

export interface ConsoleDriverOptions extends Omit<VmmOptions, 'driverFeatures' | 'queues'> {
  /** Ports the device has (decides the queue count: 2 without multiport). */
  ports?: number;
  multiport?: boolean;
  driverFeatures?: bigint;
  /** Receive buffers posted per port; 0 posts none (a guest that does not read). */
  rxBuffers?: number;
  rxBufferBytes?: number;
  /** Put transmit chains in indirect tables. */
  indirect?: boolean;
  /** Send DEVICE_READY at start (multiport); default true. */
  deviceReady?: boolean;
  /** Answer PORT_ADD with PORT_READY and open each port; default true. */
  autoOpen?: boolean;
}

const CONTROL_BUFFERS = 32;
const CONTROL_BUFFER_BYTES = 512;

interface Pending {
  gpa: number;
  len: number;
  resolve(len: number): void;
}

export class ConsoleDriver {
  readonly ports: DriverPort[];
  /** Every control message from the device, in arrival order. */
  readonly control: ControlMessage[] = [];
  /** Anomalies seen (unknown used ids), for tests to assert on. */
  readonly violations: string[] = [];
  private readonly heap: GuestHeap;
  private readonly pending: Map<number, Pending>[];
  private readonly rxBufferBytes: number;

  private constructor(
    readonly vmm: Vmm,
    private readonly options: ConsoleDriverOptions,
    readonly multiport: boolean,
  ) {
    const n = options.ports ?? 1;
    this.ports = Array.from({ length: n }, () => ({
      added: !multiport,
      removed: false,
      console: !multiport,
      hostOpen: !multiport,
      name: null,
      received: Buffer.alloc(0),
    }));
    this.rxBufferBytes = options.rxBufferBytes ?? 4096;
    this.heap = new GuestHeap(vmm.ram.alloc(8 * 1024 * 1024, 4096), 8 * 1024 * 1024);
    this.pending = vmm.queues.map(() => new Map());
    for (const q of vmm.queues) q.onUsed = (used) => this.onUsed(q, used.id, used.len);
  }

  /** Connects, realizes, starts the device and (multiport) runs the port handshake. */
  static async create(options: ConsoleDriverOptions): Promise<ConsoleDriver> {
    const multiport = options.multiport ?? (options.ports ?? 1) > 1;
    const ports = options.ports ?? 1;
    const vmm = await Vmm.connect({
      ...options,
      queues: multiport ? 2 * (ports + 1) : 2,
      driverFeatures: options.driverFeatures ?? CONSOLE_DRIVER_FEATURES,
      configSize: CONSOLE_CONFIG_SIZE,
    });
    try {
      const d = new ConsoleDriver(vmm, options, multiport);
      await vmm.start();
      d.start();
      return d;
    } catch (err) {
      vmm.close();
      throw err;
    }
  }

  private start(): void {
    for (let p = 0; p < this.ports.length; p++) this.postReceive(p, this.options.rxBuffers ?? 8);
    if (!this.multiport) return;
    for (let i = 0; i < CONTROL_BUFFERS; i++) this.postControlBuffer();
    this.vmm.queues[2].kickIfNeeded();
    if (this.options.deviceReady ?? true) void this.sendControl(0, ControlEvent.DEVICE_READY, 1);
  }

  /** Receive queue of `port` (§5.3.2). */
  rxQueue(port: number): VmmQueue {
    return this.vmm.queues[port === 0 ? 0 : 2 * (port + 1)];
  }

  txQueue(port: number): VmmQueue {
    return this.vmm.queues[port === 0 ? 1 : 2 * (port + 1) + 1];
  }

  /** Posts `count` receive buffers on `port`. */
  postReceive(port: number, count: number): void {
    const q = this.rxQueue(port);
    for (let i = 0; i < count; i++) this.postReceiveBuffer(q, port);
    if (count > 0) q.kickIfNeeded();
  }

  private postReceiveBuffer(q: VmmQueue, port: number): void {
    const len = this.rxBufferBytes;
    const gpa = this.heap.alloc(len, 16);
    const head = q.driver.addChain([{ addr: gpa, len, write: true }]);
    this.pending[q.index].set(head, {
      gpa,
      len,
      resolve: (n) => {
        const p = this.ports[port];
        p.received = Buffer.concat([p.received, this.vmm.ram.read(gpa, n)]);
        this.heap.free(gpa);
        // As Linux does: every consumed buffer is replaced at once.
        this.postReceiveBuffer(q, port);
        q.kickIfNeeded();
      },
    });
  }

  /** Sends `data` on `port`'s transmitq (split in `segments` descriptors); resolves on its used element. */
  write(port: number, data: Uint8Array, segments = 1): Promise<number> {
    const q = this.txQueue(port);
    const gpa = this.heap.alloc(Math.max(data.length, 1), 16);
    this.vmm.ram.write(gpa, data);
    const step = Math.ceil(data.length / segments);
    const buffers: DriverBuffer[] = [];
    for (let off = 0; off < data.length; off += step)
      buffers.push({ addr: gpa + off, len: Math.min(step, data.length - off), write: false });
    const indirect = (this.options.indirect ?? false) && buffers.length > 1;
    const result = this.track(q, gpa, data.length, () => q.driver.addChain(buffers, { indirect }));
    q.kickIfNeeded();
    return result;
  }

  /** Sends a control message (the driver's control transmitq, queue 3). */
  sendControl(id: number, event: number, value: number): Promise<number> {
    const msg = new Uint8Array(8);
    const v = new DataView(msg.buffer);
    v.setUint32(0, id, true);
    v.setUint16(4, event, true);
    v.setUint16(6, value, true);
    return this.sendRawControl(msg);
  }

  /** Hostile tests: any bytes as one control-transmitq chain. */
  sendRawControl(bytes: Uint8Array): Promise<number> {
    const q = this.vmm.queues[3];
    const gpa = this.heap.alloc(Math.max(bytes.length, 1), 16);
    this.vmm.ram.write(gpa, bytes);
    const result = this.track(q, gpa, bytes.length, () =>
      q.driver.addChain([{ addr: gpa, len: Math.max(bytes.length, 1), write: false }]),
    );
    q.kickIfNeeded();
    return result;
  }

  /** Writes the emergency write register (config offset 8, F_EMERG_WRITE). */
  async emergencyWrite(byte: number): Promise<void> {
    const data = new Uint8Array(4);
    new DataView(data.buffer).setUint32(0, byte, true);
    await this.vmm.setConfig(8, data);
  }

  /** Reads cols, rows and max_nr_ports from the config space. */
  async readConfig(): Promise<{ cols: number; rows: number; maxPorts: number }> {
    const c = await this.vmm.getConfig(CONSOLE_CONFIG_SIZE);
    const v = new DataView(c.buffer, c.byteOffset, c.byteLength);
    return {
      cols: v.getUint16(0, true),
      rows: v.getUint16(2, true),
      maxPorts: v.getUint32(4, true),
    };
  }

  /** Text received on `port` so far. */
  text(port: number): string {
    return this.ports[port].received.toString('latin1');
  }

  async close(): Promise<void> {
    try {
      if (this.vmm.conn.isOpen) await this.vmm.stop();
    } finally {
      this.vmm.close();
    }
  }

  private postControlBuffer(): void {
    const q = this.vmm.queues[2];
    const gpa = this.heap.alloc(CONTROL_BUFFER_BYTES, 16);
    const head = q.driver.addChain([{ addr: gpa, len: CONTROL_BUFFER_BYTES, write: true }]);
    this.pending[2].set(head, {
      gpa,
      len: CONTROL_BUFFER_BYTES,
      resolve: (n) => {
        const bytes = this.vmm.ram.read(gpa, n);
        this.heap.free(gpa);
        this.postControlBuffer();
        q.kickIfNeeded();
        this.onControl(bytes);
      },
    });
  }

  private onControl(bytes: Uint8Array): void {
    if (bytes.length < 8) {
      this.violations.push(`control message of ${bytes.length} bytes`);
      return;
    }
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const msg = {
      id: v.getUint32(0, true),
      event: v.getUint16(4, true),
      value: v.getUint16(6, true),
      payload: bytes.slice(8),
    };
    this.control.push(msg);
    const port = this.ports[msg.id];
    if (port === undefined) {
      this.violations.push(`control event ${msg.event} for unknown port ${msg.id}`);
      return;
    }
    this.applyControl(port, msg);
  }

  private applyControl(port: DriverPort, msg: ControlMessage): void {
    switch (msg.event) {
      case ControlEvent.PORT_ADD:
        port.added = true;
        port.removed = false;
        if (this.options.autoOpen ?? true) {
          void this.sendControl(msg.id, ControlEvent.PORT_READY, 1);
          void this.sendControl(msg.id, ControlEvent.PORT_OPEN, 1);
        }
        return;
      case ControlEvent.PORT_REMOVE:
        port.removed = true;
        return;
      case ControlEvent.CONSOLE_PORT:
        port.console = msg.value === 1;
        return;
      case ControlEvent.PORT_OPEN:
        port.hostOpen = msg.value === 1;
        return;
      case ControlEvent.PORT_NAME:
        port.name = Buffer.from(msg.payload).toString('utf8');
        return;
    }
  }

  private track(q: VmmQueue, gpa: number, len: number, publish: () => number): Promise<number> {
    return new Promise((resolve) => {
      const head = publish();
      this.pending[q.index].set(head, {
        gpa,
        len,
        resolve: (n) => {
          this.heap.free(gpa);
          resolve(n);
        },
      });
    });
  }

  private onUsed(q: VmmQueue, id: number, len: number): void {
    const p = this.pending[q.index].get(id);
    if (p === undefined) {
      this.violations.push(`queue ${q.index}: used id ${id} was not in flight`);
      return;
    }
    this.pending[q.index].delete(id);
    if (len > p.len && q.index !== 1)
      this.violations.push(`queue ${q.index}: used len ${len} > ${p.len}`);
    p.resolve(len);
  }
}
