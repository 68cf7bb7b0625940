/**
 * The part of every device worker that is not the device: it answers the
 * control plane's commands, owns the kick watchers (on this thread's own libuv
 * loop, so a kick never touches the main thread) and rings the call eventfds.
 */
import { parentPort } from 'node:worker_threads';
import { VhostRtError } from '../errors.js';
import { type FdWatcher, native, POLL_READABLE } from '../native.js';
import { guestMemoryLockRequested, lockGuestMemory } from '../rt/index.js';
import {
  GuestMemory,
  type MemoryRegion,
  type SplitQueueConfig,
  SplitVirtqueue,
} from '../virtio/index.js';
import type { DeviceCommand, WorkerCommand, WorkerReply } from './messages.js';
import type { QueueDevice } from './queue-device.js';

/** Posts a message to the main thread; a worker never writes to a file or terminal itself. */
export function post(message: WorkerReply): void {
  parentPort?.postMessage(message);
}

/**
 * Forwards warnings with a budget, so that a hostile guest cannot turn the log
 * into a denial of service: at most `perSecond` lines, then a count.
 */
export function rateLimitedWarn(perSecond = 10): (message: string) => void {
  let windowStart = 0;
  let sent = 0;
  let suppressed = 0;
  return (message) => {
    const now = Date.now();
    if (now - windowStart >= 1000) {
      if (suppressed > 0)
        post({ kind: 'log', level: 'warn', message: `${suppressed} similar warnings suppressed` });
      windowStart = now;
      sent = 0;
      suppressed = 0;
    }
    if (sent++ < perSecond) post({ kind: 'log', level: 'warn', message });
    else suppressed++;
  };
}

