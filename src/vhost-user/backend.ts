/**
 * The back-end side of the vhost-user protocol (docs/interop/vhost-user.rst):
 * one handler per front-end request, named after the spec, over the state of
 * one connection — negotiated features, the memory table and the vrings. It
 * knows nothing of device types: it drives a {@link VhostUserDevice}.
 *
 * Every file descriptor a message carries is checked for its kind before it
 * is used (src/vhost-user/fds.ts), then either kept by a handler (and closed
 * when replaced or at reset) or closed right after the message.
 *
 * Guest RAM is released explicitly, not left to the garbage collector: a
 * region's mapping is retired (native retireMapping: the memfd's pages are
 * let go at once, the address range stays mapped to zeros until collected)
 * once nothing may use it any more — after the device switched to a table
 * without it (SET_MEM_TABLE, the last REM_MEM_REG), and at reset, after every
 * ring has stopped. A view that outlives this only ever reads zeros.
 */
import { native } from '../native.js';
import {
  featureBit,
  GuestMemory,
  type MemoryRegion,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
} from '../virtio/index.js';
import {
  type ConfigPayload,
  decodeConfig,
  decodeLog,
  decodeMemoryTable,
  decodeMemRegion,
  decodeU64,
  decodeVringAddr,
  decodeVringFd,
  decodeVringState,
  encodeConfig,
  encodeMessage,
  encodeU64,
  encodeVringState,
  type MemRegionWire,
  type VringAddr,
} from './codec.js';
import type { BackendRequestSender, VhostUserDevice } from './device-backend.js';
import { RequestError } from './errors.js';
import { expectEventfd, expectMemoryFd, expectSocket, type FdDescription } from './fds.js';
import {
  createInflightFd,
  type InflightMapping,
  inflightAreaOf,
  inflightTrackingEnabled,
  mapInflightFd,
} from './inflight-fd.js';
import {
  BackendRequest,
  MAX_CONFIG_SIZE,
  ProtocolFeature,
  Request,
  VHOST_F_LOG_ALL,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_VRING_F_LOG,
} from './protocol.js';

export { RequestError };

/** One received message: payload plus the fds that came with it (ownership passes to the handler). */
export interface IncomingMessage {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: number[];
}

/** Memory slots offered through GET_MAX_MEM_SLOTS. */
export const MAX_MEM_SLOTS = 32;

/**
 * Largest dirty log SET_LOG_BASE may hand over: 1 GiB of bitmap logs 32 TiB
 * of guest-physical address space (QEMU sizes it to the highest address).
 */
export const MAX_LOG_BYTES = 2 ** 30;

/** The dirty log as SET_LOG_BASE gave it: the mapping, where the bitmap starts, its bytes. */
interface LogMapping {
  buffer: SharedArrayBuffer;
  offset: number;
  size: number;
}

const BASE_PROTOCOL_FEATURES =
  featureBit(ProtocolFeature.MQ) |
  featureBit(ProtocolFeature.REPLY_ACK) |
  featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS);

const TRANSPORT_FEATURES =
  featureBit(VIRTIO_F_VERSION_1) |
  featureBit(VIRTIO_RING_F_INDIRECT_DESC) |
  featureBit(VIRTIO_RING_F_EVENT_IDX) |
  featureBit(VHOST_USER_F_PROTOCOL_FEATURES);

/**
 * What the front end said about one ring, kept on the main thread until the
 * ring starts (the worker's Vring is the data path's record of the same ring).
 */
interface VringSetup {
  num: number;
  base: number;
  addr: VringAddr | null;
  kickFd: number;
  callFd: number;
  errFd: number;
  enabled: boolean;
  started: boolean;
}

function newVringSetup(): VringSetup {
  return {
    num: 0,
    base: 0,
    addr: null,
    kickFd: -1,
    callFd: -1,
    errFd: -1,
    enabled: false,
    started: false,
  };
}

interface MappedRegion extends MemoryRegion {
  /**
   * How many ADD_MEM_REG messages announced this very region: QEMU drives a
   * multi-queue-pair net device as one vhost device per pair over one socket,
   * and each adds the same regions. REM_MEM_REG unmaps on the last removal.
   */
  refs: number;
  /** The file behind the mapping (st_dev, st_ino): a region re-sent over the same file keeps its mapping. */
  dev: number;
  ino: number;
}

/** The same region as REM_MEM_REG names one: the mmap offset is ignored (spec). */
function sameRegion(a: MemRegionWire, b: MemRegionWire): boolean {
  return a.guestPhysAddr === b.guestPhysAddr && a.size === b.size && a.userAddr === b.userAddr;
}

