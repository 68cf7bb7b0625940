/**
 * Errors of the test front end. They are {@link VhostRtError}s so tests can
 * branch on a stable `code`, exactly like errors of the library itself.
 */
import { VhostRtError } from '../../src/errors.js';

/** Stable codes of {@link FrontendError}. */
export type FrontendErrorCode =
  /** The back-end closed the socket, or it failed under us. */
  | 'FRONTEND_DISCONNECTED'
  /** The front end itself was closed while something was pending. */
  | 'FRONTEND_CLOSED'
  /** A reply did not come within the timeout. */
  | 'FRONTEND_TIMEOUT'
  /** A reply broke the protocol: wrong request code, flags or size. */
  | 'FRONTEND_BAD_REPLY'
  /** A REPLY_ACK ack or a GET_CONFIG reply reported failure. */
  | 'FRONTEND_NACK'
  /** The back-end lacks a feature the front end was configured to require. */
  | 'FRONTEND_UNSUPPORTED'
  /** A request the driver cannot build (bad length, no room in guest RAM, queue full). */
  | 'FRONTEND_BAD_REQUEST';

/** A failure seen by the test front end (the simulated VMM and its driver). */
export class FrontendError extends VhostRtError {
  declare readonly code: FrontendErrorCode;

  constructor(code: FrontendErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
