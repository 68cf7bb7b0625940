/**
 * Non-blocking socket reads into a {@link MessageReader}, and fd cleanup:
 * the two places the front end touches the addon for message I/O.
 */
import { native } from '../../src/native.js';
import type { MessageReader, WireMessage } from './framing.js';

/**
 * Reads everything the socket has, handing each complete message to
 * `onMessage` as soon as it is whole (which also keeps room in the reader).
 * `onMessage` returns false to stop reading (the socket is being torn down).
 * Never blocks. Returns false when the peer has closed its end.
 */
export function pumpSocket(
  fd: number,
  reader: MessageReader,
  onMessage: (message: WireMessage) => boolean,
): boolean {
  for (;;) {
    const got = native.recvMsg(fd, reader.space);
    if (got === null) return true;
    if (got.bytes === 0) {
      closeAll(got.fds);
      return false;
    }
    reader.commit(got.bytes, got.fds);
    for (let m = reader.next(); m !== null; m = reader.next()) {
      if (!onMessage(m)) return true;
    }
  }
}

/** Closes every fd of `fds`, ignoring failures (teardown of fds nobody wanted). */
export function closeAll(fds: number[]): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      // Already closed: nothing to release.
    }
  }
}
