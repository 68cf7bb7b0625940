/** Options of the chardev-socket UART back end (`vhost-rt serial`). */
import type { RingPolicy } from '../logger/index.js';
import type { RtOptions } from '../rt/index.js';
import type { SocketPermissions } from '../sockets/listen.js';

/** The serial back end's sockets, log-ring policy and input budget ({@link SerialWorkerInit}). */
export interface SerialOptions {
  /** Where QEMU's `-chardev socket,path=SOCK` connects. */
  socketPath: string;
  /** Socket that input clients attach to; none when undefined. */
  inputPath?: string;
  /** What a full log ring does to new output. */
  policy: RingPolicy;
  /** Bytes of host-to-guest input held while QEMU is not taking it. */
  inputBufferBytes: number;
  /** Mode and group of both sockets (`--socket-mode`, `--socket-group`). */
  socketPermissions?: SocketPermissions;
}

/** workerData of a serial worker. */
export interface SerialWorkerInit {
  options: SerialOptions;
  /** The output ring (this worker is its producer). */
  ring: SharedArrayBuffer;
  /** PORT_STAT_NAMES counters. */
  statsBuffer: SharedArrayBuffer;
  rt: RtOptions;
}

/** Default bounded input buffer: 64 KiB. */
export const DEFAULT_INPUT_BUFFER_BYTES = 64 * 1024;
