/**
 * The device-model interface (in the spirit of Firecracker's `VirtioDevice`):
 * everything a transport needs to serve a virtio device — its feature bits,
 * config space, queue count and largest queue size, and the queue operations
 * — with no knowledge of vhost-user, sockets or threads. The worker runtime
 * maps vhost-user requests onto it; an embedding VMM calls it directly.
 *
 * Life cycle: `activate(vrings)` once, `setMemory` whenever the memory table
 * changes; the transport starts and enables each {@link Vring} and calls
 * `kick(index)` when the ring is ready or the driver notified; `quiesce(index)`
 * before it stops a ring; `close()` at the end.
 */
import type { GuestMemory, Vring } from '../virtio/index.js';

/** A virtio device model. `Command` is what it accepts at run time (resize, ...). */
export interface VirtioDeviceModel<Command = never> {
  /** Device type name for logs and control: 'blk', 'net', 'console'. */
  readonly kind: string;
  /** Device-specific feature bits offered to the driver (transport bits are the transport's). */
  readonly features: bigint;
  /** Number of virtqueues. */
  readonly numQueues: number;
  /** Largest queue size the driver may choose. */
  readonly maxQueueSize: number;
  /** Bytes of the device's config space. */
  readonly configSize: number;
  /** Bytes [offset, offset + out.length) of the config space into `out`; zero beyond its end. */
  readConfig(offset: number, out: Uint8Array): void;
  /** Writes the config space; false when the device refuses (read-only field). */
  writeConfig(offset: number, data: Uint8Array): boolean;
  /** Hands the device its rings, once, before any is started. */
  activate(vrings: readonly Vring[]): void;
  /**
   * Optional: the features the driver accepted (SET_FEATURES), before each
   * ring starts; for devices whose per-request handling depends on them
   * (net offloads). Devices without it see only the ring-level bits.
   */
  setFeatures?(features: bigint): void;
  /** Installs a new guest memory table (the transport re-maps the rings itself). */
  setMemory(memory: GuestMemory): void;
  /** Ring `index` became ready, or the driver notified it: process what is available. */
  kick(index: number): void;
  /** Completes what is in flight on ring `index`; the transport stops the ring afterwards. */
  quiesce(index: number): Promise<void>;
  /** Carries out a run-time command (typed per device); devices without any omit it. */
  command?(cmd: Command): unknown;
  /** Completes everything in flight and releases the device's resources. */
  close(): Promise<void>;
}

/** Copies `config` (a device's encoded config space) into `out` from `offset`; zeroes past its end. */
export function readConfigBytes(config: Uint8Array, offset: number, out: Uint8Array): void {
  out.fill(0);
  if (offset < config.length)
    out.set(config.subarray(offset, Math.min(offset + out.length, config.length)));
}

/** What a device is given by whoever hosts it (a device worker, or an embedding VMM). */
export interface DeviceEnv {
  /** Reports guest protocol violations and device trouble (rate-limited by the host). */
  warn(message: string): void;
  /** The device changed its config space: the transport tells the driver. */
  configChanged(): void;
  /**
   * Optional: something the operator should hear about (the device rate-limits
   * it), e.g. LATENCY_TARGET_EXCEEDED: logged and sent as a control-socket
   * event `name` with `data`.
   */
  notice?(name: string, data: Record<string, number>): void;
  /**
   * Optional: work the device runs on its own (engine completions, doorbells,
   * deferred batches — anything its host does not enter through `kick`) threw.
   * The host stops serving the device (every ring broken) and its thread lives
   * on. Without it the exception propagates, as an uncaught one would.
   */
  fault?(error: unknown): void;
}

/** What the main thread learns about a device from the worker that opened it. */
export interface ModelDescription<K extends string, Info> {
  kind: K;
  features: bigint;
  numQueues: number;
  maxQueueSize: number;
  configSize: number;
  /** The device changes its config space at run time (console resize). */
  raisesConfigChanges: boolean;
  /** What is particular to this kind of device (image size and engine, ports, ...). */
  info: Info;
}

/** A device opened in its worker: the model, its description, and how its runtime should poll. */
export interface OpenedDevice<K extends string, Info> {
  // biome-ignore lint/suspicious/noExplicitAny: each model takes its own command type; the runtime forwards them unread.
  model: VirtioDeviceModel<any>;
  description: ModelDescription<K, Info>;
  runtime?: { pollUs: number; reap?: () => void };
}

/** The description of `model` with its kind-specific `info`. */
export function describeModel<K extends string, Info>(
  model: VirtioDeviceModel<unknown>,
  kind: K,
  info: Info,
  raisesConfigChanges = false,
): ModelDescription<K, Info> {
  return {
    kind,
    features: model.features,
    numQueues: model.numQueues,
    maxQueueSize: model.maxQueueSize,
    configSize: model.configSize,
    raisesConfigChanges,
    info,
  };
}
