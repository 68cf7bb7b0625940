/**
 * The peer of a switch port bound to a Linux TAP device: the uplink that lets
 * guests reach the host. Frames the kernel sends to the TAP enter the switch
 * through the port's transmit side (reserve / commit), like frames a guest
 * transmits; frames the switch holds for this port are written to the TAP
 * straight from the port's receive side (peek / release: one writev each, no
 * staging copy). It is hosted by a {@link PortRuntime}, which rings
 * {@link TapPeer.doorbell}; it is not a virtio device and has no queues.
 *
 * The TAP is opened with IFF_VNET_HDR and a 12-byte header, and
 * TUNSETOFFLOAD says what the switch takes from the kernel: partial
 * checksums always, TCP frames to segment (TSO4/TSO6, up to 64 KiB) when
 * the port's rings hold them. Whatever the kernel hands us travels with its
 * header (src/net/offload.ts): a port whose driver did not take that offload
 * gets the work done in software by the switch. Towards the kernel, a frame's
 * header goes out as it came (the kernel takes partial checksums and frames
 * to segment whatever TUNSETOFFLOAD says), so traffic between a guest with
 * offloads and the host is neither checksummed nor segmented by the switch.
 */

import { copyBytes } from '../locking/copy.js';
import type { StatCounters } from '../locking/index.js';
import { type FdWatcher, native, POLL_READABLE } from '../native.js';
import { MAX_GSO_FRAME, type NetBackendPort } from './backend-port.js';
import {
  ALL_OFFLOADS,
  checkTxHeader,
  describeHeaderError,
  HeaderError,
  Offload,
} from './offload.js';
import type { PortPeer } from './port-runtime.js';

/** Frames read per wake-up before yielding to the loop. */
const BUDGET = 256;
/** Staging space for one frame read from the TAP (a 64 KiB frame to segment at most). */
const STAGING_BYTES = MAX_GSO_FRAME;
/** TUNSETOFFLOAD bits (linux/if_tun.h). */
const TUN_F_CSUM = 0x01;
const TUN_F_TSO4 = 0x02;
const TUN_F_TSO6 = 0x04;
const NO_HEADER = new Uint8Array(0);
/** Destination, source and EtherType: anything shorter is not a frame. */
const MIN_FRAME = 14;
/**
 * The vnet header in front of every frame on the TAP (TUNSETVNETHDRSZ): the
 * 12-byte virtio_net_hdr with num_buffers, all zero — no checksum to
 * complete, no segmentation.
 */
export const TAP_VNET_HDR_BYTES = 12;

/** Indexes, in the port's {@link StatCounters}, of the counters a TAP peer keeps. */
export interface TapPeerCounters {
  /** Frames and bytes read from the kernel and sent into the switch. */
  readonly txPackets: number;
  readonly txBytes: number;
  /** Frames and bytes the switch delivered to the kernel. */
  readonly rxPackets: number;
  readonly rxBytes: number;
  /** Frames from the kernel too short to be Ethernet frames. */
  readonly malformed: number;
  /** Frames for the kernel dropped because the interface was down. */
  readonly rxDropsDown: number;
  /** Frames for the kernel dropped because its TAP queue was full (or the write failed). */
  readonly rxDropsFull: number;
}

/** Options of a {@link TapPeer}. */
export interface TapPeerOptions {
  /** TAP interface to open, created if it does not exist ('': the kernel picks a name). */
  name: string;
  /** The switch port the TAP's traffic goes through. */
  port: NetBackendPort;
  stats: StatCounters;
  counters: TapPeerCounters;
  /** Reports TAP failures and malformed frames (rate limiting is the caller's business). */
  warn: (message: string) => void;
  /** Called once by {@link TapPeer.close}, e.g. to stop the port's doorbell watcher. */
  onClose?: () => void;
}

/**
 * A switch port's TAP uplink, hosted by a PortRuntime: reads the TAP into the
 * port's transmit side, writes the port's held frames to the TAP.
 */
export class TapPeer implements PortPeer {
  /** The interface name the kernel gave the TAP. */
  readonly name: string;
  private readonly fd: number;
  private readonly watcher: FdWatcher;
  private readonly port: NetBackendPort;
  private readonly stats: StatCounters;
  private readonly counters: TapPeerCounters;
  private readonly warn: (message: string) => void;
  private readonly onClose: (() => void) | undefined;
  private readonly rxHeader = new Uint8Array(TAP_VNET_HDR_BYTES);
  /** Header written in front of a frame that carries none: no checksum to complete, no GSO. */
  private readonly txHeader = new Uint8Array(TAP_VNET_HDR_BYTES);
  /** {@link Offload} bits the kernel may hand us (what TUNSETOFFLOAD said). */
  private readonly offloads: number;
  private readonly staging = new Uint8Array(STAGING_BYTES);
  private closed = false;
  private readScheduled = false;
  private readonly runRead = (): void => {
    this.readScheduled = false;
    this.readFrames();
  };

