/**
 * A virtio-blk driver on top of {@link Vmm}: builds requests as virtio 1.x
 * §5.2.6 lays them out (16-byte header {type u32, reserved u32, sector u64},
 * data, one status byte), puts them on a virtqueue, kicks, and resolves when
 * the used element comes back on the call eventfd.
 */

import type { DriverBuffer } from '../support/driver-queue.js';
import { FrontendError } from './errors.js';
import { GuestHeap } from './guest-heap.js';
import { bitsOf, Vmm, type VmmOptions, type VmmQueue } from './vmm.js';

/** Request types (virtio 1.x §5.2.6). */
export const BlkType = {
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  GET_LIFETIME: 10,
  DISCARD: 11,
  WRITE_ZEROES: 13,
  SECURE_ERASE: 14,
} as const;

/** Status byte values (§5.2.6). */
export const BlkStatus = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

/** Feature bits of virtio-blk (§5.2.3) and the transport bits the driver uses. */
export const BlkFeature = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
  LIFETIME: 15,
  SECURE_ERASE: 16,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  VERSION_1: 32,
} as const;

/** Sector size of every request, whatever blk_size says (§5.2.6). */
export const SECTOR_SIZE = 512;
/** Bytes of the request header and of one discard / write-zeroes segment. */
export const REQ_HEADER_SIZE = 16;
export const SEGMENT_SIZE = 16;
/** Bytes of the GET_ID answer. */
export const ID_BYTES = 20;
/** Flag of a write-zeroes segment: the device may unmap (§5.2.6). */
export const WRITE_ZEROES_FLAG_UNMAP = 1;

/**
 * What the driver accepts by default: the features QEMU 7.2 forwards for
 * vhost-user-blk (user_feature_bits) that a split-ring driver can use.
 */
export const BLK_DRIVER_FEATURES = bitsOf([
  BlkFeature.SIZE_MAX,
  BlkFeature.SEG_MAX,
  BlkFeature.GEOMETRY,
  BlkFeature.RO,
  BlkFeature.BLK_SIZE,
  BlkFeature.FLUSH,
  BlkFeature.TOPOLOGY,
  BlkFeature.CONFIG_WCE,
  BlkFeature.MQ,
  BlkFeature.DISCARD,
  BlkFeature.WRITE_ZEROES,
  BlkFeature.RING_INDIRECT_DESC,
  BlkFeature.RING_EVENT_IDX,
  BlkFeature.VERSION_1,
]);

/** Bytes of struct virtio_blk_config up to write_zeroes_may_unmap and its padding. */
export const BLK_CONFIG_SIZE = 60;

/** struct virtio_blk_config (§5.2.4), the fields this driver uses. */
export interface BlkConfig {
  /** In 512-byte sectors. */
  capacity: bigint;
  sizeMax: number;
  segMax: number;
  geometry: { cylinders: number; heads: number; sectors: number };
  blkSize: number;
  topology: {
    physicalBlockExp: number;
    alignmentOffset: number;
    minIoSize: number;
    optIoSize: number;
  };
  writeback: number;
  numQueues: number;
  maxDiscardSectors: number;
  maxDiscardSeg: number;
  discardSectorAlignment: number;
  maxWriteZeroesSectors: number;
  maxWriteZeroesSeg: number;
  writeZeroesMayUnmap: number;
}

