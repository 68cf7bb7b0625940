/**
 * A minimal VMM that drives a vhost-user back-end exactly as QEMU 7.2 drives
 * one for `-device vhost-user-blk-pci` (hw/virtio/vhost-user.c,
 * hw/virtio/vhost.c, hw/block/vhost-user-blk.c), with guest RAM in memfds,
 * real eventfds for kicks and calls, and the driver side of split virtqueues
 * in that RAM.
 *
 * Realize (QEMU's vhost_user_backend_init + vhost_dev_init + GET_CONFIG):
 *   GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES,
 *   GET_QUEUE_NUM (MQ), GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS),
 *   SET_BACKEND_REQ_FD (BACKEND_REQ), SET_OWNER, GET_FEATURES,
 *   SET_VRING_CALL per queue (the masked notifier), GET_CONFIG (by the device).
 * Start (vhost_user_blk_start, when the guest driver sets DRIVER_OK):
 *   SET_VRING_CALL per queue (virtio-pci with MSI-X unmasks vectors first),
 *   SET_FEATURES, GET/SET_INFLIGHT_FD (INFLIGHT_SHMFD), SET_FEATURES,
 *   SET_MEM_TABLE or ADD_MEM_REG per new region, per queue SET_VRING_NUM,
 *   SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_ENABLE 1 per
 *   queue, then the STATUS dance when STATUS is negotiated.
 * Stop: SET_STATUS 0, SET_VRING_ENABLE 0 per queue, GET_VRING_BASE per queue,
 *   SET_VRING_CALL back to the masked notifier.
 * NEED_REPLY goes, with REPLY_ACK, on the messages QEMU 7.2 sets it on:
 * SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG, SET_BACKEND_REQ_FD, SET_CONFIG.
 */
import { ftruncateSync } from 'node:fs';
import { type FdWatcher, native, POLL_READABLE } from '../../src/native.js';
import {
  decodeConfig,
  decodeInflight,
  decodeU64,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeLog,
  encodeMemoryTable,
  encodeMemRegion,
  encodeU64,
  encodeVringAddr,
  encodeVringFd,
  encodeVringState,
  type InflightPayload,
  type MemRegionWire,
} from '../../src/vhost-user/codec.js';
import {
  CONFIG_HEADER_SIZE,
  ConfigFlag,
  ProtocolFeature,
  Request,
  requestName,
  VHOST_F_LOG_ALL,
  VHOST_MEMORY_BASELINE_NREGIONS,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_VRING_F_LOG,
} from '../../src/vhost-user/protocol.js';
import { DriverQueue } from '../support/driver-queue.js';
import { GuestRam } from '../support/guest-ram.js';
import { PackedDriverQueue } from '../support/packed-driver.js';
import { BackendChannel } from './backend-channel.js';
import { FrontendConnection, type Reply } from './connection.js';
import { FrontendError } from './errors.js';
import { closeAll } from './socket-io.js';

/** One guest RAM region, backed by its own memfd. */
export interface RamRegionSpec {
  size: number;
  /** Default: right after the previous region, rounded up to 1 GiB boundaries for the second. */
  guestPhysAddr?: number;
  /** Where the region starts inside its memfd (a page multiple); default 0. */
  mmapOffset?: number;
  /** The made-up "QEMU virtual address" of the region; default a per-region constant. */
  userAddr?: number;
}

/** How the memory table reaches the back-end. */
export type MemoryMode = 'auto' | 'mem-table' | 'add-mem-reg';

