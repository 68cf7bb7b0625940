/**
 * The QMP wire protocol on a Unix socket (QEMU docs/interop/qmp-spec.rst),
 * served on the main thread with node:net: a greeting on connect,
 * capabilities negotiation first, then one JSON object per line answered by
 * `return` or `error` (echoing `id`), and events to every negotiated client.
 *
 * The socket is created by listenUnix (the same live/stale checks and
 * `--socket-mode`/`--socket-group` as every other socket of the daemon) and
 * its listening fd handed to `net.Server.listen({ fd })`, which takes
 * ownership of it: one way to create sockets, and no window in which another
 * process could take the path between the checks and the listen.
 */
import { readFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import type { Logger } from '../log.js';
import { projectRoot } from '../native.js';
import { listenUnix, removeSocket, type SocketPermissions } from '../sockets/listen.js';
import { type CommandContext, executeCommand } from './commands.js';
import { QmpCommandError, type QmpErrorClass, QmpLineTooLongError } from './errors.js';
import type { ControlledDevice, ControlVersion, DeviceChanges } from './types.js';

/** Longest line (bytes) a client may send before its newline; a longer one closes that client. */
export const MAX_LINE_BYTES = 1024 * 1024;

/** Members a QMP command object may have. */
const COMMAND_MEMBERS = new Set(['execute', 'arguments', 'id']);

/** vhost-rt's version from package.json, in the greeting's shape. */
export function daemonVersion(root: string = projectRoot): ControlVersion {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
  const [major, minor, micro] = pkg.version.split(/[.-]/).map((p) => Number.parseInt(p, 10));
  return {
    major: major || 0,
    minor: minor || 0,
    micro: micro || 0,
    package: `vhost-rt ${pkg.version}`,
  };
}

/** How to open a {@link QmpServer}. */
export interface QmpServerOptions {
  /** Socket path (`--control-socket`). */
  path: string;
  permissions?: SocketPermissions;
  /** The daemon's devices, in the order query-devices lists them. */
  devices: readonly ControlledDevice[];
  log: Logger;
  /** Called (once the reply is queued) when a client sends `quit`. */
  onQuit(): void;
  /**
   * `device-add` / `device-del`: they change `devices` (the same array) in
   * place; events name a device by its index at the time of the event.
   */
  changes?: DeviceChanges;
  version?: ControlVersion;
  /** Longest line accepted; {@link MAX_LINE_BYTES} unless a test says otherwise. */
  maxLineBytes?: number;
}

/** A JSON object as the wire carries it. */
type Json = Record<string, unknown>;

/** The QMP `timestamp` member: now, as seconds and microseconds. */
function timestamp(): { seconds: number; microseconds: number } {
  const us = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
}

function errorReply(qmpClass: QmpErrorClass, desc: string, id: unknown): Json {
  const reply: Json = { error: { class: qmpClass, desc } };
  if (id !== undefined) reply.id = id;
  return reply;
}

function success(result: unknown, id: unknown): Json {
  const reply: Json = { return: result ?? {} };
  if (id !== undefined) reply.id = id;
  return reply;
}

/** A listening control socket and its clients. */
export class QmpServer {
  private readonly sessions = new Set<QmpSession>();
  private closing = false;
  /** True once a client sent `quit`: clients that half-close stay open for DRAIN_COMPLETE. */
  quitting = false;
  private readonly context: CommandContext;

  private constructor(
    private readonly server: Server,
    private readonly options: QmpServerOptions,
    readonly version: ControlVersion,
  ) {
    this.context = {
      devices: options.devices,
      version,
      quit: () => {
        this.quitting = true;
        setImmediate(() => options.onQuit());
      },
      emit: (name, data) => this.emit(name, data),
      changes: options.changes,
      watch: (d, on) => this.hook(d, on),
    };
  }

  /** Listens on `options.path` and hooks the devices' front-end and broken-ring events. */
  static async open(options: QmpServerOptions): Promise<QmpServer> {
    const fd = listenUnix(options.path, '--control-socket', 16, options.permissions);
    // Half-open: a client that sends `quit` and then EOF (socat) still gets DRAIN_COMPLETE.
    const server = createServer({ allowHalfOpen: true });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ fd }, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      server.close();
      removeSocket(options.path);
      throw err;
    }
    const qmp = new QmpServer(server, options, options.version ?? daemonVersion());
    server.on('connection', (socket) => qmp.accept(socket));
    server.on('error', (err) => options.log('warn', `control socket: ${err.message}`));
    qmp.hookDevices();
    return qmp;
  }

  private hookDevices(): void {
    for (const d of this.options.devices) this.hook(d, true);
  }

  /** Hooks (or unhooks) device `d`'s front-end and broken-ring events. */
  hook(d: ControlledDevice, on: boolean): void {
    const socket = d.socketPath;
    // The index at the time of the event: device-del moves the devices after it down.
    const index = () => this.options.devices.indexOf(d);
    if (d.server !== null)
      d.server.onFrontend = on
        ? (up) =>
            this.emit(up ? 'FRONTEND_CONNECTED' : 'FRONTEND_DISCONNECTED', {
              device: index(),
              socket,
            })
        : null;
    if (d.host !== null)
      d.host.onBroken = on
        ? (queue, ring) =>
            this.emit('DEVICE_BROKEN', {
              device: index(),
              socket,
              queue,
              code: ring.code,
              reason: ring.reason,
            })
        : null;
    // A device's own notices (LATENCY_TARGET_EXCEEDED, rate-limited by the device).
    if (d.host !== null)
      d.host.onNotice = on
        ? (name, data) => this.emit(name, { device: index(), socket, ...data })
        : null;
  }

  private accept(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const session = new QmpSession(socket, this, this.options.maxLineBytes ?? MAX_LINE_BYTES);
    this.sessions.add(session);
    socket.once('close', () => this.sessions.delete(session));
    session.send({ QMP: { version: this.greetingVersion(), capabilities: [] } });
  }

  private greetingVersion(): Json {
    const v = this.version;
    return { qemu: { major: v.major, minor: v.minor, micro: v.micro }, package: v.package };
  }

  /**
   * Runs one command for a session; errors become QMP error replies. A
   * command that waits on a worker (set-rt) gives a promise of its reply.
   */
  execute(name: string, args: Json, id: unknown): Json | Promise<Json> {
    try {
      const result = executeCommand(name, args, this.context);
      if (result instanceof Promise)
        return result.then(
          (r) => success(r, id),
          (err) => this.failure(name, err, id),
        );
      return success(result, id);
    } catch (err) {
      return this.failure(name, err, id);
    }
  }

  private failure(name: string, err: unknown, id: unknown): Json {
    if (err instanceof QmpCommandError) return errorReply(err.qmpClass, err.message, id);
    this.options.log('warn', `control socket: ${name} failed: ${(err as Error).message}`);
    return errorReply('GenericError', `${name} failed: ${(err as Error).message}`, id);
  }

  /** Logs a control-socket message. */
  log(level: 'info' | 'warn', message: string): void {
    this.options.log(level, `control socket ${this.options.path}: ${message}`);
  }

  /** Sends event `name` to every client that finished capabilities negotiation. */
  emit(name: string, data: Json): void {
    const message = { event: name, data, timestamp: timestamp() };
    for (const s of this.sessions) if (s.negotiated) s.send(message);
  }

  /**
   * Stops accepting, flushes and closes every client, removes the socket.
   * Unhooks the devices' listeners.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    for (const d of this.options.devices) {
      if (d.server !== null) d.server.onFrontend = null;
      if (d.host !== null) d.host.onBroken = null;
    }
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sessions) s.end();
    await closed;
    removeSocket(this.options.path);
  }
}

/** One client: its line buffer, negotiation state and replies in order. */
class QmpSession {
  /** True once `qmp_capabilities` succeeded: commands and events flow. */
  negotiated = false;
  private readonly decoder = new StringDecoder('utf8');
  private pending = '';
  private pendingBytes = 0;
  private closed = false;
  /** Replies go out in the order their commands came, even when one waits on a worker. */
  private replies: Promise<void> = Promise.resolve();
  /** Replies queued in {@link replies} and not yet sent. */
  private waiting = 0;