/** Decodes the config space bytes (little-endian, §5.2.4). */
export function parseBlkConfig(bytes: Uint8Array): BlkConfig {
  if (bytes.byteLength < BLK_CONFIG_SIZE) {
    throw new FrontendError(
      'FRONTEND_BAD_REPLY',
      `virtio-blk config is ${bytes.byteLength} bytes, expected 60`,
    );
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    capacity: dv.getBigUint64(0, true),
    sizeMax: dv.getUint32(8, true),
    segMax: dv.getUint32(12, true),
    geometry: {
      cylinders: dv.getUint16(16, true),
      heads: dv.getUint8(18),
      sectors: dv.getUint8(19),
    },
    blkSize: dv.getUint32(20, true),
    topology: {
      physicalBlockExp: dv.getUint8(24),
      alignmentOffset: dv.getUint8(25),
      minIoSize: dv.getUint16(26, true),
      optIoSize: dv.getUint32(28, true),
    },
    writeback: dv.getUint8(32),
    numQueues: dv.getUint16(34, true),
    maxDiscardSectors: dv.getUint32(36, true),
    maxDiscardSeg: dv.getUint32(40, true),
    discardSectorAlignment: dv.getUint32(44, true),
    maxWriteZeroesSectors: dv.getUint32(48, true),
    maxWriteZeroesSeg: dv.getUint32(52, true),
    writeZeroesMayUnmap: dv.getUint8(56),
  };
}

/** One request for {@link BlkDriver.submitBatch}. */
export type BlkRequest =
  // ioprio: the header's field after `type` (Linux: req_get_ioprio(); class << 13 | level).
  | { type: 'read'; sector: number; length: number; ioprio?: number }
  | { type: 'write'; sector: number; data: Uint8Array; ioprio?: number }
  | { type: 'flush' }
  | { type: 'discard'; sector: number; sectors: number }
  | { type: 'write-zeroes'; sector: number; sectors: number; unmap?: boolean }
  | { type: 'get-id' };

/** Outcome of one request. */
export interface BlkResult {
  /** The status byte the device wrote (0xff if it wrote none). */
  status: number;
  /** The used element's len: bytes the device says it wrote. */
  len: number;
  /** For reads and GET_ID: the data area after completion. */
  data?: Uint8Array;
}

/** Options of {@link BlkDriver.create}. */
export interface BlkDriverOptions extends Omit<VmmOptions, 'driverFeatures' | 'configSize'> {
  /** Features the driver accepts; default {@link BLK_DRIVER_FEATURES}. */
  driverFeatures?: bigint;
  /** Put each request in an indirect table (when RING_INDIRECT_DESC is negotiated). */
  indirect?: boolean;
  /** Split request data into descriptors of at most this many bytes (0: one descriptor). */
  segmentBytes?: number;
  /** 'needed' (default) kicks like Linux (avail_event / NO_NOTIFY), 'always' kicks every time. */
  kick?: 'needed' | 'always';
  /** Bytes of guest RAM for request buffers; default 8 MiB. */
  heapBytes?: number;
  /** How long one request may take; default 10 s. */
  requestTimeoutMs?: number;
  /**
   * Start every request's data at a multiple of this many bytes of guest RAM
   * (e.g. 4096, as a Linux guest's O_DIRECT buffers): the back end's O_DIRECT
   * path instead of its buffered fallback. Default: data right after the header.
   */
  dataAlign?: number;
}

/** Where a request's parts lie in its guest block (gpa -1: a raw chain owning nothing). */
interface Layout {
  gpa: number;
  dataOffset: number;
  dataLength: number;
  statusOffset: number;
  /** The device writes the data area (reads, GET_ID): hand it back. */
  dataIn: boolean;
}

interface InFlight extends Layout {
  resolve(result: BlkResult): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

const STATUS_UNSET = 0xff;

/** A virtio-blk driver bound to one started {@link Vmm}. */
export class BlkDriver {
  /** Anomalies the driver saw (used ids never submitted, lengths too big), for tests to assert on. */
  readonly violations: string[] = [];
  config: BlkConfig;

  private readonly heap: GuestHeap;
  private readonly inflight: Map<number, InFlight>[];
  private readonly options: Required<
    Pick<BlkDriverOptions, 'indirect' | 'segmentBytes' | 'kick' | 'requestTimeoutMs'>
  > &
    Pick<BlkDriverOptions, 'dataAlign'>;

