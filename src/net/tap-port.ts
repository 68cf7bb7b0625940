/**
 * A switch port bound to a Linux TAP device: the uplink that lets guests
 * reach the host. Frames the kernel sends to the TAP enter the switch like
 * frames a guest transmits; frames the switch holds for this port are written
 * to the TAP straight from the packet ring (one writev each, no staging copy).
 *
 * The TAP is opened with IFF_VNET_HDR and a 12-byte header but no offloads
 * (TUNSETOFFLOAD 0): the kernel then hands us only complete, checksummed,
 * unsegmented frames, and takes the same from us, which is all the switch's
 * vhost-user ports produce and accept.
 *
 * It is a {@link QueueDevice} with no queues, so the generic worker runtime
 * serves its control commands (only shutdown matters) like any device's.
 */

import { NET_HDR_SIZE } from '../devices/net/config.js';
import { NetStat } from '../devices/net/stats.js';
import type { QueueDevice } from '../devices/queue-device.js';
import type { StatCounters } from '../locking/index.js';
import { type FdWatcher, native, POLL_READABLE } from '../native.js';
import type { SwitchPort } from './switch-port.js';

/** Frames read per wake-up before yielding to the loop. */
const BUDGET = 256;
/** Staging space for one frame read from the TAP (no GSO: at most MTU-sized). */
const STAGING_BYTES = 65536;
const MIN_FRAME = 14;

export class TapPort implements QueueDevice {
  /** The interface name the kernel gave the TAP. */
  readonly name: string;
  private readonly fd: number;
  private readonly watcher: FdWatcher;
  private readonly rxHeader = new Uint8Array(NET_HDR_SIZE);
  /** Header written in front of every frame: no checksum to complete, no GSO. */
  private readonly txHeader = new Uint8Array(NET_HDR_SIZE);
  private readonly staging = new Uint8Array(STAGING_BYTES);
  private closed = false;
  private readScheduled = false;
  private readonly runRead = (): void => {
    this.readScheduled = false;
    this.readFrames();
  };

  /** Opens (creating if needed) the TAP `name`, brings it up and starts reading it. */
  constructor(
    name: string,
    private readonly sp: SwitchPort,
    private readonly stats: StatCounters,
    private readonly warn: (message: string) => void,
    private readonly onClose?: () => void,
  ) {
    const tap = native.tapOpen(name, NET_HDR_SIZE, 0);
    this.fd = tap.fd;
    this.name = tap.name;
    this.watcher = new native.FdWatcher(this.fd, () => this.readFrames());
    this.watcher.start(POLL_READABLE);
  }

  /** Frames from the kernel into the switch, up to BUDGET per call. */
  private readFrames(): void {
    if (this.closed) return;
    this.sp.beginBatch();
    this.stats.beginBatch();
    let n = 0;
    try {
      for (; n < BUDGET; n++) {
        const length = this.read();
        if (length < 0) break;
        this.forward(length);
      }
    } finally {
      this.sp.endBatch();
      this.stats.endBatch();
    }
    if (n >= BUDGET && !this.readScheduled) {
      this.readScheduled = true;
      setImmediate(this.runRead);
    }
  }

  private forward(length: number): void {
    if (length < MIN_FRAME) {
      this.stats.add(NetStat.malformed, 1);
      this.warn(`TAP ${this.name}: ${length}-byte frame dropped`);
      return;
    }
    this.sp.forwardBytes(this.staging, 0, length);
    this.stats.add(NetStat.txPackets, 1);
    this.stats.add(NetStat.txBytes, length);
  }

  /** Frames from the switch to the kernel: every incoming ring, drained. */
  doorbell(): void {
    if (this.closed) return;
    this.sp.beginBatch();
    this.stats.beginBatch();
    try {
      for (let src = 0; src < this.sp.ports; src++) {
        const ring = this.sp.in[src];
        if (ring === null) continue;
        for (let len = ring.peek(); len >= 0; len = ring.peek()) {
          this.sp.learnFrom(src, ring.data, ring.frameOffset);
          this.write(ring.data, ring.frameOffset, len);
          ring.release();
        }
      }
    } finally {
      this.stats.endBatch();
    }
  }

  /** One frame from the kernel into the staging buffer; -1 when none is pending or the TAP failed. */
  private read(): number {
    try {
      return native.tapRead(this.fd, this.rxHeader, this.staging, 0, STAGING_BYTES);
    } catch (err) {
      // The device went away (or worse): stop reading it rather than spin on an error.
      this.warn(`TAP ${this.name}: read failed, port stops reading: ${(err as Error).message}`);
      this.watcher.stop();
      return -1;
    }
  }

  private write(data: Uint8Array, offset: number, length: number): void {
    let written: number;
    try {
      written = native.tapWrite(this.fd, this.txHeader, data, offset, length, 0, 0);
    } catch (err) {
      // EIO: the interface is down (e.g. just moved to another namespace): the link is down, drop.
      if ((err as { code?: string }).code === 'EIO') this.stats.add(NetStat.rxDropsDown, 1);
      else {
        this.stats.add(NetStat.rxDropsFull, 1);
        this.warn(`TAP ${this.name}: write failed: ${(err as Error).message}`);
      }
      return;
    }
    // -1 (EAGAIN): the kernel's TAP queue is full; like a NIC's full queue the frame is dropped, counted.
    if (written < 0) {
      this.stats.add(NetStat.rxDropsFull, 1);
      return;
    }
    this.stats.add(NetStat.rxPackets, 1);
    this.stats.add(NetStat.rxBytes, length);
  }

  // A TAP port has no virtqueues: the queue operations name no valid index.
  setMemory(): void {}
  startQueue(index: number): void {
    throw new RangeError(`TAP port has no queue ${index}`);
  }
  setEnabled(index: number): void {
    throw new RangeError(`TAP port has no queue ${index}`);
  }
  kick(): void {}
  stopQueue(index: number): Promise<number> {
    return Promise.reject(new RangeError(`TAP port has no queue ${index}`));
  }

  /** Stops reading and closes the TAP (a non-persistent TAP disappears with it). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    native.close(this.fd);
    this.onClose?.();
  }
}
