/**
 * The vhost-user-blk load generator: a lean virtio-blk driver on the project's own front end
 * (test/frontend's Vmm does QEMU 7.2's negotiation with memfd RAM and real eventfds). It keeps
 * `iodepth` requests in flight per queue from preallocated slots whose three descriptors
 * (header, data, status) never move; a completion re-arms its slot at once, every batch of
 * completions reaped from one call-eventfd wake-up is published with one kick, and nothing is
 * allocated per request. It drives any vhost-user-blk back end by socket path, so vhost-rt and
 * qemu-storage-daemon are measured by the same tool.
 */
import { readFileSync } from 'node:fs';
import { VhostRtError } from '../../src/errors.js';
import { type FdWatcher, native, POLL_READABLE } from '../../src/native.js';
import {
  AVAIL_IDX,
  AVAIL_RING,
  availUsedEventOffset,
  DESC_SIZE,
  USED_IDX,
  usedAvailEventOffset,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  vringNeedEvent,
} from '../../src/virtio/split-ring.js';
import {
  BLK_CONFIG_SIZE,
  BLK_DRIVER_FEATURES,
  BlkType,
  parseBlkConfig,
  REQ_HEADER_SIZE,
  SECTOR_SIZE,
} from '../../test/frontend/blk-driver.js';
import { Vmm, type VmmQueue } from '../../test/frontend/vmm.js';
import { LatencyHistogram, type LatencySummary, type SparseHistogram } from './histogram.js';

/** fio's names for the access patterns. */
export const RW_MODES = ['read', 'write', 'randread', 'randwrite', 'rw', 'randrw'] as const;
/** An access pattern. */
export type RwMode = (typeof RW_MODES)[number];

/** What to run. */
export interface LoadOptions {
  /** The back end's vhost-user socket. */
  socketPath: string;
  /** Back-end process whose CPU time is charged per I/O (/proc/PID/stat); omitted: not measured. */
  backendPid?: number;
  rw: RwMode;
  /** Bytes per request, a multiple of 512. */
  bs: number;
  /** Requests in flight per queue. */
  iodepth: number;
  /** Virtqueues driven (each with `iodepth` requests); default 1. */
  queues?: number;
  /** Measured seconds. */
  runtimeSec: number;
  /** Seconds run before measuring (not counted); default 0. */
  rampSec?: number;
  /** First byte of the range I/O goes to; default 0. */
  offset?: number;
  /** Bytes of the range (0: from offset to the end of the device); default 0. */
  size?: number;
  /** Percent of reads for rw/randrw; default 50. */
  rwmixread?: number;
  /** Ring size (power of two, >= 3 × iodepth); default max(64, next power of two of 3 × iodepth). */
  queueSize?: number;
  /** The header's ioprio field (after `type`), as a Linux guest fills it; default 0 (none). */
  ioprio?: number;
  /**
   * Turn dirty logging on after start, as QEMU does for a live migration (SET_LOG_BASE,
   * VHOST_F_LOG_ALL, the rings' LOG flag), and clear the bitmap every `dirtyLogSyncMs`
   * as QEMU's log sync does; default false (off).
   */
  dirtyLog?: boolean;
  /** With {@link dirtyLog}: ms between bitmap clears; default 100. */
  dirtyLogSyncMs?: number;
  /**
   * Keep the measured window's whole latency histogram in the result
   * ({@link LoadResult.histogram}), for a bench that pools windows; default false.
   */
  keepHistogram?: boolean;
  /** Called about once a second with the phase and the I/Os completed in it. */
  onProgress?: (p: LoadProgress) => void;
}

/** A progress tick. */
export interface LoadProgress {
  phase: 'ramp' | 'measure';
  elapsedSec: number;
  ios: number;
}

/** CPU seconds (user + system) a process spent. */
export interface CpuTimes {
  userSec: number;
  systemSec: number;
}

/** What one run measured (only the measured window counts). */
export interface LoadResult {
  rw: RwMode;
  bs: number;
  iodepth: number;
  queues: number;
  seconds: number;
  ios: number;
  bytes: number;
  iops: number;
  /** Decimal megabytes per second. */
  mbPerSec: number;
  /** Requests that completed with a status other than OK. */
  errors: number;
  latency: LatencySummary;
  /** The measured window's histogram (with {@link LoadOptions.keepHistogram}). */
  histogram?: SparseHistogram;
  /** Back-end CPU microseconds per I/O (null without backendPid). */
  backendCpuUsPerIo: number | null;
  /** Back-end CPU use in percent of one core (null without backendPid). */
  backendCpuPercent: number | null;
  /** The generator's own CPU microseconds per I/O (process.cpuUsage). */
  generatorCpuUsPerIo: number;
  generatorCpuPercent: number;
}

