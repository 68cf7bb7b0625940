/**
 * `--metrics ADDR`: `/metrics` in the Prometheus text exposition format
 * (version 0.0.4), served over HTTP on the main thread (DESIGN.md rule 10).
 *
 * Collect on scrape: nothing is read from the workers' shared memory between
 * scrapes. Each scrape takes one snapshot of every device (its counters, its
 * per-queue counters, its latency histograms: the same readers `query-stats`
 * uses) and prom-client's metrics read from that snapshot in their
 * `collect()`, so one scrape shows one moment per device, and query-stats
 * and /metrics give the same numbers.
 *
 * Latency histograms: prom-client's Histogram only takes single observations
 * (`observe(value)`) and keeps its own bucket counts; it has no way to be
 * handed counts that were bucketed elsewhere (the workers' shared-memory
 * histograms), and replaying every observation on each scrape would cost a
 * scrape O(requests). So the histograms are a small custom metric of type
 * `histogram` registered in the same prom-client Registry: its `get()`
 * returns the `_bucket{le=...}` (cumulative), `_sum` and `_count` samples,
 * and prom-client formats them with everything else.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { Counter, Gauge, type Metric, Registry } from 'prom-client';
import { ConfigError } from '../errors.js';
import { type HistogramSnapshot, LATENCY_BUCKET_BOUNDS_NS } from '../locking/index.js';
import type { Logger } from '../log.js';
import { listenUnix, removeSocket, type SocketPermissions } from '../sockets/listen.js';
import type { ControlledDevice } from './types.js';

/** Where `/metrics` listens: a TCP host and port, or a Unix socket path. */
export type MetricsAddress =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string };

/** The flag every error of this module names. */
const FLAG = '--metrics';

/**
 * Parses `--metrics ADDR`: `HOST:PORT` (an IPv4 address or name, `[IPv6]`;
 * port 0..65535, 0 for any free port) or `unix:PATH`. A ConfigError naming
 * the flag otherwise.
 */
export function parseMetricsAddress(text: string): MetricsAddress {
  const bad = (why: string) =>
    new ConfigError(`${FLAG} ${text}: ${why} (expected 127.0.0.1:PORT, [::1]:PORT or unix:PATH)`);
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    if (path === '') throw bad('no socket path');
    return { kind: 'unix', path };
  }
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  if (m === null) throw bad('not an address');
  const port = Number(m[3]);
  if (port > 65535) throw bad('the port must be 0..65535');
  return { kind: 'tcp', host: m[1] ?? m[2], port };
}

/** One device as a scrape saw it. */
interface DeviceScrape {
  index: number;
  d: ControlledDevice;
  stats: Record<string, number>;
  ports: Record<string, number>[] | undefined;
  queues: Record<string, number>[] | undefined;
  latency: HistogramSnapshot[] | undefined;
}

/** Reads every device once (the shared-memory reads of one scrape). */
function scrapeDevices(devices: readonly ControlledDevice[]): DeviceScrape[] {
  return devices.map((d, index) => ({
    index,
    d,
    stats: d.stats(),
    ports: d.portStats?.(),
    queues: d.queueStats?.(),
    latency: d.latency?.(),
  }));
}

type Labels = Record<string, string | number>;
/** One sample a metric reports: its labels and value. */
type Sample = [Labels, number];
/** Computes a metric's samples from one scrape. */
type Sampler = (devices: DeviceScrape[]) => Sample[];

/** A counter or gauge read from a scrape: name, help, type, label names, how to sample it. */
interface PlainMetric {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  labels: string[];
  sample: Sampler;
}

const DEVICE_LABELS = ['device', 'socket'];

function deviceLabels(s: DeviceScrape): Labels {
  return { device: s.index, socket: s.d.socketPath };
}

/** One sample per device of `kinds` (a device-wide counter). */
function perDevice(kinds: readonly string[], stat: string): Sampler {
  return (devices) =>
    devices
      .filter((s) => kinds.includes(s.d.kind) && stat in s.stats)
      .map((s) => [deviceLabels(s), s.stats[stat]]);
}

/** One sample per queue of every blk device: queue counter `stat`. */
function perQueue(stat: string): Sampler {
  return (devices) =>
    devices.flatMap((s) =>
      (s.queues ?? []).map((q, queue): Sample => [{ ...deviceLabels(s), queue }, q[stat] ?? 0]),
    );
}

