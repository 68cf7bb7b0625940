/**
 * One virtqueue as the device's thread keeps it, in one record (as rust-vmm's
 * `VringState`): the split ring once started, whether the driver enabled it,
 * whether the guest broke it, the used entries of the batch in progress, and
 * the kick and call file descriptors that wire it to the driver. The worker
 * runtime owns one per queue and hands them to the device model
 * (`activate`); an embedding VMM creates them itself with its own `signal`.
 *
 * Batching (DESIGN rule 4): a device adds used entries with {@link addUsed}
 * as requests finish and calls {@link flush} once at the end of a batch,
 * which publishes used.idx once and raises at most one interrupt, only when
 * the driver asked for it (EVENT_IDX / NO_INTERRUPT).
 *
 * Breaking: a ring stops being served when the guest violates the ring
 * protocol ({@link fail}) or when the host finds its wiring unusable — a kick
 * or call fd that fails, guest memory that vanished ({@link markBroken}). Each
 * break is reported once, through the `onBroken` hook its host gave, and
 * lasts until the ring is started again.
 */
import type { DirtyLog } from './dirty-log.js';
import { QueueBrokenError } from './errors.js';
import type { GuestMemory } from './guest-memory.js';
import type { Virtqueue } from './virtqueue.js';

/** Something the runtime closes when the ring stops (the kick watcher). */
export interface Closable {
  close(): void;
}

/** Raises queue `vring.index`'s interrupt (writes its call eventfd, or what the VMM does instead). */
export type SignalUsed = (vring: Vring) => void;

/**
 * Told once per break that `vring` stopped being served: `code` is stable
 * (a QueueErrorCode, or the host's own: ERR_CALL_FD, ...), `reason` says what happened.
 */
export type RingBroken = (vring: Vring, code: string, reason: string) => void;

/**
 * Queue `index` on its device's thread: the started split ring, enable/broken
 * state, kick/call fds and the open batch; see the module comment.
 */
export class Vring {
  /** The started ring (split or packed), or null while stopped. */
  queue: Virtqueue | null = null;
  /** The driver enabled the ring (SET_VRING_ENABLE, or started without protocol features). */
  enabled = false;
  /**
   * The ring is no longer served until restarted: the guest broke it (a
   * QueueBrokenError) or its host found its fds or memory unusable. Set through
   * {@link markBroken}.
   */
  broken = false;
  /** Why the ring broke (the code given to {@link markBroken}); null while it is not broken. */
  brokenCode: string | null = null;
  /** Call eventfd (the guest's interrupt), -1 when the driver wants none. */
  callFd = -1;
  /** Kick eventfd, -1 while stopped. */
  kickFd = -1;
  /** Error eventfd (vhost-user SET_VRING_ERR): signalled when the ring breaks; -1 when none. */
  errFd = -1;
  /** Watches {@link kickFd} on the worker's loop; closed when the ring stops. */
  kick: Closable | null = null;
  /**
   * The dirty log to mark before used.idx is published (see dirty-log.ts),
   * or null while logging is off: the one test per batch logging costs then.
   * Set by the host (the worker runtime on SET_LOG_BASE / VHOST_F_LOG_ALL).
   */
  dirtyLog: DirtyLog | null = null;
  /**
   * Guest-physical address at which the used ring's writes are logged
   * (SET_VRING_ADDR's log_guest_addr with VHOST_VRING_F_LOG), -1 when not.
   */
  logUsedAddr = -1;
  /**
   * The device's used length does not say where in the writable part it
   * wrote (blk: the status byte is the last writable byte; the control queue
   * of net: the ack byte): the dirty log marks the whole writable part of
   * each returned chain instead of its first `len` bytes.
   */
  logsWholeWritablePart = false;
  /** Used entries were added since the last {@link flush}. */
  private batchOpen = false;
  /** used.idx as last published: the batch's entries are `[publishedUsed, queue.usedIdx)`. */
  private publishedUsed = 0;

  /**
   * @param signal raises the interrupt; the runtime's writes {@link callFd}.
   * @param onBroken reports each break (the runtime's raises DEVICE_BROKEN); without it
   *   {@link fail} warns through the device's own `warn`.
   */
  constructor(
    readonly index: number,
    private readonly signal: SignalUsed,
    private readonly onBroken: RingBroken | null = null,
  ) {}

  /** Started, enabled and not broken: the device may pop and complete chains. */
  get ready(): boolean {
    return this.queue !== null && this.enabled && !this.broken;
  }

