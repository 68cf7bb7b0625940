/**
 * Byte-stream access to a popped descriptor chain, the one way every device
 * reads headers and payloads from, and writes data and status bytes into,
 * guest buffers (after rust-vmm vm-virtio's Reader / Writer).
 *
 * The virtio spec forbids a device to assume any framing (§2.6.4): a header,
 * the data and a status byte may each start anywhere and span descriptors,
 * and a buffer crossing from one memory region into the next is two segments.
 * A {@link ChainReader} addresses the chain's device-readable part as one
 * stream, a {@link ChainWriter} its device-writable part.
 *
 * Hostile guest: the segments were translated and bounds-checked by the
 * queue at pop time and live in device memory the guest cannot reach, so no
 * operation here can touch bytes outside the chain, whatever the guest
 * wrote. Reading or writing past the end of a part returns a short count (or
 * -1 / false for fixed-size fields) and never throws. The guest can still
 * rewrite its buffers while the device reads them: every byte is read once
 * per call, so decode and validate the copy, never guest memory twice.
 *
 * No allocation per request: a device creates one reader and one writer and
 * re-points them at each popped chain with `reset(chain, bytes)`. Copies
 * shorter than 64 bytes go byte by byte; longer ones pay for one temporary
 * subarray view.
 */
import { copyBytes } from '../locking/copy.js';
import type { DescriptorChain } from './descriptor-chain.js';

/** Where one byte of guest memory lives: region index (-1: nowhere) and offset in its buffer. */
export interface ByteLocation {
  region: number;
  offset: number;
}

/**
 * Takes iovecs into guest memory: the shape of `IoEngine.addIov`, so an
 * engine is a sink as it is (the virtio layer does not depend on src/io).
 */
export interface IovecSink {
  /** Stages one iovec over `buffers[buffer][offset, offset + length)`; false when full. */
  addIov(buffer: number, offset: number, length: number): boolean;
}

const NO_SEGMENTS_I32 = new Int32Array(0);
const NO_SEGMENTS_F64 = new Float64Array(0);
const NO_SEGMENTS_U32 = new Uint32Array(0);
const NO_BYTES = new Uint8Array(0);
const TWO_POW_32 = 2 ** 32;

/**
 * What reader and writer share: one part of a chain (segments `[first, end)`)
 * seen as a byte stream with a position, seeking, zero-copy pieces and iovec
 * staging. Not used directly: see {@link ChainReader} and {@link ChainWriter}.
 *
 * Invariant: either `seg === end` (at the end of the part) or
 * `within < segLength[seg]`; segments are never empty (the queue adds none).
 */
export abstract class ChainPart {
  /**
   * After {@link peekPiece}: the whole-region byte view the piece lives in,
   * with {@link pieceOffset} and {@link pieceRegion}. Empty before any piece.
   */
  pieceBytes: Uint8Array = NO_BYTES;
  /** After {@link peekPiece}: offset of the piece's first byte in {@link pieceBytes}. */
  pieceOffset = 0;
  /** After {@link peekPiece}: region index of the piece (an index into the bytes array). */
  pieceRegion = -1;

  /** Region views the segments index into (GuestMemory.bytes of the chain's memory table). */
  protected bytes: readonly Uint8Array[] = [];
  // The chain's segment arrays, held directly so hot loops skip a property load.
  protected segRegion: Int32Array = NO_SEGMENTS_I32;
  protected segOffset: Float64Array = NO_SEGMENTS_F64;
  protected segLength: Uint32Array = NO_SEGMENTS_U32;
  protected first = 0;
  protected end = 0;
  /** Cursor: segment index and offset inside it, plus the stream position they stand for. */
  protected seg = 0;
  protected within = 0;
  protected pos = 0;
  protected size = 0;

  /** Bytes in this part of the chain. */
  get length(): number {
    return this.size;
  }

  /** Stream position: bytes consumed (read, written or skipped) since the start of the part. */
  get position(): number {
    return this.pos;
  }

  /** Bytes left from the position to the end of the part. */
  get available(): number {
    return this.size - this.pos;
  }

