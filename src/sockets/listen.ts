/**
 * Listening Unix sockets as every part of the daemon creates them (vhost-user
 * sockets, the UART's chardev socket, console and serial input sockets): a
 * path already held by a live listener is refused (probed by connecting), a
 * stale socket file is replaced, anything else at the path is left alone, and
 * the new socket gets the operator's mode and group (`--socket-mode`,
 * `--socket-group`), so that QEMU running as another user (libvirt's
 * libvirt-qemu) can connect without a chmod by hand. A path served by an
 * inherited socket (systemd socket activation, `--socket-fd`; see
 * activation.ts) is taken from there instead, and never removed.
 */
import { chmodSync, chownSync, lstatSync, readFileSync, unlinkSync } from 'node:fs';
import { ConfigError } from '../errors.js';
import { native } from '../native.js';
import { isInherited, matchInherited } from './activation.js';

/** Ownership and mode applied to every socket the daemon creates. */
export interface SocketPermissions {
  /** File mode, as chmod takes it (0o660); undefined keeps the umask's. */
  mode?: number;
  /** Group id, as chgrp takes it; undefined keeps the daemon's. */
  gid?: number;
}

/**
 * Listens on `path` with `backlog`, after refusing a live socket there and
 * removing a stale one; applies `permissions`. `flag` names the option in
 * errors ('--socket-path'). Returns the listening fd (O_NONBLOCK).
 */
export function listenUnix(
  path: string,
  flag: string,
  backlog: number,
  permissions: SocketPermissions = {},
): number {
  // Socket activation / --socket-fd: the socket was made by whoever started us.
  const inherited = matchInherited(path);
  if (inherited !== undefined) return inherited.fd;
  clearSocketPath(path, flag);
  let fd: number;
  try {
    fd = native.unixListen(path, backlog);
  } catch (err) {
    const code = (err as { code?: string }).code;
    throw new ConfigError(`${flag} ${path}: cannot listen (${code})`, { cause: err });
  }
  try {
    applyPermissions(path, flag, permissions);
  } catch (err) {
    native.close(fd);
    removeSocket(path);
    throw err;
  }
  return fd;
}

/** Removes the socket file at `path` if it is still there (never an inherited socket's). */
export function removeSocket(path: string): void {
  if (isInherited(path)) return; // its owner (systemd) keeps it
  try {
    unlinkSync(path);
  } catch {
    // Already gone: nothing to clean.
  }
}

/**
 * Makes room for a new socket at `path`: nothing there is fine; a socket a
 * process still listens on is refused (a second daemon must not take over a
 * live one's socket); a stale socket file is removed; anything else is refused.
 */
function clearSocketPath(path: string, flag: string): void {
  let socket: boolean;
  try {
    socket = lstatSync(path).isSocket();
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return;
    throw err;
  }
  if (!socket) throw new ConfigError(`${flag} ${path}: exists and is not a socket`);
  if (isListening(path))
    throw new ConfigError(
      `${flag} ${path}: another process is listening there (a running daemon?)`,
    );
  unlinkSync(path);
}

/**
 * Whether someone listens on `path`: a connect succeeds (or finds the backlog
 * full, EAGAIN). Only ECONNREFUSED proves the file stale; any other refusal
 * (EACCES...) cannot tell, so the path is treated as taken.
 */
function isListening(path: string): boolean {
  try {
    native.close(native.unixConnect(path));
    return true;
  } catch (err) {
    return (err as { code?: string }).code !== 'ECONNREFUSED';
  }
}

function applyPermissions(path: string, flag: string, p: SocketPermissions): void {
  try {
    if (p.gid !== undefined) chownSync(path, -1, p.gid);
    if (p.mode !== undefined) chmodSync(path, p.mode);
  } catch (err) {
    const code = (err as { code?: string }).code;
    throw new ConfigError(`${flag} ${path}: cannot set the socket's group or mode (${code})`, {
      cause: err,
    });
  }
}

/** Parses `--socket-mode` as chmod's octal (`0660`, `660`); at most 0o777. */
export function parseSocketMode(text: string): number {
  if (!/^0?[0-7]{3}$/.test(text))
    throw new ConfigError(`--socket-mode ${text}: an octal mode such as 0660`);
  return Number.parseInt(text, 8);
}

/**
 * Resolves `--socket-group` (a name from /etc/group, or a numeric gid). Read
 * from /etc/group directly: Node has no getgrnam, and the groups that matter
 * here (libvirt-qemu, kvm) are local ones.
 */
export function parseSocketGroup(text: string, groupFile = '/etc/group'): number {
  if (/^\d+$/.test(text)) return Number(text);
  for (const line of readFileSync(groupFile, 'utf8').split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === text && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new ConfigError(`--socket-group ${text}: no such group in ${groupFile}`);
}
