/**
 * The part of every device worker that is not the device: it owns the
 * device's {@link Vring}s — kick watchers on this thread's own libuv loop (so
 * a kick never touches the main thread) and call eventfds — carries out the
 * main thread's commands, and polls adaptively after a batch when asked.
 *
 * It is also the boundary that keeps one device's failure to itself
 * (issue 11, "Survive a hostile front end"). What the front end handed over
 * may fail at any time, and the device model may throw; none of it may end
 * the worker thread, which serves other devices in --single-thread mode and
 * whose death stops the whole daemon:
 * - a call fd whose write fails breaks its ring (EAGAIN excepted: the counter
 *   is at its limit, an interrupt is pending anyway);
 * - a kick fd that reports an error or a hang-up, whose read fails, or that
 *   keeps waking the loop without an eventfd count is unwatched (never spun
 *   on) and breaks its ring;
 * - a SIGBUS in the device's guest memory (the front end shrank the file
 *   behind it; native/sigbus.cc answers the fault with zero pages) breaks
 *   every ring of the device until a new memory table arrives: one
 *   Atomics.load per batch notices it;
 * - an exception out of the device model at a batch entry point (a kick, the
 *   poller, an engine completion or doorbell through DeviceEnv.fault) breaks
 *   every ring of the device for the rest of the worker's life.
 * Each break is reported once per ring (DEVICE_BROKEN, see messages.ts), and
 * the ring's err fd is signalled. Only a try/catch around each batch and one
 * Atomics.load were added to the data path: no allocation, no system call.
 */
import { getSystemErrorName } from 'node:util';
import type { VirtioDeviceModel } from '../devices/index.js';
import { classifyErrno, VhostRtError } from '../errors.js';
import type { LogLevel } from '../log.js';
import { native, POLL_DISCONNECT, POLL_READABLE } from '../native.js';
import { applyRtOptions, guestMemoryLockRequested, lockGuestMemory } from '../rt/index.js';
import {
  createVrings,
  DirtyLog,
  GuestMemory,
  type MemoryRegion,
  PackedVirtqueue,
  SplitVirtqueue,
  type Virtqueue,
  type Vring,
  vringAt,
} from '../virtio/index.js';
import { type InflightArea, InflightQueue } from '../virtio/inflight.js';
import { type DeviceCommand, GUEST_MEMORY_SHRANK, RingBreak } from './messages.js';

/**
 * Readable wake-ups in a row that bring no eventfd count before a kick fd is
 * taken for one that will never deliver one (an eventfd that is readable
 * always has a count; a pipe at end of file, a device, never do).
 */
const MAX_EMPTY_KICKS = 16;

/**
 * The process-wide count of SIGBUS faults answered in guest memory, one int32
 * that native/sigbus.cc's handler increments: read with one Atomics.load per
 * batch; only when it moved does a runtime ask whose memory it was.
 */
const guestFaults = native.guestFaultCounter();

/** What a {@link DeviceRuntime} reports; the device worker posts it to the main thread. */
export interface RuntimeEvents {
  /** Ring `queue` stopped being served (once per break): DEVICE_BROKEN. */
  broken(queue: number, code: string, reason: string): void;
  /** A line for the log, e.g. the stack of a device model's exception. */
  log(level: LogLevel, message: string): void;
}

/**
 * A split virtqueue whose kicks the adaptive poller can hold off: while
 * `suppressed`, the device's own "notifications back on" at the end of a drain
 * leaves them off, so the driver does not kick a queue that is being polled.
 */
class PolledVirtqueue extends SplitVirtqueue {
  suppressed = false;

  override setNotification(enabled: boolean): void {
    super.setNotification(enabled && !this.suppressed);
  }
}

/** {@link PolledVirtqueue} for a packed ring (VIRTIO_F_RING_PACKED). */
class PolledPackedVirtqueue extends PackedVirtqueue {
  suppressed = false;

