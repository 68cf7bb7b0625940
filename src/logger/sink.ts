/**
 * Sink implementations, used only inside the logger thread: it may wait on
 * them (at the lowest priority), the device workers never do.
 */
import { lstatSync, unlinkSync, write as writeCallback } from 'node:fs';
import { type FileHandle, open, rename } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { promisify } from 'node:util';
import { LoggerError } from './errors.js';
import type { FileSinkSpec, SinkSpec, SocketSinkSpec } from './sinks.js';

/** One open destination. */
export interface Sink {
  /**
   * Writes `chunk[0, n)`. The caller reuses `chunk` once the promise settles,
   * so a sink that keeps the bytes longer copies them.
   */
  write(chunk: Uint8Array, n: number): Promise<void>;
  /** Flushes and releases the destination. */
  close(): Promise<void>;
  /**
   * Optional: releases the destination and opens it again at the same path
   * (a file logrotate moved away); the next write lands in the new one.
   */
  reopen?(): Promise<void>;
  /** Counters for the daemon's stats: bytes written, and bytes a slow reader missed. */
  readonly written: number;
  readonly missed: number;
}

/** Opens the sink `spec` describes. @throws LoggerError LOG_SINK_OPEN */
export async function openSink(spec: SinkSpec): Promise<Sink> {
  try {
    if (spec.kind === 'file') return await FileSink.open(spec);
    if (spec.kind === 'socket') return await SocketSink.listen(spec);
    return new StdoutSink();
  } catch (err) {
    const what = spec.kind === 'stdout' ? 'stdout' : spec.path;
    const code = (err as { code?: string }).code ?? 'unknown';
    throw new LoggerError('LOG_SINK_OPEN', `log sink ${what}: cannot open (${code})`, {
      cause: err,
    });
  }
}

const writeFd = promisify(writeCallback);
const NEWLINE = 0x0a;

/** An append-only file with optional size rotation and per-line timestamps. */
export class FileSink implements Sink {
  written = 0;
  readonly missed = 0;
  private atLineStart = true;
  /** Writes, rotations and reopens run one after the other: the last one queued. */
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly spec: FileSinkSpec,
    private fh: FileHandle,
    private size: number,
  ) {}

  static async open(spec: FileSinkSpec): Promise<FileSink> {
    const fh = await open(spec.path, 'a');
    const size = (await fh.stat()).size;
    return new FileSink(spec, fh, size);
  }

  write(chunk: Uint8Array, n: number): Promise<void> {
    return this.serial(() => this.writeNow(chunk, n));
  }

  /**
   * Closes the file and opens `path` again (a new file if it was renamed or
   * removed). A FIFO or device is left open as it is: only files rotate.
   */
  reopen(): Promise<void> {
    return this.serial(async () => {
      if (!(await this.fh.stat()).isFile()) return;
      await this.fh.close();
      this.fh = await open(this.spec.path, 'a');
      this.size = (await this.fh.stat()).size;
    });
  }

  /** Runs `op` after every operation queued before it (a reopen never cuts a write in two). */
  private serial(op: () => Promise<void>): Promise<void> {
    const next = this.queue.then(op);
    this.queue = next.catch(() => {});
    return next;
  }

  private async writeNow(chunk: Uint8Array, n: number): Promise<void> {
    const bytes = this.spec.timestamps ? this.stamp(chunk, n) : chunk.subarray(0, n);
    const limit = this.spec.rotateBytes;
    if (limit > 0 && this.size > 0 && this.size + bytes.length > limit) await this.rotate();
    let off = 0;
    while (off < bytes.length) {
      const { bytesWritten } = await this.fh.write(bytes, off, bytes.length - off);
      off += bytesWritten;
    }
    this.size += bytes.length;
    this.written += bytes.length;
  }

  /** Prefixes each line that starts in this chunk with the current time. */
  private stamp(chunk: Uint8Array, n: number): Uint8Array {
    const prefix = Buffer.from(`${new Date().toISOString()} `);
    const parts: Uint8Array[] = [];
    let start = 0;
    for (let i = 0; i < n; i++) {
      if (this.atLineStart) {
        parts.push(prefix);
        this.atLineStart = false;
      }
      if (chunk[i] !== NEWLINE) continue;
      parts.push(chunk.subarray(start, i + 1));
      start = i + 1;
      this.atLineStart = true;
    }
    if (start < n) parts.push(chunk.subarray(start, n));
    return Buffer.concat(parts);
  }

  /** PATH.(k) -> PATH.(k+1) for the kept ones, PATH -> PATH.1, then a fresh PATH. */
  private async rotate(): Promise<void> {
    await this.fh.close();
    const { path, rotateKeep } = this.spec;
    for (let k = rotateKeep - 1; k >= 1; k--)
      await renameIfExists(`${path}.${k}`, `${path}.${k + 1}`);
    if (rotateKeep > 0) await renameIfExists(path, `${path}.1`);
    this.fh = await open(path, rotateKeep > 0 ? 'a' : 'w');
    this.size = 0;
  }

  close(): Promise<void> {
    return this.serial(() => this.fh.close());
  }
}