/** Options of {@link Vmm.connect}. */
export interface VmmOptions {
  /** The back-end's vhost-user socket. */
  socketPath: string;
  /** Guest RAM regions; default one region of 32 MiB at GPA 0. */
  regions?: RamRegionSpec[];
  /** Virtqueues to set up; default 1. More than 1 needs the back-end's MQ. */
  queues?: number;
  /** Descriptors per virtqueue (power of 2); default 128. */
  queueSize?: number;
  /**
   * Virtio feature bits the driver accepts (device-specific and transport);
   * the negotiated set is this AND what the back-end offers.
   */
  driverFeatures: bigint;
  /** Protocol features the front end may use; default {@link FRONTEND_PROTOCOL_FEATURES}. */
  protocolFeatures?: bigint;
  /** 'auto' (default) uses ADD_MEM_REG when CONFIGURE_MEM_SLOTS is negotiated, as QEMU does. */
  memory?: MemoryMode;
  /**
   * When the real call fds are sent at start: 'before-features' (default:
   * virtio-pci with MSI-X, QEMU unmasks vectors before vhost_dev_start) or
   * 'after-kick' (transports without guest notifier masking).
   */
  callTiming?: 'before-features' | 'after-kick';
  /** Ask for an ack of SET_VRING_ENABLE, as QEMU 8.1 and later do. Default false (7.2). */
  ackVringEnable?: boolean;
  /** Bytes of config space fetched with GET_CONFIG at realize; 0 skips it. Default 0. */
  configSize?: number;
  /** Reply timeout of the connection; default 10 s. */
  replyTimeoutMs?: number;
}

/** A region as sent to the back-end, with its memfd. */
export interface VmmRegion {
  wire: MemRegionWire;
  fd: number;
  /** The whole memfd mapping (from file offset 0). */
  mapping: SharedArrayBuffer;
}

/**
 * Protocol features this front end implements, and QEMU 7.2 would negotiate
 * for a block device. Left out: RARP and MTU (net), CROSS_ENDIAN (legacy
 * guests), CRYPTO_SESSION, PAGEFAULT (postcopy), INBAND_NOTIFICATIONS.
 */
export const FRONTEND_PROTOCOL_FEATURES = bitsOf([
  ProtocolFeature.MQ,
  ProtocolFeature.LOG_SHMFD,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.CONFIG,
  ProtocolFeature.BACKEND_SEND_FD,
  ProtocolFeature.HOST_NOTIFIER,
  ProtocolFeature.INFLIGHT_SHMFD,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.STATUS,
]);

/** Virtio device status bits (virtio 1.x §2.1) used by the STATUS protocol feature. */
export const DeviceStatus = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
} as const;

/** A u64 mask with the given bit numbers set. */
export function bitsOf(bits: number[]): bigint {
  return bits.reduce((mask, bit) => mask | (1n << BigInt(bit)), 0n);
}

const MiB = 1024 * 1024;
const PAGE = 4096;
/** Base of the made-up QEMU virtual addresses: unlike any GPA, so mix-ups show. */
const USER_ADDR_BASE = 0x7f3a_0000_0000;

/** One virtqueue of the VMM: the driver ring plus its kick and call eventfds. */
export class VmmQueue {
  /** Guest notifier: the back-end writes it to interrupt the driver. */
  readonly callFd = native.eventfd(0);
  /** QEMU's masked notifier, installed while the guest has not unmasked the vector. */
  readonly maskedCallFd = native.eventfd(0);
  /** Host notifier of the current start (a new eventfd each start, as QEMU); -1 when stopped. */
  kickFd = -1;
  /** The avail index SET_VRING_BASE hands over at the next start. */
  base = 0;
  /** Interrupts taken and kicks sent, for tests. */
  interrupts = 0;
  kicks = 0;
  /** Receives every used element, in used-ring order. */
  onUsed: ((used: { id: number; len: number }) => void) | undefined;

  private usedSeen = 0;
  private watcher: FdWatcher | undefined;

  constructor(
    readonly index: number,
    readonly driver: DriverQueue | PackedDriverQueue,
  ) {}

  /** Notifies the back-end unconditionally (eventfd write on the kick fd). */
  kick(): void {
    if (this.kickFd < 0)
      throw new FrontendError('FRONTEND_BAD_REQUEST', `queue ${this.index} is stopped`);
    this.kicks++;
    native.eventfdWrite(this.kickFd, 1);
  }

  /** Kicks only if the device asked for it (avail_event / NO_NOTIFY), like Linux. */
  kickIfNeeded(): boolean {
    if (!this.driver.needsKick()) return false;
    this.kick();
    return true;
  }