  private constructor(
    readonly vmm: Vmm,
    options: BlkDriverOptions,
  ) {
    this.options = {
      indirect: false,
      segmentBytes: 0,
      kick: 'needed',
      requestTimeoutMs: 10_000,
      ...options,
    };
    const heapBytes = options.heapBytes ?? 8 * 1024 * 1024;
    this.heap = new GuestHeap(vmm.ram.alloc(heapBytes, 4096), heapBytes);
    this.config = parseBlkConfig(vmm.config);
    this.inflight = vmm.queues.map(() => new Map());
    for (const q of vmm.queues) q.onUsed = (used) => this.complete(q, used.id, used.len);
  }

  /** Connects, realizes (reading the config space), and starts the device. */
  static async create(options: BlkDriverOptions): Promise<BlkDriver> {
    const vmm = await Vmm.connect({
      ...options,
      driverFeatures: options.driverFeatures ?? BLK_DRIVER_FEATURES,
      configSize: BLK_CONFIG_SIZE,
    });
    try {
      const driver = new BlkDriver(vmm, options);
      await vmm.start();
      return driver;
    } catch (err) {
      vmm.close();
      throw err;
    }
  }

  /** Capacity in bytes. */
  get capacityBytes(): number {
    return Number(this.config.capacity) * SECTOR_SIZE;
  }

  /** Reads `length` bytes (a sector multiple) at `sector`. */
  read(sector: number, length: number, queue = 0): Promise<BlkResult> {
    return this.submit({ type: 'read', sector, length }, queue);
  }

  /** Writes `data` (a sector multiple) at `sector`. */
  write(sector: number, data: Uint8Array, queue = 0): Promise<BlkResult> {
    return this.submit({ type: 'write', sector, data }, queue);
  }

  /** VIRTIO_BLK_T_FLUSH. */
  flush(queue = 0): Promise<BlkResult> {
    return this.submit({ type: 'flush' }, queue);
  }

  /** VIRTIO_BLK_T_DISCARD of one segment. */
  discard(sector: number, sectors: number, queue = 0): Promise<BlkResult> {
    return this.submit({ type: 'discard', sector, sectors }, queue);
  }

  /** VIRTIO_BLK_T_WRITE_ZEROES of one segment, with the UNMAP flag if asked. */
  writeZeroes(sector: number, sectors: number, unmap = false, queue = 0): Promise<BlkResult> {
    return this.submit({ type: 'write-zeroes', sector, sectors, unmap }, queue);
  }

  /** VIRTIO_BLK_T_GET_ID: the serial, NULs trimmed, with the status. */
  async getId(queue = 0): Promise<{ status: number; id: string }> {
    const result = await this.submit({ type: 'get-id' }, queue);
    const bytes = result.data ?? new Uint8Array(0);
    const end = bytes.indexOf(0);
    const id = Buffer.from(end < 0 ? bytes : bytes.subarray(0, end)).toString('latin1');
    return { status: result.status, id };
  }

  /** One request: build, publish, kick. */
  submit(request: BlkRequest, queue = 0): Promise<BlkResult> {
    const [result] = this.submitMany([request], queue);
    this.notify(queue);
    return result;
  }

  /**
   * Hostile tests: publishes `request` on `queue` without kicking; the test
   * kicks later (`vmm.queues[queue].kick()`), e.g. after shrinking guest RAM
   * under the back end. Resolves when the used element comes back.
   */
  post(request: BlkRequest, queue = 0): Promise<BlkResult> {
    return this.submitMany([request], queue)[0];
  }

  /** Publishes all `requests` on `queue`, kicks once, and resolves when all completed. */
  submitBatch(requests: BlkRequest[], queue = 0): Promise<BlkResult[]> {
    const results = this.submitMany(requests, queue);
    this.notify(queue);
    return Promise.all(results);
  }

  /**
   * Hostile tests: publishes `buffers` as one chain as is, kicks, and resolves
   * with the used element (id, len) the device returns for it.
   */
  submitRaw(
    buffers: DriverBuffer[],
    queue = 0,
    options: { indirect?: boolean } = {},
  ): Promise<BlkResult> {
    const q = this.queue(queue);
    const result = this.track(
      q,
      { gpa: -1, dataOffset: 0, dataLength: 0, statusOffset: -1, dataIn: false },
      () => q.driver.addChain(buffers, options),
    );
    this.notify(queue);
    return result;
  }

