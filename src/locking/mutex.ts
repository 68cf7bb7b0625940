/**
 * Locks over shared memory.
 *
 * ┌─ LOCK ORDER ─ every device follows this; a change here is a change to all ─────────────┐
 * │ 1. A per-device lock (device state: config space, features, memory table, queue set)    │
 * │    is taken BEFORE any per-queue lock (one vring's indexes, call fd, inflight state).   │
 * │ 2. Never hold two queue locks at once. Work that spans queues takes them one at a time  │
 * │    (lock q0, work, unlock q0, lock q1, ...), or takes the device lock alone.            │
 * │ 3. Never take a device lock while holding a queue lock, and never two device locks.     │
 * │ 4. No lock is held across an `await`, a blocking system call, a log call, or a callback │
 * │    into code that might lock: these locks are synchronous futexes, and a thread that    │
 * │    yields while holding one makes every other thread wait on its scheduling.            │
 * │ 5. The main thread holds a lock only for O(1) work (copying a few fields in or out). It │
 * │    runs the control plane; Atomics.wait there blocks the event loop, and a main thread  │
 * │    holding a lock for long would delay a real-time device worker (priority inversion).  │
 * │ 6. SpscByteRing and StatCounters are lock-free and never block; they may be used with   │
 * │    or without a lock held, and are never a reason to take one.                          │
 * └──────────────────────────────────────────────────────────────────────────────────────────┘
 */
import { LockError } from './errors.js';
import { MUTEX_CONTENDED, MUTEX_LOCKED, MUTEX_UNLOCKED } from './layout.js';

/**
 * What devices program against, so a queue owned by one thread can use a
 * {@link NoopLock} and a queue shared between threads a {@link Mutex}
 * without other changes (STYLE §8).
 */
export interface Lock {
  /** Blocks until the lock is held by the caller. */
  lock(): void;
  /** Takes the lock if it is free; returns whether it was taken. Never blocks. */
  tryLock(): boolean;
  /** Releases the lock. Throws {@link LockError} `LOCK_NOT_HELD` when it is not held. */
  unlock(): void;
  /** Runs `fn` with the lock held and releases it however `fn` ends. `fn` must be synchronous. */
  withLock<T>(fn: () => T): T;
}

/** Options of a {@link Mutex}. */
export interface MutexOptions {
  /**
   * Failed compare-exchanges to spin through before sleeping in the kernel.
   * Spinning wins when holders do O(1) work on another core; 0 turns the
   * fast path off (sleep at once), e.g. when every thread shares one CPU.
   * Default {@link DEFAULT_SPIN_LIMIT}.
   */
  spinLimit?: number;
}

/** Default {@link MutexOptions.spinLimit}: a few hundred nanoseconds of spinning. */
export const DEFAULT_SPIN_LIMIT = 64;

/**
 * The classic three-state futex mutex (Drepper, "Futexes Are Tricky", mutex 2)
 * over one Int32 slot of a SharedArrayBuffer: 0 unlocked, 1 locked, 2 locked
 * with possible sleepers. The uncontended path is one compareExchange to lock
 * and one exchange to unlock; Atomics.notify is called only when someone may
 * be asleep.
 *
 * Atomics.wait is allowed on Node's main thread, but see rule 5 of the lock
 * order above: the main thread must only ever hold a lock for O(1) work.
 *
 * The slot does not record an owner: `unlock()` detects an unlocked mutex but
 * cannot tell which thread holds a locked one, and re-locking a mutex the
 * caller already holds deadlocks, as with a plain futex.
 */
export class Mutex implements Lock {
  readonly #state: Int32Array;
  readonly #index: number;
  readonly #spinLimit: number;

  /**
   * Uses `state[index]` as the lock word. The slot must start at
   * {@link MUTEX_UNLOCKED} (zero-filled SharedArrayBuffers do). Another thread
   * builds its own Mutex over the same buffer and index.
   */
  constructor(state: Int32Array, index = 0, options: MutexOptions = {}) {
    if (!(state.buffer instanceof SharedArrayBuffer)) {
      throw new TypeError('Mutex: state must be an Int32Array over a SharedArrayBuffer');
    }
    if (!Number.isInteger(index) || index < 0 || index >= state.length) {
      throw new RangeError(`Mutex: index ${index} is outside 0..${state.length - 1}`);
    }
    const spinLimit = options.spinLimit ?? DEFAULT_SPIN_LIMIT;
    if (!Number.isInteger(spinLimit) || spinLimit < 0) {
      throw new RangeError(`Mutex: spinLimit ${spinLimit} must be an integer >= 0`);
    }
    this.#state = state;
    this.#index = index;
    this.#spinLimit = spinLimit;
  }

