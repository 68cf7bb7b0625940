/** Errors of the decoupled logging path (rings, sinks, the logger thread). */
import { VhostRtError } from '../errors.js';

/** Stable codes of {@link LoggerError}. */
export type LoggerErrorCode =
  /** A sink specification (`file:PATH`, `socket:PATH`, `stdout`) cannot be parsed. */
  | 'LOG_BAD_SINK'
  /** A sink could not be opened (the cause carries the errno). */
  | 'LOG_SINK_OPEN'
  /** A ring-full policy other than `lossless` or `drop`. */
  | 'LOG_BAD_POLICY'
  /** The logger thread was sent a command other than shutdown. */
  | 'LOG_BAD_COMMAND';

/** A failure of the logging path, with a stable `code`. */
export class LoggerError extends VhostRtError {
  declare readonly code: LoggerErrorCode;

  constructor(code: LoggerErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
