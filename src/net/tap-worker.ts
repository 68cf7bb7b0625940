/**
 * Entry point of the TAP uplink's worker thread: the switch port's rings and
 * doorbell (a PortRuntime) with the TAP peer hosted on it. A TAP port has no
 * virtqueues, so the thread takes no command but shutdown.
 */
import { StatCounters } from '../locking/index.js';
import { applyRtOptions, type RtOptions } from '../rt/index.js';
import { rateLimitedWarn, runWorker } from '../thread/index.js';
import { PortRuntime } from './port-runtime.js';
import { NET_STAT_NAMES, NetStat } from './port-stats.js';
import type { SwitchPortInit } from './switch-port.js';
import { TapPeer } from './tap-peer.js';

/** workerData of a TAP worker. */
export interface TapWorkerInit {
  /** TAP interface to open, created if it does not exist ('': the kernel picks a name). */
  name: string;
  switchPort: SwitchPortInit;
  /** NET_STAT_NAMES counters of the port. */
  statsBuffer: SharedArrayBuffer;
  rt: RtOptions;
}

/** What the TAP worker reports once the TAP is open. */
export interface TapWorkerReady {
  /** The interface name the kernel gave the TAP. */
  tap: string;
}

runWorker<TapWorkerInit, TapWorkerReady, never>((init) => {
  // applyRtOptions' lockMemory unlocks on this thread's exit: V8 aborts if a thread ends with memory locked.
  applyRtOptions(init.rt);
  const ports = new PortRuntime(init.switchPort);
  let tap: TapPeer;
  try {
    tap = new TapPeer({
      name: init.name,
      port: ports.port,
      stats: StatCounters.attach(init.statsBuffer, NET_STAT_NAMES),
      counters: NetStat,
      warn: rateLimitedWarn(),
      onClose: () => ports.close(),
    });
  } catch (err) {
    ports.close();
    throw err;
  }
  ports.host(tap);
  return {
    ready: { tap: tap.name },
    handle: () => {
      throw new RangeError('a TAP port has no device to take commands');
    },
    shutdown: () => tap.close(),
  };
});
