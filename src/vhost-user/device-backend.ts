/**
 * The small interface the vhost-user protocol layer needs from a device. The
 * protocol code never knows device types (STYLE.md §1); devices never see a
 * socket.
 */
import type { MemoryRegion } from '../virtio/index.js';
import type { DirtyLogShare, QueueStart } from '../worker/index.js';

export type { QueueStart };

/**
 * The back-end-to-front-end channel (VHOST_USER_PROTOCOL_F_BACKEND_REQ), as a
 * device may use it while a front end is connected.
 */
export interface BackendRequestSender {
  /** Sends VHOST_USER_BACKEND_CONFIG_CHANGE_MSG: the driver re-reads the config space. */
  configChange(): void;
}

/**
 * A device as the vhost-user back end drives it (the worker framework's
 * DeviceHost is one; an embedder may supply its own).
 */
export interface VhostUserDevice {
  /** Device type name for logs ('blk'). */
  readonly kind: string;
  /** Device-specific feature bits (the transport bits are added by the backend). */
  readonly deviceFeatures: bigint;
  /** The front end reads the config space from the back end (offers PROTOCOL_F_CONFIG). */
  readonly servesConfig: boolean;
  /** The device changes its config space at run time (offers PROTOCOL_F_BACKEND_REQ). */
  readonly raisesConfigChanges: boolean;
  /** The device records its requests in an inflight area (offers PROTOCOL_F_INFLIGHT_SHMFD). */
  readonly tracksInflight?: boolean;
  readonly numQueues: number;
  /** Largest ring size SET_VRING_NUM may ask for. */
  readonly maxQueueSize: number;
  /** Bytes [offset, offset+size) of the config space; zero beyond its end. */
  getConfig(offset: number, size: number): Promise<Uint8Array>;
  /** Writes the config space; false when the device refuses. */
  setConfig(offset: number, data: Uint8Array): Promise<boolean>;
  setMemory(regions: MemoryRegion[]): Promise<void>;
  startQueue(index: number, start: QueueStart): Promise<void>;
  setCall(index: number, fd: number): Promise<void>;
  /**
   * Optional: replaces a started ring's err eventfd (-1: none), signalled when
   * the ring breaks; resolves once the device no longer uses the old one.
   * Devices without it get the err fd only when a ring starts.
   */
  setErr?(index: number, fd: number): Promise<void>;
  setEnabled(index: number, enabled: boolean): Promise<void>;
  /** Completes in-flight requests, stops the ring, resolves to the last avail index. */
  stopQueue(index: number): Promise<number>;
  /**
   * Optional: devices that notify the driver on their own (config changes)
   * implement it and set {@link raisesConfigChanges}. Called with the channel
   * after SET_BACKEND_REQ_FD, and with null when the front end goes away or
   * replaces it.
   */
  setBackendChannel?(channel: BackendRequestSender | null): void;
  /**
   * Optional: dirty logging for live migration (VHOST_F_LOG_ALL with a
   * SET_LOG_BASE log): the device marks `log` from its next batch on, or
   * stops (null); `usedLogAddrs[i]` is ring i's used-ring log address, -1
   * when not logged. Resolves once the device uses it. Devices without it
   * are not offered VHOST_F_LOG_ALL nor LOG_SHMFD (QEMU then refuses to migrate).
   */
  setDirtyLog?(log: DirtyLogShare | null, usedLogAddrs: number[]): Promise<void>;
  /** The device announces a migrated guest on the network (offers PROTOCOL_F_RARP). */
  readonly announcesMigration?: boolean;
  /** With {@link announcesMigration}: SEND_RARP, a RARP broadcast from `mac` (6 bytes). */
  sendRarp?(mac: Uint8Array): Promise<void>;
}
