/**
 * The generic part of a switch port's worker: it attaches the port's rings
 * (a {@link SwitchPort}), owns the watcher of the port's doorbell eventfd on
 * the worker's own loop, and calls the hosted peer's doorbell handler when
 * another port has sent it frames. The peer — the virtio-net device of a
 * vhost-user port, or the TAP peer — only ever sees the
 * {@link NetBackendPort} interface.
 */
import { type FdWatcher, native, POLL_READABLE } from '../native.js';
import type { NetBackendPort } from './backend-port.js';
import { SwitchPort, type SwitchPortInit } from './switch-port.js';

/** What a port runtime hosts: whatever consumes the frames sent to the port. */
export interface PortPeer {
  /** Other ports sent this one frames: drain them now ({@link NetBackendPort.peek} / release). */
  doorbell(): void;
}

/** One switch port in its worker: its rings and its doorbell watcher. */
export class PortRuntime {
  /** The port the hosted peer transmits into and receives from. */
  readonly port: NetBackendPort;
  private peer: PortPeer | null = null;
  private watcher: FdWatcher | null;

  constructor(init: SwitchPortInit) {
    this.port = new SwitchPort(init);
    const bell = init.doorbells[init.port];
    if (bell === undefined) {
      throw new RangeError(
        `switch port ${init.port} has no doorbell (${init.doorbells.length} ports)`,
      );
    }
    this.watcher = new native.FdWatcher(bell, () => {
      // Reading resets the counter before the rings are drained: a frame
      // committed after this read rings again, so none is left unnoticed.
      native.eventfdRead(bell);
      this.peer?.doorbell();
    });
  }

  /**
   * Starts delivering the doorbell to `peer` (once per runtime). The watcher
   * keeps the thread's event loop alive until {@link close}.
   */
  host(peer: PortPeer): void {
    if (this.watcher === null) throw new RangeError('port runtime is closed');
    if (this.peer !== null) throw new RangeError('port runtime already hosts a peer');
    this.peer = peer;
    this.watcher.start(POLL_READABLE);
  }

  /** Stops watching the doorbell and forgets the peer; the thread may then exit. Idempotent. */
  close(): void {
    this.watcher?.close();
    this.watcher = null;
    this.peer = null;
  }
}