/** `m` maps exactly what region `r` over file `file` would: it can be kept instead of mapped again. */
function sameMapping(m: MappedRegion, r: MemRegionWire, file: FdDescription): boolean {
  return (
    sameRegion(m, r) && m.mmapOffset === r.mmapOffset && m.dev === file.dev && m.ino === file.ino
  );
}

/**
 * One connection's vhost-user state (features, memory table, vrings) driving a
 * {@link VhostUserDevice}; `reset` returns it to the state of a new connection.
 */
export class VhostUserBackend {
  private features = 0n;
  private protocolFeatures = 0n;
  private owner = false;
  private regions: MappedRegion[] = [];
  private memory: GuestMemory | null = null;
  private vrings: VringSetup[];
  /** The front end's end of the BACKEND_REQ channel (SET_BACKEND_REQ_FD), or -1. */
  private backendReqFd = -1;
  /** The dirty log (SET_LOG_BASE), mapped; marked only while VHOST_F_LOG_ALL is on. */
  private log: LogMapping | null = null;
  /** Bumped at every SET_LOG_BASE, so a new log is sent to the device even at the same place. */
  private logGeneration = 0;
  /** What the device was last told about logging ('off', or generation and ring log addresses). */
  private logSent = 'off';
  /** SET_LOG_FD's eventfd, kept until replaced or reset (QEMU never sends it; nothing writes it). */
  private logFd = -1;
  /** The inflight area of SET_INFLIGHT_FD, handed to each ring at start; null without one. */
  private inflight: InflightMapping | null = null;
  /** Fds to send with the next reply (GET_INFLIGHT_FD's memfd); the connection takes and closes them. */
  private replyFds: number[] = [];
  /** The request handled last (queueHint). */
  private lastRequest = -1;
  /** Feature bits offered in GET_FEATURES. */
  readonly offeredFeatures: bigint;
  /** Protocol feature bits offered in GET_PROTOCOL_FEATURES. */
  readonly offeredProtocolFeatures: bigint;

  constructor(private readonly device: VhostUserDevice) {
    const logs = device.setDirtyLog !== undefined;
    const inflight = device.tracksInflight === true && inflightTrackingEnabled();
    // A packed ring keeps no inflight region (packed-virtqueue.ts): a device
    // that offers INFLIGHT_SHMFD does not offer RING_PACKED, so a front end
    // never gets a packed ring it believes crash-safe.
    const packed = inflight ? 0n : device.deviceFeatures & featureBit(VIRTIO_F_RING_PACKED);
    this.offeredFeatures =
      (device.deviceFeatures & ~featureBit(VIRTIO_F_RING_PACKED)) |
      packed |
      TRANSPORT_FEATURES |
      (logs ? featureBit(VHOST_F_LOG_ALL) : 0n);
    this.offeredProtocolFeatures =
      BASE_PROTOCOL_FEATURES |
      (logs ? featureBit(ProtocolFeature.LOG_SHMFD) : 0n) |
      (device.announcesMigration === true && device.sendRarp !== undefined
        ? featureBit(ProtocolFeature.RARP)
        : 0n) |
      (device.servesConfig ? featureBit(ProtocolFeature.CONFIG) : 0n) |
      (device.raisesConfigChanges ? featureBit(ProtocolFeature.BACKEND_REQ) : 0n) |
      (inflight ? featureBit(ProtocolFeature.INFLIGHT_SHMFD) : 0n);
    this.vrings = Array.from({ length: device.numQueues }, newVringSetup);
  }

  /** True once REPLY_ACK was negotiated: NEED_REPLY messages then get an ack. */
  get replyAck(): boolean {
    return (this.protocolFeatures & featureBit(ProtocolFeature.REPLY_ACK)) !== 0n;
  }

  /** The virtio features the front end set (SET_FEATURES); 0 until then. Read-only view for the control plane. */
  get negotiatedFeatures(): bigint {
    return this.features;
  }

  /** The protocol features the front end set (SET_PROTOCOL_FEATURES); 0 until then. */
  get negotiatedProtocolFeatures(): bigint {
    return this.protocolFeatures;
  }