  /** Starts taking interrupts on the call fd. */
  listen(): void {
    if (this.watcher) return;
    this.watcher = new native.FdWatcher(this.callFd, () => this.onInterrupt());
    this.watcher.start(POLL_READABLE);
  }

  /** Stops taking interrupts (the queue is stopped or the VMM closes). */
  unlisten(): void {
    this.watcher?.close();
    this.watcher = undefined;
  }

  /** Collects used elements until none is left, re-arming used_event (EVENT_IDX) as Linux does. */
  drainUsed(): number {
    let n = 0;
    for (;;) {
      for (let used = this.driver.popUsed(); used; used = this.driver.popUsed()) {
        this.usedSeen = (this.usedSeen + 1) & 0xffff;
        n++;
        this.onUsed?.(used);
      }
      if (!this.driver.eventIdx) return n;
      // Ask for an interrupt at the next element, then look again: an element the
      // device published before it could see the new used_event raises no interrupt.
      this.driver.setUsedEvent(this.usedSeen);
      if (this.driver.usedIdx === this.usedSeen) return n;
    }
  }

  /** Resets the ring indexes to `idx` for a fresh device (first start). */
  startAt(idx: number): void {
    this.driver.startAt(idx);
    this.usedSeen = idx & 0xffff;
    // A packed ring's base carries both positions and wrap counters.
    this.base = this.driver instanceof PackedDriverQueue ? this.driver.vringBase : idx & 0xffff;
  }

  /** Closes every fd of the queue. */
  dispose(): void {
    this.unlisten();
    closeAll([this.callFd, this.maskedCallFd]);
    if (this.kickFd >= 0) closeAll([this.kickFd]);
    this.kickFd = -1;
  }

  private onInterrupt(): void {
    // Reading resets the eventfd counter; calls merged by the kernel count once.
    if (native.eventfdRead(this.callFd) === 0) return;
    this.interrupts++;
    this.drainUsed();
  }
}

/** The simulated VMM: one vhost-user device with its guest RAM and virtqueues. */
export class Vmm {
  readonly ram: GuestRam;
  readonly regions: VmmRegion[];
  readonly queues: VmmQueue[];
  /** What the back-end offered in GET_FEATURES. */
  backendFeatures = 0n;
  /** What the back-end offered in GET_PROTOCOL_FEATURES (0 without bit 30). */
  backendProtocolFeatures = 0n;
  /** Negotiated protocol features (sent with SET_PROTOCOL_FEATURES). */
  protocolFeatures = 0n;
  /** Negotiated virtio features (without bit 30). */
  features = 0n;
  /** GET_QUEUE_NUM's answer, 1 without MQ. */
  maxQueues = 1;
  /** GET_MAX_MEM_SLOTS's answer, 8 without CONFIGURE_MEM_SLOTS. */
  maxMemSlots = VHOST_MEMORY_BASELINE_NREGIONS;
  /** Config space read at realize (empty if configSize was 0). */
  config: Uint8Array = new Uint8Array(0);
  /** Back-end request channel when BACKEND_REQ is negotiated. */
  backendChannel: BackendChannel | undefined;
  /** The inflight area shared with GET_INFLIGHT_FD, once started. */
  inflight: (InflightPayload & { fd: number; mapping: SharedArrayBuffer }) | undefined;
  started = false;
  /** The dirty log while logging is on ({@link startDirtyLog}): its memfd and bitmap. */
  dirtyLog: { fd: number; bits: Uint8Array } | undefined;

  private readonly sentRegions = new Set<VmmRegion>();
  private readonly options: Required<Omit<VmmOptions, 'regions'>>;

