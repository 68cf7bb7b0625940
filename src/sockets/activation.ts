/**
 * Listening sockets handed to the daemon instead of created by it: systemd's
 * socket activation (sd_listen_fds(3): LISTEN_PID, LISTEN_FDS from fd 3,
 * LISTEN_FDNAMES) and `--socket-fd N` (an fd the parent left open, as
 * qemu-storage-daemon's `addr.type=fd`).
 *
 * Inherited sockets are registered here, process-wide, under the socket path
 * a device, chardev or control socket is configured with; {@link listenUnix}
 * takes the registered fd instead of creating a socket there, and
 * {@link removeSocket} leaves an inherited socket's path alone (its owner,
 * systemd, keeps the socket). A socket passed by systemd is matched to a
 * configured path, in this order:
 *
 * 1. its name in LISTEN_FDNAMES (the .socket unit's `FileDescriptorName=`)
 *    equals the path's basename (`vm0-disk.sock`) or the whole path;
 * 2. it is bound to that path (`ListenStream=` the same path; no name needed).
 *
 * A configured path that no inherited socket matches is created as usual.
 * Every inherited fd is checked to be a listening AF_UNIX stream socket, and
 * made O_NONBLOCK and close-on-exec.
 */
import { basename, resolve } from 'node:path';
import { isMainThread } from 'node:worker_threads';
import { ConfigError } from '../errors.js';
import { native } from '../native.js';

/** sd_listen_fds(3): the first passed fd. */
export const SD_LISTEN_FDS_START = 3;
const AF_UNIX = 1;
const SOCK_STREAM = 1;

/** A listening socket the daemon inherited. */
export interface InheritedSocket {
  fd: number;
  /** LISTEN_FDNAMES entry ('' when none was given, or for `--socket-fd`). */
  name: string;
  /** The path it is bound to ('@name' for the abstract namespace, '' unnamed). */
  boundPath: string;
}

const registry = new Map<string, InheritedSocket>();
const unclaimed: InheritedSocket[] = [];
let adopted = false;

/**
 * Checks that `fd` is a listening AF_UNIX stream socket and makes it
 * O_NONBLOCK | FD_CLOEXEC; `what` names it in errors (`--socket-fd 3`).
 */
export function adoptListeningSocket(fd: number, what: string, name = ''): InheritedSocket {
  let info: ReturnType<typeof native.socketInfo>;
  try {
    info = native.socketInfo(fd);
  } catch (err) {
    const code = (err as { code?: string }).code;
    const why = code === 'EBADF' ? 'is not an open descriptor' : `is not a socket (${code})`;
    throw new ConfigError(`${what}: fd ${fd} ${why}`, { cause: err });
  }
  if (info.domain !== AF_UNIX || info.type !== SOCK_STREAM)
    throw new ConfigError(
      `${what}: fd ${fd} is not a Unix stream socket (family ${info.domain}, type ${info.type})`,
    );
  if (!info.listening)
    throw new ConfigError(`${what}: fd ${fd} is a Unix stream socket that does not listen`);
  native.setFdFlags(fd, true, true);
  return { fd, name, boundPath: info.path };
}

/**
 * Reads systemd's socket-activation variables (only when LISTEN_PID is this
 * process) and unsets them, as sd_listen_fds(1) does, so that nothing this
 * process starts takes the fds for its own. Returns the adopted sockets, which
 * {@link matchInherited} then hands out by path.
 */
export function adoptListenFds(
  env: NodeJS.ProcessEnv = process.env,
  pid = process.pid,
): InheritedSocket[] {
  const count = env.LISTEN_FDS;
  const forUs = env.LISTEN_PID !== undefined && Number(env.LISTEN_PID) === pid;
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDNAMES;
  adopted = true;
  if (!forUs || count === undefined) return [];
  if (!/^\d+$/.test(count)) throw new ConfigError(`LISTEN_FDS=${count}: not a number`);
  const sockets: InheritedSocket[] = [];
  for (let i = 0; i < Number(count); i++) {
    const fd = SD_LISTEN_FDS_START + i;
    const name = names[i] ?? '';
    sockets.push(adoptListeningSocket(fd, `LISTEN_FDS (fd ${fd}${name ? `, ${name}` : ''})`, name));
  }
  unclaimed.push(...sockets);
  return sockets;
}

/**
 * Adopts systemd's sockets the first time any socket is opened, on the main
 * thread only (worker threads get a copy of the environment, not the fds' owner).
 */
function adoptOnce(): void {
  if (adopted || !isMainThread) return;
  adopted = true;
  adoptListenFds();
}

/**
 * Registers `socket` as the one to serve under `path` (`--socket-fd`: the CLI
 * names the device's socket after it).
 */
export function registerInherited(path: string, socket: InheritedSocket): void {
  registry.set(path, socket);
}

/**
 * The inherited socket for `path`, if there is one: registered for it, or an
 * adopted LISTEN_FDS socket whose name is the path or its basename, or that is
 * bound to it. A LISTEN_FDS socket, once matched, stays with that path.
 */
export function matchInherited(path: string): InheritedSocket | undefined {
  adoptOnce();
  const known = registry.get(path);
  if (known !== undefined) return known;
  const byName = unclaimed.findIndex(
    (s) => s.name !== '' && (s.name === basename(path) || s.name === path),
  );
  const at =
    byName >= 0
      ? byName
      : unclaimed.findIndex(
          (s) =>
            s.boundPath !== '' &&
            !s.boundPath.startsWith('@') &&
            resolve(s.boundPath) === resolve(path),
        );
  if (at < 0) return undefined;
  const [socket] = unclaimed.splice(at, 1);
  registry.set(path, socket);
  return socket;
}

/** Whether `path` is served by an inherited socket (whose file the daemon must not remove). */
export function isInherited(path: string): boolean {
  return registry.has(path);
}

/**
 * Closes the LISTEN_FDS sockets that no configured path took (a unit that
 * passes more sockets than the daemon serves) and describes them for a warning.
 */
export function closeUnmatchedInherited(): string[] {
  adoptOnce();
  const left = unclaimed.splice(0, unclaimed.length);
  for (const s of left) native.close(s.fd);
  return left.map(describeInherited);
}

/** How a socket is described in logs: its name, else its bound path, else its fd. */
export function describeInherited(s: InheritedSocket): string {
  return `fd ${s.fd}${s.name ? ` (${s.name})` : ''}${s.boundPath ? ` bound to ${s.boundPath}` : ''}`;
}