  override setNotification(enabled: boolean): void {
    super.setNotification(enabled && !this.suppressed);
  }
}

/** Options of a {@link DeviceRuntime}. */
export interface RuntimeOptions {
  /** `--poll-us`: microseconds to keep polling the avail rings after a batch; 0 never polls. */
  pollUs: number;
  /** Delivers engine completions that are ready without waiting for their eventfd. */
  reap?: () => void;
}

/**
 * Adaptive poll-after-kick. After a batch (a kick handled or an interrupt
 * raised) the worker keeps looking at the avail rings for up to `pollUs`
 * with kicks turned off, then turns them back on and looks once more before
 * it sleeps on the kick eventfds, so no request is left waiting for a kick
 * that never comes. Polling runs in slices on setImmediate: between two
 * slices the event loop polls its fds with a zero timeout, so completions,
 * kicks and control messages are never starved; each slice also reaps the
 * engine's ready completions directly.
 */
class AdaptivePoller {
  private readonly windowMs: number;
  private deadline = 0;
  private running = false;
  /** A slice is queued on setImmediate (never more than one). */
  private scheduled = false;
  private readonly slice = () => this.pollSlice();

  constructor(
    pollUs: number,
    private readonly vrings: readonly Vring[],
    private readonly kick: (index: number) => void,
    private readonly reap: (() => void) | undefined,
  ) {
    this.windowMs = pollUs / 1000;
  }

  /** A batch just ended: (re)open the polling window. */
  arm(): void {
    this.deadline = performance.now() + this.windowMs;
    if (this.running) return;
    this.running = true;
    this.suppress(true);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.slice);
  }

  private pollSlice(): void {
    this.scheduled = false;
    if (!this.running) return;
    this.reap?.();
    if (this.serveAvailable()) this.deadline = performance.now() + this.windowMs;
    if (this.running && performance.now() < this.deadline) this.schedule();
    else this.sleep();
  }

  /** Kicks every queue that has requests; true when any had. */
  private serveAvailable(): boolean {
    let found = false;
    for (const v of this.vrings) {
      // A broken ring is not served: its "pending" chains would hold the window open for ever.
      if (v.queue === null || !v.ready || !hasPending(v.queue)) continue;
      this.kick(v.index);
      found = true;
    }
    return found;
  }

  /** Kicks back on, then the device's drain looks once more (it re-checks after enabling). */
  private sleep(): void {
    this.running = false;
    this.suppress(false);
    for (const v of this.vrings) if (v.queue !== null) this.kick(v.index);
  }

  private suppress(on: boolean): void {
    for (const v of this.vrings) {
      const q = v.queue as PolledVirtqueue | PolledPackedVirtqueue | null;
      if (q === null) continue;
      q.suppressed = on;
      if (on) q.setNotification(false);
    }
  }

  /**
   * Ends polling at once (a queue starts, stops or the device closes). The
   * queues still wired get their kicks back, as when the window closes;
   * forget a stopping queue's ring first, so it is not drained again.
   */
  stop(): void {
    if (this.running) this.sleep();
  }
}

/** Whether `vq` has chains; a broken ring counts as "yes" so the device sees and reports it. */
function hasPending(vq: Virtqueue): boolean {
  try {
    return vq.pending() > 0;
  } catch {
    return true;
  }
}

/** One device inside a worker: its memory table and its rings. */
export class DeviceRuntime {
  private memory: GuestMemory | null = null;
  /** The dirty log the rings mark while the front end migrates (see dirty-log.ts), else null. */
  private dirtyLog: DirtyLog | null = null;
  /** The memory table took a SIGBUS: its rings stay broken until a new table arrives. */
  private memoryLost = false;
  /** {@link guestFaults} as this runtime last looked at it. */
  private faultsSeen = Atomics.load(guestFaults, 0);
  /** Why the device model is not trusted any more (it threw); null while it is. */
  private faultReason: string | null = null;
  /** Resolves when the model throws: whatever waits on the model (quiesce, close) stops waiting. */
  private readonly faulted: Promise<void>;
  private onFaulted: () => void = () => {};
  private readonly vrings: readonly Vring[];
  private readonly poller: AdaptivePoller | null;
  private readonly maxSegments: number;

