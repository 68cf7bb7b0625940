/**
 * Target `backend`: the vhost-user back-end state machine
 * (src/vhost-user/backend.ts) driven directly through `handle()`, as the
 * connection would drive it, against a fake {@link VhostUserDevice}.
 *
 * A case is a sequence of messages with fds: QEMU 7.2's order for a block
 * device (test/frontend/vmm.ts: realize, start, stop, restart, reset), then
 * mutated — messages dropped, duplicated, moved, inserted; payload bytes and
 * fields (indexes, ring addresses, region sizes, feature bits) set to
 * boundary values; fds added, removed, swapped between eventfd and memfd.
 * The fds are real: eventfds and memfds made for the case.
 *
 * Properties:
 * - `handle` settles (no hang) and throws nothing but VhostRtError
 *   subclasses with a code (ProtocolError, RequestError, GuestMemoryError,
 *   SystemError other than EBADF);
 * - replies: exactly the requests that have one return a payload, and it
 *   decodes (features as offered, GET_VRING_BASE of the ring asked, a config
 *   slice of the size asked);
 * - the device is driven consistently: a queue starts only when stopped,
 *   with open kick/call fds and rings inside the memory table it was given;
 *   stop/enable/setCall only on started queues; `reset` stops every queue;
 * - fds: each fd is closed exactly once — by the connection after the
 *   message (what the handler did not take) or by the back end when replaced
 *   or at reset. A second close shows up as EBADF; after reset every fd of
 *   the case must be closed; /proc/self/fd must not grow across batches.
 * - a stale back-end channel (replaced or reset) sends nothing.
 */
import { fstatSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostRtError } from '../../../src/errors.js';
import { native } from '../../../src/native.js';
import {
  decodeConfig,
  decodeMemoryTable,
  decodeMemRegion,
  decodeU64,
  decodeVringAddr,
  decodeVringState,
  encodeConfig,
  encodeMemoryTable,
  encodeMemRegion,
  encodeU64,
  encodeVringAddr,
  encodeVringFd,
  encodeVringState,
  type MemRegionWire,
} from '../../../src/vhost-user/codec.js';
import type { BackendRequestSender } from '../../../src/vhost-user/device-backend.js';
import {
  type IncomingMessage,
  type QueueStart,
  VhostUserBackend,
  type VhostUserDevice,
} from '../../../src/vhost-user/index.js';
import {
  HeaderFlag,
  ProtocolFeature,
  Request,
  requestName,
} from '../../../src/vhost-user/protocol.js';
import { GuestMemory, type MemoryRegion } from '../../../src/virtio/guest-memory.js';
import { isValidQueueSize } from '../../../src/virtio/split-ring.js';
import { check, FuzzFailure, type FuzzTarget, fromHex, toHex } from '../harness.js';
import { interestingU32, mutateBytes } from '../mutate.js';
import type { Prng } from '../prng.js';
import { LAYOUT_OF, validPayload } from './codec.js';

/** An fd a message carries: an eventfd, a connected unix socket, or a memfd of that many bytes. */
type FdSpec = 'eventfd' | 'socket' | number;

/** One message of a case. */
export interface BackendMsg {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: FdSpec[];
}

/** The device the back end drives, and the messages it receives. */
export interface BackendCase {
  queues: number;
  maxQueueSize: number;
  servesConfig: boolean;
  raisesConfigChanges: boolean;
  messages: BackendMsg[];
}

const HAS_REPLY = new Set<number>([
  Request.GET_FEATURES,
  Request.GET_PROTOCOL_FEATURES,
  Request.GET_VRING_BASE,
  Request.GET_QUEUE_NUM,
  Request.GET_CONFIG,
  Request.GET_MAX_MEM_SLOTS,
]);
const USER_BASE = 0x7f3a_0000_0000;
const PAGE = 4096;
const DEVICE_FEATURES = (1n << 1n) | (1n << 6n) | (1n << 9n);

