/**
 * systemd's side of readiness and socket activation, without systemd (it
 * cannot run as PID 1 here): a NOTIFY_SOCKET datagram socket the test reads,
 * and a daemon started with listening sockets at fds 3.. and LISTEN_FDS /
 * LISTEN_PID / LISTEN_FDNAMES set as systemd sets them.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { native } from '../../src/native.js';
import { CLI } from './daemon.js';
import { waitFor } from './wait.js';

/** A bound AF_UNIX datagram socket collecting sd_notify messages. */
export class NotifySocket {
  private readonly fd: number;
  private readonly buf = new Uint8Array(4096);
  /** Every message received so far, in order (one datagram each). */
  readonly messages: string[] = [];

  /** Binds `path` ('@name': the abstract namespace, as systemd may use). */
  constructor(readonly path: string) {
    this.fd = native.unixDatagramBind(path);
  }

  /** Reads whatever datagrams are pending. */
  private drain(): void {
    for (;;) {
      const r = native.recvMsg(this.fd, this.buf);
      if (r === null) return;
      for (const fd of r.fds) native.close(fd);
      this.messages.push(new TextDecoder().decode(this.buf.subarray(0, r.bytes)));
    }
  }

  /** Resolves with the first message (from `from` on) that has the line `line`. */
  waitLine(line: string, from = 0, timeoutMs = 20_000): Promise<string> {
    return waitFor(
      () => {
        this.drain();
        return this.messages.slice(from).find((m) => m.split('\n').includes(line));
      },
      () => `"${line}" on NOTIFY_SOCKET (got ${JSON.stringify(this.messages)})`,
      timeoutMs,
    );
  }

  /** Resolves with the first message (from `from` on) whose text matches `re`. */
  waitMatch(re: RegExp, from = 0, timeoutMs = 20_000): Promise<string> {
    return waitFor(
      () => {
        this.drain();
        return this.messages.slice(from).find((m) => re.test(m));
      },
      () => `${re} on NOTIFY_SOCKET (got ${JSON.stringify(this.messages)})`,
      timeoutMs,
    );
  }

  close(): void {
    native.close(this.fd);
  }
}

/** A daemon started the way systemd starts a socket-activated Type=notify service. */
export interface ActivatedDaemon {
  proc: ChildProcess;
  /** stderr and stdout so far. */
  log(): string;
  /** Resolves with the exit code once the process has exited. */
  exited: Promise<number | null>;
}

/**
 * Starts `vhost-rt ARGS` with `fds` at 3, 4, ... in the child. With
 * `listenFds`, LISTEN_FDS is their count, LISTEN_FDNAMES the names, and
 * LISTEN_PID the child's own pid: set by a shell that then execs node, as
 * systemd sets it between fork and exec.
 */
export function startActivated(
  args: string[],
  options: {
    fds: number[];
    listenFds?: { names?: string[] };
    notifySocket?: string;
  },
): ActivatedDaemon {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDNAMES;
  delete env.NOTIFY_SOCKET;
  if (options.notifySocket !== undefined) env.NOTIFY_SOCKET = options.notifySocket;
  let script = 'exec "$@"';
  if (options.listenFds !== undefined) {
    env.LISTEN_FDS = String(options.fds.length);
    if (options.listenFds.names !== undefined)
      env.LISTEN_FDNAMES = options.listenFds.names.join(':');
    script = 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"';
  }
  const proc = spawn('/bin/sh', ['-c', script, 'sh', process.execPath, CLI, ...args], {
    stdio: ['ignore', 'pipe', 'pipe', ...options.fds],
    env,
  });
  let text = '';
  proc.stderr?.on('data', (d) => {
    text += d;
  });
  proc.stdout?.on('data', (d) => {
    text += d;
  });
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  return { proc, log: () => text, exited };
}