/** One sample per net port and `label` value: stat names by label value. */
function perNetPort(label: string, stats: Record<string, string>): Sampler {
  return (devices) =>
    devices
      .filter((s) => s.d.kind === 'net' || s.d.kind === 'tap')
      .flatMap((s) =>
        Object.entries(stats).map(
          ([value, stat]): Sample => [
            { ...deviceLabels(s), kind: s.d.kind, [label]: value },
            s.stats[stat] ?? 0,
          ],
        ),
      );
}

/** The ports of a console (its portStats) or a serial UART (one port: its stats). */
function charPorts(s: DeviceScrape): Record<string, number>[] {
  if (s.d.kind === 'console') return s.ports ?? [];
  if (s.d.kind === 'serial') return [s.stats];
  return [];
}

/**
 * One sample per console/serial port: port stat `stat`, or with `by`, one
 * per entry of `by` (stat names by the value of label `label`).
 */
function perCharPort(stat: string, by?: { label: string; stats: Record<string, string> }): Sampler {
  const entries = by === undefined ? [['', stat]] : Object.entries(by.stats);
  return (devices) =>
    devices.flatMap((s) =>
      charPorts(s).flatMap((p, port) =>
        entries.map(([value, name]): Sample => {
          const labels: Labels = { ...deviceLabels(s), kind: s.d.kind, port };
          if (by !== undefined) labels[by.label] = value;
          return [labels, p[name] ?? 0];
        }),
      ),
    );
}

const PREFIX = 'vhost_rt_';
const Q = [...DEVICE_LABELS, 'queue'];
const NET = [...DEVICE_LABELS, 'kind'];
const CHAR = [...DEVICE_LABELS, 'kind', 'port'];

