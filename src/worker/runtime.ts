/**
 * The part of every device worker that is not the device: it owns the
 * device's {@link Vring}s — kick watchers on this thread's own libuv loop (so
 * a kick never touches the main thread) and call eventfds — carries out the
 * main thread's commands, and polls adaptively after a batch when asked.
 */
import type { VirtioDeviceModel } from '../devices/index.js';
import { VhostRtError } from '../errors.js';
import { native, POLL_READABLE } from '../native.js';
import { guestMemoryLockRequested, lockGuestMemory } from '../rt/index.js';
import {
  createVrings,
  GuestMemory,
  type MemoryRegion,
  SplitVirtqueue,
  type Vring,
  vringAt,
} from '../virtio/index.js';
import type { DeviceCommand } from './messages.js';

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
      if (v.queue === null || !v.enabled || !hasPending(v.queue)) continue;
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
      const q = v.queue as PolledVirtqueue | null;
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
function hasPending(vq: SplitVirtqueue): boolean {
  try {
    return vq.pending() > 0;
  } catch {
    return true;
  }
}

/** One device inside a worker: its memory table and its rings. */
export class DeviceRuntime {
  private memory: GuestMemory | null = null;
  private readonly vrings: readonly Vring[];
  private readonly poller: AdaptivePoller | null;
  private readonly maxSegments: number;

  constructor(
    private readonly device: VirtioDeviceModel<unknown>,
    options: RuntimeOptions = { pollUs: 0 },
  ) {
    // A chain may be split at region boundaries: allow a few more segments than descriptors.
    this.maxSegments = device.maxQueueSize + 16;
    this.vrings = createVrings(device.numQueues, (v) => this.notify(v));
    this.poller =
      options.pollUs > 0
        ? new AdaptivePoller(options.pollUs, this.vrings, (i) => device.kick(i), options.reap)
        : null;
    device.activate(this.vrings);
  }

  /** Rings `vring`'s call eventfd (the guest's interrupt). */
  private notify(vring: Vring): void {
    if (vring.callFd >= 0) native.eventfdWrite(vring.callFd, 1);
    // The driver answers an interrupt with new requests: watch for them.
    this.poller?.arm();
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
    }
  }

  private setMemory(regions: MemoryRegion[]): number {
    const memory = new GuestMemory(regions);
    // --mlock: fault guest RAM in and pin it now, on the control path, so no request ever waits on it.
    if (guestMemoryLockRequested()) lockGuestMemory(memory.buffers);
    this.memory = memory;
    for (const v of this.vrings) v.setMemory(memory);
    this.device.setMemory(memory);
    return 0;
  }

  private startQueue(cmd: DeviceCommand & { op: 'start-queue' }): number {
    const v = this.vring(cmd.index);
    if (this.memory === null)
      throw new VhostRtError('ERR_NO_MEMORY', 'ring started before any memory table');
    const vq = new PolledVirtqueue(this.memory, cmd.config, this.maxSegments);
    vq.lastAvailIdx = cmd.lastAvailIdx;
    vq.usedIdx = readUsedIdx(this.memory, cmd.config.usedRing);
    v.callFd = cmd.callFd;
    this.unwatchKick(v);
    this.poller?.stop();
    v.start(vq);
    this.watchKick(v, cmd.kickFd);
    return 0;
  }

  private watchKick(v: Vring, kickFd: number): void {
    const watcher = new native.FdWatcher(kickFd, () => {
      // Reading resets the counter: any number of kicks since the last read is one batch.
      native.eventfdRead(kickFd);
      this.device.kick(v.index);
      this.poller?.arm();
    });
    watcher.start(POLL_READABLE);
    v.kickFd = kickFd;
    v.kick = watcher;
  }

  private unwatchKick(v: Vring): void {
    v.kick?.close();
    v.kick = null;
    v.kickFd = -1;
  }

  private setEnabled(index: number, enabled: boolean): number {
    const v = this.vring(index);
    v.enabled = enabled;
    if (enabled) this.device.kick(index);
    return 0;
  }

  private async stopQueue(index: number): Promise<number> {
    const v = this.vring(index);
    // Not ready any more: nothing new is popped (a poller's last look included); completions still land.
    v.enabled = false;
    this.unwatchKick(v);
    this.poller?.stop();
    await this.device.quiesce(index);
    const lastAvailIdx = v.stop();
    // The backend may close the call fd once the ring is stopped; forget it so a reused fd number is never signalled.
    v.callFd = -1;
    return lastAvailIdx;
  }

  /** Stops watching kicks, completes in-flight requests and closes the device. */
  async close(): Promise<void> {
    for (const v of this.vrings) this.unwatchKick(v);
    this.poller?.stop();
    await this.device.close();
  }

  private vring(index: number): Vring {
    try {
      return vringAt(this.vrings, index);
    } catch (err) {
      throw new VhostRtError('ERR_QUEUE_INDEX', (err as Error).message);
    }
  }
}

/** used.idx is where the driver expects us to continue: read it from the ring itself (§2.7.8). */
function readUsedIdx(memory: GuestMemory, usedRing: number): number {
  const idx = new Uint8Array(2);
  memory.read(usedRing + 2, idx);
  return idx[0] | (idx[1] << 8);
}
