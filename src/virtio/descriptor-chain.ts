/**
 * The device's view of one popped request. Preallocated by the device and
 * reused for every pop, so the hot path allocates nothing.
 */

/**
 * A popped request: its buffers already translated to (region, buffer offset,
 * length) and split where a buffer crosses from one region into the next.
 * Device-readable segments come first, then device-writable ones.
 *
 * Edge cases: a chain always has at least its head descriptor, but it can hold
 * zero segments (every descriptor had length 0; zero-length descriptors add no
 * segment). When `error` is set the chain is unusable: `segments` and both byte
 * counts are 0, and the device completes `head` with used length 0.
 */
export class DescriptorChain {
  /** How many segments the typed arrays hold. */
  readonly capacity: number;
  /** Descriptor index to hand back to `pushUsed`. */
  head = 0;
  /** Number of valid entries in the segment arrays. */
  segments = 0;
  /** Region index (into GuestMemory.regions / buffers) of each segment. */
  readonly region: Int32Array;
  /** Byte offset of each segment inside its region's buffer. */
  readonly offset: Float64Array;
  /** Byte length of each segment (> 0). */
  readonly length: Uint32Array;
  /** 1 if the device may write the segment, else 0. */
  readonly writable: Uint8Array;
  /** Sum of the device-readable segment lengths. */
  readableBytes = 0;
  /** Sum of the device-writable segment lengths. */
  writableBytes = 0;
  /** Index of the first writable segment (`segments` when there is none). */
  firstWritable = 0;
  /** Descriptors walked for this chain (direct and indirect), for stats and tests. */
  descriptors = 0;
  /** null, or the ChainErrorCode of the chain-level violation that ended the walk. */
  error: string | null = null;

  /** @param maxSegments capacity of the segment arrays, an integer in 1..65536. */
  constructor(maxSegments: number) {
    if (!Number.isInteger(maxSegments) || maxSegments < 1 || maxSegments > 65536) {
      throw new RangeError(`maxSegments must be an integer in 1..65536, got ${maxSegments}`);
    }
    this.capacity = maxSegments;
    this.region = new Int32Array(maxSegments);
    this.offset = new Float64Array(maxSegments);
    this.length = new Uint32Array(maxSegments);
    this.writable = new Uint8Array(maxSegments);
  }

  /** Empties the chain for a new walk starting at descriptor `head`. */
  reset(head: number): void {
    this.head = head;
    this.segments = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
    this.firstWritable = 0;
    this.descriptors = 0;
    this.error = null;
  }

  /** Appends a segment; the caller checked capacity and the readable-before-writable order. */
  addSegment(region: number, offset: number, length: number, writable: boolean): void {
    const i = this.segments++;
    this.region[i] = region;
    this.offset[i] = offset;
    this.length[i] = length;
    this.writable[i] = writable ? 1 : 0;
    if (writable) {
      this.writableBytes += length;
    } else {
      this.readableBytes += length;
      this.firstWritable = this.segments;
    }
  }

  /** Marks the chain broken with `code`, dropping every segment so none is used by mistake. */
  fail(code: string): void {
    this.error = code;
    this.segments = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
    this.firstWritable = 0;
  }
}