async function renameIfExists(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (err) {
    if ((err as { code?: string }).code !== 'ENOENT') throw err;
  }
}

/** A reader that fell this far behind misses chunks (counted) until it catches up. */
const SOCKET_READER_BACKLOG = 1 << 20;

/**
 * A listening Unix socket; every connected reader receives the stream from
 * the moment it connects. A slow reader never holds the others (or the
 * ring) back: beyond {@link SOCKET_READER_BACKLOG} queued bytes it misses
 * chunks, and is told how many bytes it missed when it catches up.
 */
export class SocketSink implements Sink {
  written = 0;
  missed = 0;
  private readonly readers = new Map<Socket, number>();

  private constructor(
    private readonly server: Server,
    private readonly path: string,
  ) {
    server.on('connection', (s) => this.attach(s));
  }

  static async listen(spec: SocketSinkSpec): Promise<SocketSink> {
    removeStaleSocket(spec.path);
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(spec.path, () => resolve());
    });
    return new SocketSink(server, spec.path);
  }

  /** Readers attached now. */
  get readerCount(): number {
    return this.readers.size;
  }

  private attach(s: Socket): void {
    this.readers.set(s, 0);
    // Readers only read; anything they send is ignored, and their errors only end them.
    s.on('data', () => {});
    s.on('error', () => s.destroy());
    s.on('close', () => this.readers.delete(s));
  }

  async write(chunk: Uint8Array, n: number): Promise<void> {
    if (this.readers.size === 0) return;
    const copy = Buffer.from(chunk.subarray(0, n));
    for (const [s, missed] of this.readers) {
      if (s.writableLength > SOCKET_READER_BACKLOG) {
        this.readers.set(s, missed + n);
        this.missed += n;
        continue;
      }
      if (missed > 0) {
        s.write(`\n[vhost-rt: this reader missed ${missed} bytes]\n`);
        this.readers.set(s, 0);
      }
      s.write(copy);
    }
    this.written += n;
  }

  async close(): Promise<void> {
    for (const s of this.readers.keys()) s.end();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    removeStaleSocket(this.path);
  }
}

/** Removes a socket file left behind; refuses to touch anything else. */
function removeStaleSocket(path: string): void {
  try {
    if (!lstatSync(path).isSocket()) {
      throw new LoggerError('LOG_SINK_OPEN', `log sink ${path}: exists and is not a socket`);
    }
    unlinkSync(path);
  } catch (err) {
    if ((err as { code?: string }).code !== 'ENOENT') throw err;
  }
}

/** The process's standard output (fd 1), written directly from the logger thread. */
export class StdoutSink implements Sink {
  written = 0;
  readonly missed = 0;

  async write(chunk: Uint8Array, n: number): Promise<void> {
    let off = 0;
    while (off < n) off += (await writeFd(1, chunk, off, n - off, null)).bytesWritten;
    this.written += n;
  }

  async close(): Promise<void> {}
}