  private constructor(
    readonly conn: FrontendConnection,
    options: VmmOptions,
  ) {
    this.options = {
      queues: 1,
      queueSize: 128,
      protocolFeatures: FRONTEND_PROTOCOL_FEATURES,
      memory: 'auto',
      callTiming: 'before-features',
      ackVringEnable: false,
      configSize: 0,
      replyTimeoutMs: 10_000,
      ...options,
    };
    this.regions = makeRegions(options.regions ?? [{ size: 32 * MiB }]);
    this.ram = new GuestRam(this.regions.map(ramSpec));
    const eventIdx = (options.driverFeatures & bitsOf([VIRTIO_RING_F_EVENT_IDX])) !== 0n;
    // VIRTIO_F_RING_PACKED among the driver's features: every ring is packed (realize checks the back end agreed).
    const packed = (options.driverFeatures & bitsOf([VIRTIO_F_RING_PACKED])) !== 0n;
    const Driver = packed ? PackedDriverQueue : DriverQueue;
    this.queues = Array.from(
      { length: this.options.queues },
      (_, i) => new VmmQueue(i, new Driver(this.ram, this.options.queueSize, { eventIdx })),
    );
  }

  /** Connects to the back-end and runs QEMU's realize sequence. */
  static async connect(options: VmmOptions): Promise<Vmm> {
    validate(options);
    const conn = await FrontendConnection.connect(options.socketPath, {
      replyTimeoutMs: options.replyTimeoutMs,
    });
    const vmm = new Vmm(conn, options);
    try {
      await vmm.realize();
    } catch (err) {
      vmm.close();
      throw err;
    }
    return vmm;
  }

  /** Whether protocol feature `bit` was negotiated. */
  hasProtocolFeature(bit: number): boolean {
    return (this.protocolFeatures & (1n << BigInt(bit))) !== 0n;
  }

  /** Whether virtio feature `bit` was negotiated. */
  hasFeature(bit: number): boolean {
    return (this.features & (1n << BigInt(bit))) !== 0n;
  }

  /** GET_CONFIG of `size` bytes at `offset`; rejects on the back-end's zero-length failure reply. */
  async getConfig(size: number, offset = 0): Promise<Uint8Array> {
    const request = { offset, size, flags: ConfigFlag.WRITABLE, data: new Uint8Array(size) };
    const reply = await this.conn.call(Request.GET_CONFIG, encodeConfig(request));
    closeAll(reply.fds);
    if (reply.payload.byteLength === 0) {
      throw new FrontendError('FRONTEND_NACK', 'back-end failed GET_CONFIG (empty reply)');
    }
    if (reply.payload.byteLength !== CONFIG_HEADER_SIZE + size) {
      throw badReply(reply, `${CONFIG_HEADER_SIZE + size} bytes`);
    }
    return decodeConfig(reply.payload).data;
  }

  /** SET_CONFIG of `data` at `offset` (acked with REPLY_ACK, as QEMU asks). */
  async setConfig(
    offset: number,
    data: Uint8Array,
    flags: number = ConfigFlag.WRITABLE,
  ): Promise<void> {
    const payload = encodeConfig({ offset, size: data.byteLength, flags, data });
    await this.conn.request(Request.SET_CONFIG, payload, [], { needReply: true });
  }