  /** Guest buffer for hostile tests; released with {@link freeBuffer}. */
  allocBuffer(size: number, align = 16): number {
    return this.heap.alloc(size, align);
  }

  /** Returns a buffer from {@link allocBuffer}. */
  freeBuffer(gpa: number): void {
    this.heap.free(gpa);
  }

  /** Requests still waiting for their used element. */
  get pending(): number {
    return this.inflight.reduce((n, m) => n + m.size, 0);
  }

  /** Stops the device (GET_VRING_BASE) and closes the VMM. */
  async close(): Promise<void> {
    try {
      if (this.vmm.conn.isOpen) await this.vmm.stop();
    } finally {
      this.vmm.close();
      this.rejectAll(new FrontendError('FRONTEND_CLOSED', 'the driver was closed'));
    }
  }

  private queue(index: number): VmmQueue {
    const q = this.vmm.queues[index];
    if (!q)
      throw new RangeError(`queue ${index} does not exist (${this.vmm.queues.length} queues)`);
    return q;
  }

  private notify(queue: number): void {
    const q = this.queue(queue);
    if (this.options.kick === 'always') q.kick();
    else q.kickIfNeeded();
  }

  private submitMany(requests: BlkRequest[], queue: number): Promise<BlkResult>[] {
    const q = this.queue(queue);
    return requests.map((r) => {
      let layout: Layout;
      try {
        layout = this.layout(r);
      } catch (err) {
        return Promise.reject(err);
      }
      return this.track(q, layout, () =>
        q.driver.addChain(this.chain(layout), { indirect: this.useIndirect() }),
      );
    });
  }

  private useIndirect(): boolean {
    return this.options.indirect && this.vmm.hasFeature(BlkFeature.RING_INDIRECT_DESC);
  }

  /** Registers a request under its head; `publish` adds the chain and returns the head. */
  private track(q: VmmQueue, layout: Layout, publish: () => number): Promise<BlkResult> {
    return new Promise((resolve, reject) => {
      let head: number;
      try {
        head = publish();
      } catch (err) {
        if (layout.gpa >= 0) this.heap.free(layout.gpa);
        reject(new FrontendError('FRONTEND_BAD_REQUEST', (err as Error).message, { cause: err }));
        return;
      }
      const timer = setTimeout(() => this.timeout(q, head), this.options.requestTimeoutMs);
      this.inflight[q.index].set(head, { ...layout, resolve, reject, timer });
    });
  }

  /** Allocates one guest block [header | data | status] and fills header and data. */
  private layout(r: BlkRequest): Layout {
    const { type, sector, payload, dataLength } = describe(r);
    const align = this.options.dataAlign ?? 0;
    const dataOffset = Math.max(align, REQ_HEADER_SIZE);
    const total = dataOffset + dataLength + 1;
    const gpa = this.heap.alloc(total, Math.max(align, 16));
    const header = new Uint8Array(REQ_HEADER_SIZE);
    const dv = new DataView(header.buffer);
    dv.setUint32(0, type, true);
    if ((r.type === 'read' || r.type === 'write') && r.ioprio !== undefined)
      dv.setUint32(4, r.ioprio, true);
    dv.setBigUint64(8, BigInt(sector), true);
    this.vmm.ram.write(gpa, header);
    if (payload) this.vmm.ram.write(gpa + dataOffset, payload);
    const statusOffset = dataOffset + dataLength;
    this.vmm.ram.write(gpa + statusOffset, Uint8Array.of(STATUS_UNSET));
    const dataIn = r.type === 'read' || r.type === 'get-id';
    return { gpa, dataOffset, dataLength, statusOffset, dataIn };
  }

