/**
 * The small interface the vhost-user protocol layer needs from a device. The
 * protocol code never knows device types (STYLE.md §1); devices never see a
 * socket.
 */
import type { MemoryRegion, SplitQueueConfig } from '../virtio/index.js';

/** Everything needed to start one ring, already translated to guest-physical addresses. */
export interface QueueStart {
  config: SplitQueueConfig;
  lastAvailIdx: number;
  kickFd: number;
  /** -1 when the front end asked for no interrupts (polling). */
  callFd: number;
  enabled: boolean;
}

/**
 * The back-end-to-front-end channel (VHOST_USER_PROTOCOL_F_BACKEND_REQ), as a
 * device host may use it while a front end is connected.
 */
export interface BackendRequestSender {
  /** Sends VHOST_USER_BACKEND_CONFIG_CHANGE_MSG: the driver re-reads the config space. */
  configChange(): void;
}

export interface VhostUserDevice {
  /** Device type name for logs ('blk'). */
  readonly kind: string;
  /** Device-specific feature bits (the transport bits are added by the backend). */
  readonly deviceFeatures: bigint;
  /** Protocol features the device relies on beyond the base set, e.g. CONFIG. */
  readonly protocolFeatures: bigint;
  readonly numQueues: number;
  /** Largest ring size SET_VRING_NUM may ask for. */
  readonly maxQueueSize: number;
  /** Bytes [offset, offset+size) of the config space; zero beyond its end. */
  getConfig(offset: number, size: number): Uint8Array;
  /** Writes the config space; false when the device refuses. */
  setConfig(offset: number, data: Uint8Array): boolean;
  setMemory(regions: MemoryRegion[]): Promise<void>;
  startQueue(index: number, start: QueueStart): Promise<void>;
  setCall(index: number, fd: number): Promise<void>;
  setEnabled(index: number, enabled: boolean): Promise<void>;
  /** Completes in-flight requests, stops the ring, resolves to the last avail index. */
  stopQueue(index: number): Promise<number>;
  /**
   * Optional: devices that notify the driver on their own (config changes)
   * implement it and add ProtocolFeature.BACKEND_REQ to {@link protocolFeatures}.
   * Called with the channel after SET_BACKEND_REQ_FD, and with null when the
   * front end goes away or replaces it.
   */
  setBackendChannel?(channel: BackendRequestSender | null): void;
}
