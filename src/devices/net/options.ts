/** Options of the network switch's ports, as the CLI and embedders give them. */

import type { SwitchPortInit } from '../../net/switch-port.js';
import type { RtOptions } from '../../rt/index.js';

/** One port: a vhost-user virtio-net device, or a TAP device. */
export type NetPortSpec =
  | { kind: 'vhost-user'; socketPath: string; mac: Uint8Array }
  | { kind: 'tap'; name: string };

/** Switch-wide options. */
export interface NetOptions {
  /** Queue pairs per vhost-user port, 1..16. */
  queuePairs: number;
  /** Largest ring size a front end may ask for (power of two, 4..1024). */
  queueSize: number;
  /** Data bytes of each port-to-port packet ring (power of two). */
  ringBytes: number;
  ageingMs: number;
  macCapacity: number;
  /**
   * Backpressure bound: how long (ms) a unicast frame for a full port is held
   * in its sender's transmit ring before that port is dropped for instead
   * (default {@link DEFAULT_HOLD_MS}; 0: drop at once).
   */
  holdMs?: number;
  /**
   * Who moves the bare frames of split rings: the native per-batch loop
   * (native/net-burst.cc, the default) or the TypeScript per-frame path.
   */
  frameLoop?: 'native' | 'typescript';
  /**
   * `--poll-us`: microseconds a port's worker keeps polling its transmit
   * rings after a batch, kicks off (the worker runtime's AdaptivePoller);
   * 0 (the default) never polls.
   */
  pollUs?: number;
  rt: RtOptions;
}

/** Default of {@link NetOptions.holdMs}. */
export const DEFAULT_HOLD_MS = 10;

/** What a device worker is given to open one vhost-user port of the switch. */
export interface NetDeviceInit {
  kind: 'net';
  /** The port's MAC address. */
  mac: Uint8Array;
  queuePairs: number;
  queueSize: number;
  /** The port's rings and the switch's doorbells. */
  switchPort: SwitchPortInit;
  /** NET_STAT_NAMES counters of the port. */
  statsBuffer: SharedArrayBuffer;
  /** {@link NetOptions.pollUs}. */
  pollUs?: number;
}

/** What an opened net port reports (nothing beyond its description). */
export type NetInfo = Record<string, never>;

/** Checks the numbers; throws RangeError naming the option. */
export function validateNetOptions(o: NetOptions): void {
  if (!Number.isInteger(o.queuePairs) || o.queuePairs < 1 || o.queuePairs > 16) {
    throw new RangeError(`--queues ${o.queuePairs}: must be an integer in 1..16`);
  }
  const q = o.queueSize;
  if (!Number.isInteger(q) || q < 4 || q > 1024 || (q & (q - 1)) !== 0) {
    throw new RangeError(`--queue-size ${q}: must be a power of two in 4..1024`);
  }
  const r = o.ringBytes;
  if (!Number.isInteger(r) || r < 65536 || r > 2 ** 28 || (r & (r - 1)) !== 0) {
    throw new RangeError(`--ring-bytes ${r}: must be a power of two in 64 KiB..256 MiB`);
  }
  if (!(o.ageingMs > 0)) throw new RangeError(`--ageing-ms ${o.ageingMs}: must be > 0`);
  if (o.holdMs !== undefined && !(o.holdMs >= 0 && o.holdMs <= 60_000))
    throw new RangeError(`holdMs ${o.holdMs}: must be in 0..60000`);
}
