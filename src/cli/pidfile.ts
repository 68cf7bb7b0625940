/**
 * `--pidfile PATH`: the daemon's pid and a newline, written once it is ready
 * and removed as it exits, for init systems and scripts. A pid file naming a
 * live process means another daemon runs with it: refused. One naming no
 * process (left by a daemon that was killed) is stale and replaced.
 */
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { ConfigError } from '../errors.js';

/** The pid `path` names, or null when it is absent or holds no pid. */
function readPid(path: string): number | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new ConfigError(`--pidfile ${path}: ${(err as Error).message}`, { cause: err });
  }
  const match = /^\s*(\d+)\s*$/.exec(text);
  return match === null ? null : Number(match[1]);
}

/** Whether process `pid` exists: kill(pid, 0) succeeds, or is refused (EPERM: another user's). */
function isAlive(pid: number): boolean {
  if (pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Refuses (a ConfigError naming --pidfile) when `path` holds the pid of a
 * live process other than this one; a stale or unreadable-as-pid file passes.
 */
export function checkPidfile(path: string): void {
  const pid = readPid(path);
  if (pid !== null && pid !== process.pid && isAlive(pid))
    throw new ConfigError(`--pidfile ${path}: process ${pid} is running with it`);
}

/**
 * Writes this process's pid and a newline to `path` (through a temporary
 * file and a rename, so a reader never sees half of it), after checking it
 * again: another daemon may have started meanwhile.
 */
export function writePidfile(path: string): void {
  checkPidfile(path);
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, `${process.pid}\n`, { mode: 0o644 });
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new ConfigError(`--pidfile ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** Removes `path` if it still names this process (never another daemon's file). */
export function removePidfile(path: string): void {
  if (readPidQuietly(path) === process.pid) rmSync(path, { force: true });
}

function readPidQuietly(path: string): number | null {
  try {
    return readPid(path);
  } catch {
    return null;
  }
}