/** Every counter and gauge, by device kind. */
const PLAIN_METRICS: PlainMetric[] = [
  // blk, per queue
  ...(
    [
      ['blk_requests_total', 'Requests popped from the queue.', 'requests'],
      ['blk_read_bytes_total', 'Bytes read from the image into guest memory.', 'bytesRead'],
      ['blk_written_bytes_total', 'Bytes written from guest memory to the image.', 'bytesWritten'],
      ['blk_errors_total', 'Requests completed with a status other than OK.', 'errors'],
      ['blk_interrupts_total', 'Used-buffer notifications (interrupts) sent.', 'interrupts'],
      [
        'blk_batches_total',
        'Drain batches that popped requests (one engine submission each).',
        'batches',
      ],
      [
        'blk_completion_batches_total',
        'Completion batches that completed requests.',
        'completionBatches',
      ],
      [
        'blk_latency_target_exceeded_total',
        'Requests whose kick-to-completion latency exceeded --latency-target-us.',
        'latencyTargetExceeded',
      ],
    ] as const
  ).map(
    ([name, help, stat]): PlainMetric => ({
      name,
      help,
      type: 'counter',
      labels: Q,
      sample: perQueue(stat),
    }),
  ),
  {
    name: 'blk_in_flight_requests',
    help: 'Requests popped and not yet completed, as of the last batch.',
    type: 'gauge',
    labels: Q,
    sample: perQueue('inFlight'),
  },
  // blk, per device
  ...(
    [
      ['blk_kicks_total', 'Kicks that found requests.', 'kicks'],
      ['blk_unsupported_total', 'Requests of a type the device does not serve.', 'unsupported'],
      ['blk_bad_chains_total', 'Malformed descriptor chains dropped.', 'badChains'],
      [
        'blk_broken_queues_total',
        'Queues broken by a guest or front-end violation.',
        'brokenQueues',
      ],
      [
        'blk_throttled_requests_total',
        "Requests that waited for the device's token buckets (QoS limits).",
        'throttledRequests',
      ],
      [
        'blk_rt_guard_held_requests_total',
        'Requests that waited because an RT-class neighbour on the same disk was active and the device was at its RT guard cap.',
        'guardHeldRequests',
      ],
      [
        'blk_rt_guard_rate_holds_total',
        "Admissions the RT guard's rate term (--rt-guard-bps) refused while an RT-class neighbour on the same disk was active.",
        'guardRateHolds',
      ],
    ] as const
  ).map(
    ([name, help, stat]): PlainMetric => ({
      name,
      help,
      type: 'counter',
      labels: DEVICE_LABELS,
      sample: perDevice(['blk'], stat),
    }),
  ),
  // blk, per device, microsecond counters exposed in seconds
  ...(
    [
      [
        'blk_throttled_seconds_total',
        "Time the device's queues were held by its token buckets.",
        'throttledUs',
      ],
      [
        'blk_rt_guard_held_seconds_total',
        "Time the device's queues were held by the RT guard (an RT-class neighbour on the same disk).",
        'guardHeldUs',
      ],
    ] as const
  ).map(
    ([name, help, stat]): PlainMetric => ({
      name,
      help,
      type: 'counter',
      labels: DEVICE_LABELS,
      sample: (devices) =>
        perDevice(['blk'], stat)(devices).map(([labels, us]): Sample => [labels, us / 1e6]),
    }),
  ),
  // net, per port
  {
    name: 'net_packets_total',
    help: 'Frames: tx from the port peer into the switch, rx delivered to the peer.',
    type: 'counter',
    labels: [...NET, 'direction'],
    sample: perNetPort('direction', { tx: 'txPackets', rx: 'rxPackets' }),
  },
  {
    name: 'net_bytes_total',
    help: 'Frame bytes: tx from the port peer into the switch, rx delivered to the peer.',
    type: 'counter',
    labels: [...NET, 'direction'],
    sample: perNetPort('direction', { tx: 'txBytes', rx: 'rxBytes' }),
  },
  {
    name: 'net_drops_total',
    help: 'Frames dropped, by cause.',
    type: 'counter',
    labels: [...NET, 'cause'],
    sample: perNetPort('cause', {
      malformed: 'malformed',
      ring_full: 'ringDrops',
      link_down: 'rxDropsDown',
      bad_buffers: 'rxDropsBadBuffers',
      peer_full: 'rxDropsFull',
      filtered: 'rxFiltered',
      receiver_stalled: 'txStallDrops',
      offload_mismatch: 'rxDropsOffload',
    }),
  },
  ...(
    [
      ['net_kicks_total', 'Kicks that found frames.', 'kicks'],
      [
        'net_tx_holds_total',
        "Frames left in the guest's TX ring because their receiver's ring was full (backpressure).",
        'txHolds',
      ],
      ['net_interrupts_total', 'Used-buffer notifications (interrupts) sent.', 'interrupts'],
      ['net_control_commands_total', 'Control-queue commands handled.', 'ctrlCommands'],
      ['net_control_errors_total', 'Control-queue commands answered with an error.', 'ctrlErrors'],
      [
        'net_broken_queues_total',
        'Queues broken by a guest or front-end violation.',
        'brokenQueues',
      ],
    ] as const
  ).map(
    ([name, help, stat]): PlainMetric => ({
      name,
      help,
      type: 'counter',
      labels: NET,
      sample: netStat(stat),
    }),
  ),
  // console and serial, per port
  {
    name: 'console_bytes_total',
    help: 'Bytes: in = host to guest delivered, out = guest to host accepted into the log ring.',
    type: 'counter',
    labels: [...CHAR, 'direction'],
    sample: perCharPort('', { label: 'direction', stats: { in: 'bytesIn', out: 'bytesOut' } }),
  },
  {
    name: 'console_dropped_bytes_total',
    help: 'Guest-to-host bytes dropped by the drop policy (log ring full).',
    type: 'counter',
    labels: CHAR,
    sample: perCharPort('bytesDropped'),
  },
  {
    name: 'console_input_refused_bytes_total',
    help: 'Host-to-guest bytes refused: the bounded input buffer was full.',
    type: 'counter',
    labels: CHAR,
    sample: perCharPort('inputRefused'),
  },
  {
    name: 'console_ring_full_total',
    help: 'Times the log ring was full.',
    type: 'counter',
    labels: CHAR,
    sample: perCharPort('ringFull'),
  },
  {
    name: 'console_ring_high_water_bytes',
    help: 'Highest fill level of the log ring.',
    type: 'gauge',
    labels: CHAR,
    sample: perCharPort('ringHighWater'),
  },
  {
    name: 'console_sink_bytes_total',
    help: 'Bytes the logger thread wrote to the sinks.',
    type: 'counter',
    labels: CHAR,
    sample: perCharPort('sinkBytes'),
  },
  {
    name: 'console_sink_errors_total',
    help: 'Sink write errors.',
    type: 'counter',
    labels: CHAR,
    sample: perCharPort('sinkErrors'),
  },
];

/** The device kinds each metric family (its name's first word) describes. */
const METRIC_KINDS: Record<string, readonly string[]> = {
  blk: ['blk'],
  net: ['net', 'tap'],
  console: ['console', 'serial'],
};

/** Port counters of console and serial (also a serial UART's own stats). */
const CHAR_PORT_STATS = [
  'bytesIn',
  'bytesOut',
  'bytesDropped',
  'inputRefused',
  'ringFull',
  'ringHighWater',
  'sinkBytes',
  'sinkErrors',
];