  constructor(
    private readonly device: VirtioDeviceModel<unknown>,
    options: RuntimeOptions,
    private readonly events: RuntimeEvents,
  ) {
    // A chain may be split at region boundaries: allow a few more segments than descriptors.
    this.maxSegments = device.maxQueueSize + 16;
    this.faulted = new Promise((resolve) => {
      this.onFaulted = resolve;
    });
    this.vrings = createVrings(
      device.numQueues,
      (v) => this.notify(v),
      (v, code, reason) => this.ringBroken(v, code, reason),
    );
    const reap = options.reap;
    this.poller =
      options.pollUs > 0
        ? new AdaptivePoller(
            options.pollUs,
            this.vrings,
            (i) => this.kick(i),
            reap === undefined ? undefined : () => this.guard(reap),
          )
        : null;
    device.activate(this.vrings);
  }

  /** True once the device model threw: its rings are broken for the rest of the worker's life. */
  get isFaulted(): boolean {
    return this.faultReason !== null;
  }

  /**
   * The device's batch entry point: processes ring `index`, with the runtime
   * boundary around it. A throw breaks this device, never the thread.
   */
  private kick(index: number): void {
    try {
      this.device.kick(index);
    } catch (err) {
      this.fault(err);
    }
    this.checkGuestMemory();
  }

  /** Runs `fn` (a batch the device does not enter through kick) inside the same boundary. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.fault(err);
    }
  }

  /** Rings `vring`'s call eventfd (the guest's interrupt). */
  private notify(vring: Vring): void {
    if (vring.callFd >= 0) {
      try {
        native.eventfdWrite(vring.callFd, 1);
      } catch (err) {
        this.callFailed(vring, err);
      }
    }
    this.checkGuestMemory();
    // The driver answers an interrupt with new requests: watch for them.
    this.poller?.arm();
  }

  /**
   * A call fd write failed. 'retry' errnos (EAGAIN: the counter is at its
   * limit) lose nothing, an interrupt is pending; any other breaks the ring,
   * and the fd is never written again (the main thread still owns and closes it).
   */
  private callFailed(v: Vring, err: unknown): void {
    const code = (err as { code?: string }).code;
    if (classifyErrno(code) === 'retry') return;
    const fd = v.callFd;
    v.callFd = -1;
    v.markBroken(RingBreak.CALL_FD, `writing call fd ${fd} failed: ${describeError(err)}`);
  }

  /**
   * A ring broke (guest violation or host-side failure): signal its err fd,
   * report it once. A guest violation read from memory that a SIGBUS just
   * zeroed (an avail index "running ahead" to 0) is reported as what it is.
   */
  private ringBroken(v: Vring, code: string, reason: string): void {
    if (code !== RingBreak.GUEST_MEMORY && code !== RingBreak.DEVICE_FAULT) {
      // Breaks the other rings too when the memory is newly lost; this one is broken already.
      this.checkGuestMemory();
      if (this.memoryLost) {
        code = RingBreak.GUEST_MEMORY;
        reason = GUEST_MEMORY_SHRANK;
        v.brokenCode = code;
      }
    }
    if (v.errFd >= 0) {
      try {
        native.eventfdWrite(v.errFd, 1);
      } catch {
        // The err fd is only a courtesy to the front end: one that fails is dropped.
        v.errFd = -1;
      }
    }
    this.events.broken(v.index, code, reason);
  }

  /** Breaks every started ring of the device. */
  private breakAll(code: string, reason: string): void {
    for (const v of this.vrings) if (v.queue !== null) v.markBroken(code, reason);
  }