  /** Starts the device: what QEMU does when the guest driver sets DRIVER_OK. */
  async start(): Promise<void> {
    if (this.started) return;
    if (this.options.callTiming === 'before-features') await this.sendCallFds(false);
    await this.setFeatures();
    await this.setupInflight();
    await this.setFeatures();
    await this.sendMemory();
    for (const q of this.queues) await this.startQueue(q);
    if (this.options.callTiming === 'after-kick') await this.sendCallFds(false);
    await this.enableVrings(1);
    if (this.hasProtocolFeature(ProtocolFeature.STATUS)) {
      await this.addStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.DRIVER_OK);
    }
    this.started = true;
  }

  /** Stops the device; returns each queue's vring base from GET_VRING_BASE. */
  async stop(): Promise<number[]> {
    if (!this.started) return this.queues.map((q) => q.base);
    this.started = false;
    if (this.hasProtocolFeature(ProtocolFeature.STATUS)) await this.setStatus(0);
    await this.enableVrings(0);
    const bases: number[] = [];
    for (const q of this.queues) bases.push(await this.stopQueue(q));
    await this.sendCallFds(true);
    return bases;
  }

  /**
   * Starts dirty logging as QEMU's vhost_migration_log(true) does (hw/virtio/vhost.c):
   * SET_LOG_BASE with a fresh memfd of QEMU's size (one bit per 4 KiB page up to the
   * highest guest address, in u64 chunks; the reply awaited, LOG_SHMFD), SET_FEATURES
   * with VHOST_F_LOG_ALL, then SET_VRING_ADDR with VHOST_VRING_F_LOG for every started
   * queue. Resolves with the bitmap (shared with the back end).
   */
  async startDirtyLog(): Promise<Uint8Array> {
    const end = Math.max(...this.regions.map((r) => r.wire.guestPhysAddr + r.wire.size));
    const size = Math.ceil(end / 4096 / 64) * 8;
    const fd = native.memfdCreate('vhost-rt-test-log', size);
    const status = await this.setLogBase(fd, size, 0);
    if (status !== 0n) {
      closeAll([fd]);
      throw new FrontendError('FRONTEND_NACK', `back-end refused SET_LOG_BASE (${status})`);
    }
    const bits = new Uint8Array(native.mmapShared(fd, size, 0));
    this.dirtyLog = { fd, bits };
    await this.setLogging(true);
    return bits;
  }

  /** Stops dirty logging as vhost_migration_log(false): SET_FEATURES, then SET_VRING_ADDR without the flag. */
  async stopDirtyLog(): Promise<void> {
    await this.setLogging(false);
    if (this.dirtyLog) closeAll([this.dirtyLog.fd]);
    this.dirtyLog = undefined;
  }

  /** SET_LOG_BASE as given (`fd` is sent, not kept); resolves with the back end's u64 status. */
  async setLogBase(fd: number, size: number, offset: number): Promise<bigint> {
    const reply = await this.conn.call(
      Request.SET_LOG_BASE,
      encodeLog({ mmapSize: size, mmapOffset: offset }),
      fd < 0 ? [] : [fd],
    );
    closeAll(reply.fds);
    return decodeReply(reply, decodeU64);
  }

  private logAll = false;

  private async setLogging(on: boolean): Promise<void> {
    this.logAll = on;
    await this.setFeatures();
    if (!this.started) return;
    for (const q of this.queues) {
      await this.conn.request(Request.SET_VRING_ADDR, this.vringAddr(q), [], { needReply: true });
    }
  }

  /** Drops the connection and every fd; guest RAM stays readable until collected. */
  close(): void {
    this.conn.close();
    this.backendChannel?.close();
    for (const q of this.queues) q.dispose();
    closeAll(this.regions.map((r) => r.fd));
    if (this.inflight) closeAll([this.inflight.fd]);
    if (this.dirtyLog) closeAll([this.dirtyLog.fd]);
    this.dirtyLog = undefined;
    this.started = false;
  }

  /** ADD_MEM_REG of one region (the fd goes along), acked with REPLY_ACK. */
  async addMemReg(region: VmmRegion): Promise<void> {
    await this.conn.request(Request.ADD_MEM_REG, encodeMemRegion(region.wire), [region.fd], {
      needReply: true,
    });
    this.sentRegions.add(region);
  }

  /** REM_MEM_REG of one region (no fd, mmap offset 0 as QEMU sends it), acked with REPLY_ACK. */
  async remMemReg(region: VmmRegion): Promise<void> {
    const wire = { ...region.wire, mmapOffset: 0 };
    await this.conn.request(Request.REM_MEM_REG, encodeMemRegion(wire), [], { needReply: true });
    this.sentRegions.delete(region);
  }

  /**
   * Hostile tests: shrinks region `index`'s memfd to `bytes` (ftruncate)
   * after the back end mapped it, as a front end that pulls guest RAM away
   * would. Every page past the new end raises SIGBUS in whoever touches it —
   * this process too, where native/sigbus.cc answers with zero pages — so
   * the driver's view of those pages reads zeros from then on.
   */
  shrinkRegion(index: number, bytes: number): void {
    const r = this.regions[index];
    if (r === undefined)
      throw new RangeError(`no region ${index} (${this.regions.length} regions)`);
    ftruncateSync(r.fd, bytes);
  }

  /** The front-end (user) address of guest-physical `gpa`, as ring addresses are sent. */
  userAddr(gpa: number): number {
    for (const r of this.regions) {
      const { guestPhysAddr, size, userAddr } = r.wire;
      if (gpa >= guestPhysAddr && gpa < guestPhysAddr + size)
        return userAddr + (gpa - guestPhysAddr);
    }
    throw new RangeError(`0x${gpa.toString(16)} is not in guest RAM`);
  }

  // ── realize ──────────────────────────────────────────────────────────────

  private async realize(): Promise<void> {
    this.backendFeatures = await this.getU64(Request.GET_FEATURES);
    if (this.offersProtocolFeatures()) await this.negotiateProtocol();
    this.checkLimits();
    await this.setupBackendChannel();
    this.conn.send(Request.SET_OWNER);
    // vhost_dev_init asks again after SET_OWNER.
    this.backendFeatures = await this.getU64(Request.GET_FEATURES);
    this.features = this.backendFeatures & this.options.driverFeatures & ~protocolFeaturesBit();
    if (
      this.queues[0]?.driver instanceof PackedDriverQueue &&
      !this.hasFeature(VIRTIO_F_RING_PACKED)
    )
      throw new FrontendError(
        'FRONTEND_UNSUPPORTED',
        'the back end does not offer VIRTIO_F_RING_PACKED',
      );
    for (const q of this.queues) q.startAt(0);
    await this.sendCallFds(true);
    if (this.options.configSize > 0) await this.fetchConfig();
  }

  private offersProtocolFeatures(): boolean {
    return (this.backendFeatures & protocolFeaturesBit()) !== 0n;
  }

  private async negotiateProtocol(): Promise<void> {
    this.backendProtocolFeatures = await this.getU64(Request.GET_PROTOCOL_FEATURES);
    this.protocolFeatures = this.backendProtocolFeatures & this.options.protocolFeatures;
    this.conn.send(Request.SET_PROTOCOL_FEATURES, encodeU64(this.protocolFeatures));
    this.conn.replyAck = this.hasProtocolFeature(ProtocolFeature.REPLY_ACK);
    if (this.hasProtocolFeature(ProtocolFeature.MQ)) {
      this.maxQueues = Number(await this.getU64(Request.GET_QUEUE_NUM));
    }
    if (this.hasProtocolFeature(ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
      this.maxMemSlots = Number(await this.getU64(Request.GET_MAX_MEM_SLOTS));
    }
  }

  private checkLimits(): void {
    if (this.queues.length > this.maxQueues) {
      throw new FrontendError(
        'FRONTEND_UNSUPPORTED',
        `${this.queues.length} queues requested, the back-end supports ${this.maxQueues}`,
      );
    }
    if (this.regions.length > this.maxMemSlots) {
      throw new FrontendError(
        'FRONTEND_UNSUPPORTED',
        `${this.regions.length} memory regions, the back-end takes ${this.maxMemSlots}`,
      );
    }
  }

  private async setupBackendChannel(): Promise<void> {
    if (!this.hasProtocolFeature(ProtocolFeature.BACKEND_REQ)) return;
    const { channel, backendFd } = BackendChannel.create();
    this.backendChannel = channel;
    try {
      await this.conn.request(Request.SET_BACKEND_REQ_FD, undefined, [backendFd], {
        needReply: true,
      });
    } finally {
      // The back-end holds its own copy now (SCM_RIGHTS duplicates descriptors).
      closeAll([backendFd]);
    }
  }

  private async fetchConfig(): Promise<void> {
    if (!this.hasProtocolFeature(ProtocolFeature.CONFIG)) {
      throw new FrontendError(
        'FRONTEND_UNSUPPORTED',
        'the back-end lacks VHOST_USER_PROTOCOL_F_CONFIG',
      );
    }
    this.config = await this.getConfig(this.options.configSize);
  }

  // ── start / stop ─────────────────────────────────────────────────────────

  private async setFeatures(): Promise<void> {
    const extra = this.offersProtocolFeatures() ? protocolFeaturesBit() : 0n;
    const log = this.logAll ? 1n << BigInt(VHOST_F_LOG_ALL) : 0n;
    this.conn.send(Request.SET_FEATURES, encodeU64(this.features | extra | log));
    if (this.hasProtocolFeature(ProtocolFeature.STATUS)) {
      await this.addStatus(DeviceStatus.FEATURES_OK);
    }
  }

  private async setupInflight(): Promise<void> {
    if (!this.hasProtocolFeature(ProtocolFeature.INFLIGHT_SHMFD)) return;
    // QEMU fetches the area once per device and keeps it across restarts.
    if (!this.inflight) await this.getInflight();
    if (!this.inflight) return;
    const { fd, mapping: _, ...payload } = this.inflight;
    this.conn.send(Request.SET_INFLIGHT_FD, encodeInflight(payload), [fd]);
  }

  private async getInflight(): Promise<void> {
    const ask = {
      mmapSize: 0,
      mmapOffset: 0,
      numQueues: this.queues.length,
      queueSize: this.options.queueSize,
    };
    const reply = await this.conn.call(Request.GET_INFLIGHT_FD, encodeInflight(ask));
    const answer = decodeReply(reply, decodeInflight);
    if (answer.mmapSize === 0) {
      closeAll(reply.fds);
      return;
    }
    if (reply.fds.length !== 1) {
      closeAll(reply.fds);
      throw badReply(reply, 'one fd with a non-empty inflight area');
    }
    const fd = reply.fds[0];
    const mapping = native.mmapShared(fd, answer.mmapSize, answer.mmapOffset);
    this.inflight = { ...answer, fd, mapping };
  }

  private async sendMemory(): Promise<void> {
    if (this.useAddMemReg()) {
      for (const r of this.regions) if (!this.sentRegions.has(r)) await this.addMemReg(r);
      return;
    }
    const payload = encodeMemoryTable(this.regions.map((r) => r.wire));
    const fds = this.regions.map((r) => r.fd);
    await this.conn.request(Request.SET_MEM_TABLE, payload, fds, { needReply: true });
    for (const r of this.regions) this.sentRegions.add(r);
  }

  private useAddMemReg(): boolean {
    const negotiated = this.hasProtocolFeature(ProtocolFeature.CONFIGURE_MEM_SLOTS);
    if (this.options.memory === 'add-mem-reg' && !negotiated) {
      throw new FrontendError('FRONTEND_UNSUPPORTED', 'ADD_MEM_REG needs CONFIGURE_MEM_SLOTS');
    }
    return this.options.memory === 'add-mem-reg' || (this.options.memory === 'auto' && negotiated);
  }

  private async startQueue(q: VmmQueue): Promise<void> {
    const state = (num: number) => encodeVringState({ index: q.index, num });
    this.conn.send(Request.SET_VRING_NUM, state(q.driver.size));
    this.conn.send(Request.SET_VRING_BASE, state(q.base));
    this.conn.send(Request.SET_VRING_ADDR, this.vringAddr(q));
    q.kickFd = native.eventfd(0);
    this.conn.send(Request.SET_VRING_KICK, encodeVringFd(q.index, false), [q.kickFd]);
    q.listen();
  }

  private vringAddr(q: VmmQueue): Uint8Array {
    return encodeVringAddr({
      index: q.index,
      flags: this.logAll ? 1 << VHOST_VRING_F_LOG : 0,
      descUserAddr: this.userAddr(q.driver.descTable),
      usedUserAddr: this.userAddr(q.driver.usedRing),
      availUserAddr: this.userAddr(q.driver.availRing),
      // QEMU passes the used ring's guest-physical address for dirty logging.
      logGuestAddr: q.driver.usedRing,
    });
  }

  private async sendCallFds(masked: boolean): Promise<void> {
    for (const q of this.queues) {
      const fd = masked ? q.maskedCallFd : q.callFd;
      this.conn.send(Request.SET_VRING_CALL, encodeVringFd(q.index, false), [fd]);
    }
  }

  private async enableVrings(enable: 0 | 1): Promise<void> {
    // Without VHOST_USER_F_PROTOCOL_FEATURES rings start enabled and the message is illegal.
    if (!this.offersProtocolFeatures()) return;
    for (const q of this.queues) {
      const payload = encodeVringState({ index: q.index, num: enable });
      await this.conn.request(Request.SET_VRING_ENABLE, payload, [], {
        needReply: this.options.ackVringEnable,
      });
    }
  }

  private async stopQueue(q: VmmQueue): Promise<number> {
    const reply = await this.conn.call(
      Request.GET_VRING_BASE,
      encodeVringState({ index: q.index, num: 0 }),
    );
    const state = decodeReply(reply, decodeVringState);
    closeAll(reply.fds);
    if (state.index !== q.index) throw badReply(reply, `vring index ${q.index}`);
    // Completions the back-end published before it stopped still count.
    q.drainUsed();
    q.unlisten();
    closeAll([q.kickFd]);
    q.kickFd = -1;
    q.base = state.num;
    return state.num;
  }

  private async addStatus(bits: number): Promise<void> {
    const status = Number(await this.getU64(Request.GET_STATUS));
    if ((status & bits) === bits) return;
    await this.setStatus(status | bits);
  }

  private async setStatus(status: number): Promise<void> {
    this.conn.send(Request.SET_STATUS, encodeU64(BigInt(status)));
  }

  private async getU64(request: number): Promise<bigint> {
    const reply = await this.conn.call(request);
    closeAll(reply.fds);
    return decodeReply(reply, decodeU64);
  }
}