  /**
   * Handles one message. Returns the reply payload for requests that have
   * one, or undefined. Throws (ProtocolError, RequestError) on refusal.
   */
  async handle(msg: IncomingMessage): Promise<Uint8Array | undefined> {
    this.lastRequest = msg.request;
    switch (msg.request) {
      case Request.GET_FEATURES:
        return encodeU64(this.offeredFeatures);
      case Request.SET_FEATURES:
        return this.setFeatures(msg);
      case Request.GET_PROTOCOL_FEATURES:
        return encodeU64(this.offeredProtocolFeatures);
      case Request.SET_PROTOCOL_FEATURES:
        return this.setProtocolFeatures(msg);
      case Request.SET_OWNER:
        this.owner = true;
        return undefined;
      case Request.RESET_OWNER:
        await this.reset();
        return undefined;
      case Request.GET_QUEUE_NUM:
        return encodeU64(BigInt(this.device.numQueues));
      case Request.GET_MAX_MEM_SLOTS:
        return encodeU64(BigInt(MAX_MEM_SLOTS));
      case Request.SET_MEM_TABLE:
        return this.setMemTable(msg);
      case Request.ADD_MEM_REG:
        return this.addMemReg(msg);
      case Request.REM_MEM_REG:
        return this.remMemReg(msg);
      case Request.SET_VRING_NUM:
        return this.setVringNum(msg);
      case Request.SET_VRING_ADDR:
        return this.setVringAddr(msg);
      case Request.SET_VRING_BASE:
        return this.setVringBase(msg);
      case Request.GET_VRING_BASE:
        return this.getVringBase(msg);
      case Request.SET_VRING_KICK:
        return this.setVringKick(msg);
      case Request.SET_VRING_CALL:
        return this.setVringCall(msg);
      case Request.SET_VRING_ERR:
        return this.setVringErr(msg);
      case Request.SET_VRING_ENABLE:
        return this.setVringEnable(msg);
      case Request.GET_CONFIG:
        return this.getConfig(msg);
      case Request.SET_CONFIG:
        return this.setConfig(msg);
      case Request.SET_BACKEND_REQ_FD:
        return this.setBackendReqFd(msg);
      case Request.SET_LOG_BASE:
        return this.setLogBase(msg);
      case Request.SET_LOG_FD:
        return this.setLogFd(msg);
      case Request.SEND_RARP:
        return this.sendRarp(msg);
      case Request.GET_INFLIGHT_FD:
        return this.getInflightFd(msg);
      case Request.SET_INFLIGHT_FD:
        return this.setInflightFd(msg);
      default:
        throw new RequestError('VHOST_USER_UNSUPPORTED', 'request not supported by this back-end');
    }
  }

  private async setFeatures(msg: IncomingMessage): Promise<undefined> {
    const f = decodeU64(msg.payload);
    const unknown = f & ~this.offeredFeatures;
    if (unknown !== 0n) {
      throw new RequestError(
        'VHOST_USER_BAD_FEATURES',
        `features 0x${unknown.toString(16)} were never offered`,
      );
    }
    this.features = f;
    // VHOST_F_LOG_ALL switches dirty logging on and off (QEMU: set_log_base first).
    await this.syncDirtyLog();
    return undefined;
  }

  private setProtocolFeatures(msg: IncomingMessage): undefined {
    const f = decodeU64(msg.payload);
    const unknown = f & ~this.offeredProtocolFeatures;
    if (unknown !== 0n) {
      throw new RequestError(
        'VHOST_USER_BAD_FEATURES',
        `protocol features 0x${unknown.toString(16)} were never offered`,
      );
    }
    this.protocolFeatures = f;
    return undefined;
  }

  private has(bit: number): boolean {
    return (this.features & featureBit(bit)) !== 0n;
  }

  // --- memory -------------------------------------------------------------

  /**
   * Replaces the whole table. Every fd is checked before anything is mapped;
   * a region re-sent over the same file at the same place keeps its mapping
   * (QEMU re-sends the whole table when one region changes, while the rings
   * run), every other one is mapped anew.
   */
  private async setMemTable(msg: IncomingMessage): Promise<undefined> {
    const wire = decodeMemoryTable(msg.payload);
    expectFds(msg, wire.length, 'SET_MEM_TABLE');
    const files = wire.map((r, i) => checkRegionFd(r, msg.fds[i], `region ${i}`));
    const fresh: MappedRegion[] = [];
    try {
      const next = wire.map((r, i) => {
        const kept = this.regions.find((m) => sameMapping(m, r, files[i]));
        if (kept !== undefined) return Object.assign(kept, { refs: 1 });
        const mapped = mapRegion(r, msg.fds[i], files[i]);
        fresh.push(mapped);
        return mapped;
      });
      await this.installRegions(next);
    } catch (err) {
      retireRegions(fresh.filter((m) => !this.regions.includes(m)));
      throw err;
    }
    return undefined;
  }