  /**
   * Moves to absolute position `pos`. Beyond the end it stops at the end and
   * returns false (a guest's short chain is not an exception). Forward seeks
   * walk on from the cursor; backward ones restart at the part's first segment.
   * @throws RangeError when `pos` is negative or NaN (a device bug, not guest input).
   */
  seek(pos: number): boolean {
    if (!(pos >= 0)) throw new RangeError(`chain position must be >= 0, got ${pos}`);
    if (pos < this.pos) this.rewind();
    this.advance(Math.min(pos, this.size) - this.pos);
    return pos <= this.size;
  }

  /** Moves `n` bytes forward (negative: back); false when that passes the end, which it stops at. */
  skip(n: number): boolean {
    return this.seek(this.pos + n);
  }

  /**
   * Describes, without consuming, the contiguous run of bytes at the position:
   * at most `maxLength` bytes, never past the end of the current segment.
   * Sets {@link pieceBytes} / {@link pieceOffset} / {@link pieceRegion} and
   * returns the run's length (0 at the end). Consume what was used with
   * {@link skip}; after a partial use the next call resumes there.
   */
  peekPiece(maxLength = Number.POSITIVE_INFINITY): number {
    if (this.seg === this.end || !(maxLength > 0)) return 0;
    const s = this.seg;
    const region = this.segRegion[s];
    this.pieceRegion = region;
    this.pieceBytes = this.bytes[region];
    this.pieceOffset = this.segOffset[s] + this.within;
    return Math.min(this.segLength[s] - this.within, maxLength);
  }

  /**
   * Emits iovecs `(region, buffer offset, length)` covering the next `bytes`
   * bytes, one per segment touched, and moves past them. Returns the number of
   * iovecs, or -1 when fewer than `bytes` bytes are left or the sink fills up:
   * then the position is unchanged, so the caller can submit and retry (iovecs
   * this call staged before the sink filled stay staged but unreferenced).
   * @throws RangeError when `bytes` is negative or NaN.
   */
  stageIovecs(sink: IovecSink, bytes: number): number {
    if (!(bytes >= 0)) throw new RangeError(`iovec byte count must be >= 0, got ${bytes}`);
    if (bytes > this.size - this.pos) return -1;
    let s = this.seg;
    let w = this.within;
    let left = bytes;
    let count = 0;
    while (left > 0) {
      const take = Math.min(this.segLength[s] - w, left);
      if (!sink.addIov(this.segRegion[s], this.segOffset[s] + w, take)) return -1;
      count++;
      left -= take;
      w += take;
      if (w === this.segLength[s]) {
        s++;
        w = 0;
      }
    }
    this.moveTo(s, w, this.pos + bytes);
    return count;
  }

  /** Points at segments `[first, end)` of `chain` holding `size` bytes, at position 0. */
  protected point(
    chain: DescriptorChain,
    bytes: readonly Uint8Array[],
    first: number,
    end: number,
    size: number,
  ): void {
    this.bytes = bytes;
    this.segRegion = chain.region;
    this.segOffset = chain.offset;
    this.segLength = chain.length;
    // A failed chain already has no segments; say so explicitly all the same.
    const usable = chain.error === null;
    this.first = first;
    this.end = usable ? end : first;
    this.size = usable ? size : 0;
    this.rewind();
  }

  /** Copies `n` bytes between the part (at the cursor) and `data`; the caller bounded `n`. */
  protected transfer(data: Uint8Array, dataOffset: number, n: number, toGuest: boolean): void {
    let s = this.seg;
    let w = this.within;
    let done = 0;
    while (done < n) {
      const take = Math.min(this.segLength[s] - w, n - done);
      const guest = this.bytes[this.segRegion[s]];
      const at = this.segOffset[s] + w;
      if (toGuest) copyBytes(data, dataOffset + done, guest, at, take);
      else copyBytes(guest, at, data, dataOffset + done, take);
      done += take;
      w += take;
      if (w === this.segLength[s]) {
        s++;
        w = 0;
      }
    }
    this.moveTo(s, w, this.pos + n);
  }

  /** Region view holding the byte at the cursor (the caller checked one is left). */
  protected cursorBytes(): Uint8Array {
    return this.bytes[this.segRegion[this.seg]];
  }

