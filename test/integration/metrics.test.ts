/**
 * `--metrics` of real daemons, scraped over real HTTP (TCP and a Unix
 * socket): the blk device's per-queue counters and latency histograms agree
 * with `query-stats` on a quiescent device after traffic from the project's
 * front end; `--latency-target-us` counts and reports LATENCY_TARGET_EXCEEDED;
 * `promtool check metrics` accepts the output of a blk daemon with traffic,
 * a net, a console and a serial daemon; a bad address is refused naming the flag.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkDriver } from '../frontend/index.js';
import { blkTraffic } from '../support/blk-traffic.js';
import { type Daemon, runCli, startDaemon } from '../support/daemon.js';
import { type Json, QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

let dir: string;
const daemons: Daemon[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-metrics-'));
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  rmSync(dir, { recursive: true, force: true });
});

/** Where a scrape goes: a TCP port on 127.0.0.1, or a Unix socket. */
type Target = { port: number } | { socketPath: string };

/** GET (or another method) `path` over real HTTP: status, content type and body. */
function httpRequest(
  target: Target,
  path: string,
  method = 'GET',
): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const where = 'port' in target ? { host: '127.0.0.1', port: target.port } : target;
    const req = request({ ...where, path, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'] ?? '', body }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

async function scrape(target: Target): Promise<string> {
  const r = await httpRequest(target, '/metrics');
  expect(r.status).toBe(200);
  expect(r.type).toMatch(/^text\/plain; version=0\.0\.4/);
  return r.body;
}

/** The port a daemon started with `--metrics 127.0.0.1:0` logged. */
function metricsPort(d: Daemon): number {
  const m = /metrics: serving http:\/\/127\.0\.0\.1:(\d+)\/metrics/.exec(d.log());
  if (m === null) throw new Error(`no metrics line in:\n${d.log()}`);
  return Number(m[1]);
}

/** Samples of an exposition by `name{labels}` (labels as written, in order). */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

/** One sample's value; fails naming it when absent. */
function value(s: Map<string, number>, name: string, labels: Record<string, string>): number {
  const key = `${name}{${Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .join(',')}}`;
  const v = s.get(key);
  if (v === undefined) throw new Error(`no sample ${key}`);
  return v;
}

function promtool(text: string): { status: number | null; output: string } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  if (r.error !== undefined) throw r.error;
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

/** The query-stats names of the per-queue counters and their metric names. */
const QUEUE_METRICS: [string, string][] = [
  ['requests', 'vhost_rt_blk_requests_total'],
  ['bytesRead', 'vhost_rt_blk_read_bytes_total'],
  ['bytesWritten', 'vhost_rt_blk_written_bytes_total'],
  ['errors', 'vhost_rt_blk_errors_total'],
  ['inFlight', 'vhost_rt_blk_in_flight_requests'],
  ['interrupts', 'vhost_rt_blk_interrupts_total'],
  ['batches', 'vhost_rt_blk_batches_total'],
  ['completionBatches', 'vhost_rt_blk_completion_batches_total'],
  ['latencyTargetExceeded', 'vhost_rt_blk_latency_target_exceeded_total'],
];

interface QueueEntry {
  queue: number;
  latency: { count: number; 'sum-ns': number; 'over-target': number; buckets: Json };
  [stat: string]: unknown;
}

describe('vhost-rt blk --metrics', () => {
  let blk: Daemon;
  let socket: string;
  let control: string;
  let port: number;

  beforeAll(async () => {
    const image = join(dir, 'blk.img');
    socket = join(dir, 'blk.sock');
    control = join(dir, 'blk.qmp');
    writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
    blk = await startDaemon([
      'blk',
      '--socket-path',
      socket,
      '--image',
      image,
      '--queues',
      '2',
      '--control-socket',
      control,
      '--metrics',
      '127.0.0.1:0',
      // 1 µs: every request exceeds it.
      '--latency-target-us',
      '1',
    ]);
    daemons.push(blk);
    port = metricsPort(blk);
  });

  it('agrees with query-stats after traffic, histograms included, and reports the latency target', async () => {
    const qmp = await QmpClient.connect(control);
    const driver = await BlkDriver.create({ socketPath: socket, queues: 2 });
    expect(await blkTraffic(driver, 40, 1, { bytes: 4096, slots: 16 })).toBe('ok');
    for (let i = 0; i < 10; i++) expect((await driver.read(i * 8, 4096, 1)).status).toBe(0);
    // One request past the end of the image: IOERR, an error of queue 1.
    expect((await driver.read(8192, 4096, 1)).status).toBe(1);

    const exceeded = await qmp.event('LATENCY_TARGET_EXCEEDED');
    expect(exceeded.data).toMatchObject({ device: 0, socket, 'target-us': 1 });
    const data = exceeded.data as Record<string, number>;
    expect(data.exceeded).toBeGreaterThanOrEqual(1);
    expect(data['latency-us']).toBeGreaterThanOrEqual(0);
    expect([0, 1]).toContain(data.queue);
    expect(blk.log()).toMatch(/LATENCY_TARGET_EXCEEDED: queue \d, latency-us \d+, target-us 1/);

    // Quiescent: every request answered; the worker publishes a batch's counters just
    // after its interrupt, so wait until the last batch shows, then nothing moves.
    const queryQueues = async () =>
      ((await qmp.execute('query-stats')).return as { queues: QueueEntry[] }[])[0].queues;
    await waitFor(async () => {
      const qs = await queryQueues();
      return qs[1].requests === 11 && qs.every((q) => q.latency.count === q.requests);
    }, 'the last batch published');
    const s = samples(await scrape({ port }));
    const queues = await queryQueues();
    expect(queues).toHaveLength(2);
    expect(queues[0].requests).toBe(80);
    expect(queues[0].bytesWritten).toBe(40 * 4096);
    expect(queues[0].bytesRead).toBe(40 * 4096);
    expect(queues[1]).toMatchObject({ requests: 11, bytesRead: 10 * 4096, errors: 1, inFlight: 0 });
    for (const q of queues) {
      const labels = { device: '0', socket, queue: String(q.queue) };
      for (const [stat, metric] of QUEUE_METRICS) expect(value(s, metric, labels)).toBe(q[stat]);
      // Every request completed is in the histogram, and over the 1 µs target.
      const h = q.latency;
      expect(h.count).toBe(q.requests);
      expect(h['over-target']).toBe(q.latencyTargetExceeded);
      const name = 'vhost_rt_blk_request_latency_seconds';
      expect(value(s, `${name}_count`, labels)).toBe(h.count);
      expect(value(s, `${name}_sum`, labels)).toBeCloseTo(h['sum-ns'] / 1e9, 9);
      // The cumulative buckets of /metrics are the running sums of query-stats' buckets.
      const les = [...s.keys()]
        .filter((k) => k.startsWith(`${name}_bucket{`) && k.includes(`queue="${q.queue}"`))
        .map((k) => /le="([^"]+)"/.exec(k)?.[1] ?? '');
      expect(les).toHaveLength(162);
      for (const le of les) {
        const boundNs = le === '+Inf' ? Number.POSITIVE_INFINITY : Math.round(Number(le) * 1e9);
        let cumulative = 0;
        for (const [key, n] of Object.entries(h.buckets)) {
          const at = key === '+Inf' ? Number.POSITIVE_INFINITY : Number(key);
          if (at <= boundNs) cumulative += n as number;
        }
        expect(value(s, `${name}_bucket`, { ...labels, le })).toBe(cumulative);
      }
    }
    await driver.close();
    qmp.close();
  });

  it('passes promtool check metrics on the output after traffic', async () => {
    const text = await scrape({ port });
    expect(text).toContain('vhost_rt_blk_request_latency_seconds_bucket{');
    const r = promtool(text);
    expect(r.output).toBe('');
    expect(r.status).toBe(0);
  });

  it('answers 404 elsewhere and 405 to other methods on /metrics', async () => {
    expect((await httpRequest({ port }, '/')).status).toBe(404);
    expect((await httpRequest({ port }, '/metricsx')).status).toBe(404);
    expect((await httpRequest({ port }, '/metrics', 'POST')).status).toBe(405);
    expect((await httpRequest({ port }, '/metrics?x=1')).status).toBe(200);
  });
});

describe('--metrics on net, console and serial daemons', () => {
  it('net: per-port packets, bytes and drops by cause; promtool passes', async () => {
    const net = await startDaemon([
      'net',
      '--socket-path',
      join(dir, 'net-a.sock'),
      '--socket-path',
      join(dir, 'net-b.sock'),
      '--metrics',
      '127.0.0.1:0',
    ]);
    daemons.push(net);
    const text = await scrape({ port: metricsPort(net) });
    const s = samples(text);
    const port0 = { device: '0', socket: join(dir, 'net-a.sock'), kind: 'net' };
    expect(value(s, 'vhost_rt_net_packets_total', { ...port0, direction: 'tx' })).toBe(0);
    expect(value(s, 'vhost_rt_net_drops_total', { ...port0, cause: 'ring_full' })).toBe(0);
    expect(text).toContain('vhost_rt_net_bytes_total{device="1"');
    const r = promtool(text);
    expect(r.output).toBe('');
    expect(r.status).toBe(0);
  });

  it('console over a Unix socket: per-port bytes and drops; promtool passes', async () => {
    const path = join(dir, 'console-metrics.sock');
    const con = await startDaemon([
      'console',
      '--socket-path',
      join(dir, 'console.sock'),
      '--log',
      join(dir, 'console.log'),
      '--metrics',
      `unix:${path}`,
    ]);
    daemons.push(con);
    const text = await scrape({ socketPath: path });
    const s = samples(text);
    const labels = { device: '0', socket: join(dir, 'console.sock'), kind: 'console', port: '0' };
    expect(value(s, 'vhost_rt_console_bytes_total', { ...labels, direction: 'out' })).toBe(0);
    expect(value(s, 'vhost_rt_console_dropped_bytes_total', labels)).toBe(0);
    const r = promtool(text);
    expect(r.output).toBe('');
    expect(r.status).toBe(0);
    const { code } = await con.stop();
    expect(code).toBe(0);
    // The socket is removed on exit.
    expect(existsSync(path)).toBe(false);
  });

  it('serial: the UART as port 0; promtool passes', async () => {
    const serial = await startDaemon([
      'serial',
      '--socket-path',
      join(dir, 'uart.sock'),
      '--log',
      join(dir, 'uart.log'),
      '--metrics',
      '127.0.0.1:0',
    ]);
    daemons.push(serial);
    const text = await scrape({ port: metricsPort(serial) });
    const labels = { device: '0', socket: join(dir, 'uart.sock'), kind: 'serial', port: '0' };
    expect(value(samples(text), 'vhost_rt_console_ring_full_total', labels)).toBe(0);
    const r = promtool(text);
    expect(r.output).toBe('');
    expect(r.status).toBe(0);
  });

  it('refuses a bad address naming the flag', async () => {
    const r = await runCli([
      'net',
      '--socket-path',
      join(dir, 'net-bad.sock'),
      '--metrics',
      'localhost',
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--metrics localhost: not an address \(expected 127\.0\.0\.1:PORT/);
    const p = await runCli([
      'net',
      '--socket-path',
      join(dir, 'net-bad.sock'),
      '--metrics',
      '127.0.0.1:70000',
    ]);
    expect(p.stderr).toMatch(/--metrics 127\.0\.0\.1:70000: the port must be 0\.\.65535/);
  });
});