  /**
   * Once per batch: did a SIGBUS hit guest memory anywhere in the process
   * since the last look? Only then (rarely) ask whether it was this device's.
   */
  private checkGuestMemory(): void {
    // Atomics.load is sequentially consistent: it pairs with the handler's
    // release increment, made after the mapping's own count.
    const faults = Atomics.load(guestFaults, 0);
    if (faults === this.faultsSeen) return;
    this.faultsSeen = faults;
    if (this.memoryLost || this.memory === null || !memoryFaulted(this.memory)) return;
    this.memoryLost = true;
    this.breakAll(RingBreak.GUEST_MEMORY, GUEST_MEMORY_SHRANK);
  }

  /**
   * The device model threw out of a batch (a bug, or a guest trick nobody
   * caught): its state cannot be trusted, so every ring breaks, now and
   * whenever one is started again; the thread and the other devices go on.
   * DeviceEnv.fault of the device leads here too.
   */
  fault(err: unknown): void {
    if (this.faultReason === null) {
      const name = err instanceof Error ? `${err.name}: ` : '';
      this.faultReason = `the ${this.device.kind} device model threw ${name}${describeError(err)}`;
      this.events.log('error', (err as Error | null)?.stack ?? String(err));
      this.onFaulted();
    }
    this.breakAll(RingBreak.DEVICE_FAULT, this.faultReason);
  }

  /** `p`, or sooner if the model throws: a faulted model may never settle what it owes. */
  private unlessFaulted(p: Promise<void>): Promise<void> {
    return this.faultReason !== null ? Promise.resolve() : Promise.race([p, this.faulted]);
  }

  /** Carries out one command from the main thread. */
  async handle(cmd: DeviceCommand): Promise<unknown> {
    switch (cmd.op) {
      case 'memory':
        return this.setMemory(cmd.regions);
      case 'start-queue':
        return this.startQueue(cmd);
      case 'set-call':
        this.vring(cmd.index).callFd = cmd.fd;
        return 0;
      case 'set-err':
        this.vring(cmd.index).errFd = cmd.fd;
        return 0;
      case 'enable':
        return this.setEnabled(cmd.index, cmd.enabled);
      case 'stop-queue':
        return this.stopQueue(cmd.index);
      case 'read-config': {
        const out = new Uint8Array(cmd.size);
        this.device.readConfig(cmd.offset, out);
        return out;
      }
      case 'write-config':
        return this.device.writeConfig(cmd.offset, cmd.data);
      case 'command':
        if (this.device.command === undefined)
          throw new VhostRtError(
            'ERR_NO_COMMANDS',
            `a ${this.device.kind} device takes no commands`,
          );
        return this.device.command(cmd.command);
      case 'set-rt':
        // Scheduling is per thread: this moves the thread serving every device of this worker.
        return applyRtOptions(cmd.rt);
      case 'dirty-log':
        return this.setDirtyLog(cmd);
    }
  }

  /**
   * Switches dirty logging (SET_LOG_BASE, VHOST_F_LOG_ALL, the rings' LOG
   * flag): every ring marks the new log, or none, from its next batch on.
   */
  private setDirtyLog(cmd: DeviceCommand & { op: 'dirty-log' }): number {
    const outside = this.dirtyLog?.outside ?? 0;
    if (outside > 0)
      this.events.log('warn', `${outside} dirty-log mark(s) fell beyond the front end's log`);
    const s = cmd.log;
    this.dirtyLog = s === null ? null : new DirtyLog(s.buffer, s.offset, s.size, this.maxSegments);
    if (this.memory !== null) this.dirtyLog?.setMemory(this.memory);
    for (const v of this.vrings) {
      v.dirtyLog = this.dirtyLog;
      v.logUsedAddr = cmd.usedLogAddrs[v.index] ?? -1;
    }
    return 0;
  }