  private async addMemReg(msg: IncomingMessage): Promise<undefined> {
    const r = decodeMemRegion(msg.payload);
    expectFds(msg, 1, 'ADD_MEM_REG');
    const file = checkRegionFd(r, msg.fds[0], 'region');
    const known = this.regions.find((m) => sameRegion(m, r));
    if (known !== undefined) {
      known.refs++;
      return undefined; // the fd is closed with the message's other unused fds
    }
    if (this.regions.length >= MAX_MEM_SLOTS) {
      throw new RequestError('VHOST_USER_NO_SLOT', `all ${MAX_MEM_SLOTS} memory slots are in use`);
    }
    const mapped = mapRegion(r, msg.fds[0], file);
    try {
      await this.installRegions([...this.regions, mapped]);
    } catch (err) {
      if (!this.regions.includes(mapped)) retireRegions([mapped]);
      throw err;
    }
    return undefined;
  }

  private async remMemReg(msg: IncomingMessage): Promise<undefined> {
    const r = decodeMemRegion(msg.payload);
    const known = this.regions.find((m) => sameRegion(m, r));
    if (known === undefined) {
      throw new RequestError(
        'VHOST_USER_NO_REGION',
        `no region at guest address 0x${r.guestPhysAddr.toString(16)}`,
      );
    }
    if (--known.refs > 0) return undefined;
    await this.installRegions(this.regions.filter((m) => m !== known));
    return undefined;
  }

  /**
   * Validates the table (GuestMemory refuses overlaps), hands it to the
   * device, and retires the regions the new table no longer has once the
   * device worker has switched to it. Should the worker fail to switch, they
   * are retired all the same: whatever still reads them then reads zeros.
   */
  private async installRegions(regions: MappedRegion[]): Promise<void> {
    const memory = new GuestMemory(regions);
    const previous = this.regions;
    this.memory = memory;
    this.regions = regions;
    try {
      await this.device.setMemory(regions);
    } finally {
      retireRegions(previous.filter((m) => !regions.includes(m)));
    }
  }

  // --- vrings -------------------------------------------------------------

  private vring(index: number): VringSetup {
    const v = this.vrings[index];
    if (v === undefined) {
      throw new RequestError(
        'VHOST_USER_BAD_INDEX',
        `vring index ${index} is outside 0..${this.vrings.length - 1}: the front end uses more ` +
          `queues than this daemon serves (${this.device.numQueues}); start it with a larger --queues`,
      );
    }
    return v;
  }

  private setVringNum(msg: IncomingMessage): undefined {
    const { index, num } = decodeVringState(msg.payload);
    const v = this.vring(index);
    const max = this.device.maxQueueSize;
    if (num < 1 || num > max || (num & (num - 1)) !== 0) {
      throw new RequestError(
        'VHOST_USER_BAD_VALUE',
        `vring ${index} size ${num} is not a power of two in 1..${max}`,
      );
    }
    v.num = num;
    return undefined;
  }

  private async setVringAddr(msg: IncomingMessage): Promise<undefined> {
    const a = decodeVringAddr(msg.payload);
    const v = this.vring(a.index);
    // A running ring keeps its addresses; QEMU re-sends them only to toggle
    // dirty logging (VHOST_VRING_F_LOG and log_guest_addr), which applies at once.
    if (!v.started || v.addr === null) v.addr = a;
    else v.addr = { ...v.addr, flags: a.flags, logGuestAddr: a.logGuestAddr };
    await this.syncDirtyLog();
    return undefined;
  }

  private setVringBase(msg: IncomingMessage): undefined {
    const { index, num } = decodeVringState(msg.payload);
    const v = this.vring(index);
    if (this.has(VIRTIO_F_RING_PACKED)) {
      // Packed: avail slot | wrap << 15, and the used slot | wrap << 16 above.
      const size = v.num === 0 ? 0x8000 : v.num;
      if ((num & 0x7fff) >= size || ((num >>> 16) & 0x7fff) >= size)
        throw new RequestError(
          'VHOST_USER_BAD_VALUE',
          `vring ${index} packed base 0x${num.toString(16)} names a slot beyond size ${size}`,
        );
    } else if (num > 0xffff)
      throw new RequestError('VHOST_USER_BAD_VALUE', `vring ${index} base ${num} exceeds 16 bits`);
    v.base = num;
    return undefined;
  }

  private async getVringBase(msg: IncomingMessage): Promise<Uint8Array> {
    const { index } = decodeVringState(msg.payload);
    const v = this.vring(index);
    if (v.started) {
      v.base = await this.device.stopQueue(index);
      v.started = false;
    }
    closeFd(v.kickFd);
    v.kickFd = -1;
    return encodeVringState({ index, num: v.base });
  }