  /** (Re)starts the ring on `queue`: a restarted ring is served again even if the guest broke the old one. */
  start(queue: Virtqueue): void {
    this.queue = queue;
    this.broken = false;
    this.brokenCode = null;
    this.batchOpen = false;
    this.publishedUsed = queue.usedIdx;
  }

  /**
   * Forgets the ring; returns the ring base to hand back (GET_VRING_BASE:
   * the next avail index; a packed ring's also carries wrap counters and
   * the used position). While logging, every area the device writes is
   * marked whole first, as the front end's last pass follows this reply:
   * the used ring (split) or device area (packed), whose flags and event
   * fields were written without a batch, and a packed ring's descriptor
   * ring, where the used elements go. A batch marks the ring before it
   * stores the flags (split: used.idx) that publish it, so a front end
   * that read and cleared the bitmap between the two would otherwise miss
   * that last store: the split ring's is in its used ring, marked here.
   */
  stop(): number {
    const q = this.queue;
    if (q !== null && this.dirtyLog !== null && this.logUsedAddr >= 0)
      q.logRingAreas(this.dirtyLog, this.logUsedAddr);
    const last = this.queue?.vringBase ?? 0;
    this.queue = null;
    this.batchOpen = false;
    return last;
  }

  /** Gives the started ring a new memory table (re-validates its addresses). */
  setMemory(memory: GuestMemory): void {
    this.queue?.setMemory(memory);
  }

  /** Returns chain `head` with `len` bytes written; visible to the driver at the next {@link flush}. */
  addUsed(head: number, len: number): void {
    if (this.queue === null) return;
    this.queue.addUsed(head, len);
    this.batchOpen = true;
  }

  /**
   * Used elements were written straight into the started queue (a native
   * batch loop, SplitVirtqueue.advanceBurst): the next {@link flush}
   * publishes them like those of {@link addUsed}.
   */
  addedUsed(): void {
    if (this.queue !== null) this.batchOpen = true;
  }

  /**
   * Ends a batch: publishes every used entry added since the last flush
   * (one used.idx store) and interrupts the driver if it asked to be told.
   * Returns true when it raised the interrupt.
   */
  flush(): boolean {
    const q = this.queue;
    if (!this.batchOpen || q === null) return false;
    this.batchOpen = false;
    // Logging on: mark what the batch wrote before used.idx exposes it.
    if (this.dirtyLog !== null)
      q.logBatch(this.dirtyLog, this.publishedUsed, this.logUsedAddr, this.logsWholeWritablePart);
    q.publishUsed();
    this.publishedUsed = q.usedIdx;
    if (!q.needsInterrupt()) return false;
    this.signal(this);
    return true;
  }

  /**
   * Stops serving the ring if `err` says the guest broke it, reported once
   * (to `onBroken`, or through `warn` when the host gave none); anything else
   * is a bug of ours and is rethrown.
   */
  fail(err: unknown, warn: (message: string) => void): void {
    if (!(err instanceof QueueBrokenError)) throw err;
    if (this.markBroken(err.code, err.message) && this.onBroken === null)
      warn(`queue ${this.index} stopped: ${err.message} (${err.code})`);
  }

  /**
   * Stops serving the ring for `reason`. Returns true on the first break
   * since the ring started (then `onBroken` is told); false if it was broken already.
   */
  markBroken(code: string, reason: string): boolean {
    if (this.broken) return false;
    this.broken = true;
    this.brokenCode = code;
    this.onBroken?.(this, code, reason);
    return true;
  }
}

/** `count` stopped rings signalled through `signal`, their breaks reported to `onBroken`. */
export function createVrings(
  count: number,
  signal: SignalUsed,
  onBroken: RingBroken | null = null,
): Vring[] {
  return Array.from({ length: count }, (_, i) => new Vring(i, signal, onBroken));
}

/**
 * The first `count` rings of `vrings`, for a device model's `activate`: a
 * RangeError when the transport handed over fewer rings than the device has queues.
 */
export function takeVrings(vrings: readonly Vring[], count: number): readonly Vring[] {
  if (vrings.length < count)
    throw new RangeError(`the device has ${count} queues but was given ${vrings.length} rings`);
  return vrings.slice(0, count);
}

/** Ring `index` of `vrings`, or a RangeError naming the valid range. */
export function vringAt(vrings: readonly Vring[], index: number): Vring {
  const v = vrings[index];
  if (v === undefined)
    throw new RangeError(`queue index ${index} is outside 0..${vrings.length - 1}`);
  return v;
}
