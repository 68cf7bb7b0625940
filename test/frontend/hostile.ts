/**
 * Tools of a hostile front end: descriptors of kinds QEMU never passes where
 * the protocol wants an eventfd or guest RAM (pipe ends, sockets, directories,
 * devices, read-only files and memfds), and the outcome of a request as a
 * string, for tests that check the back end refuses what it must and lives on.
 */
import { execFileSync } from 'node:child_process';
import {
  constants,
  mkdtempSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/native.js';
import { closeAll } from './socket-io.js';

/** A descriptor of a kind the back end must refuse for kick, call, err fds or guest RAM. */
export type WrongFdKind =
  | 'pipe-read'
  | 'pipe-write'
  | 'socket'
  | 'directory'
  | 'readonly-file'
  | 'readonly-memfd'
  | 'char-device'
  | 'blocking-eventfd';

/**
 * Opens descriptors of wrong kinds and closes them all at the end. Pipes are
 * FIFOs in a private directory (Node has no pipe(2)); both ends stay open so
 * either can be handed over.
 */
export class WrongFds {
  private readonly dir = mkdtempSync(join(tmpdir(), 'vhost-rt-hostile-'));
  private readonly fds: number[] = [];
  private serial = 0;

  /** A new descriptor of `kind`; files and memfds are `size` bytes long. */
  open(kind: WrongFdKind, size = 4096): number {
    const path = join(this.dir, `${kind}-${this.serial++}`);
    switch (kind) {
      case 'pipe-read':
        return this.fifo(path).read;
      case 'pipe-write':
        return this.fifo(path).write;
      case 'socket':
        return this.keep(native.unixListen(path, 1));
      case 'directory':
        return this.keep(openSync(this.dir, constants.O_RDONLY | constants.O_DIRECTORY));
      case 'readonly-file':
        writeFileSync(path, '');
        truncateSync(path, size);
        return this.keep(openSync(path, constants.O_RDONLY));
      case 'readonly-memfd': {
        const memfd = this.keep(native.memfdCreate(`hostile-${this.serial}`, size));
        return this.keep(openSync(`/proc/self/fd/${memfd}`, constants.O_RDONLY));
      }
      case 'char-device':
        return this.keep(openSync('/dev/zero', constants.O_RDWR));
      case 'blocking-eventfd':
        return this.keep(native.eventfd(0, false));
    }
  }

  /** Closes every descriptor opened here and removes the directory. */
  close(): void {
    closeAll(this.fds.splice(0));
    rmSync(this.dir, { recursive: true, force: true });
  }

  private fifo(path: string): { read: number; write: number } {
    execFileSync('mkfifo', [path]);
    // The read end first: a non-blocking open for writing needs a reader (ENXIO otherwise).
    const read = this.keep(openSync(path, constants.O_RDONLY | constants.O_NONBLOCK));
    const write = this.keep(openSync(path, constants.O_WRONLY | constants.O_NONBLOCK));
    return { read, write };
  }

  private keep(fd: number): number {
    this.fds.push(fd);
    return fd;
  }
}

/** What `/proc/<pid>/fd/<fd>` names: the same text in two processes means the same open file's object. */
export function fdTarget(fd: number, pid: number | 'self' = 'self'): string {
  return readlinkSync(`/proc/${pid}/fd/${fd}`);
}

/**
 * Every object process `pid` holds a descriptor to (the /proc/<pid>/fd
 * links), to prove that a refused descriptor was closed on the other side.
 */
export function heldTargets(pid: number): string[] {
  const dir = `/proc/${pid}/fd`;
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    try {
      out.push(readlinkSync(`${dir}/${name}`));
    } catch {
      // Closed between the listing and the read.
    }
  }
  return out;
}

/** 'ack' when `request` resolves, else the error's code (FRONTEND_NACK, ...). */
export function outcome(request: Promise<unknown>): Promise<string> {
  return request.then(
    () => 'ack',
    (e: { code?: string }) => e.code ?? String(e),
  );
}