  private setMemory(regions: MemoryRegion[]): number {
    const memory = new GuestMemory(regions);
    // --mlock: fault guest RAM in and pin it now, on the control path, so no request ever waits on it.
    if (guestMemoryLockRequested()) lockGuestMemory(memory.buffers);
    this.memory = memory;
    // Counter first, then the mappings: a fault in between moves the counter and is looked at again.
    this.faultsSeen = Atomics.load(guestFaults, 0);
    // A table that keeps a region which already faulted is still lost.
    this.memoryLost = memoryFaulted(memory);
    for (const v of this.vrings) v.setMemory(memory);
    this.dirtyLog?.setMemory(memory);
    this.device.setMemory(memory);
    if (this.memoryLost) this.breakAll(RingBreak.GUEST_MEMORY, GUEST_MEMORY_SHRANK);
    return 0;
  }

  private startQueue(cmd: DeviceCommand & { op: 'start-queue' }): number {
    const v = this.vring(cmd.index);
    if (this.memory === null)
      throw new VhostRtError('ERR_NO_MEMORY', 'ring started before any memory table');
    const vq = this.newQueue(cmd);
    // Before the ring runs: what the driver negotiated decides how requests are handled.
    this.device.setFeatures?.(cmd.features ?? 0n);
    v.callFd = cmd.callFd;
    v.errFd = cmd.errFd;
    this.unwatchKick(v);
    this.poller?.stop();
    v.start(vq);
    this.watchKick(v, cmd.kickFd);
    // A device that threw, or memory that is gone, breaks a new ring at once.
    if (this.faultReason !== null) v.markBroken(RingBreak.DEVICE_FAULT, this.faultReason);
    else if (this.memoryLost) v.markBroken(RingBreak.GUEST_MEMORY, GUEST_MEMORY_SHRANK);
    this.checkGuestMemory();
    return 0;
  }

  /**
   * The ring of a start-queue command, positioned where the front end said.
   * A packed ring's base carries both positions; it keeps no inflight
   * region (the backend offers INFLIGHT_SHMFD only without RING_PACKED).
   */
  private newQueue(cmd: DeviceCommand & { op: 'start-queue' }): Virtqueue {
    const memory = this.memory as GuestMemory;
    if (cmd.config.packed === true) {
      const pq = new PolledPackedVirtqueue(memory, cmd.config, this.maxSegments);
      pq.vringBase = cmd.lastAvailIdx;
      return pq;
    }
    const vq = new PolledVirtqueue(memory, cmd.config, this.maxSegments);
    vq.lastAvailIdx = cmd.lastAvailIdx;
    vq.usedIdx = readUsedIdx(memory, cmd.config.usedRing);
    if (cmd.inflight !== null) this.attachInflight(cmd.index, vq, cmd.inflight);
    return vq;
  }

  /**
   * Tracks the ring's requests in its inflight region; what a previous back
   * end left in flight is resubmitted first (inflight.ts). Logged when anything is.
   */
  private attachInflight(index: number, vq: SplitVirtqueue, area: InflightArea): void {
    const r = vq.attachInflight(new InflightQueue(area));
    if (r.resubmit === 0 && r.reconciled === 0) return;
    this.events.log(
      'info',
      `queue ${index}: inflight region: resubmitting ${r.resubmit} request(s) in their original order` +
        `, resuming at avail index ${vq.lastAvailIdx} (last batch of ${r.reconciled} reconciled)`,
    );
  }