/** A load-generator failure with a stable code. */
export class LoadgenError extends VhostRtError {}

const MiB = 1024 * 1024;
const PAGE = 4096;
/** Guest bytes per queue for the rings and the per-slot header/status blocks. */
const RING_BYTES = 64 * 1024;
const SLOT_META = 32;
const STATUS_UNSET = 0xff;
const CLK_TCK = 100;

/** Validates options, naming the one at fault. */
export function checkLoadOptions(o: LoadOptions): void {
  const int = (name: string, v: number, min: number, max: number) => {
    if (!Number.isInteger(v) || v < min || v > max)
      throw new RangeError(`${name} must be an integer in [${min}, ${max}], got ${v}`);
  };
  if (!RW_MODES.includes(o.rw)) throw new RangeError(`rw must be one of ${RW_MODES.join(', ')}`);
  int('bs', o.bs, SECTOR_SIZE, 64 * MiB);
  if (o.bs % SECTOR_SIZE !== 0) throw new RangeError(`bs must be a multiple of 512, got ${o.bs}`);
  int('iodepth', o.iodepth, 1, 1024);
  int('queues', o.queues ?? 1, 1, 64);
  int('rwmixread', o.rwmixread ?? 50, 0, 100);
  if (!(o.runtimeSec > 0)) throw new RangeError(`runtime must be > 0, got ${o.runtimeSec}`);
  if (!((o.rampSec ?? 0) >= 0)) throw new RangeError(`ramp must be >= 0, got ${o.rampSec}`);
  if ((o.offset ?? 0) % o.bs !== 0) throw new RangeError('offset must be a multiple of bs');
}

/** utime + stime of a process (all its threads) from /proc/PID/stat. */
export function readProcCpu(pid: number): CpuTimes {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  // comm (field 2) may hold spaces and parentheses: split after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // utime and stime are fields 14 and 15, i.e. 11 and 12 after "pid (comm)".
  return { userSec: Number(fields[11]) / CLK_TCK, systemSec: Number(fields[12]) / CLK_TCK };
}

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** The ring size a run uses. */
export function ringSizeFor(o: LoadOptions): number {
  return o.queueSize ?? Math.max(64, nextPow2(3 * o.iodepth));
}

/** Guest RAM the run needs: rings, slot metadata and data buffers, rounded to 2 MiB. */
export function guestBytesFor(o: LoadOptions): number {
  const queues = o.queues ?? 1;
  const perQueue = RING_BYTES + o.iodepth * (SLOT_META + o.bs + PAGE);
  return Math.ceil((queues * perQueue + MiB) / (2 * MiB)) * 2 * MiB;
}

/** Shared state of one run: phase, counters and the histogram all queues record into. */
class RunState {
  measuring = false;
  running = true;
  ios = 0;
  bytes = 0;
  errors = 0;
  inflight = 0;
  readonly histogram = new LatencyHistogram();
  onIdle: (() => void) | undefined;

  /** Starts the measured window: forgets ramp-up. */
  startMeasuring(): void {
    this.measuring = true;
    this.ios = 0;
    this.bytes = 0;
    this.errors = 0;
    this.histogram.reset();
  }
}

/** How the next request's offset and direction are chosen. */
class Pattern {
  private readonly blocks: number;
  private readonly random: boolean;
  private readonly readPercent: number;
  private cursor = 0;

  constructor(
    o: LoadOptions,
    private readonly base: number,
    span: number,
  ) {
    this.blocks = Math.floor(span / o.bs);
    if (this.blocks < 1) throw new LoadgenError('LOADGEN_RANGE', `range of ${span} bytes < bs`);
    this.random = o.rw.startsWith('rand');
    const mode = o.rw.replace('rand', '');
    this.readPercent = mode === 'read' ? 100 : mode === 'write' ? 0 : (o.rwmixread ?? 50);
  }

  /** Byte offset of the next request. */
  nextOffset(bs: number): number {
    if (this.random) return this.base + Math.floor(Math.random() * this.blocks) * bs;
    const at = this.cursor;
    this.cursor = (this.cursor + 1) % this.blocks;
    return this.base + at * bs;
  }

  /** Whether the next request reads. */
  nextIsRead(): boolean {
    if (this.readPercent === 100) return true;
    if (this.readPercent === 0) return false;
    return Math.random() * 100 < this.readPercent;
  }
}