function isOpen(fd: number): boolean {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

/** A VhostUserDevice that records what it is asked and checks that it is asked sensibly. */
class FakeDevice implements VhostUserDevice {
  readonly kind = 'fuzz';
  readonly deviceFeatures = DEVICE_FEATURES;
  readonly servesConfig: boolean;
  readonly raisesConfigChanges: boolean;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly started = new Map<number, number>();
  memory: GuestMemory | null = null;
  channels: BackendRequestSender[] = [];
  channel: BackendRequestSender | null = null;

  constructor(c: BackendCase) {
    this.servesConfig = c.servesConfig;
    this.raisesConfigChanges = c.raisesConfigChanges;
    this.numQueues = c.queues;
    this.maxQueueSize = c.maxQueueSize;
  }

  async getConfig(offset: number, size: number): Promise<Uint8Array> {
    check(offset >= 0 && size >= 0 && offset + size <= 256, `getConfig(${offset}, ${size})`);
    return new Uint8Array(size).fill(0x5a);
  }

  async setConfig(offset: number, data: Uint8Array): Promise<boolean> {
    check(offset >= 0 && offset + data.length <= 256, `setConfig(${offset}, ${data.length})`);
    return (offset & 1) === 0;
  }

  async setMemory(regions: MemoryRegion[]): Promise<void> {
    // The back end validated the table: building it again must not fail.
    this.memory = new GuestMemory(regions);
  }

  async startQueue(index: number, s: QueueStart): Promise<void> {
    this.queue(index, 'startQueue');
    check(!this.started.has(index), `startQueue(${index}) on a started queue`);
    check(isOpen(s.kickFd), `startQueue(${index}) with kick fd ${s.kickFd} not open`);
    check(s.callFd === -1 || isOpen(s.callFd), `startQueue(${index}) with a closed call fd`);
    const { size, descTable, availRing, usedRing } = s.config;
    check(isValidQueueSize(size) && size <= this.maxQueueSize, `startQueue size ${size}`);
    check(s.lastAvailIdx >= 0 && s.lastAvailIdx <= 0xffff, `lastAvailIdx ${s.lastAvailIdx}`);
    const m = this.memory;
    check(m !== null, `startQueue(${index}) before any memory table`);
    for (const [gpa, len, what] of [
      [descTable, 16 * size, 'descriptor table'],
      [availRing, 6 + 2 * size, 'avail ring'],
      [usedRing, 6 + 8 * size, 'used ring'],
    ] as const) {
      check(m.findRegion(gpa, len) >= 0, `startQueue(${index}): ${what} at ${gpa} not in memory`);
    }
    this.started.set(index, s.lastAvailIdx);
  }

  async setCall(index: number, fd: number): Promise<void> {
    this.startedQueue(index, 'setCall');
    check(fd === -1 || isOpen(fd), `setCall(${index}, ${fd}) with a closed fd`);
  }

  async setEnabled(index: number, _enabled: boolean): Promise<void> {
    this.startedQueue(index, 'setEnabled');
  }

  async stopQueue(index: number): Promise<number> {
    this.startedQueue(index, 'stopQueue');
    const base = this.started.get(index)!;
    this.started.delete(index);
    return (base + 3) & 0xffff;
  }

  setBackendChannel(channel: BackendRequestSender | null): void {
    check(this.raisesConfigChanges, 'a back-end channel for a device that never uses one');
    if (this.channel !== null) this.channels.push(this.channel);
    this.channel = channel;
  }

  private queue(index: number, what: string): void {
    check(Number.isInteger(index) && index >= 0 && index < this.numQueues, `${what}(${index})`);
  }

  private startedQueue(index: number, what: string): void {
    this.queue(index, what);
    check(this.started.has(index), `${what}(${index}) on a stopped queue`);
  }
}

// ── the grammar: QEMU's order ───────────────────────────────────────────────

function msg(
  request: number,
  payload: Uint8Array = new Uint8Array(0),
  fds: FdSpec[] = [],
  flags = 1,
): BackendMsg {
  return { request, flags, payload, fds };
}

interface Layout {
  regions: { wire: MemRegionWire; fdBytes: number }[];
  ringBytes: number;
}

function layout(rng: Prng, queues: number, size: number): Layout {
  const ringBytes = 16 * size + 8 + 2 * size + 8 + 8 * size + 8;
  const count = 1 + rng.below(3);
  const regions = [];
  let gpa = rng.chance(0.5) ? 0 : 0x10_0000;
  for (let i = 0; i < count; i++) {
    const bytes =
      (i === 0 ? Math.ceil((queues * ringBytes) / PAGE) * PAGE : 0) + PAGE * rng.range(1, 8);
    const mmapOffset = rng.chance(0.7) ? 0 : PAGE;
    const wire = { guestPhysAddr: gpa, size: bytes, userAddr: USER_BASE + gpa, mmapOffset };
    regions.push({ wire, fdBytes: mmapOffset + bytes });
    gpa += bytes + (rng.chance(0.5) ? 0 : 0x10_0000);
  }
  return { regions, ringBytes };
}

function ringAddr(l: Layout, q: number, size: number) {
  const base = l.regions[0].wire.userAddr + q * l.ringBytes;
  const desc = base;
  const avail = desc + 16 * size;
  const used = Math.ceil((avail + 6 + 2 * size) / 8) * 8;
  return { desc, avail, used };
}

function startSequence(rng: Prng, c: BackendCase, l: Layout, size: number, out: BackendMsg[]) {
  const need = rng.chance(0.5) ? HeaderFlag.NEED_REPLY | 1 : 1;
  for (let q = 0; q < c.queues; q++)
    out.push(msg(Request.SET_VRING_CALL, encodeVringFd(q, false), ['eventfd']));
  const features =
    (DEVICE_FEATURES | (1n << 32n) | (1n << 28n) | (1n << 29n) | (1n << 30n)) &
    (BigInt(rng.u32() | 0x4000_0000) << 0n);
  out.push(msg(Request.SET_FEATURES, encodeU64(features | (rng.chance(0.5) ? 1n << 32n : 0n))));
  if (rng.chance(0.5)) {
    const wires = l.regions.map((r) => r.wire);
    out.push(
      msg(
        Request.SET_MEM_TABLE,
        encodeMemoryTable(wires),
        l.regions.map((r) => r.fdBytes),
        need,
      ),
    );
  } else {
    for (const r of l.regions)
      out.push(msg(Request.ADD_MEM_REG, encodeMemRegion(r.wire), [r.fdBytes], need));
  }
  for (let q = 0; q < c.queues; q++) {
    const a = ringAddr(l, q, size);
    out.push(msg(Request.SET_VRING_NUM, encodeVringState({ index: q, num: size })));
    out.push(msg(Request.SET_VRING_BASE, encodeVringState({ index: q, num: rng.below(0x10000) })));
    const addr = {
      index: q,
      flags: 0,
      descUserAddr: a.desc,
      usedUserAddr: a.used,
      availUserAddr: a.avail,
      logGuestAddr: 0,
    };
    out.push(msg(Request.SET_VRING_ADDR, encodeVringAddr(addr)));
    out.push(msg(Request.SET_VRING_KICK, encodeVringFd(q, false), ['eventfd']));
  }
  for (let q = 0; q < c.queues; q++)
    out.push(msg(Request.SET_VRING_ENABLE, encodeVringState({ index: q, num: 1 })));
}

function stopSequence(c: BackendCase, out: BackendMsg[]) {
  for (let q = 0; q < c.queues; q++)
    out.push(msg(Request.SET_VRING_ENABLE, encodeVringState({ index: q, num: 0 })));
  for (let q = 0; q < c.queues; q++)
    out.push(msg(Request.GET_VRING_BASE, encodeVringState({ index: q, num: 0 })));
  for (let q = 0; q < c.queues; q++)
    out.push(msg(Request.SET_VRING_CALL, encodeVringFd(q, false), ['eventfd']));
}

function configMessage(rng: Prng, request: number): BackendMsg {
  const size = rng.pick([0, 4, 8, 60, 256]);
  const data = request === Request.SET_CONFIG ? rng.bytes(size) : new Uint8Array(size);
  return msg(request, encodeConfig({ offset: rng.below(257 - size), size, flags: 0, data }));
}

/** QEMU 7.2's messages for a device's life: realize, start, I/O, stop, maybe restart and reset. */
function qemuCase(rng: Prng): BackendCase {
  const c: BackendCase = {
    queues: rng.range(1, 3),
    maxQueueSize: rng.pick([64, 128, 256, 1024]),
    servesConfig: rng.chance(0.8),
    raisesConfigChanges: rng.chance(0.5),
    messages: [],
  };
  const out = c.messages;
  const size = rng.pick([1, 2, 16, 64, 128]);
  const l = layout(rng, c.queues, size);
  out.push(msg(Request.GET_FEATURES), msg(Request.GET_PROTOCOL_FEATURES));
  const protocol =
    (1n << BigInt(ProtocolFeature.MQ)) |
    (1n << BigInt(ProtocolFeature.REPLY_ACK)) |
    (1n << BigInt(ProtocolFeature.CONFIGURE_MEM_SLOTS)) |
    (1n << BigInt(ProtocolFeature.CONFIG)) |
    (c.raisesConfigChanges ? 1n << BigInt(ProtocolFeature.BACKEND_REQ) : 0n);
  out.push(msg(Request.SET_PROTOCOL_FEATURES, encodeU64(protocol & BigInt(rng.u32() | 0x8))));
  out.push(msg(Request.GET_QUEUE_NUM), msg(Request.GET_MAX_MEM_SLOTS));
  if (c.raisesConfigChanges) out.push(msg(Request.SET_BACKEND_REQ_FD, undefined, ['socket'], 9));
  out.push(msg(Request.SET_OWNER), msg(Request.GET_FEATURES));
  for (let q = 0; q < c.queues; q++)
    out.push(msg(Request.SET_VRING_CALL, encodeVringFd(q, false), ['eventfd']));
  if (c.servesConfig) out.push(configMessage(rng, Request.GET_CONFIG));
  startSequence(rng, c, l, size, out);
  if (rng.chance(0.3)) out.push(configMessage(rng, Request.SET_CONFIG));
  if (rng.chance(0.6)) stopSequence(c, out);
  if (rng.chance(0.3)) startSequence(rng, c, l, size, out);
  if (rng.chance(0.2)) out.push(msg(Request.REM_MEM_REG, encodeMemRegion(l.regions[0].wire)));
  if (rng.chance(0.2)) out.push(msg(Request.RESET_OWNER));
  return c;
}

// ── mutations ───────────────────────────────────────────────────────────────

function randomFds(rng: Prng): FdSpec[] {
  const n = rng.pick([0, 0, 1, 1, 1, 2, 3, 9]);
  const one = (): FdSpec =>
    rng.chance(0.6) ? 'eventfd' : rng.chance(0.2) ? 'socket' : PAGE * rng.range(1, 16);
  return Array.from({ length: n }, one);
}

function randomMessage(rng: Prng): BackendMsg {
  const request = rng.chance(0.85) ? rng.pick(Object.keys(LAYOUT_OF).map(Number)) : rng.below(48);
  const layoutName = LAYOUT_OF[request];
  const payload =
    layoutName !== undefined && rng.chance(0.8)
      ? validPayload(rng, layoutName)
      : rng.bytes(rng.pick([0, 8, 16, 40, rng.below(300)]));
  return msg(request, payload, randomFds(rng), rng.pick([1, 1, 9, 5, rng.u32()]));
}

/** A new value for one field of a decodable payload: indexes, sizes, addresses at their edges. */
function tweakField(rng: Prng, m: BackendMsg, c: BackendCase): Uint8Array | null {
  const edge = () =>
    rng.pick([
      0,
      1,
      c.queues - 1,
      c.queues,
      255,
      256,
      c.maxQueueSize,
      c.maxQueueSize * 2,
      0xffff,
      0x10000,
      interestingU32(rng),
    ]);
  const addrEdge = (a: number) =>
    rng.pick([
      a + 1,
      a + 2,
      a - 16,
      a + PAGE,
      a + 0x10_0000,
      0,
      USER_BASE,
      2 ** 53 - 1,
      a + rng.below(0x10000),
    ]);
  try {
    switch (LAYOUT_OF[m.request]) {
      case 'VRING_STATE': {
        const s = decodeVringState(m.payload);
        if (rng.chance(0.5)) s.index = edge();
        else s.num = edge();
        return encodeVringState(s);
      }
      case 'VRING_FD':
        return encodeVringFd(rng.chance(0.5) ? rng.below(256) : c.queues, rng.chance(0.3));
      case 'VRING_ADDR': {
        const a = decodeVringAddr(m.payload);
        const k = rng.pick(['descUserAddr', 'usedUserAddr', 'availUserAddr', 'index'] as const);
        if (k === 'index') a.index = edge();
        else a[k] = Math.max(0, Math.min(2 ** 53 - 1, addrEdge(a[k])));
        return encodeVringAddr(a);
      }
      case 'MEMORY_TABLE':
      case 'MEM_REGION': {
        const table = m.request === Request.SET_MEM_TABLE;
        const regions = table ? decodeMemoryTable(m.payload) : [decodeMemRegion(m.payload)];
        if (regions.length === 0) return null;
        const r = rng.pick(regions);
        const k = rng.pick(['guestPhysAddr', 'size', 'userAddr', 'mmapOffset'] as const);
        r[k] = Math.max(
          0,
          Math.min(
            2 ** 53 - 1,
            rng.chance(0.5) ? addrEdge(r[k]) : rng.pick([0, 1, PAGE, r[k] * 2, 2 ** 52]),
          ),
        );
        if (table && rng.chance(0.2)) regions.push({ ...regions[0] });
        return table ? encodeMemoryTable(regions) : encodeMemRegion(r);
      }
      case 'U64':
        return encodeU64(decodeU64(m.payload) ^ (1n << BigInt(rng.below(64))));
      case 'CONFIG': {
        const cfg = decodeConfig(m.payload);
        cfg.offset = rng.pick([0, 1, 255, 256 - cfg.size, 256 - cfg.size + 1]);
        return encodeConfig(cfg);
      }
      default:
        return null;
    }
  } catch {
    return null;
  }
}

function mutateCase(rng: Prng, base: BackendCase): BackendCase {
  const c: BackendCase = {
    ...base,
    messages: base.messages.map((m) => ({ ...m, fds: [...m.fds] })),
  };
  const ms = c.messages;
  const steps = 1 + rng.below(4);
  for (let s = 0; s < steps; s++) {
    const i = rng.below(Math.max(ms.length, 1));
    const m = ms[i];
    switch (rng.below(10)) {
      case 0:
        ms.splice(i, 1);
        break;
      case 1:
        if (m) ms.splice(rng.below(ms.length + 1), 0, { ...m, fds: [...m.fds] });
        break;
      case 2:
        if (m) ms.splice(rng.below(ms.length), 0, ...ms.splice(i, 1));
        break;
      case 3:
        ms.splice(rng.below(ms.length + 1), 0, randomMessage(rng));
        break;
      case 4:
        if (m) m.payload = mutateBytes(rng, m.payload, 512);
        break;
      case 5:
        if (m)
          m.fds = rng.chance(0.5)
            ? randomFds(rng)
            : m.fds.map((f) => (f === 'eventfd' ? rng.pick<FdSpec>([PAGE, 'socket']) : 'eventfd'));
        break;
      case 6:
        if (m) m.flags = rng.pick([1, 9, 5, 0, 2, 0xffff_ffff]);
        break;
      case 7:
        if (m)
          m.request = rng.chance(0.5)
            ? rng.below(48)
            : rng.pick([
                Request.SET_VRING_KICK,
                Request.GET_VRING_BASE,
                Request.SET_VRING_CALL,
                Request.RESET_OWNER,
              ]);
        break;
      default: {
        const p = m ? tweakField(rng, m, c) : null;
        if (m && p !== null) m.payload = p;
      }
    }
  }
  if (rng.chance(0.1)) c.queues = rng.range(1, 4);
  return c;
}

// ── execution ───────────────────────────────────────────────────────────────

/** A listening socket for the case's socket fds (BACKEND_REQ channels), made once. */
let listenFd = -1;
let listenPath = '';

/** One end of a fresh unix stream connection; the other end is closed at once (the peer is gone). */
function socketFd(): number {
  if (listenFd < 0) {
    listenPath = join(tmpdir(), `vhost-rt-fuzz-${process.pid}.sock`);
    rmSync(listenPath, { force: true });
    listenFd = native.unixListen(listenPath, 16);
  }
  const fd = native.unixConnect(listenPath);
  const peer = native.accept(listenFd);
  if (peer >= 0) native.close(peer);
  return fd;
}

function makeFd(spec: FdSpec): number {
  if (spec === 'eventfd') return native.eventfd(0);
  if (spec === 'socket') return socketFd();
  return native.memfdCreate('fuzz', spec);
}

function allowedError(err: unknown): string {
  if (err instanceof FuzzFailure) throw err;
  if (!(err instanceof VhostRtError) || typeof err.code !== 'string' || err.code === '') throw err;
  check(err.code !== 'EBADF', () => `an fd was closed twice or used after close: ${err.message}`);
  check(err.message.length > 0, `${err.code} without a message`);
  return err.code;
}

function checkReply(
  request: number,
  payload: Uint8Array,
  reply: Uint8Array | undefined,
  backend: VhostUserBackend,
  c: BackendCase,
): void {
  const name = requestName(request);
  if (!HAS_REPLY.has(request)) {
    check(reply === undefined, `${name} returned a reply payload`);
    return;
  }
  check(reply instanceof Uint8Array, `${name} returned no reply`);
  switch (request) {
    case Request.GET_FEATURES:
      check(decodeU64(reply) === backend.offeredFeatures, 'GET_FEATURES reply');
      break;
    case Request.GET_QUEUE_NUM:
      check(decodeU64(reply) === BigInt(c.queues), 'GET_QUEUE_NUM reply');
      break;
    case Request.GET_VRING_BASE: {
      const asked = decodeVringState(payload);
      const got = decodeVringState(reply);
      check(got.index === asked.index && got.num <= 0xffff, 'GET_VRING_BASE reply');
      break;
    }
    case Request.GET_CONFIG: {
      const asked = decodeConfig(payload);
      const got = decodeConfig(reply);
      check(got.offset === asked.offset && got.size === asked.size, 'GET_CONFIG reply');
      break;
    }
    default:
      decodeU64(reply);
  }
}

/** Closes what the handler left in the message, as the connection does; a second close is a failure. */
function closeLeftovers(m: IncomingMessage, given: number[]): void {
  for (const fd of m.fds) {
    check(given.includes(fd), `the handler put fd ${fd} into the message`);
    try {
      native.close(fd);
    } catch (err) {
      throw new FuzzFailure(
        'crash',
        `fd ${fd} left in ${requestName(m.request)} was already closed: ${String(err)}`,
      );
    }
  }
}

async function execute(c: BackendCase): Promise<string> {
  const created: { fd: number; at: number }[] = [];
  const device = new FakeDevice(c);
  const backend = new VhostUserBackend(device);
  const events = new Set<string>();
  try {
    for (let i = 0; i < c.messages.length; i++) {
      const spec = c.messages[i];
      const fds = spec.fds.map(makeFd);
      for (const fd of fds) created.push({ fd, at: i });
      const m: IncomingMessage = {
        request: spec.request,
        flags: spec.flags,
        payload: spec.payload,
        fds: [...fds],
      };
      let outcome = 'ok';
      try {
        checkReply(spec.request, spec.payload, await backend.handle(m), backend, c);
      } catch (err) {
        outcome = allowedError(err);
      } finally {
        closeLeftovers(m, fds);
      }
      events.add(`${requestName(spec.request)}:${outcome}`);
    }
    await backend.reset();
    check(
      device.started.size === 0,
      () => `reset left queues ${[...device.started.keys()]} started`,
    );
    // Stale channels (replaced, or dropped at reset) must send nothing.
    for (const old of [...device.channels, device.channel]) old?.configChange();
  } catch (err) {
    if (!(err instanceof FuzzFailure)) allowedError(err);
    throw err;
  } finally {
    const leaked = created.filter(({ fd }) => isOpen(fd));
    for (const { fd } of leaked) native.close(fd);
    if (leaked.length > 0) {
      const where = leaked.map(
        ({ fd, at }) => `fd ${fd} of message ${at} (${requestName(c.messages[at].request)})`,
      );
      // biome-ignore lint/correctness/noUnsafeFinally: a leak is the failure to report, whatever else happened.
      throw new FuzzFailure('crash', `fds still open after reset: ${where.join(', ')}`);
    }
  }
  return [...events].sort().join(' ');
}

let baselineFds = -1;

/** The back-end target. */
export const backendTarget: FuzzTarget<BackendCase> = {
  name: 'backend',
  description:
    'vhost-user back end: mutated QEMU message sequences with real eventfds/memfds against a fake device',
  generate(rng, corpus) {
    const base = corpus.length > 0 && rng.chance(0.6) ? rng.pick(corpus) : qemuCase(rng);
    return rng.chance(0.15) ? base : mutateCase(rng, base);
  },
  execute,
  close() {
    if (listenFd >= 0) native.close(listenFd);
    if (listenPath !== '') rmSync(listenPath, { force: true });
    listenFd = -1;
  },
  checkBatch() {
    const open = readdirSync('/proc/self/fd').length;
    if (baselineFds < 0) baselineFds = open;
    check(open <= baselineFds, `/proc/self/fd grew from ${baselineFds} to ${open} entries`);
  },
  toJson: (c) => ({ ...c, messages: c.messages.map((m) => ({ ...m, payload: toHex(m.payload) })) }),
  fromJson(json) {
    type Msg = Omit<BackendMsg, 'payload'> & { payload: string };
    const j = json as Omit<BackendCase, 'messages'> & { messages: Msg[] };
    return { ...j, messages: j.messages.map((m) => ({ ...m, payload: fromHex(m.payload) })) };
  },
};