  /** Buffer offset of the byte at the cursor. */
  protected cursorOffset(): number {
    return this.segOffset[this.seg] + this.within;
  }

  /** Whether the `n` bytes at the cursor lie in the current segment (fast path for fields). */
  protected contiguous(n: number): boolean {
    return this.seg < this.end && this.within + n <= this.segLength[this.seg];
  }

  /** Moves `n` bytes forward; `n` is at most {@link available}. */
  protected advance(n: number): void {
    let s = this.seg;
    let w = this.within;
    let left = n;
    while (left > 0) {
      const room = this.segLength[s] - w;
      if (left < room) {
        w += left;
        break;
      }
      left -= room;
      s++;
      w = 0;
    }
    this.moveTo(s, w, this.pos + n);
  }

  /** Stores the cursor, stepping off a segment it ended exactly on (keeps the invariant). */
  protected moveTo(s: number, w: number, pos: number): void {
    if (s < this.end && w === this.segLength[s]) {
      s++;
      w = 0;
    }
    this.seg = s;
    this.within = w;
    this.pos = pos;
  }

  private rewind(): void {
    this.seg = this.first;
    this.within = 0;
    this.pos = 0;
  }
}

/**
 * The device-readable part of a chain as a byte stream: request headers,
 * transmitted frames, console output, control commands. Preallocate one per
 * device; {@link reset} it after every pop.
 *
 * ```ts
 * reader.reset(chain, memory.bytes);
 * const type = reader.readU32();      // -1: the chain is too short
 * reader.skip(4);
 * const sector = reader.readU64();
 * ```
 */
export class ChainReader extends ChainPart {
  /**
   * Re-points the reader at the readable part of `chain`, position 0. `bytes`
   * must be the region views of the memory table the chain was popped with.
   * Valid until `chain` is popped into again. A chain with `error` set reads
   * as empty.
   */
  reset(chain: DescriptorChain, bytes: readonly Uint8Array[]): this {
    this.point(chain, bytes, 0, chain.firstWritable, chain.readableBytes);
    return this;
  }

  /**
   * Copies up to `length` bytes from the position into `out[outOffset...]`,
   * bounded by what is left and by `out`. Returns the bytes copied (short at
   * the end of the part, 0 there) and moves past them.
   * @throws RangeError when `outOffset` or `length` is negative or NaN.
   */
  read(out: Uint8Array, outOffset: number, length: number): number {
    const n = span(this.size - this.pos, out.length, outOffset, length);
    if (n > 0) this.transfer(out, outOffset, n, false);
    return n;
  }

  /** The byte at the position, consumed; -1 at the end. */
  readU8(): number {
    if (this.seg === this.end) return -1;
    const v = this.cursorBytes()[this.cursorOffset()];
    this.advance(1);
    return v;
  }

  /** A little-endian u16 at the position, consumed; -1 (position unchanged) when fewer than 2 bytes are left. */
  readU16(): number {
    if (this.size - this.pos < 2) return -1;
    if (!this.contiguous(2)) return this.readSplit(2);
    const b = this.cursorBytes();
    const o = this.cursorOffset();
    const v = b[o] | (b[o + 1] << 8);
    this.advance(2);
    return v;
  }