  private async setVringKick(msg: IncomingMessage): Promise<undefined> {
    const { index, noFd } = decodeVringFd(msg.payload);
    const v = this.vring(index);
    if (noFd)
      throw new RequestError('VHOST_USER_UNSUPPORTED', `vring ${index}: polling without a kick fd`);
    expectFds(msg, 1, 'SET_VRING_KICK');
    expectEventfd(msg.fds[0], `vring ${index} kick fd`);
    if (v.started) {
      v.base = await this.device.stopQueue(index);
      v.started = false;
    }
    closeFd(v.kickFd);
    v.kickFd = msg.fds.pop()!;
    // Without VHOST_USER_F_PROTOCOL_FEATURES a ring starts enabled (spec, "Ring states").
    if (!this.has(VHOST_USER_F_PROTOCOL_FEATURES)) v.enabled = true;
    await this.startVring(index, v);
    return undefined;
  }

  private async startVring(index: number, v: VringSetup): Promise<void> {
    if (v.addr === null || v.num === 0) {
      throw new RequestError(
        'VHOST_USER_RING_UNSET',
        `vring ${index} kicked before its size and addresses were set`,
      );
    }
    const memory = this.memory;
    if (memory === null)
      throw new RequestError(
        'VHOST_USER_NO_MEMORY',
        `vring ${index} started without a memory table`,
      );
    if (this.has(VIRTIO_F_RING_PACKED)) return this.startPackedVring(index, v, memory);
    const config = {
      size: v.num,
      descTable: translate(memory, v.addr.descUserAddr, 16 * v.num, index, 'descriptor table'),
      availRing: translate(memory, v.addr.availUserAddr, 6 + 2 * v.num, index, 'avail ring'),
      usedRing: translate(memory, v.addr.usedUserAddr, 6 + 8 * v.num, index, 'used ring'),
      eventIdx: this.has(VIRTIO_RING_F_EVENT_IDX),
      indirect: this.has(VIRTIO_RING_F_INDIRECT_DESC),
    };
    await this.device.startQueue(index, {
      config,
      lastAvailIdx: v.base,
      kickFd: v.kickFd,
      callFd: v.callFd,
      errFd: v.errFd,
      enabled: v.enabled,
      inflight: this.inflight === null ? null : inflightAreaOf(this.inflight, index),
      features: this.features,
    });
    v.started = true;
    await this.syncDirtyLog();
  }

  /**
   * Starts a packed ring: SET_VRING_ADDR's desc / avail / used addresses are
   * the descriptor ring, the driver area and the device area (4 bytes each).
   */
  private async startPackedVring(index: number, v: VringSetup, memory: GuestMemory): Promise<void> {
    const addr = v.addr as VringAddr;
    const config = {
      size: v.num,
      descTable: translate(memory, addr.descUserAddr, 16 * v.num, index, 'descriptor ring'),
      availRing: translate(memory, addr.availUserAddr, 4, index, 'driver area'),
      usedRing: translate(memory, addr.usedUserAddr, 4, index, 'device area'),
      eventIdx: this.has(VIRTIO_RING_F_EVENT_IDX),
      indirect: this.has(VIRTIO_RING_F_INDIRECT_DESC),
      packed: true,
    };
    await this.device.startQueue(index, {
      config,
      lastAvailIdx: v.base,
      kickFd: v.kickFd,
      callFd: v.callFd,
      errFd: v.errFd,
      enabled: v.enabled,
      inflight: null,
      features: this.features,
    });
    v.started = true;
    await this.syncDirtyLog();
  }

  private async setVringCall(msg: IncomingMessage): Promise<undefined> {
    const { index, noFd } = decodeVringFd(msg.payload);
    const v = this.vring(index);
    expectFds(msg, noFd ? 0 : 1, 'SET_VRING_CALL');
    if (!noFd) expectEventfd(msg.fds[0], `vring ${index} call fd`);
    const old = v.callFd;
    v.callFd = noFd ? -1 : msg.fds.pop()!;
    // The worker must stop using the old eventfd before it is closed.
    if (v.started) await this.device.setCall(index, v.callFd);
    closeFd(old);
    return undefined;
  }

  private async setVringErr(msg: IncomingMessage): Promise<undefined> {
    const { index, noFd } = decodeVringFd(msg.payload);
    const v = this.vring(index);
    expectFds(msg, noFd ? 0 : 1, 'SET_VRING_ERR');
    if (!noFd) expectEventfd(msg.fds[0], `vring ${index} err fd`);
    const old = v.errFd;
    v.errFd = noFd ? -1 : msg.fds.pop()!;
    // As with the call fd: the worker lets go of the old eventfd before it is
    // closed — even on a stopped ring, whose record may still name it.
    await this.device.setErr?.(index, v.errFd);
    closeFd(old);
    return undefined;
  }