interface QueueWiring {
  kick: FdWatcher | null;
  callFd: number;
  vq: PolledVirtqueue | null;
  enabled: boolean;
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
    private readonly wiring: readonly QueueWiring[],
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
    for (let i = 0; i < this.wiring.length; i++) {
      const vq = this.wiring[i].vq;
      if (vq === null || !this.wiring[i].enabled || !hasPending(vq)) continue;
      this.kick(i);
      found = true;
    }
    return found;
  }

  /** Kicks back on, then the device's drain looks once more (it re-checks after enabling). */
  private sleep(): void {
    this.running = false;
    this.suppress(false);
    for (let i = 0; i < this.wiring.length; i++) if (this.wiring[i].vq !== null) this.kick(i);
  }

  private suppress(on: boolean): void {
    for (const w of this.wiring) {
      if (w.vq === null) continue;
      w.vq.suppressed = on;
      if (on) w.vq.setNotification(false);
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

/** One device inside a worker: its memory table, kick watchers and call fds. */
export class DeviceRuntime {
  private memory: GuestMemory | null = null;
  private readonly wiring: QueueWiring[];
  private readonly poller: AdaptivePoller | null;

  constructor(
    private readonly device: QueueDevice,
    numQueues: number,
    private readonly maxSegments: number,
    options: RuntimeOptions = { pollUs: 0 },
  ) {
    this.wiring = Array.from({ length: numQueues }, () => ({
      kick: null,
      callFd: -1,
      vq: null,
      enabled: false,
    }));
    this.poller =
      options.pollUs > 0
        ? new AdaptivePoller(options.pollUs, this.wiring, (i) => device.kick(i), options.reap)
        : null;
  }

  /** Rings queue `index`'s call eventfd (the guest's interrupt). */
  notify(index: number): void {
    const fd = this.wiring[index]?.callFd ?? -1;
    if (fd >= 0) native.eventfdWrite(fd, 1);
    // The driver answers an interrupt with new requests: watch for them.
    this.poller?.arm();
  }

  /** Carries out one command from the main thread. */
  async handle(cmd: DeviceCommand): Promise<number> {
    switch (cmd.op) {
      case 'memory':
        return this.setMemory(cmd.regions);
      case 'start-queue':
        return this.startQueue(cmd);
      case 'set-call':
        this.queue(cmd.index).callFd = cmd.fd;
        return 0;
      case 'enable':
        this.queue(cmd.index).enabled = cmd.enabled;
        this.device.setEnabled(cmd.index, cmd.enabled);
        return 0;
      case 'stop-queue':
        return this.stopQueue(cmd.index);
    }
  }

  private setMemory(regions: MemoryRegion[]): number {
    const memory = new GuestMemory(regions);
    // --mlock: fault guest RAM in and pin it now, on the control path, so no request ever waits on it.
    if (guestMemoryLockRequested()) lockGuestMemory(memory.buffers);
    this.memory = memory;
    this.device.setMemory(memory);
    return 0;
  }

  private startQueue(cmd: DeviceCommand & { op: 'start-queue' }): number {
    const w = this.queue(cmd.index);
    if (this.memory === null)
      throw new VhostRtError('ERR_NO_MEMORY', 'ring started before any memory table');
    const vq = this.newQueue(this.memory, cmd.config);
    vq.lastAvailIdx = cmd.lastAvailIdx;
    vq.usedIdx = readUsedIdx(this.memory, cmd.config.usedRing);
    w.callFd = cmd.callFd;
    w.kick?.close();
    w.vq = null;
    this.poller?.stop();
    w.vq = vq;
    this.device.startQueue(cmd.index, vq);
    const kickFd = cmd.kickFd;
    w.kick = new native.FdWatcher(kickFd, () => {
      // Reading resets the counter: any number of kicks since the last read
      // is one batch.
      native.eventfdRead(kickFd);
      this.device.kick(cmd.index);
      this.poller?.arm();
    });
    w.kick.start(POLL_READABLE);
    return 0;
  }

  /** A plain split ring, or one the poller can silence when `--poll-us` is on. */
  private newQueue(memory: GuestMemory, config: SplitQueueConfig): PolledVirtqueue {
    return new PolledVirtqueue(memory, config, this.maxSegments);
  }

  private async stopQueue(index: number): Promise<number> {
    const w = this.queue(index);
    w.kick?.close();
    w.kick = null;
    w.vq = null;
    this.poller?.stop();
    const lastAvailIdx = await this.device.stopQueue(index);
    // The backend may close the call fd once the ring is stopped; forget it so a reused fd number is never signalled.
    w.callFd = -1;
    return lastAvailIdx;
  }

  /** Stops watching kicks, completes in-flight requests and closes the device. */
  async close(): Promise<void> {
    for (const w of this.wiring) {
      w.kick?.close();
      w.kick = null;
      w.vq = null;
    }
    this.poller?.stop();
    await this.device.close();
  }

  private queue(index: number): QueueWiring {
    const w = this.wiring[index];
    if (w === undefined) {
      throw new VhostRtError(
        'ERR_QUEUE_INDEX',
        `queue index ${index} is outside 0..${this.wiring.length - 1}`,
      );
    }
    return w;
  }
}

/**
 * Serves the main thread's commands for the devices of this worker until it
 * asks the thread to shut down. Commands run one at a time per device as the
 * main thread awaits each; kicks and completions interleave freely.
 */
export function serveDevices(devices: readonly DeviceRuntime[]): void {
  let closing = false;
  const run = async (cmd: WorkerCommand): Promise<number> => {
    if (cmd.op === 'shutdown') {
      if (closing) return 0;
      closing = true;
      for (const d of devices) await d.close();
      return 0;
    }
    const device = devices[cmd.device];
    if (device === undefined)
      throw new VhostRtError('ERR_DEVICE_INDEX', `no device ${cmd.device} in this worker`);
    return device.handle(cmd);
  };
  parentPort?.on('message', (cmd: WorkerCommand) => {
    run(cmd).then(
      (value) => {
        post({ kind: 'reply', id: cmd.id, ok: true, value });
        if (cmd.op === 'shutdown') parentPort?.close();
      },
      (err: unknown) => post(errorReply(cmd.id, err)),
    );
  });
}

/** used.idx is where the driver expects us to continue: read it from the ring itself (§2.7.8). */
function readUsedIdx(memory: GuestMemory, usedRing: number): number {
  const idx = new Uint8Array(2);
  memory.read(usedRing + 2, idx);
  return idx[0] | (idx[1] << 8);
}

function errorReply(id: number, err: unknown): WorkerReply {
  const code = (err as { code?: string }).code ?? 'ERR_WORKER';
  const message = err instanceof Error ? err.message : String(err);
  return { kind: 'reply', id, ok: false, code, message };
}