  /** A little-endian u32 at the position, consumed; -1 (position unchanged) when fewer than 4 bytes are left. */
  readU32(): number {
    if (this.size - this.pos < 4) return -1;
    if (!this.contiguous(4)) return this.readSplit(4);
    const b = this.cursorBytes();
    const o = this.cursorOffset();
    const v = (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
    this.advance(4);
    return v;
  }

  /**
   * A little-endian u64 at the position as a number, consumed; -1 (position
   * unchanged) when fewer than 8 bytes are left. Above 2^53 the value rounds,
   * so callers compare it with their (smaller) limits rather than trust it exactly.
   */
  readU64(): number {
    if (this.size - this.pos < 8) return -1;
    const lo = this.readU32();
    return lo + this.readU32() * TWO_POW_32;
  }

  /** A field of `n` <= 4 bytes that crosses a segment boundary, byte by byte. */
  private readSplit(n: number): number {
    let v = 0;
    for (let i = 0; i < n; i++) v += this.readU8() * 2 ** (8 * i);
    return v;
  }
}

/**
 * The device-writable part of a chain as a byte stream: read data, received
 * frames, console input, status and ack bytes. Preallocate one per device;
 * {@link reset} it after every pop.
 *
 * ```ts
 * writer.reset(chain, memory.bytes);
 * writer.locate(writer.length - 1, status);   // blk: the status byte is the last one
 * writer.stageIovecs(engine, writer.length - 1);
 * ```
 */
export class ChainWriter extends ChainPart {
  /**
   * Re-points the writer at the writable part of `chain`, position 0. `bytes`
   * must be the region views of the memory table the chain was popped with.
   * Valid until `chain` is popped into again. A chain with `error` set has
   * no room.
   */
  reset(chain: DescriptorChain, bytes: readonly Uint8Array[]): this {
    this.point(chain, bytes, chain.firstWritable, chain.segments, chain.writableBytes);
    return this;
  }

  /**
   * Copies up to `length` bytes of `src[srcOffset...]` to the position,
   * bounded by the room left and by `src`. Returns the bytes written (short
   * when the chain is full) and moves past them.
   * @throws RangeError when `srcOffset` or `length` is negative or NaN.
   */
  write(src: Uint8Array, srcOffset: number, length: number): number {
    const n = span(this.size - this.pos, src.length, srcOffset, length);
    if (n > 0) this.transfer(src, srcOffset, n, true);
    return n;
  }

  /** Writes `length` bytes of `value` (e.g. NUL padding), bounded by the room left; returns how many. */
  fill(value: number, length: number): number {
    const n = Math.min(this.size - this.pos, length);
    if (!(n > 0)) return 0;
    let left = n;
    while (left > 0) {
      const take = Math.min(this.segLength[this.seg] - this.within, left);
      const at = this.cursorOffset();
      this.cursorBytes().fill(value, at, at + take);
      this.advance(take);
      left -= take;
    }
    return n;
  }

  /** Writes one byte at the position; false (nothing written) when the chain is full. */
  writeU8(value: number): boolean {
    if (this.seg === this.end) return false;
    this.cursorBytes()[this.cursorOffset()] = value;
    this.advance(1);
    return true;
  }

  /** Writes a little-endian u16 at the position; false (nothing written) when fewer than 2 bytes are left. */
  writeU16(value: number): boolean {
    if (this.size - this.pos < 2) return false;
    this.writeU8(value & 0xff);
    this.writeU8((value >>> 8) & 0xff);
    return true;
  }

  /** Writes a little-endian u32 at the position; false (nothing written) when fewer than 4 bytes are left. */
  writeU32(value: number): boolean {
    if (this.size - this.pos < 4) return false;
    for (let i = 0; i < 4; i++) this.writeU8((value >>> (8 * i)) & 0xff);
    return true;
  }

  /**
   * Finds writable byte `pos` without moving, for a write after the writer
   * has moved on or been re-pointed (blk's status byte: `length - 1`; net's
   * num_buffers, known only once the frame is placed). Sets `out` and returns
   * true; beyond the part sets `out.region` to -1 and returns false.
   */
  locate(pos: number, out: ByteLocation): boolean {
    out.region = -1;
    if (!(pos >= 0)) return false;
    let rest = pos;
    for (let s = this.first; s < this.end; s++) {
      const len = this.segLength[s];
      if (rest < len) {
        out.region = this.segRegion[s];
        out.offset = this.segOffset[s] + rest;
        return true;
      }
      rest -= len;
    }
    return false;
  }
}

/**
 * How many bytes a copy moves: `length`, bounded by what the chain has left
 * and by the flat array past `offset`.
 */
function span(left: number, arrayLength: number, offset: number, length: number): number {
  if (!(offset >= 0) || !(length >= 0)) {
    throw new RangeError(`copy offset and length must be >= 0, got ${offset} and ${length}`);
  }
  return Math.max(0, Math.min(length, left, arrayLength - offset));
}