  /** The descriptor chain: header (read-only), data split in segments, status (writable). */
  private chain(layout: Layout): DriverBuffer[] {
    const deviceWrites = layout.dataIn;
    const chain: DriverBuffer[] = [{ addr: layout.gpa, len: REQ_HEADER_SIZE, write: false }];
    const step = this.options.segmentBytes > 0 ? this.options.segmentBytes : layout.dataLength;
    for (let off = 0; off < layout.dataLength; off += step) {
      const len = Math.min(step, layout.dataLength - off);
      chain.push({ addr: layout.gpa + layout.dataOffset + off, len, write: deviceWrites });
    }
    chain.push({ addr: layout.gpa + layout.statusOffset, len: 1, write: true });
    return chain;
  }

  private complete(q: VmmQueue, id: number, len: number): void {
    const req = this.inflight[q.index].get(id);
    if (!req) {
      this.violations.push(`queue ${q.index}: used id ${id} was not in flight`);
      return;
    }
    this.inflight[q.index].delete(id);
    clearTimeout(req.timer);
    req.resolve(this.result(req, len));
  }

  private result(req: InFlight, len: number): BlkResult {
    if (req.gpa < 0) return { status: STATUS_UNSET, len };
    const writable = (req.dataIn ? req.dataLength : 0) + 1;
    if (len > writable)
      this.violations.push(`used len ${len} exceeds the ${writable} writable bytes`);
    const status = this.vmm.ram.read(req.gpa + req.statusOffset, 1)[0];
    const data = req.dataIn
      ? this.vmm.ram.read(req.gpa + req.dataOffset, req.dataLength)
      : undefined;
    this.heap.free(req.gpa);
    return data ? { status, len, data } : { status, len };
  }

  private timeout(q: VmmQueue, head: number): void {
    const req = this.inflight[q.index].get(head);
    if (!req) return;
    // The buffers stay allocated: the device may still write them.
    this.inflight[q.index].delete(head);
    req.reject(
      new FrontendError(
        'FRONTEND_TIMEOUT',
        `request at head ${head} on queue ${q.index} got no used element`,
      ),
    );
  }

  private rejectAll(error: Error): void {
    for (const m of this.inflight) {
      for (const req of m.values()) {
        clearTimeout(req.timer);
        req.reject(error);
      }
      m.clear();
    }
  }
}

/** Type code, sector, bytes to copy in, and data-area length of a request. */
function describe(r: BlkRequest): {
  type: number;
  sector: number;
  payload?: Uint8Array;
  dataLength: number;
} {
  switch (r.type) {
    case 'read':
      checkSectors(r.length);
      return { type: BlkType.IN, sector: r.sector, dataLength: r.length };
    case 'write':
      checkSectors(r.data.byteLength);
      return {
        type: BlkType.OUT,
        sector: r.sector,
        payload: r.data,
        dataLength: r.data.byteLength,
      };
    case 'flush':
      return { type: BlkType.FLUSH, sector: 0, dataLength: 0 };
    case 'discard':
      return {
        type: BlkType.DISCARD,
        sector: 0,
        payload: segment(r.sector, r.sectors, 0),
        dataLength: SEGMENT_SIZE,
      };
    case 'write-zeroes': {
      const flags = r.unmap ? WRITE_ZEROES_FLAG_UNMAP : 0;
      return {
        type: BlkType.WRITE_ZEROES,
        sector: 0,
        payload: segment(r.sector, r.sectors, flags),
        dataLength: SEGMENT_SIZE,
      };
    }
    case 'get-id':
      return { type: BlkType.GET_ID, sector: 0, dataLength: ID_BYTES };
  }
}

function checkSectors(length: number): void {
  if (length <= 0 || length % SECTOR_SIZE !== 0) {
    throw new FrontendError(
      'FRONTEND_BAD_REQUEST',
      `length ${length} is not a positive multiple of 512`,
    );
  }
}

/** One discard / write-zeroes segment {sector u64, num_sectors u32, flags u32} (§5.2.6). */
export function segment(sector: number, sectors: number, flags: number): Uint8Array {
  const bytes = new Uint8Array(SEGMENT_SIZE);
  const dv = new DataView(bytes.buffer);
  dv.setBigUint64(0, BigInt(sector), true);
  dv.setUint32(8, sectors, true);
  dv.setUint32(12, flags, true);
  return bytes;
}