/**
 * One virtqueue's driver: `iodepth` slots, slot i owning descriptors 3i (header), 3i + 1
 * (data) and 3i + 2 (status), with its header/status block and data buffer fixed in guest RAM.
 */
class QueueLoad {
  private readonly desc: DataView;
  private readonly avail: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  private readonly mem: DataView;
  private readonly mask: number;
  private readonly metaGpa: number;
  private readonly submittedAt: Float64Array;
  private readonly isRead: Uint8Array;
  private availIdx = 0;
  private kickedAt = 0;
  private lastUsed = 0;
  private watcher: FdWatcher | undefined;

  constructor(
    vmm: Vmm,
    private readonly q: VmmQueue,
    private readonly o: LoadOptions,
    private readonly pattern: Pattern,
    private readonly state: RunState,
  ) {
    const ram = vmm.ram;
    const d = q.driver;
    this.mask = d.size - 1;
    this.desc = viewOf(ram.view(d.descTable, d.size * DESC_SIZE));
    this.avail = ram.u16(d.availRing, availUsedEventOffset(d.size) / 2 + 1);
    this.used16 = ram.u16(d.usedRing, usedAvailEventOffset(d.size) / 2 + 1);
    this.used32 = ram.u32(d.usedRing, 1 + 2 * d.size);
    const region = vmm.regions[0];
    this.mem = new DataView(region.mapping, region.wire.mmapOffset);
    this.metaGpa = ram.alloc(o.iodepth * SLOT_META, SLOT_META);
    this.submittedAt = new Float64Array(o.iodepth);
    this.isRead = new Uint8Array(o.iodepth);
    for (let slot = 0; slot < o.iodepth; slot++) this.layoutSlot(slot, ram.alloc(o.bs, PAGE));
  }

  /** Writes slot `slot`'s three fixed descriptors. */
  private layoutSlot(slot: number, dataGpa: number): void {
    const meta = this.metaGpa + slot * SLOT_META;
    const head = 3 * slot;
    this.putDesc(head, meta, REQ_HEADER_SIZE, VIRTQ_DESC_F_NEXT, head + 1);
    this.putDesc(head + 1, dataGpa, this.o.bs, VIRTQ_DESC_F_NEXT, head + 2);
    this.putDesc(head + 2, meta + REQ_HEADER_SIZE, 1, VIRTQ_DESC_F_WRITE, 0);
  }

  private putDesc(index: number, addr: number, len: number, flags: number, next: number): void {
    const at = index * DESC_SIZE;
    this.desc.setUint32(at, addr % 2 ** 32, true);
    this.desc.setUint32(at + 4, Math.floor(addr / 2 ** 32), true);
    this.desc.setUint32(at + 8, len, true);
    this.desc.setUint16(at + 12, flags, true);
    this.desc.setUint16(at + 14, next, true);
  }

  /** Takes the call eventfd over from the Vmm, fills every slot and kicks once. */
  start(): void {
    // The Vmm's own watcher would pop used elements into objects; this driver reaps raw.
    this.q.unlisten();
    this.watcher = new native.FdWatcher(this.q.callFd, () => this.onCall());
    this.watcher.start(POLL_READABLE);
    this.availIdx = this.q.driver.availIdx;
    this.lastUsed = this.availIdx;
    this.kickedAt = this.availIdx;
    for (let slot = 0; slot < this.o.iodepth; slot++) this.submit(slot);
    this.publish();
  }

  /** Releases the call eventfd watcher. */
  stop(): void {
    this.watcher?.close();
    this.watcher = undefined;
  }

  /** Fills slot's header (type, sector) and status, and appends its head to the avail ring. */
  private submit(slot: number): void {
    const read = this.pattern.nextIsRead();
    const sector = this.pattern.nextOffset(this.o.bs) / SECTOR_SIZE;
    const meta = this.metaGpa + slot * SLOT_META;
    this.mem.setUint32(meta, read ? BlkType.IN : BlkType.OUT, true);
    this.mem.setUint32(meta + 4, this.o.ioprio ?? 0, true);
    this.mem.setUint32(meta + 8, sector % 2 ** 32, true);
    this.mem.setUint32(meta + 12, Math.floor(sector / 2 ** 32), true);
    this.mem.setUint8(meta + REQ_HEADER_SIZE, STATUS_UNSET);
    if (read !== (this.isRead[slot] === 1)) this.setDataDirection(slot, read);
    this.avail[AVAIL_RING / 2 + (this.availIdx & this.mask)] = 3 * slot;
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.submittedAt[slot] = performance.now();
    this.state.inflight++;
  }

