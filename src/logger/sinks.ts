/**
 * Where a log stream goes: sink specifications as the CLI and embedders give
 * them. Pure data, so they can be posted to the logger thread.
 */
import { LoggerError } from './errors.js';

/** An append-only file, optionally rotated by size and with per-line timestamps. */
export interface FileSinkSpec {
  kind: 'file';
  path: string;
  /** Rotate when the file would grow past this many bytes (0: never). */
  rotateBytes: number;
  /** Rotated files kept as PATH.1 .. PATH.N (newest first). */
  rotateKeep: number;
  /** Prefix every line with an ISO-8601 time (the time the logger wrote it). */
  timestamps: boolean;
}

/** A Unix socket that any number of readers connect to and follow live. */
export interface SocketSinkSpec {
  kind: 'socket';
  path: string;
}

/** The daemon's standard output. */
export interface StdoutSinkSpec {
  kind: 'stdout';
}

/** One `--log` destination, told apart by `kind`; {@link parseSinkSpec} builds it from the flag. */
export type SinkSpec = FileSinkSpec | SocketSinkSpec | StdoutSinkSpec;

/** File sink options that the CLI sets once for every file sink. */
export interface FileSinkDefaults {
  rotateBytes?: number;
  rotateKeep?: number;
  timestamps?: boolean;
}

/**
 * Parses `stdout`, `socket:PATH`, `file:PATH` or a bare `PATH` (a file).
 * @throws LoggerError LOG_BAD_SINK for an empty path.
 */
export function parseSinkSpec(text: string, defaults: FileSinkDefaults = {}): SinkSpec {
  if (text === 'stdout' || text === '-') return { kind: 'stdout' };
  if (text.startsWith('socket:')) return { kind: 'socket', path: nonEmpty(text.slice(7), text) };
  const path = nonEmpty(text.startsWith('file:') ? text.slice(5) : text, text);
  return {
    kind: 'file',
    path,
    rotateBytes: defaults.rotateBytes ?? 0,
    rotateKeep: defaults.rotateKeep ?? 5,
    timestamps: defaults.timestamps ?? false,
  };
}

function nonEmpty(path: string, text: string): string {
  if (path === '') throw new LoggerError('LOG_BAD_SINK', `log sink '${text}': empty path`);
  return path;
}

/** A stable key: two streams naming the same sink share one open file or socket. */
export function sinkKey(spec: SinkSpec): string {
  return spec.kind === 'stdout' ? 'stdout' : `${spec.kind}:${spec.path}`;
}

/** One line describing a sink, for ready lines. */
export function describeSink(spec: SinkSpec): string {
  if (spec.kind !== 'file') return sinkKey(spec);
  const extra = [
    spec.rotateBytes > 0 ? `rotate ${spec.rotateBytes}x${spec.rotateKeep}` : '',
    spec.timestamps ? 'timestamps' : '',
  ].filter((s) => s !== '');
  return `file:${spec.path}${extra.length > 0 ? ` (${extra.join(', ')})` : ''}`;
}
