/** Options of a virtio-console device, as the CLI and embedders give them. */
import type { RingPolicy, SinkSpec } from '../../logger/index.js';
import type { SocketPermissions } from '../../sockets/listen.js';
import { MAX_PORT_NAME_BYTES } from './config.js';

/** One port. Port 0 is the console (hvc0 in a Linux guest). */
export interface ConsolePortOptions {
  /** Sent with PORT_NAME (multiport): /dev/virtio-ports/NAME in a Linux guest. */
  name: string | null;
  /** Where the port's output goes. */
  sinks: SinkSpec[];
  /** Socket that input clients attach to; none when undefined. */
  inputPath?: string;
}

/** One console device: ports (1..31; port 0 is the console), size, log ring and input budget. */
export interface ConsoleOptions {
  ports: ConsolePortOptions[];
  /** Offer VIRTIO_CONSOLE_F_MULTIPORT (required for more than one port). */
  multiport: boolean;
  /** Initial console size (VIRTIO_CONSOLE_F_SIZE). */
  cols: number;
  rows: number;
  policy: RingPolicy;
  /** Log ring per port, a power of two. */
  ringBytes: number;
  /** Bounded input buffer per port. */
  inputBufferBytes: number;
  /** Largest ring size a front end may ask for. */
  queueSize: number;
  /** Mode and group of the ports' input sockets (`--socket-mode`, `--socket-group`). */
  socketPermissions?: SocketPermissions;
}

/** What a device worker is given to open one console device. */
export interface ConsoleDeviceInit {
  kind: 'console';
  options: ConsoleOptions;
  /** Output ring per port (this worker is each one's producer). */
  rings: SharedArrayBuffer[];
  /** PORT_STAT_NAMES counters per port. */
  portStats: SharedArrayBuffer[];
  /** CONSOLE_STAT_NAMES counters. */
  deviceStats: SharedArrayBuffer;
}

/** What an opened console device reports. */
export interface ConsoleInfo {
  ports: number;
}

/** Throws RangeError naming the option. */
export function validateConsoleOptions(o: ConsoleOptions): void {
  const n = o.ports.length;
  if (n < 1 || n > 31) throw new RangeError(`--ports ${n}: must be 1..31`);
  if (n > 1 && !o.multiport) throw new RangeError('more than one port needs multiport');
  for (const [k, v] of [
    ['cols', o.cols],
    ['rows', o.rows],
  ] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new RangeError(`--${k} ${v}: 0..65535`);
  }
  const q = o.queueSize;
  if (!Number.isInteger(q) || q < 4 || q > 1024 || (q & (q - 1)) !== 0) {
    throw new RangeError(`--queue-size ${q}: must be a power of two in 4..1024`);
  }
  for (const p of o.ports) {
    if (p.name !== null && (p.name === '' || Buffer.byteLength(p.name) > MAX_PORT_NAME_BYTES))
      throw new RangeError(`port name '${p.name}': 1..${MAX_PORT_NAME_BYTES} bytes`);
  }
}
