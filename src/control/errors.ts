/**
 * Errors of the control socket. A command's failure becomes a QMP error
 * reply (its `qmpClass` and message); nothing a client sends ends the daemon.
 */
import { VhostRtError } from '../errors.js';

/** The QMP error classes vhost-rt answers with (QEMU's names). */
export type QmpErrorClass = 'GenericError' | 'CommandNotFound';

/** A command that cannot run: unknown, arguments refused, or failing; answered as a QMP error. */
export class QmpCommandError extends VhostRtError {
  /** The `class` of the QMP error reply. */
  readonly qmpClass: QmpErrorClass;

  constructor(qmpClass: QmpErrorClass, message: string, options?: { cause?: unknown }) {
    super(
      qmpClass === 'CommandNotFound' ? 'ERR_QMP_COMMAND_NOT_FOUND' : 'ERR_QMP_GENERIC',
      message,
      options,
    );
    this.qmpClass = qmpClass;
  }
}

/** A client sent a line longer than the limit without a newline: that client is closed. */
export class QmpLineTooLongError extends VhostRtError {
  constructor(limit: number) {
    super('ERR_QMP_LINE_TOO_LONG', `a line longer than ${limit} bytes without a newline`);
  }
}