  private async setVringEnable(msg: IncomingMessage): Promise<undefined> {
    const { index, num } = decodeVringState(msg.payload);
    const v = this.vring(index);
    if (num > 1)
      throw new RequestError(
        'VHOST_USER_BAD_VALUE',
        `vring ${index} enable value ${num} is not 0 or 1`,
      );
    v.enabled = num === 1;
    if (v.started) await this.device.setEnabled(index, v.enabled);
    return undefined;
  }

  // --- config space -------------------------------------------------------

  private async getConfig(msg: IncomingMessage): Promise<Uint8Array> {
    const c = decodeConfig(msg.payload);
    checkConfigRange(c);
    return encodeConfig({ ...c, data: await this.device.getConfig(c.offset, c.size) });
  }

  private async setConfig(msg: IncomingMessage): Promise<undefined> {
    const c = decodeConfig(msg.payload);
    checkConfigRange(c);
    if (!(await this.device.setConfig(c.offset, c.data))) {
      throw new RequestError(
        'VHOST_USER_READONLY_CONFIG',
        `config bytes ${c.offset}..${c.offset + c.size} are read-only`,
      );
    }
    return undefined;
  }

  // --- inflight I/O tracking (INFLIGHT_SHMFD, inflight-fd.ts) -------------

  /** Takes the fds to send with the reply being made (the caller closes them once sent). */
  takeReplyFds(): number[] {
    const fds = this.replyFds;
    this.replyFds = [];
    return fds;
  }

  private getInflightFd(msg: IncomingMessage): Uint8Array {
    this.expectInflight('GET_INFLIGHT_FD');
    expectFds(msg, 0, 'GET_INFLIGHT_FD');
    const { reply, fd } = createInflightFd(msg.payload, this.device.numQueues);
    // A caller that never took the last reply's fds (an embedder driving handle() itself) leaks none.
    for (const old of this.takeReplyFds()) closeFd(old);
    this.replyFds.push(fd);
    return reply;
  }

  private setInflightFd(msg: IncomingMessage): undefined {
    this.expectInflight('SET_INFLIGHT_FD');
    expectFds(msg, 1, 'SET_INFLIGHT_FD');
    if (this.vrings.some((v) => v.started))
      throw new RequestError('VHOST_USER_BUSY', 'SET_INFLIGHT_FD while rings are started');
    const mapping = mapInflightFd(msg.payload, msg.fds[0], this.device.numQueues);
    this.retireInflight();
    this.inflight = mapping;
    return undefined;
  }

  private expectInflight(what: string): void {
    if ((this.protocolFeatures & featureBit(ProtocolFeature.INFLIGHT_SHMFD)) === 0n)
      throw new RequestError('VHOST_USER_UNSUPPORTED', `${what} without INFLIGHT_SHMFD negotiated`);
  }

  /** Lets go of the inflight mapping (rings stopped): the front end's file keeps the record. */
  private retireInflight(): void {
    if (this.inflight === null) return;
    const buffer = this.inflight.buffer;
    this.inflight = null;
    native.retireMapping(buffer);
  }

  // --- dirty log (live migration) ------------------------------------------

  /**
   * SET_LOG_BASE (§"Migration"): maps the log fd and hands the bitmap at
   * mmap_offset, mmap_size bytes long, to the device (marked while
   * VHOST_F_LOG_ALL is on). The fd must be a memfd, shm or regular file
   * holding the whole range; a log it replaces is retired once the device
   * has switched. The reply (LOG_SHMFD) is the connection's u64 status.
   */
  private async setLogBase(msg: IncomingMessage): Promise<undefined> {
    if ((this.protocolFeatures & featureBit(ProtocolFeature.LOG_SHMFD)) === 0n)
      throw new RequestError('VHOST_USER_UNSUPPORTED', 'SET_LOG_BASE without LOG_SHMFD negotiated');
    const l = decodeLog(msg.payload);
    expectFds(msg, 1, 'SET_LOG_BASE');
    const file = expectMemoryFd(msg.fds[0], 'log fd');
    if (l.mmapSize < 1 || l.mmapSize > MAX_LOG_BYTES) {
      throw new RequestError(
        'VHOST_USER_BAD_VALUE',
        `log size ${l.mmapSize} is not in 1..${MAX_LOG_BYTES} bytes`,
      );
    }
    if (file.size < l.mmapOffset + l.mmapSize) {
      throw new RequestError(
        'VHOST_USER_BAD_REGION',
        `log at offset ${l.mmapOffset} claims ${l.mmapSize} bytes of a ${file.size}-byte file`,
      );
    }
    const buffer = native.mmapShared(msg.fds[0], l.mmapOffset + l.mmapSize, 0);
    const previous = this.log;
    this.log = { buffer, offset: l.mmapOffset, size: l.mmapSize };
    this.logGeneration++;
    try {
      await this.syncDirtyLog();
    } finally {
      if (previous !== null) native.retireMapping(previous.buffer);
    }
    return undefined;
  }