  private watchKick(v: Vring, kickFd: number): void {
    // Wake-ups in a row that brought no count (see MAX_EMPTY_KICKS).
    let empty = 0;
    const watcher = new native.FdWatcher(kickFd, (events) => {
      // events < 0: libuv reports an error (EPOLLERR) and has stopped the handle already.
      if (events < 0 || (events & POLL_DISCONNECT) !== 0) {
        const what = events < 0 ? `reports ${getSystemErrorName(events)}` : 'hung up';
        this.kickFailed(v, RingBreak.KICK_FD, `kick fd ${kickFd} ${what}`);
        return;
      }
      let count: number;
      try {
        // Reading resets the counter: any number of kicks since the last read is one batch.
        count = native.eventfdRead(kickFd);
      } catch (err) {
        this.kickFailed(
          v,
          RingBreak.KICK_FD,
          `reading kick fd ${kickFd} failed: ${describeError(err)}`,
        );
        return;
      }
      if (count === 0) {
        if (++empty >= MAX_EMPTY_KICKS)
          this.kickFailed(
            v,
            RingBreak.KICK_SPIN,
            `kick fd ${kickFd} stays readable without a count`,
          );
        return;
      }
      empty = 0;
      this.kick(v.index);
      this.poller?.arm();
    });
    watcher.start(POLL_READABLE);
    v.kickFd = kickFd;
    v.kick = watcher;
  }

  /** The kick fd is unusable: stop watching it (never spin on it) and break the ring. */
  private kickFailed(v: Vring, code: string, reason: string): void {
    this.unwatchKick(v);
    v.markBroken(code, reason);
  }

  private unwatchKick(v: Vring): void {
    v.kick?.close();
    v.kick = null;
    v.kickFd = -1;
  }

  private setEnabled(index: number, enabled: boolean): number {
    const v = this.vring(index);
    v.enabled = enabled;
    if (!enabled) return 0;
    // Requests the driver made while no back end was there (their kicks went to the front end
    // alone), and what a previous back end left in flight: handled now, not at the next kick,
    // which a driver waiting for them would never send.
    this.kick(index);
    // A previous back end killed after it published completions but before their interrupt
    // leaves a driver that waits for one request (a flush, say) waiting for ever: nothing new
    // comes to prompt another. A ring that has completed anything therefore gets one interrupt
    // as it is enabled; a driver that had it already finds nothing new (a spurious interrupt,
    // which virtio drivers ignore). Seen as a guest hung after a SIGKILL and restart.
    if ((v.queue?.usedIdx ?? 0) !== 0) this.notify(v);
    return 0;
  }

  private async stopQueue(index: number): Promise<number> {
    const v = this.vring(index);
    // Not ready any more: nothing new is popped (a poller's last look included); completions still land.
    v.enabled = false;
    this.unwatchKick(v);
    this.poller?.stop();
    await this.unlessFaulted(this.device.quiesce(index));
    const lastAvailIdx = v.stop();
    // The backend may close the call fd once the ring is stopped; forget it so a reused fd number is never signalled.
    v.callFd = -1;
    return lastAvailIdx;
  }

  /**
   * Stops watching kicks, completes in-flight requests and closes the
   * device; a device whose model threw is not waited for (see {@link isFaulted}).
   */
  async close(): Promise<void> {
    for (const v of this.vrings) this.unwatchKick(v);
    this.poller?.stop();
    await this.unlessFaulted(this.device.close());
  }

  private vring(index: number): Vring {
    try {
      return vringAt(this.vrings, index);
    } catch (err) {
      throw new VhostRtError('ERR_QUEUE_INDEX', (err as Error).message);
    }
  }
}

/** Whether a SIGBUS was answered in any mapping of `memory` (native/sigbus.cc counts per mapping). */
function memoryFaulted(memory: GuestMemory): boolean {
  for (const b of memory.buffers) if (native.guestFaults(b) > 0) return true;
  return false;
}

/** "EBADF (write: Bad file descriptor)", or the message. */
function describeError(err: unknown): string {
  const e = err as { code?: string; message?: string } | null;
  const message = e?.message ?? String(err);
  return e?.code !== undefined && e.code !== 'ESYSTEM' && !message.includes(e.code)
    ? `${e.code} (${message})`
    : message;
}

/** used.idx is where the driver expects us to continue: read it from the ring itself (§2.7.8). */
function readUsedIdx(memory: GuestMemory, usedRing: number): number {
  const idx = new Uint8Array(2);
  memory.read(usedRing + 2, idx);
  return idx[0] | (idx[1] << 8);
}