/**
 * Device-wide stats that the metrics above carry already (blk's totals are
 * the sums of its per-queue metrics; net's packets/bytes/drops the sums of
 * its labelled ones). Every other stat of a device — whatever a device adds
 * later — is exported by {@link OTHER_STATS}, so /metrics never carries less
 * than query-stats.
 */
const COVERED: Record<string, ReadonlySet<string>> = {
  blk: new Set([
    'requests',
    'kicks',
    'interrupts',
    'bytesRead',
    'bytesWritten',
    'ioErrors',
    'unsupported',
    'badChains',
    'brokenQueues',
  ]),
  net: new Set([
    'packets',
    'bytes',
    'drops',
    'txPackets',
    'txBytes',
    'rxPackets',
    'rxBytes',
    'kicks',
    'interrupts',
    'malformed',
    'ringDrops',
    'rxDropsDown',
    'rxDropsBadBuffers',
    'rxDropsFull',
    'rxFiltered',
    'ctrlCommands',
    'ctrlErrors',
    'brokenQueues',
  ]),
  serial: new Set(CHAR_PORT_STATS),
};
COVERED.tap = COVERED.net;

/** Every device stat no other metric carries, labelled with its stats-line name. */
const OTHER_STATS: PlainMetric = {
  name: 'device_stat',
  help: 'Other counters of the SIGUSR1 stats line and query-stats, by name (stat).',
  type: 'gauge',
  labels: [...DEVICE_LABELS, 'kind', 'stat'],
  sample: (devices) =>
    devices.flatMap((s) =>
      Object.entries(s.stats)
        .filter(([stat]) => !COVERED[s.d.kind]?.has(stat))
        .map(([stat, value]): Sample => [{ ...deviceLabels(s), kind: s.d.kind, stat }, value]),
    ),
};

/** A device-wide stat of every net/tap port. */
function netStat(stat: string): Sampler {
  return (devices) =>
    devices
      .filter((s) => (s.d.kind === 'net' || s.d.kind === 'tap') && stat in s.stats)
      .map((s) => [{ ...deviceLabels(s), kind: s.d.kind }, s.stats[stat]]);
}

/** The value of a Prometheus `le` label: seconds, shortest round-trip decimal. */
function leOf(boundNs: number): string {
  return boundNs === Number.POSITIVE_INFINITY ? '+Inf' : String(boundNs / 1e9);
}

const LE = LATENCY_BUCKET_BOUNDS_NS.map(leOf);

/**
 * The latency histograms as one prom-client metric (see the module comment
 * for why not prom-client's Histogram): cumulative `_bucket{le}`, `_sum`
 * (seconds) and `_count` per device and queue.
 */
class PreBucketedHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly current: () => DeviceScrape[],
  ) {}

  /** What prom-client's Registry formats. */
  get(): {
    name: string;
    help: string;
    type: string;
    aggregator: string;
    values: { metricName: string; labels: Labels; value: number }[];
  } {
    const values: { metricName: string; labels: Labels; value: number }[] = [];
    for (const s of this.current()) {
      for (const [queue, h] of (s.latency ?? []).entries()) {
        const labels = { ...deviceLabels(s), queue };
        let cumulative = 0;
        for (let b = 0; b < h.buckets.length; b++) {
          cumulative += h.buckets[b];
          values.push({
            metricName: `${this.name}_bucket`,
            labels: { ...labels, le: LE[b] },
            value: cumulative,
          });
        }
        values.push({ metricName: `${this.name}_sum`, labels, value: h.sumNs / 1e9 });
        values.push({ metricName: `${this.name}_count`, labels, value: h.count });
      }
    }
    return {
      name: this.name,
      help: this.help,
      type: this.type,
      aggregator: this.aggregator,
      values,
    };
  }

  /** Nothing to reset: the values live in the workers' shared memory. */
  reset(): void {}
}

/** The registry of a daemon's devices; {@link expose} reads them once and formats. */
export class MetricsRegistry {
  readonly registry = new Registry();
  private current: DeviceScrape[] = [];

  constructor(private readonly devices: readonly ControlledDevice[]) {
    // Only the metrics of the kinds this daemon serves (device-add adds no new kind).
    const kinds = new Set(devices.map((d) => d.kind));
    for (const m of PLAIN_METRICS) {
      const family = METRIC_KINDS[m.name.slice(0, m.name.indexOf('_'))] ?? [];
      if (family.some((k) => kinds.has(k))) this.addPlain(m);
    }
    this.addPlain(OTHER_STATS);
    if (!kinds.has('blk')) return;
    const h = new PreBucketedHistogram(
      `${PREFIX}blk_request_latency_seconds`,
      'Kick-to-completion latency of blk requests (from the drain that popped them to the completion batch that completed them).',
      () => this.current,
    );
    this.registry.registerMetric(h as unknown as Metric);
  }