  /** SET_LOG_FD: keeps the eventfd (closing the one it replaces); nothing is signalled on it. */
  private setLogFd(msg: IncomingMessage): undefined {
    expectFds(msg, 1, 'SET_LOG_FD');
    expectEventfd(msg.fds[0], 'log fd');
    closeFd(this.logFd);
    this.logFd = msg.fds.pop()!;
    return undefined;
  }

  /** SEND_RARP (§"VHOST_USER_SEND_RARP"): the migrated guest's MAC in the u64's first 6 bytes. */
  private async sendRarp(msg: IncomingMessage): Promise<undefined> {
    if ((this.protocolFeatures & featureBit(ProtocolFeature.RARP)) === 0n)
      throw new RequestError('VHOST_USER_UNSUPPORTED', 'SEND_RARP without RARP negotiated');
    decodeU64(msg.payload);
    await this.device.sendRarp?.(msg.payload.slice(0, 6));
    return undefined;
  }

  /**
   * Tells the device what it must log, when that changed: the bitmap while
   * VHOST_F_LOG_ALL is on and a log is set, and each ring's used-ring log
   * address (its VHOST_VRING_F_LOG); nothing while logging stays off.
   */
  private async syncDirtyLog(): Promise<void> {
    if (this.device.setDirtyLog === undefined) return;
    const on = this.log !== null && this.has(VHOST_F_LOG_ALL);
    const addrs = this.vrings.map((v) =>
      on && v.addr !== null && (v.addr.flags & (1 << VHOST_VRING_F_LOG)) !== 0
        ? v.addr.logGuestAddr
        : -1,
    );
    const state = on ? `${this.logGeneration}:${addrs.join(',')}` : 'off';
    if (state === this.logSent) return;
    await this.device.setDirtyLog(on ? this.log : null, addrs);
    this.logSent = state;
  }

  /** Logging off in the device, then the log's mapping and fd let go (reset). */
  private async dropDirtyLog(): Promise<void> {
    try {
      if (this.logSent !== 'off') await this.device.setDirtyLog?.(null, []);
    } finally {
      this.logSent = 'off';
      if (this.log !== null) native.retireMapping(this.log.buffer);
      this.log = null;
      closeFd(this.logFd);
      this.logFd = -1;
    }
  }

  // --- back-end requests --------------------------------------------------

  /** Keeps the channel fd and lends the device a sender over it (spec: "Back-end communication"). */
  private setBackendReqFd(msg: IncomingMessage): undefined {
    expectFds(msg, 1, 'SET_BACKEND_REQ_FD');
    if ((this.offeredProtocolFeatures & featureBit(ProtocolFeature.BACKEND_REQ)) === 0n) {
      throw new RequestError('VHOST_USER_UNSUPPORTED', 'BACKEND_REQ was not offered');
    }
    expectSocket(msg.fds[0], 'back-end request channel fd');
    this.closeBackendReq();
    const fd = msg.fds.pop()!;
    this.backendReqFd = fd;
    this.device.setBackendChannel?.(this.backendSender(fd));
    return undefined;
  }

  /**
   * A sender bound to one fd: once the channel is closed or replaced it
   * does nothing. No NEED_REPLY: nothing ever reads this socket's replies.
   */
  private backendSender(fd: number): BackendRequestSender {
    return {
      configChange: () => {
        if (this.backendReqFd !== fd) return;
        native.sendMsg(fd, encodeMessage(BackendRequest.CONFIG_CHANGE_MSG, 0), []);
      },
    };
  }

  private closeBackendReq(): void {
    if (this.backendReqFd < 0) return;
    this.device.setBackendChannel?.(null);
    closeFd(this.backendReqFd);
    this.backendReqFd = -1;
  }

  // --- lifetime -----------------------------------------------------------

  /**
   * Stops every ring (completing what is in flight), retires the guest RAM
   * mappings and forgets the connection's state; the device itself stays,
   * ready for the next front end. The mappings are retired even when a ring
   * fails to stop: a worker still reading them then reads zeros.
   */
  async reset(): Promise<void> {
    try {
      await this.stopAll();
      await this.dropDirtyLog();
    } finally {
      retireRegions(this.regions);
      this.regions = [];
      this.memory = null;
      this.retireInflight();
      for (const fd of this.takeReplyFds()) closeFd(fd);
      this.closeBackendReq();
      this.vrings = Array.from({ length: this.device.numQueues }, newVringSetup);
      this.features = 0n;
      this.protocolFeatures = 0n;
      this.owner = false;
    }
  }