  constructor(
    private readonly socket: Socket,
    private readonly server: QmpServer,
    private readonly maxLineBytes: number,
  ) {
    socket.on('data', (chunk: Buffer) => this.receive(chunk));
    socket.on('end', () => {
      if (!server.quitting) this.end();
    });
    socket.on('error', () => this.drop());
    socket.on('close', () => this.drop());
  }

  /** Writes one message as a line, unless the client has gone. */
  send(message: Json): void {
    if (this.closed || !this.socket.writable) return;
    this.socket.write(`${JSON.stringify(message)}\r\n`);
  }

  /** Queues a reply behind those not yet sent (a set-rt still waiting on its worker). */
  private reply(message: Json | Promise<Json>): void {
    if (!(message instanceof Promise) && this.waiting === 0) {
      this.send(message);
      return;
    }
    this.waiting++;
    this.replies = this.replies
      .then(() => message)
      .then((m) => {
        this.waiting--;
        this.send(m);
      });
  }

  /** Flushes what was sent and closes the client. */
  end(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.end(() => this.socket.destroy());
  }

  private drop(): void {
    this.closed = true;
    this.socket.destroy();
  }

  /** Cuts the stream into lines; a line over the limit closes the client. */
  private receive(chunk: Buffer): void {
    if (this.closed) return;
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); nl >= 0; nl = chunk.indexOf(0x0a, start)) {
      const line =
        this.pending + this.decoder.write(chunk.subarray(start, nl)) + this.decoder.end();
      this.pending = '';
      this.pendingBytes = 0;
      start = nl + 1;
      this.line(line);
      if (this.closed) return;
    }
    this.pendingBytes += chunk.length - start;
    if (this.pendingBytes > this.maxLineBytes) {
      const err = new QmpLineTooLongError(this.maxLineBytes);
      this.server.log('warn', `closing a client: ${err.message} (${err.code})`);
      this.send(errorReply('GenericError', `${err.message}: closing the connection`, undefined));
      this.end();
      return;
    }
    this.pending += this.decoder.write(chunk.subarray(start));
  }

  /** Handles one line: parse, check the envelope, negotiate or execute. */
  private line(text: string): void {
    if (text.trim() === '') return;
    let input: unknown;
    try {
      input = JSON.parse(text);
    } catch (err) {
      this.reply(
        errorReply('GenericError', `JSON parse error, ${(err as Error).message}`, undefined),
      );
      return;
    }
    if (typeof input !== 'object' || input === null || Array.isArray(input)) {
      this.reply(errorReply('GenericError', 'QMP input must be a JSON object', undefined));
      return;
    }
    this.reply(this.command(input as Json));
  }

  /** The reply to one command object (a promise of it for a command that waits on a worker). */
  private command(input: Json): Json | Promise<Json> {
    const id = input.id;
    for (const member of Object.keys(input))
      if (!COMMAND_MEMBERS.has(member))
        return errorReply('GenericError', `QMP input member '${member}' is unexpected`, id);
    if (!('execute' in input))
      return errorReply('GenericError', "QMP input lacks member 'execute'", id);
    if (typeof input.execute !== 'string')
      return errorReply('GenericError', "QMP input member 'execute' must be a string", id);
    const args = input.arguments ?? {};
    if (typeof args !== 'object' || args === null || Array.isArray(args))
      return errorReply('GenericError', "QMP input member 'arguments' must be an object", id);
    if (input.execute === 'qmp_capabilities') return this.negotiate(args as Json, id);
    if (!this.negotiated)
      return errorReply(
        'CommandNotFound',
        "Expecting capabilities negotiation with 'qmp_capabilities'",
        id,
      );
    return this.server.execute(input.execute, args as Json, id);
  }

  /** `qmp_capabilities`: vhost-rt offers no optional capabilities, so `enable` must be empty. */
  private negotiate(args: Json, id: unknown): Json {
    if (this.negotiated)
      return errorReply(
        'CommandNotFound',
        'Capabilities negotiation is already complete, command ignored',
        id,
      );
    for (const name of Object.keys(args))
      if (name !== 'enable')
        return errorReply('GenericError', `Parameter '${name}' is unexpected`, id);
    const enable = args.enable ?? [];
    if (!Array.isArray(enable))
      return errorReply('GenericError', "Invalid parameter type for 'enable', expected: array", id);
    if (enable.length > 0)
      return errorReply('GenericError', `Capability '${String(enable[0])}' not available`, id);
    this.negotiated = true;
    return id === undefined ? { return: {} } : { return: {}, id };
  }
}
