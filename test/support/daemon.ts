/**
 * Runs the real `vhost-rt` command (compiled CLI) as a child process, the way
 * a user does, and waits for its "ready" line.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { waitFor } from './wait.js';

const root = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
/** Compiled CLI entry, wherever this helper runs from (src under vitest, dist when compiled). */
export const CLI = join(root.replace(/\/dist$/, ''), 'dist', 'src', 'cli', 'main.js');

/** How long {@link Daemon.stop} waits for the exit by default (ms). */
export const STOP_TIMEOUT_MS = 30_000;

export interface Daemon {
  proc: ChildProcess;
  /** Everything the daemon wrote to stderr so far. */
  log(): string;
  /**
   * Sends `signal` and resolves with the exit code and the whole log; a daemon that has not
   * exited after `timeoutMs` is killed (SIGKILL) and the call rejects with its log, so a hung
   * shutdown fails the test by name and leaves no process behind.
   */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<{ code: number | null; log: string }>;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI to completion (for flag errors and --help). */
export function runCli(args: string[], timeoutMs = 20_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d) => {
      stdout += d;
    });
    proc.stderr.on('data', (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(
        new Error(`vhost-rt ${args.join(' ')} did not exit within ${timeoutMs} ms:\n${stderr}`),
      );
    }, timeoutMs);
    proc.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * `vhost-rt blk` serving `image` on the vhost-user `socket` with one queue and a control
 * socket at `control`, plus `extra` arguments: the daemon most blk tests start.
 */
export function startBlkDaemon(
  image: string,
  socket: string,
  control: string,
  extra: string[] = [],
): Promise<Daemon> {
  return startDaemon([
    'blk',
    '--socket-path',
    socket,
    '--image',
    image,
    '--queues',
    '1',
    '--control-socket',
    control,
    ...extra,
  ]);
}

/**
 * Starts `vhost-rt ARGS` and resolves once it logged "ready". `env` is added
 * to this process's environment for the daemon only (e.g. VHOST_RT_INFLIGHT=off).
 */
export function startDaemon(
  args: string[],
  timeoutMs = 20_000,
  env: NodeJS.ProcessEnv = {},
): Promise<Daemon> {
  const proc = spawn(process.execPath, [CLI, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  let text = '';
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const daemon: Daemon = {
    proc,
    log: () => text,
    stop: async (signal = 'SIGTERM', timeoutMs = STOP_TIMEOUT_MS) => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      let timer: NodeJS.Timeout | undefined;
      const hung = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          proc.kill('SIGKILL');
          reject(
            new Error(
              `vhost-rt (pid ${proc.pid}) did not exit within ${timeoutMs} ms of ${signal}; killed. Its log:\n${text}`,
            ),
          );
        }, timeoutMs);
      });
      try {
        const code = await Promise.race([exited, hung]);
        return { code, log: text };
      } finally {
        clearTimeout(timer);
      }
    },
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`vhost-rt did not become ready within ${timeoutMs} ms:\n${text}`));
    }, timeoutMs);
    const onData = (d: Buffer) => {
      text += d.toString();
      if (/\bready\b/.test(text)) {
        clearTimeout(timer);
        resolve(daemon);
      }
    };
    proc.stderr.on('data', onData);
    proc.stdout.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`vhost-rt exited (${code}) before ready:\n${text}`));
    });
  });
}

/**
 * Asks a running daemon for its counters (SIGUSR1) and resolves with the whole
 * `stats:` line it logs in answer (a complete line: the log may arrive in chunks).
 */
export function daemonStats(daemon: Daemon, timeoutMs = 5000): Promise<string> {
  const before = daemon.log().length;
  daemon.proc.kill('SIGUSR1');
  return waitFor(
    () => /[^\n]*stats:[^\n]*\n/.exec(daemon.log().slice(before))?.[0],
    'the stats line the daemon logs on SIGUSR1',
    timeoutMs,
  );
}