  private addPlain(m: PlainMetric): void {
    const current = () => this.current;
    const config = {
      name: `${PREFIX}${m.name}`,
      help: m.help,
      labelNames: m.labels,
      registers: [this.registry],
    };
    if (m.type === 'counter') {
      new Counter({
        ...config,
        collect(this: Counter) {
          this.reset();
          for (const [labels, value] of m.sample(current())) this.inc(labels, value);
        },
      });
    } else {
      new Gauge({
        ...config,
        collect(this: Gauge) {
          this.reset();
          for (const [labels, value] of m.sample(current())) this.set(labels, value);
        },
      });
    }
  }

  /** The exposition text: every device read once, now. */
  async expose(): Promise<string> {
    // collect() of every metric runs synchronously inside metrics(), before
    // its first await: a concurrent scrape cannot swap `current` under it.
    this.current = scrapeDevices(this.devices);
    try {
      return await this.registry.metrics();
    } finally {
      this.current = [];
    }
  }

  /** The Content-Type of {@link expose}'s text. */
  get contentType(): string {
    return this.registry.contentType;
  }
}

/** How to open a {@link MetricsServer}. */
export interface MetricsServerOptions {
  address: MetricsAddress;
  /** Permissions of a `unix:` socket (`--socket-mode`/`--socket-group`). */
  permissions?: SocketPermissions;
  devices: readonly ControlledDevice[];
  log: Logger;
}

/** The HTTP server of `--metrics`: GET /metrics, 404 elsewhere. */
export class MetricsServer {
  private constructor(
    private readonly server: Server,
    private readonly address: MetricsAddress,
    /** Where it listens, for the log: `http://127.0.0.1:9100/metrics` or `unix:PATH`. */
    readonly url: string,
  ) {}

  /** Listens on `options.address`; a ConfigError naming --metrics when it cannot. */
  static async open(options: MetricsServerOptions): Promise<MetricsServer> {
    const metrics = new MetricsRegistry(options.devices);
    const server = createServer((req, res) => void serve(metrics, req, res, options.log));
    const a = options.address;
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        const done = () => {
          server.off('error', reject);
          resolve();
        };
        if (a.kind === 'unix')
          server.listen({ fd: listenUnix(a.path, FLAG, 16, options.permissions) }, done);
        else server.listen({ host: a.host, port: a.port }, done);
      });
    } catch (err) {
      server.close();
      if (a.kind === 'unix') removeSocket(a.path);
      if (err instanceof ConfigError) throw err;
      const text = a.kind === 'unix' ? `unix:${a.path}` : `${a.host}:${a.port}`;
      throw new ConfigError(`${FLAG} ${text}: cannot listen: ${(err as Error).message}`, {
        cause: err,
      });
    }
    server.on('error', (err) => options.log('warn', `metrics: ${err.message}`));
    return new MetricsServer(server, a, urlOf(server, a));
  }

  /** Stops listening (open scrapes finish), removes a Unix socket. */
  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
    });
    if (this.address.kind === 'unix') removeSocket(this.address.path);
  }
}

function urlOf(server: Server, a: MetricsAddress): string {
  if (a.kind === 'unix') return `unix:${a.path} /metrics`;
  const bound = server.address();
  const port = typeof bound === 'object' && bound !== null ? bound.port : a.port;
  const host = a.host.includes(':') ? `[${a.host}]` : a.host;
  return `http://${host}:${port}/metrics`;
}

/** One HTTP request: GET or HEAD /metrics, 405 for another method there, 404 elsewhere. */
async function serve(
  metrics: MetricsRegistry,
  req: IncomingMessage,
  res: ServerResponse,
  log: Logger,
): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  if (path !== '/metrics') return reply(res, 404, 'not found: try /metrics\n');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    return reply(res, 405, 'method not allowed\n');
  }
  try {
    const text = await metrics.expose();
    res.writeHead(200, { 'Content-Type': metrics.contentType });
    res.end(req.method === 'HEAD' ? undefined : text);
  } catch (err) {
    log('warn', `metrics: scrape failed: ${(err as Error).message}`);
    reply(res, 500, 'scrape failed\n');
  }
}

function reply(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' });
  res.end(text);
}