const VIRTIO_RING_F_EVENT_IDX = 29;
/** VIRTIO_F_RING_PACKED: the driver sets up packed rings. */
const VIRTIO_F_RING_PACKED = 34;

function protocolFeaturesBit(): bigint {
  return 1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES);
}

function badReply(reply: Reply, expected: string): FrontendError {
  return new FrontendError(
    'FRONTEND_BAD_REPLY',
    `${requestName(reply.request)} reply has ${reply.payload.byteLength} payload bytes, expected ${expected}`,
  );
}

/** Decodes a reply payload, turning codec errors into FRONTEND_BAD_REPLY. */
function decodeReply<T>(reply: Reply, decode: (payload: Uint8Array) => T): T {
  try {
    return decode(reply.payload);
  } catch (err) {
    throw new FrontendError(
      'FRONTEND_BAD_REPLY',
      `${requestName(reply.request)} reply is malformed: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

function validate(options: VmmOptions): void {
  const size = options.queueSize ?? 128;
  if (!Number.isInteger(size) || size < 1 || size > 32768 || (size & (size - 1)) !== 0) {
    throw new RangeError(`queueSize must be a power of 2 in 1..32768, got ${size}`);
  }
  const queues = options.queues ?? 1;
  if (!Number.isInteger(queues) || queues < 1 || queues > 256) {
    throw new RangeError(`queues must be an integer in 1..256, got ${queues}`);
  }
  for (const r of options.regions ?? []) {
    if ((r.mmapOffset ?? 0) % PAGE !== 0 || r.size % PAGE !== 0 || r.size <= 0) {
      throw new RangeError('regions need a positive size and mmapOffset in page multiples');
    }
  }
}

/** Creates the memfds, maps them, and lays out GPAs and user addresses. */
function makeRegions(specs: RamRegionSpec[]): VmmRegion[] {
  let nextGpa = 0;
  return specs.map((spec, i) => {
    const mmapOffset = spec.mmapOffset ?? 0;
    const guestPhysAddr = spec.guestPhysAddr ?? nextGpa;
    nextGpa = Math.ceil((guestPhysAddr + spec.size) / (1024 * MiB)) * 1024 * MiB;
    const fd = native.memfdCreate(`vhost-rt-guest-ram-${i}`, mmapOffset + spec.size);
    const mapping = native.mmapShared(fd, mmapOffset + spec.size, 0);
    const userAddr = spec.userAddr ?? USER_ADDR_BASE + i * 0x10_0000_0000 + PAGE * (i + 1);
    return { wire: { guestPhysAddr, size: spec.size, userAddr, mmapOffset }, fd, mapping };
  });
}

function ramSpec(r: VmmRegion) {
  return { ...r.wire, buffer: r.mapping };
}
