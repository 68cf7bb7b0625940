/**
 * A listening vhost-user socket serving one front end at a time. A second
 * front end waits in the listen backlog until the first has gone and the
 * device has been reset, so a restarted QEMU simply reconnects.
 */
import type { Logger } from '../log.js';
import { type FdWatcher, native, POLL_READABLE } from '../native.js';
import { listenUnix, removeSocket, type SocketPermissions } from '../sockets/listen.js';
import { VhostUserBackend } from './backend.js';
import { VhostUserConnection } from './connection.js';
import type { VhostUserDevice } from './device-backend.js';

/** Told when a front end connects (true) or its connection has closed and the device is reset (false). */
export type FrontendListener = (connected: boolean) => void;

/**
 * Listens on `path` (replacing a stale socket file) and serves one front end at a
 * time with a fresh VhostUserBackend over the same device; `close` removes the socket.
 */
export class VhostUserServer {
  private readonly listenFd: number;
  private readonly watcher: FdWatcher;
  private connection: VhostUserConnection | null = null;
  private backend: VhostUserBackend | null = null;
  private closed = false;
  /** Front ends served so far. */
  connections = 0;
  /** Optional hook for the control plane: front end connected / disconnected. */
  onFrontend: FrontendListener | null = null;

  constructor(
    readonly path: string,
    private readonly device: VhostUserDevice,
    private readonly log: Logger,
    permissions: SocketPermissions = {},
  ) {
    this.listenFd = listenUnix(path, '--socket-path', 4, permissions);
    this.watcher = new native.FdWatcher(this.listenFd, () => this.accept());
    this.watcher.start(POLL_READABLE);
  }

  private accept(): void {
    if (this.connection !== null || this.closed) return;
    const fd = native.accept(this.listenFd);
    if (fd < 0) return;
    this.connections++;
    this.log('info', `front end connected on ${this.path}`);
    // Stop watching while one front end is served; the next waits in the backlog.
    this.watcher.stop();
    const backend = new VhostUserBackend(this.device);
    const conn = new VhostUserConnection(fd, backend, this.log);
    this.connection = conn;
    this.backend = backend;
    this.onFrontend?.(true);
    void conn.done.then(() => {
      this.connection = null;
      this.backend = null;
      this.onFrontend?.(false);
      if (!this.closed) {
        this.watcher.start(POLL_READABLE);
        this.accept();
      }
    });
  }

  /** True while a front end is connected. */
  get connected(): boolean {
    return this.connection !== null;
  }

  /** The virtio features the current front end negotiated (SET_FEATURES); null with no front end. */
  get negotiatedFeatures(): bigint | null {
    return this.backend === null ? null : this.backend.negotiatedFeatures;
  }

  /** Stops accepting, closes the current connection (completing its I/O) and removes the socket. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    native.close(this.listenFd);
    removeSocket(this.path);
    const conn = this.connection;
    if (conn !== null) {
      conn.close('daemon shutting down');
      await conn.done;
    }
  }
}
