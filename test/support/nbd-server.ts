/**
 * Real NBD servers for tests: `qemu-nbd` (Debian's qemu-utils) serving a raw
 * file, and `nbdkit` with its `memory` plugin, over TCP on 127.0.0.1 or a
 * unix socket. Each is a child process; {@link NbdServer.restart} kills it
 * (SIGKILL: the connection dies as in a crash) and starts it again on the same
 * address, for reconnect tests.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { waitFor } from './wait.js';

/** Which server, and how it is reached. */
export interface NbdServerOptions {
  kind: 'qemu-nbd' | 'nbdkit';
  transport: 'tcp' | 'unix';
  /** qemu-nbd: the raw image to export. */
  image?: string;
  /** nbdkit memory: the export's size (default 64M). */
  size?: string;
  /** nbdkit: another plugin and its parameters instead of `memory SIZE`. */
  plugin?: string[];
  /** unix: the socket path. */
  socket?: string;
  readonly?: boolean;
  /** More arguments for the server (before the image / plugin). */
  extra?: string[];
}

/** A running NBD server. */
export interface NbdServer {
  /** The URI a client connects with (export name `disk`). */
  uri: string;
  /** Everything the server wrote to stderr. */
  log(): string;
  /** SIGKILLs the server and starts it again on the same address; resolves once it accepts. */
  restart(): Promise<void>;
  /** Stops the server (SIGKILL) and waits for it to exit. */
  stop(): Promise<void>;
  /** Stops the server without starting it again (the address stays reserved). */
  kill(): Promise<void>;
  /** Starts it again after {@link kill}. */
  start(): Promise<void>;
  /** Sends `signal` to the server (SIGSTOP / SIGCONT: a server that stops reading, then resumes). */
  signal(signal: NodeJS.Signals): void;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const address = s.address();
      s.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

function accepts(target: { path: string } | { port: number; host: string }): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect(target as never);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

function argv(o: NbdServerOptions, port: number): [string, string[]] {
  const extra = o.extra ?? [];
  if (o.kind === 'qemu-nbd') {
    if (o.image === undefined) throw new TypeError('qemu-nbd needs an image');
    const where =
      o.transport === 'unix' ? [`--socket=${o.socket}`] : ['-b', '127.0.0.1', '-p', String(port)];
    const ro = o.readonly ? ['--read-only'] : [];
    return [
      'qemu-nbd',
      [...where, '-x', 'disk', '-f', 'raw', '--persistent', '--shared=8', ...ro, ...extra, o.image],
    ];
  }
  const where =
    o.transport === 'unix' ? ['-U', o.socket ?? ''] : ['-i', '127.0.0.1', '-p', String(port)];
  const ro = o.readonly ? ['-r'] : [];
  return [
    'nbdkit',
    [
      '--foreground',
      '--exit-with-parent',
      ...where,
      ...ro,
      ...extra,
      ...(o.plugin ?? ['memory', o.size ?? '64M']),
    ],
  ];
}

/** Starts the server and resolves once it accepts connections. */
export async function startNbdServer(o: NbdServerOptions): Promise<NbdServer> {
  if (o.transport === 'unix' && o.socket === undefined) throw new TypeError('unix needs a socket');
  const port = o.transport === 'tcp' ? await freePort() : 0;
  const target = o.transport === 'unix' ? { path: o.socket ?? '' } : { port, host: '127.0.0.1' };
  const uri =
    o.transport === 'unix' ? `nbd+unix:///disk?socket=${o.socket}` : `nbd://127.0.0.1:${port}/disk`;
  let text = '';
  let proc: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();
  const start = async () => {
    const [cmd, args] = argv(o, port);
    const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    proc = p;
    exited = new Promise((resolve) => p.once('exit', () => resolve()));
    p.stderr?.on('data', (d: Buffer) => {
      text += d.toString();
    });
    await waitFor(async () => {
      if (p.exitCode !== null) throw new Error(`${cmd} exited (${p.exitCode}):\n${text}`);
      return (o.transport === 'tcp' || existsSync(target.path as string)) && accepts(target);
    }, `${cmd} to accept on ${uri}`);
  };
  const kill = async () => {
    const p = proc as ChildProcess | null;
    if (p !== null && p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    await exited;
    proc = null;
  };
  await start();
  return {
    uri,
    log: () => text,
    restart: async () => {
      await kill();
      await start();
    },
    stop: kill,
    kill,
    start,
    signal: (signal) => {
      const p = proc as ChildProcess | null;
      if (p === null) throw new Error(`${uri}: the server is not running`);
      p.kill(signal);
    },
  };
}
