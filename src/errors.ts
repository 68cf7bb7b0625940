/**
 * Coded errors. Every error vhost-rt throws on purpose is a {@link VhostRtError}
 * with a stable `code`; callers branch on `code`, never on the message.
 */

/** Base class of every error vhost-rt raises deliberately. */
export class VhostRtError extends Error {
  /** Stable machine-readable identifier, e.g. `VHOST_USER_BAD_SIZE`. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/**
 * An errno failure from a system call made by the native addon. Built in C++
 * (the class is handed to the addon at load time) so that it carries the same
 * fields as Node's own system errors.
 */
export class SystemError extends VhostRtError {
  /** Positive errno value, e.g. 22. */
  errno = 0;
  /** Name of the failing system call, e.g. `io_submit`. */
  syscall = '';

  constructor(message: string) {
    super('ESYSTEM', message);
  }
}

/** How the caller should react to an errno: try again, give up on the peer, or stop. */
export type ErrnoClass = 'retry' | 'broken' | 'fatal';

const RETRY = new Set(['EAGAIN', 'EWOULDBLOCK', 'EINTR', 'ENOBUFS', 'ENOMEM']);
const BROKEN = new Set(['EPIPE', 'ECONNRESET', 'ENOTCONN', 'EBADF', 'ESHUTDOWN', 'ECONNABORTED']);

/** Sorts an errno code where it enters, so policy lives in one place. */
export function classifyErrno(code: string | undefined): ErrnoClass {
  if (code !== undefined && RETRY.has(code)) return 'retry';
  if (code !== undefined && BROKEN.has(code)) return 'broken';
  return 'fatal';
}

/** A command-line or option value that cannot be used. */
export class ConfigError extends VhostRtError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_CONFIG', message, options);
  }
}
