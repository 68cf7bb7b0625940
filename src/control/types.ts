/**
 * What the control plane sees of a running daemon: one entry per device or
 * port, built by the CLI from its services. The control socket reads these
 * only when a client asks (DESIGN.md rule 10).
 */
import type { RtOptions, ThreadRtState } from '../rt/index.js';
import type { VhostUserServer } from '../vhost-user/server.js';
import type { DeviceHost } from '../worker/device-host.js';

/** One device (blk disk, net port, console, serial UART) as the control socket reports it. */
export interface ControlledDevice {
  /** Device type: 'blk', 'net', 'tap', 'console', 'serial'. */
  kind: string;
  /** The socket a front end connects to (a TAP port's interface name for 'tap'). */
  socketPath: string;
  /** Its vhost-user server, or null when it is not served over vhost-user (TAP, serial). */
  server: VhostUserServer | null;
  /** Its device worker handle, or null when it has none (TAP, serial). */
  host: DeviceHost | null;
  /** Scheduling of the thread that serves it. */
  thread: ThreadRtState;
  /**
   * Applies validated RT options to the thread that serves it, at run time,
   * resolving to the thread's new state (which {@link thread} then shows);
   * absent when its thread cannot be changed so (TAP, serial).
   */
  setRt?(rt: RtOptions): Promise<ThreadRtState>;
  /** The counters the SIGUSR1 stats line prints for it. */
  stats(): Record<string, number>;
  /** Per-port counters of a multi-port device (console), in port order. */
  portStats?(): Record<string, number>[];
}

/** The version a greeting and query-version report. */
export interface ControlVersion {
  major: number;
  minor: number;
  micro: number;
  /** "vhost-rt X.Y.Z". */
  package: string;
}
