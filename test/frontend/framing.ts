/**
 * Splits the byte stream of a vhost-user socket into messages. A stream
 * socket may hand us half a message or several at once. SCM_RIGHTS fds ride
 * on the sendmsg that starts their message, and Linux ends a unix-stream read
 * right after the segment that carries fds: so the fds of one read belong to
 * the last message that starts inside the bytes of that read (or, if none
 * starts there, to the message the read began in). Each fd group is
 * remembered at that stream position and claimed by the message holding it.
 */
import { decodeHeader } from '../../src/vhost-user/codec.js';
import { HEADER_SIZE, MAX_PAYLOAD } from '../../src/vhost-user/protocol.js';

/** One complete message as read from the socket. */
export interface WireMessage {
  request: number;
  flags: number;
  /** A copy: it stays valid after the reader moves on. */
  payload: Uint8Array;
  /** Descriptors that arrived with this message; the receiver owns them. */
  fds: number[];
}

/** Largest message on the wire. */
const MAX_MESSAGE = HEADER_SIZE + MAX_PAYLOAD;

/** Incremental message framer over pushed chunks. */
export class MessageReader {
  // An unfinished message plus one received chunk always fit in two maxima.
  private readonly buf = new Uint8Array(2 * MAX_MESSAGE);
  private len = 0;
  /** Stream position of buf[0]. */
  private base = 0;
  private fdGroups: { at: number; fds: number[] }[] = [];

  /** Room left for the next recvMsg; a chunk never exceeds one maximum message. */
  get space(): Uint8Array {
    return this.buf.subarray(this.len, this.len + MAX_MESSAGE);
  }

  /** Records that `bytes` bytes were written into {@link space}, with `fds` attached. */
  commit(bytes: number, fds: number[]): void {
    const from = this.base + this.len;
    this.len += bytes;
    if (fds.length > 0) this.fdGroups.push({ at: this.lastStartIn(from, from + bytes), fds });
  }

  /** Appends bytes from elsewhere (tests, or a copy). */
  push(bytes: Uint8Array, fds: number[] = []): void {
    this.space.set(bytes);
    this.commit(bytes.byteLength, fds);
  }

  /** The next complete message, or null. Throws ProtocolError on a bad header. */
  next(): WireMessage | null {
    if (this.len < HEADER_SIZE) return null;
    const header = decodeHeader(this.buf);
    const total = HEADER_SIZE + header.size;
    if (this.len < total) return null;
    const payload = this.buf.slice(HEADER_SIZE, total);
    const fds = this.claimFds(this.base + total);
    this.buf.copyWithin(0, total, this.len);
    this.len -= total;
    this.base += total;
    return { request: header.request, flags: header.flags, payload, fds };
  }

  /** Fds that no complete message claimed; the caller closes them on teardown. */
  takeUnclaimedFds(): number[] {
    return this.claimFds(Number.POSITIVE_INFINITY);
  }

  /** Stream position of the last message start in `[from, to)`, or `from` if none starts there. */
  private lastStartIn(from: number, to: number): number {
    const dv = new DataView(this.buf.buffer);
    let last = from;
    // buf[0] is always a message boundary: next() consumes whole messages only.
    for (let pos = this.base; pos < to; ) {
      if (pos >= from) last = pos;
      const offset = pos - this.base;
      if (offset + HEADER_SIZE > this.len) break;
      pos += HEADER_SIZE + dv.getUint32(offset + 8, true);
    }
    return last;
  }

  private claimFds(end: number): number[] {
    const fds: number[] = [];
    while (this.fdGroups.length > 0 && this.fdGroups[0].at < end) {
      fds.push(...this.fdGroups.shift()!.fds);
    }
    return fds;
  }
}