  /** Stops the started rings and closes every ring's fds, once the device has let go of them. */
  private async stopAll(): Promise<void> {
    for (let i = 0; i < this.vrings.length; i++) {
      const v = this.vrings[i];
      try {
        if (v.started) await this.device.stopQueue(i);
        if (v.errFd >= 0) await this.device.setErr?.(i, -1);
      } finally {
        v.started = false;
        closeFd(v.kickFd);
        closeFd(v.callFd);
        closeFd(v.errFd);
        v.kickFd = v.callFd = v.errFd = -1;
      }
    }
  }

  /**
   * For the log when the front end has gone: a front end that leaves right
   * after GET_QUEUE_NUM found too few queues (QEMU checks the answer against
   * its num-queues, -smp N by default, and gives up without a word to us).
   */
  queueHint(): string | null {
    if (this.lastRequest !== Request.GET_QUEUE_NUM) return null;
    return (
      `the front end left right after GET_QUEUE_NUM (answered ${this.device.numQueues}): ` +
      `it probably wants more queues than this daemon serves (QEMU: num-queues, -smp N, ` +
      `-netdev queues=N); start the daemon with a larger --queues`
    );
  }

  /** A snapshot for stats and logs. */
  describe(): { owner: boolean; features: string; regions: number; startedRings: number } {
    return {
      owner: this.owner,
      features: `0x${this.features.toString(16)}`,
      regions: this.regions.length,
      startedRings: this.vrings.filter((v) => v.started).length,
    };
  }
}

function expectFds(msg: IncomingMessage, count: number, what: string): void {
  if (msg.fds.length !== count) {
    throw new RequestError(
      'VHOST_USER_BAD_FD_COUNT',
      `${what} carries ${msg.fds.length} fds, expected ${count}`,
    );
  }
}

/**
 * Checks region `r`'s fd (VHOST_USER_BAD_FD unless a memfd, regular or
 * hugetlbfs file open for reading and writing) and that the file holds the
 * whole region: one that claims more would map pages with no backing, and the
 * first guest buffer there would kill the daemon with SIGBUS.
 */
function checkRegionFd(r: MemRegionWire, fd: number, what: string): FdDescription {
  const where = `${what} at guest address 0x${r.guestPhysAddr.toString(16)}`;
  const file = expectMemoryFd(fd, `${where}: fd`);
  if (r.size <= 0) throw new RequestError('VHOST_USER_BAD_VALUE', `${where} has size 0`);
  if (file.size < r.mmapOffset + r.size) {
    throw new RequestError(
      'VHOST_USER_BAD_REGION',
      `${where} claims ${r.mmapOffset + r.size} bytes of a ${file.size}-byte file`,
    );
  }
  return file;
}

/**
 * Maps a region from file offset 0 so that buffer[mmapOffset] is its first
 * byte. The fd stays in the message and is closed with it: the mapping
 * outlives it.
 */
function mapRegion(r: MemRegionWire, fd: number, file: FdDescription): MappedRegion {
  const buffer = native.mmapShared(fd, r.mmapOffset + r.size, 0);
  return { ...r, buffer, refs: 1, dev: file.dev, ino: file.ino };
}

/**
 * Lets go of the regions' guest RAM now (native retireMapping): call it only
 * once the device worker no longer uses them. What still holds a view reads zeros.
 */
function retireRegions(regions: readonly MappedRegion[]): void {
  let failure: unknown;
  for (const r of regions) {
    try {
      native.retireMapping(r.buffer);
    } catch (err) {
      // mmap refused (ENOMEM): this one is left to the garbage collector; retire the rest.
      failure ??= err;
    }
  }
  if (failure !== undefined) throw failure;
}

function translate(
  memory: GuestMemory,
  uva: number,
  len: number,
  index: number,
  what: string,
): number {
  const gpa = memory.uvaToGpa(uva, len);
  if (gpa < 0) {
    throw new RequestError(
      'VHOST_USER_BAD_ADDRESS',
      `vring ${index} ${what} at 0x${uva.toString(16)} is not in guest memory`,
    );
  }
  return gpa;
}

function checkConfigRange(c: ConfigPayload): void {
  if (c.offset + c.size > MAX_CONFIG_SIZE) {
    throw new RequestError(
      'VHOST_USER_BAD_VALUE',
      `config range ${c.offset}+${c.size} exceeds ${MAX_CONFIG_SIZE} bytes`,
    );
  }
}

function closeFd(fd: number): void {
  if (fd >= 0) native.close(fd);
}