  /** Opens (creating if needed) the TAP, brings it up and starts reading it. */
  constructor(options: TapPeerOptions) {
    this.port = options.port;
    this.stats = options.stats;
    this.counters = options.counters;
    this.warn = options.warn;
    this.onClose = options.onClose;
    // Segmentation only when the port's rings take 64 KiB frames (header included).
    const gso = this.port.maxFrame >= MAX_GSO_FRAME + TAP_VNET_HDR_BYTES;
    this.offloads = gso ? ALL_OFFLOADS : Offload.CSUM;
    const tap = native.tapOpen(
      options.name,
      TAP_VNET_HDR_BYTES,
      gso ? TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 : TUN_F_CSUM,
    );
    this.fd = tap.fd;
    this.name = tap.name;
    this.watcher = new native.FdWatcher(this.fd, () => this.readFrames());
    this.watcher.start(POLL_READABLE);
  }

  /** Frames from the kernel into the switch, up to BUDGET per call. */
  private readFrames(): void {
    if (this.closed) return;
    this.port.beginBatch();
    this.stats.beginBatch();
    let n = 0;
    try {
      for (; n < BUDGET; n++) {
        const length = this.read();
        if (length < 0) break;
        this.forward(length);
      }
    } finally {
      this.port.endBatch();
      this.stats.endBatch();
    }
    if (n >= BUDGET && !this.readScheduled) {
      this.readScheduled = true;
      setImmediate(this.runRead);
    }
  }

  /** One frame from the staging buffer into the switch (copied once, whatever the destinations). */
  private forward(length: number): void {
    if (length < MIN_FRAME) {
      this.stats.add(this.counters.malformed, 1);
      this.warn(`TAP ${this.name}: ${length}-byte frame dropped`);
      return;
    }
    const hdr = this.rxHeader;
    let withHeader = false;
    if (hdr[0] !== 0 || hdr[1] !== 0) {
      // The kernel's header, checked like a guest's: nothing is trusted that the rings carry.
      const bad = checkTxHeader(hdr, 0, length, this.offloads, STAGING_BYTES);
      if (bad !== HeaderError.OK) {
        this.stats.add(this.counters.malformed, 1);
        this.warn(`TAP ${this.name}: frame dropped: ${describeHeaderError(bad, hdr, 0)}`);
        return;
      }
      withHeader = true;
    }
    const port = this.port;
    if (port.reserve(this.staging, 0, length, withHeader) > 0) {
      let at = port.txOffset;
      if (withHeader) {
        copyBytes(hdr, 0, port.txBytes, at, TAP_VNET_HDR_BYTES);
        // num_buffers means nothing in the ring.
        port.txBytes[at + TAP_VNET_HDR_BYTES - 2] = 0;
        port.txBytes[at + TAP_VNET_HDR_BYTES - 1] = 0;
        at += TAP_VNET_HDR_BYTES;
      }
      copyBytes(this.staging, 0, port.txBytes, at, length);
      port.commit();
    }
    this.stats.add(this.counters.txPackets, 1);
    this.stats.add(this.counters.txBytes, length);
  }

  /** Frames from the switch to the kernel: everything waiting for this port. */
  doorbell(): void {
    if (this.closed) return;
    this.port.beginBatch();
    this.stats.beginBatch();
    try {
      for (let len = this.port.peek(); len >= 0; len = this.port.peek()) {
        const h = this.port.rxHeader;
        // A frame with its own header: header and frame are contiguous in the ring, one part.
        if (h < 0) this.write(this.txHeader, this.port.rxBytes, this.port.rxOffset, len);
        else this.write(NO_HEADER, this.port.rxBytes, h, TAP_VNET_HDR_BYTES + len);
        this.port.release();
      }
    } finally {
      this.port.endBatch();
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

  private write(header: Uint8Array, data: Uint8Array, offset: number, length: number): void {
    let written: number;
    try {
      written = native.tapWrite(this.fd, header, data, offset, length, 0, 0);
    } catch (err) {
      // EIO: the interface is down (e.g. just moved to another namespace): the link is down, drop.
      if ((err as { code?: string }).code === 'EIO') this.stats.add(this.counters.rxDropsDown, 1);
      else {
        this.stats.add(this.counters.rxDropsFull, 1);
        this.warn(`TAP ${this.name}: write failed: ${(err as Error).message}`);
      }
      return;
    }
    // -1 (EAGAIN): the kernel's TAP queue is full; like a NIC's full queue the frame is dropped, counted.
    if (written < 0) {
      this.stats.add(this.counters.rxDropsFull, 1);
      return;
    }
    this.stats.add(this.counters.rxPackets, 1);
    // Frame bytes only: with NO_HEADER the header was part of `length`.
    this.stats.add(
      this.counters.rxBytes,
      header.length === 0 ? length - TAP_VNET_HDR_BYTES : length,
    );
  }

  /** Stops reading and closes the TAP (a non-persistent TAP disappears with it). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    native.close(this.fd);
    this.onClose?.();
  }
}
