/**
 * The bounded buffer where host-to-guest input waits until the guest (or
 * QEMU's UART) can take it. Fixed size, allocated once; what does not fit is
 * refused and the caller counts it, so input is never lost silently.
 */
export class InputBuffer {
  private readonly data: Uint8Array;
  private head = 0;
  private used = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`input buffer capacity ${capacity} must be a positive integer`);
    }
    this.data = new Uint8Array(capacity);
  }

  /** Bytes waiting. */
  get length(): number {
    return this.used;
  }

  /** Appends what fits of `src[off, off+len)`; returns how many bytes were taken. */
  push(src: Uint8Array, off: number, len: number): number {
    const n = Math.min(len, this.capacity - this.used);
    let tail = (this.head + this.used) % this.capacity;
    for (let i = 0; i < n; i++) {
      this.data[tail] = src[off + i];
      tail = tail + 1 === this.capacity ? 0 : tail + 1;
    }
    this.used += n;
    return n;
  }

  /** The waiting bytes that are contiguous from the oldest one: `data[start, start+length)`. */
  get contiguousStart(): number {
    return this.head;
  }

  get contiguousLength(): number {
    return Math.min(this.used, this.capacity - this.head);
  }

  /** The backing store, for zero-copy hand-off of a contiguous run. */
  get bytes(): Uint8Array {
    return this.data;
  }

  /** Forgets the `n` oldest bytes (they were delivered). */
  consume(n: number): void {
    const k = Math.min(n, this.used);
    this.head = (this.head + k) % this.capacity;
    this.used -= k;
  }

  /** Drops everything waiting; returns how many bytes that was. */
  clear(): number {
    const n = this.used;
    this.head = 0;
    this.used = 0;
    return n;
  }
}