  private setDataDirection(slot: number, read: boolean): void {
    const flags = VIRTQ_DESC_F_NEXT | (read ? VIRTQ_DESC_F_WRITE : 0);
    this.desc.setUint16((3 * slot + 1) * DESC_SIZE + 12, flags, true);
    this.isRead[slot] = read ? 1 : 0;
  }

  /** Makes the batch visible with one avail.idx store and kicks if the device asked for it. */
  private publish(): void {
    // Release: the descriptors, headers and ring entries above are stored before avail.idx.
    Atomics.store(this.avail, AVAIL_IDX / 2, this.availIdx);
    const old = this.kickedAt;
    this.kickedAt = this.availIdx;
    if (old === this.availIdx) return;
    // Acquire: avail_event is read after avail.idx was published (§2.7.10's ordering).
    const availEvent = Atomics.load(this.used16, usedAvailEventOffset(this.mask + 1) / 2);
    if (vringNeedEvent(availEvent, this.availIdx, old)) native.eventfdWrite(this.q.kickFd, 1);
  }

  private onCall(): void {
    native.eventfdRead(this.q.callFd);
    for (;;) {
      this.reap();
      // Ask for an interrupt at the next used element, then look again: an element published
      // before the device could see the new used_event raises no interrupt.
      Atomics.store(this.avail, availUsedEventOffset(this.mask + 1) / 2, this.lastUsed);
      // Acquire: used.idx is read after used_event was stored (pairs with the device's fence).
      if (Atomics.load(this.used16, USED_IDX / 2) === this.lastUsed) break;
    }
    this.publish();
    if (this.state.inflight === 0) this.state.onIdle?.();
  }

