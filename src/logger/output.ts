/**
 * The producer end of a log stream, used by device workers: bytes go into a
 * lock-free SPSC ring (never a file or socket, DESIGN rule 7) under an
 * explicit ring-full policy:
 * - `lossless`: take what fits and tell the caller, which stops consuming
 *   the guest's transmit buffers until {@link OutputStream.waitWritable}
 *   resolves; the guest's own write blocks, the host never does.
 * - `drop`: take what fits, drop the newest bytes, count them, and write a
 *   marker line into the stream when output resumes.
 */
import type { SpscByteRing, StatCounters } from '../locking/index.js';
import { LoggerError } from './errors.js';
import { PortStat } from './port-stats.js';

/** What a full ring does to new output. */
export type RingPolicy = 'lossless' | 'drop';

/** Every {@link RingPolicy}, for flag parsing and help. */
export const RING_POLICIES: readonly RingPolicy[] = ['lossless', 'drop'];

/** Parses a policy name. @throws LoggerError LOG_BAD_POLICY */
export function parseRingPolicy(text: string): RingPolicy {
  if ((RING_POLICIES as readonly string[]).includes(text)) return text as RingPolicy;
  throw new LoggerError(
    'LOG_BAD_POLICY',
    `--policy ${text}: choose one of ${RING_POLICIES.join(', ')}`,
  );
}

const MARKER_BYTES = 96;
const encoder = new TextEncoder();

/** The producer end of one log stream; see the module comment. */
export class OutputStream {
  /** Bytes dropped since the last marker line. */
  #unreported = 0;
  readonly #marker = new Uint8Array(MARKER_BYTES);

  constructor(
    readonly ring: SpscByteRing,
    readonly policy: RingPolicy,
    private readonly stats: StatCounters,
  ) {}

  /**
   * Offers `src[off, off + len)`. Returns how many bytes were consumed: under
   * `lossless` possibly fewer than `len` (the rest must be offered again after
   * {@link waitWritable}); under `drop` always `len` (what did not fit is
   * counted as dropped).
   */
  offer(src: Uint8Array, off: number, len: number): number {
    if (this.policy === 'drop') return this.#offerOrDrop(src, off, len);
    const n = this.ring.write(src, off, len);
    if (n > 0) this.stats.add(PortStat.bytesOut, n);
    if (n < len) this.stats.add(PortStat.ringFull, 1);
    return n;
  }

  /** Wakes the logger if it sleeps; call once per batch of {@link offer}s. */
  flush(): void {
    this.ring.notifyIfWaiting();
  }

  /** Resolves once `bytes` (at most the ring's capacity) can be written. */
  waitWritable(bytes: number): Promise<boolean> {
    return this.ring.waitWritable(Math.min(bytes, this.ring.capacity));
  }

  /** Ends a pending {@link waitWritable} (it resolves false) and any later one: the producer is closing. */
  cancelWait(): void {
    this.ring.cancelWaits();
  }

  /** Bytes dropped and not yet reported by a marker line. */
  get unreportedDrops(): number {
    return this.#unreported;
  }

  #offerOrDrop(src: Uint8Array, off: number, len: number): number {
    if (this.#unreported > 0 && !this.#writeMarker()) {
      this.#drop(len);
      return len;
    }
    const n = this.ring.write(src, off, len);
    if (n > 0) this.stats.add(PortStat.bytesOut, n);
    if (n < len) this.#drop(len - n);
    return len;
  }

  #drop(n: number): void {
    if (this.#unreported === 0) this.stats.add(PortStat.ringFull, 1);
    this.#unreported += n;
    this.stats.add(PortStat.bytesDropped, n);
  }

  /** Writes the resume marker whole, or nothing; a rare event, so the string is built here. */
  #writeMarker(): boolean {
    const text = `\n[vhost-rt: ${this.#unreported} bytes dropped: log ring full]\n`;
    const { written } = encoder.encodeInto(text, this.#marker);
    if (!this.ring.writeAll(this.#marker, 0, written)) return false;
    this.#unreported = 0;
    return true;
  }
}
