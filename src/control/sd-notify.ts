/**
 * systemd's readiness protocol (sd_notify(3)), main thread only: when the
 * daemon runs under a `Type=notify` unit, systemd sets NOTIFY_SOCKET to an
 * AF_UNIX datagram socket (a path, or `@name` in the abstract namespace), and
 * the daemon sends newline-separated `KEY=VALUE` assignments there: `READY=1`
 * once every socket listens (with `MAINPID=`), `STATUS=` lines for
 * `systemctl status`, `STOPPING=1` when it starts draining.
 *
 * Node has no AF_UNIX datagram socket, so the one sendto goes through the
 * addon (native/sockets.cc, `unixDatagramSend`). The npm packages were
 * weighed and not taken: `sd-notify` wraps libsystemd's sd_notify (it needs
 * libsystemd-dev and a second native build for one sendto), `unix-dgram` is a
 * second nan-based addon for the same single call; the protocol itself is
 * these few lines. A send that fails (systemd gone, socket full) is
 * logged once and otherwise ignored: readiness must never stop the daemon.
 */
import type { Logger } from '../log.js';
import { native } from '../native.js';
import type { ControlledDevice } from './types.js';

/** Sends sd_notify messages to NOTIFY_SOCKET; every method is a no-op when it is unset. */
export class SdNotifier {
  private failed = false;

  private constructor(
    /** NOTIFY_SOCKET as given ('/run/systemd/notify' or '@name'); null: not under systemd. */
    readonly socketPath: string | null,
    private readonly log: Logger | null,
  ) {}

  /**
   * A notifier for NOTIFY_SOCKET of `env`. The variable is then removed from
   * `env` (sd_notify's unset_environment), so that processes the daemon starts
   * do not report to systemd in its name.
   */
  static fromEnv(env: NodeJS.ProcessEnv = process.env, log: Logger | null = null): SdNotifier {
    const path = env.NOTIFY_SOCKET;
    delete env.NOTIFY_SOCKET;
    return new SdNotifier(path === undefined || path === '' ? null : path, log);
  }

  /** True when NOTIFY_SOCKET was set. */
  get enabled(): boolean {
    return this.socketPath !== null;
  }

  /** `READY=1`, `MAINPID=` this process and `STATUS=status`: every socket listens. */
  ready(status: string): void {
    this.send({ READY: '1', MAINPID: String(process.pid), STATUS: status });
  }

  /** `STATUS=text` (one line, shown by `systemctl status`). */
  status(text: string): void {
    this.send({ STATUS: text });
  }

  /** `STOPPING=1` and a status: the daemon drains and will exit. */
  stopping(status: string): void {
    this.send({ STOPPING: '1', STATUS: status });
  }

  /** Sends one datagram of `KEY=VALUE` lines (values must not contain newlines: they are replaced). */
  send(fields: Record<string, string>): void {
    if (this.socketPath === null) return;
    const text = Object.entries(fields)
      .map(([k, v]) => `${k}=${v.replace(/\n/g, ' ')}`)
      .join('\n');
    try {
      native.unixDatagramSend(this.socketPath, new TextEncoder().encode(`${text}\n`));
    } catch (err) {
      if (this.failed) return;
      this.failed = true;
      const code = (err as { code?: string }).code ?? String(err);
      this.log?.('warn', `NOTIFY_SOCKET ${this.socketPath}: cannot notify systemd (${code})`);
    }
  }
}

/** `n device(s)` for status lines. */
function devices(n: number): string {
  return `${n} device${n === 1 ? '' : 's'}`;
}

/**
 * Keeps systemd's STATUS= current as front ends come and go on `devices`'
 * vhost-user servers ("front end connected on /run/vm0-disk.sock; 1 of 2
 * devices connected"). Chains after any listener already installed (the
 * control socket's); a no-op when NOTIFY_SOCKET is unset.
 */
export function reportFrontends(notifier: SdNotifier, list: readonly ControlledDevice[]): void {
  if (!notifier.enabled) return;
  const connected = new Set<string>();
  const total = list.filter((d) => d.server !== null).length;
  for (const d of list) {
    const server = d.server;
    if (server === null) continue;
    const previous = server.onFrontend;
    server.onFrontend = (up) => {
      previous?.(up);
      if (up) connected.add(d.socketPath);
      else connected.delete(d.socketPath);
      const what = up ? `front end connected on` : `front end disconnected from`;
      notifier.status(`${what} ${d.socketPath}; ${connected.size} of ${devices(total)} connected`);
    };
  }
}

/** The STATUS= line sent with READY=1. */
export function readyStatus(list: readonly ControlledDevice[], fallbackCount: number): string {
  const n = list.length > 0 ? list.length : fallbackCount;
  const sockets = list.map((d) => d.socketPath).join(', ');
  return `serving ${devices(n)}${sockets ? ` on ${sockets}` : ''}`;
}
