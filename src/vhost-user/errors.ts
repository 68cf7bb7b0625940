/**
 * Errors of the vhost-user back end. A handler that refuses a request throws a
 * {@link RequestError}; the connection logs `<REQUEST>: <message> (<code>)` and
 * fails the reply, and the connection stays up.
 */
import { VhostRtError } from '../errors.js';

/** A request that the back-end refuses; the connection logs it and fails the reply. */
export class RequestError extends VhostRtError {}
