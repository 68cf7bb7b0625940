/**
 * What the control plane sees of a running daemon: one entry per device or
 * port, built by the CLI from its services. The control socket reads these
 * only when a client asks (DESIGN.md rule 10).
 */
import type { HistogramSnapshot } from '../locking/index.js';
import type { RtOptions, ThreadRtState } from '../rt/index.js';
import type { VhostUserServer } from '../vhost-user/server.js';
import type { DeviceBackups } from '../worker/backup.js';
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
  /** Per-queue counters (blk: BLK_QUEUE_STAT_NAMES), in queue order. */
  queueStats?(): Record<string, number>[];
  /** Kick-to-completion latency histograms per queue (blk), in queue order. */
  latency?(): HistogramSnapshot[];
  /**
   * `block-resize` (blk only): grows or shrinks the image to `bytes`, or
   * re-reads its size when `bytes` is undefined; resolves to the sizes
   * before and after. Absent for devices that cannot be resized.
   */
  resize?(bytes: number | undefined): Promise<{ previous: number; size: number }>;
  /** Live backups and snapshots (blk only, issue 12): blockdev-backup, query-backups, backup-cancel, blockdev-snapshot. */
  backup?: DeviceBackups;
}

/**
 * Run-time changes to the daemon's set of devices (`device-add`,
 * `device-del`), supplied by the CLI command that owns the devices. `add`
 * takes the command's checked arguments and resolves to the new device
 * (already appended to the device list); `remove` drains, disconnects and
 * removes device `index` (already taken out of the list when it resolves).
 * Failures are errors whose message names the argument at fault.
 */
export interface DeviceChanges {
  /** Device kinds `add` accepts ('blk', 'net'). */
  kinds: readonly string[];
  add(args: Record<string, unknown>): Promise<ControlledDevice>;
  remove(index: number): Promise<void>;
}

/** The version a greeting and query-version report. */
export interface ControlVersion {
  major: number;
  minor: number;
  micro: number;
  /** "vhost-rt X.Y.Z". */
  package: string;
}
