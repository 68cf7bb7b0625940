/**
 * What a descriptor handed over by the front end is, and the checks applied
 * to every one of them before it is used (§"Communication" lists the messages
 * that carry fds). A front end may pass anything at all: a pipe where an
 * eventfd belongs would make the worker's eventfd reads and writes fail on the
 * data path, a socket or directory where guest RAM belongs cannot be mapped,
 * and a character device might map something other than RAM. So a wrong kind
 * is refused with VHOST_USER_BAD_FD, naming what the fd is, and the message's
 * fds are closed with it.
 *
 * The one classification is {@link describeFd}: the /proc/self/fd link tells
 * an eventfd ('anon_inode:[eventfd]') from other anonymous inodes, fstat's
 * type bits tell the rest apart, fstatfs tells hugetlbfs, and a '/memfd:' link
 * tells a memfd from a regular file. vhost-rt therefore needs /proc mounted:
 * without it no fd can be shown to be an eventfd, and every one is refused.
 */
import { constants } from 'node:fs';
import { type FdFacts, native } from '../native.js';
import { RequestError } from './errors.js';

/** What a descriptor refers to, as {@link describeFd} names it in logs. */
export type FdKind =
  | 'eventfd'
  | 'memfd'
  | 'hugetlbfs file'
  | 'regular file'
  | 'pipe'
  | 'socket'
  | 'directory'
  | 'character device'
  | 'block device'
  | 'anonymous inode'
  | 'unknown file type';

/** A descriptor's facts and its kind. */
export interface FdDescription extends FdFacts {
  kind: FdKind;
}

/** f_type of hugetlbfs (linux/magic.h HUGETLBFS_MAGIC). */
export const HUGETLBFS_MAGIC = 0x958458f6;

const EVENTFD_LINK = 'anon_inode:[eventfd]';

/** Kinds that can back guest RAM: mapped MAP_SHARED, they are the guest's own pages. */
const MEMORY_KINDS: ReadonlySet<FdKind> = new Set(['memfd', 'hugetlbfs file', 'regular file']);

const TYPES: ReadonlyMap<number, FdKind> = new Map([
  [constants.S_IFIFO, 'pipe'],
  [constants.S_IFSOCK, 'socket'],
  [constants.S_IFDIR, 'directory'],
  [constants.S_IFCHR, 'character device'],
  [constants.S_IFBLK, 'block device'],
]);

/** Reads and classifies descriptor `fd` without changing it; throws the SystemError of fstat for a closed fd. */
export function describeFd(fd: number): FdDescription {
  const facts = native.fdInfo(fd);
  return { ...facts, kind: kindOf(facts) };
}

function kindOf(f: FdFacts): FdKind {
  // Anonymous inodes first: their type bits say nothing (0, or S_IFREG on newer kernels).
  if (f.link.startsWith('anon_inode:'))
    return f.link === EVENTFD_LINK ? 'eventfd' : 'anonymous inode';
  const type = f.mode & constants.S_IFMT;
  if (type !== constants.S_IFREG) return TYPES.get(type) ?? 'unknown file type';
  if (f.link.startsWith('/memfd:')) return 'memfd';
  return f.fsType === HUGETLBFS_MAGIC ? 'hugetlbfs file' : 'regular file';
}

/** 'a pipe (pipe:[1234])' for messages. */
function shown(d: FdDescription): string {
  const article = /^[aeiou]/.test(d.kind) ? 'an' : 'a';
  return d.link === '' ? `${article} ${d.kind}` : `${article} ${d.kind} (${d.link})`;
}

/**
 * Refuses (VHOST_USER_BAD_FD) unless `fd` is an eventfd that can be read and
 * written: kick, call and err fds. `what` names the fd: 'vring 0 call fd'.
 */
export function expectEventfd(fd: number, what: string): void {
  const d = describeFd(fd);
  if (d.kind !== 'eventfd') throw badFd(`${what} is ${shown(d)}, not an eventfd`);
  if (!d.readable || !d.writable)
    throw badFd(`${what} is an eventfd opened without read and write access`);
  // A blocking eventfd would block the device worker: a read of a count of 0 after a
  // spurious wake-up, or a write when the front end left the counter at its maximum.
  // QEMU, DPDK and rust-vmm front ends all create theirs EFD_NONBLOCK; setting the flag
  // ourselves would change it for the front end too (it is the shared open file's).
  if (!d.nonBlocking)
    throw badFd(`${what} is a blocking eventfd (the back end needs EFD_NONBLOCK)`);
}

/**
 * Refuses (VHOST_USER_BAD_FD) unless `fd` can back guest RAM: a memfd, a
 * regular file or a hugetlbfs file, opened for reading and writing (it is
 * mapped PROT_READ | PROT_WRITE, MAP_SHARED). Returns what it found, for the
 * size and identity checks of the caller.
 */
export function expectMemoryFd(fd: number, what: string): FdDescription {
  const d = describeFd(fd);
  if (!MEMORY_KINDS.has(d.kind)) {
    throw badFd(`${what} is ${shown(d)}, not a memfd, regular or hugetlbfs file`);
  }
  if (!d.readable || !d.writable)
    throw badFd(`${what} is ${shown(d)} not opened for reading and writing`);
  return d;
}

/** Refuses (VHOST_USER_BAD_FD) unless `fd` is a socket: the BACKEND_REQ channel. */
export function expectSocket(fd: number, what: string): void {
  const d = describeFd(fd);
  if (d.kind !== 'socket') throw badFd(`${what} is ${shown(d)}, not a socket`);
}

function badFd(message: string): RequestError {
  return new RequestError('VHOST_USER_BAD_FD', message);
}