  /** A mutex in a fresh 4-byte SharedArrayBuffer; post `.state` to share it. */
  static create(options?: MutexOptions): Mutex {
    return new Mutex(
      new Int32Array(new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT)),
      0,
      options,
    );
  }

  /** The Int32Array holding the lock word (post it, with {@link index}, to another thread). */
  get state(): Int32Array {
    return this.#state;
  }

  /** Index of the lock word in {@link state}. */
  get index(): number {
    return this.#index;
  }

  tryLock(): boolean {
    // Acquire: a successful 0→1 compareExchange is sequentially consistent, so
    // everything the previous holder wrote before its releasing exchange in
    // unlock() is visible to us after this returns true.
    return Atomics.compareExchange(this.#state, this.#index, MUTEX_UNLOCKED, MUTEX_LOCKED) === 0;
  }

  lock(): void {
    if (this.tryLock()) return;
    if (this.#spin()) return;
    this.#lockContended();
  }

  unlock(): void {
    // Release: the exchange orders every write made under the lock before the
    // store of 0, which the next locker's compareExchange/exchange reads.
    const previous = Atomics.exchange(this.#state, this.#index, MUTEX_UNLOCKED);
    if (previous === MUTEX_UNLOCKED) {
      throw new LockError('LOCK_NOT_HELD', 'Mutex.unlock: the mutex is not locked');
    }
    // Only state 2 can have sleepers; wake one. It re-marks the word 2 when it
    // takes the lock, so any other sleeper is woken by its unlock in turn.
    if (previous === MUTEX_CONTENDED) Atomics.notify(this.#state, this.#index, 1);
  }

  withLock<T>(fn: () => T): T {
    this.lock();
    try {
      return fn();
    } finally {
      this.unlock();
    }
  }

  /** Bounded spin on the uncontended transition while the word says nobody sleeps. */
  #spin(): boolean {
    for (let i = 0; i < this.#spinLimit; i++) {
      // Plain-order read would do, but Atomics.load keeps the spin honest:
      // it cannot be hoisted out of the loop, and it sees the holder's unlock.
      const seen = Atomics.load(this.#state, this.#index);
      if (seen === MUTEX_CONTENDED) return false; // others already sleep: queue up with them
      if (seen === MUTEX_UNLOCKED && this.tryLock()) return true;
    }
    return false;
  }

  /** Slow path: mark the word contended and sleep until an unlock hands it over. */
  #lockContended(): void {
    // Exchange to 2 (not a CAS to 1) because once anyone has slept we cannot
    // know whether others still sleep: whoever takes the lock from here on
    // keeps it marked 2 so its unlock notifies. Acquire ordering as in tryLock.
    let previous = Atomics.exchange(this.#state, this.#index, MUTEX_CONTENDED);
    while (previous !== MUTEX_UNLOCKED) {
      // Sleeps only while the word is still 2: an unlock between our exchange
      // and this wait changed it to 0, and wait returns 'not-equal' at once.
      Atomics.wait(this.#state, this.#index, MUTEX_CONTENDED);
      previous = Atomics.exchange(this.#state, this.#index, MUTEX_CONTENDED);
    }
  }
}

/**
 * A {@link Lock} for state that one thread owns alone (a queue handled
 * entirely by its device worker): no atomics, no shared memory. It still
 * tracks whether it is held, so code that would deadlock or unlock twice
 * with a real {@link Mutex} fails loudly here too.
 */
export class NoopLock implements Lock {
  #held = false;

  lock(): void {
    if (this.#held) {
      throw new LockError('LOCK_WOULD_DEADLOCK', 'NoopLock.lock: already held by its only owner');
    }
    this.#held = true;
  }

  tryLock(): boolean {
    if (this.#held) return false;
    this.#held = true;
    return true;
  }

  unlock(): void {
    if (!this.#held) throw new LockError('LOCK_NOT_HELD', 'NoopLock.unlock: the lock is not held');
    this.#held = false;
  }

  withLock<T>(fn: () => T): T {
    this.lock();
    try {
      return fn();
    } finally {
      this.unlock();
    }
  }
}