  /** Completes every used element published so far; re-arms each slot while running. */
  private reap(): void {
    // Acquire: used elements are read after used.idx, which the device stored after them.
    const usedIdx = Atomics.load(this.used16, USED_IDX / 2);
    if (usedIdx === this.lastUsed) return;
    const now = performance.now();
    const s = this.state;
    while (this.lastUsed !== usedIdx) {
      const id = this.used32[1 + 2 * (this.lastUsed & this.mask)];
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
      const slot = (id / 3) | 0;
      s.inflight--;
      if (this.mem.getUint8(this.metaGpa + slot * SLOT_META + REQ_HEADER_SIZE) !== 0) s.errors++;
      if (s.measuring) {
        s.histogram.record((now - this.submittedAt[slot]) * 1e6);
        s.ios++;
        s.bytes += this.o.bs;
      }
      if (s.running) this.submit(slot);
    }
  }
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Connects, negotiates like QEMU, and starts the device with this run's rings and RAM. */
async function connect(o: LoadOptions): Promise<Vmm> {
  const vmm = await Vmm.connect({
    socketPath: o.socketPath,
    queues: o.queues ?? 1,
    queueSize: ringSizeFor(o),
    regions: [{ size: guestBytesFor(o) }],
    driverFeatures: BLK_DRIVER_FEATURES,
    configSize: BLK_CONFIG_SIZE,
  });
  try {
    await vmm.start();
    if (o.dirtyLog) await vmm.startDirtyLog();
  } catch (err) {
    vmm.close();
    throw err;
  }
  return vmm;
}

/** With `o.dirtyLog`: clears the bitmap periodically (QEMU reads and clears it); returns the stop. */
function syncDirtyLog(o: LoadOptions, vmm: Vmm): () => void {
  const bits = vmm.dirtyLog?.bits;
  if (!o.dirtyLog || bits === undefined) return () => {};
  const timer = setInterval(() => bits.fill(0), o.dirtyLogSyncMs ?? 100);
  return () => clearInterval(timer);
}

/** The [base, base + span) byte range I/O goes to, checked against the capacity. */
function ioRange(o: LoadOptions, capacity: number): { base: number; span: number } {
  const base = o.offset ?? 0;
  const span = o.size && o.size > 0 ? o.size : capacity - base;
  if (base + span > capacity || span < o.bs) {
    throw new LoadgenError(
      'LOADGEN_RANGE',
      `range ${base}+${span} does not fit the ${capacity}-byte device`,
    );
  }
  return { base, span };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Sleeps `sec` seconds in 1 s steps, reporting progress. */
async function phase(o: LoadOptions, s: RunState, name: LoadProgress['phase'], sec: number) {
  const end = performance.now() + sec * 1000;
  const t0 = performance.now();
  let seenIos = 0;
  for (let left = sec * 1000; left > 0; left = end - performance.now()) {
    await sleep(Math.min(1000, left));
    seenIos = s.measuring ? s.ios : seenIos;
    o.onProgress?.({ phase: name, elapsedSec: (performance.now() - t0) / 1000, ios: seenIos });
  }
}

function cpuSeconds(t: CpuTimes): number {
  return t.userSec + t.systemSec;
}

/** Runs one workload against the back end at `o.socketPath` and returns the measured window. */
export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const [r] = await runLoadWindows(o, [{ rampSec: o.rampSec ?? 0, runtimeSec: o.runtimeSec }]);
  return r;
}

/** One measured window of {@link runLoadWindows}. */
export interface LoadWindow {
  /**
   * Awaited before the window's ramp, with the load still running unmeasured (a benchmark
   * starts a neighbour's flood here; the front end stays connected and busy meanwhile).
   */
  before?: () => Promise<void>;
  /** Called when the measured part starts (after the ramp). */
  onMeasure?: () => void;
  /** Called with the window's result as soon as it ends (the load runs on into the next). */
  onResult?: (r: LoadResult) => void;
  rampSec: number;
  runtimeSec: number;
}

/**
 * Runs one workload over one connection through several measured windows in turn, the
 * load never pausing between them (issue 14: a device that disconnects between an idle and
 * a loaded run is not the steady state of a guest); one result per window.
 */
export async function runLoadWindows(o: LoadOptions, windows: LoadWindow[]): Promise<LoadResult[]> {
  checkLoadOptions(o);
  const vmm = await connect(o);
  const s = new RunState();
  const loads: QueueLoad[] = [];
  const stopSync = syncDirtyLog(o, vmm);
  try {
    const capacity = Number(parseBlkConfig(vmm.config).capacity) * SECTOR_SIZE;
    const { base, span } = ioRange(o, capacity);
    const share = Math.floor(span / vmm.queues.length / o.bs) * o.bs;
    vmm.queues.forEach((q, i) => {
      const pattern = new Pattern(o, base + i * share, share);
      loads.push(new QueueLoad(vmm, q, o, pattern, s));
    });
    for (const l of loads) l.start();
    const results: LoadResult[] = [];
    for (const w of windows) {
      await w.before?.();
      await phase(o, s, 'ramp', w.rampSec);
      w.onMeasure?.();
      const r = await measure({ ...o, runtimeSec: w.runtimeSec }, s);
      results.push(r);
      w.onResult?.(r);
    }
    return results;
  } finally {
    stopSync();
    await drain(s);
    for (const l of loads) l.stop();
    await vmm.stop().catch(() => undefined);
    vmm.close();
  }
}

/** The measured window: counters reset, CPU read before and after. */
async function measure(o: LoadOptions, s: RunState): Promise<LoadResult> {
  s.startMeasuring();
  const pid = o.backendPid;
  const backend0 = pid ? readProcCpu(pid) : undefined;
  const gen0 = process.cpuUsage();
  const t0 = performance.now();
  await phase(o, s, 'measure', o.runtimeSec);
  s.measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  const gen = process.cpuUsage(gen0);
  const backendSec = pid && backend0 ? cpuSeconds(readProcCpu(pid)) - cpuSeconds(backend0) : null;
  const genSec = (gen.user + gen.system) / 1e6;
  const perIo = (sec: number) => (s.ios > 0 ? (sec * 1e6) / s.ios : 0);
  return {
    rw: o.rw,
    bs: o.bs,
    iodepth: o.iodepth,
    queues: o.queues ?? 1,
    seconds,
    ios: s.ios,
    bytes: s.bytes,
    iops: s.ios / seconds,
    mbPerSec: s.bytes / 1e6 / seconds,
    errors: s.errors,
    latency: s.histogram.summary(),
    ...(o.keepHistogram ? { histogram: s.histogram.toSparse() } : {}),
    backendCpuUsPerIo: backendSec === null ? null : perIo(backendSec),
    backendCpuPercent: backendSec === null ? null : (100 * backendSec) / seconds,
    generatorCpuUsPerIo: perIo(genSec),
    generatorCpuPercent: (100 * genSec) / seconds,
  };
}

/** Stops re-arming slots and waits (up to 10 s) until every request in flight completed. */
async function drain(s: RunState): Promise<void> {
  s.running = false;
  s.measuring = false;
  if (s.inflight === 0) return;
  const idle = new Promise<void>((resolve) => {
    s.onIdle = resolve;
  });
  // The timer is cleared once idle: left armed, it kept every generator process alive 10 s
  // after its run (a benchmark waiting for the exit saw a 10 s gap with no I/O; issue 14).
  let timer: ReturnType<typeof setTimeout> | undefined;
  const limit = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, 10_000);
  });
  await Promise.race([idle, limit]);
  clearTimeout(timer);
}
