/**
 * Questions: (1) what console output throughput does the decoupled path
 * reach, guest transmit chains → device worker → ring → logger thread →
 * file? (2) does a stalled sink delay the device worker? Transmit-completion
 * latency (submit → used element, as the project's front end sees it) with a
 * healthy file sink versus a FIFO that nobody reads, in the same run.
 *
 *   node dist/bench/console-stall.js [--mb 64] [--writes 2000] [--json]
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSinkSpec, type SinkSpec } from '../src/logger/index.js';
import { VhostUserServer } from '../src/vhost-user/server.js';
import { ConsoleService } from '../src/worker/console-service.js';
import { ConsoleDriver } from '../test/frontend/console-driver.js';

interface Setup {
  service: ConsoleService;
  server: VhostUserServer;
  driver: ConsoleDriver;
}

async function setup(dir: string, name: string, sink: SinkSpec, ringBytes: number): Promise<Setup> {
  const service = await ConsoleService.start(
    {
      options: {
        ports: [{ name: null, sinks: [sink] }],
        multiport: false,
        cols: 80,
        rows: 25,
        policy: 'lossless',
        ringBytes,
        inputBufferBytes: 4096,
        queueSize: 256,
      },
      rt: {},
    },
    () => {},
  );
  const socketPath = join(dir, `${name}.sock`);
  const server = new VhostUserServer(socketPath, service.device, () => {});
  const driver = await ConsoleDriver.create({ socketPath, queueSize: 256 });
  return { service, server, driver };
}

async function teardown(s: Setup): Promise<void> {
  await s.driver.close();
  await s.server.close();
  await s.service.shutdown();
}

/** MB/s from the first submit until the logger has written every byte to the file. */
async function throughput(dir: string, mb: number): Promise<number> {
  const s = await setup(dir, 'tput', parseSinkSpec(join(dir, 'tput.log')), 8 << 20);
  const chunk = Buffer.alloc(32 * 1024, 0x61);
  const total = mb * 1024 * 1024;
  const inFlight = 64;
  const t0 = process.hrtime.bigint();
  let sent = 0;
  const lane = async () => {
    while (sent < total) {
      sent += chunk.length;
      await s.driver.write(0, chunk);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
  while (s.service.streams[0].loggerStats.snapshot().sinkBytes < sent)
    await new Promise((r) => setTimeout(r, 1));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await teardown(s);
  return sent / 1e6 / seconds;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Sequential 100-byte transmits; latency of each in µs. */
async function latencies(s: Setup, writes: number): Promise<{ p50: number; p99: number }> {
  const line = Buffer.from(`${'x'.repeat(99)}\n`);
  const us: number[] = [];
  for (let i = 0; i < writes; i++) {
    const t0 = process.hrtime.bigint();
    await s.driver.write(0, line);
    us.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  us.sort((a, b) => a - b);
  return { p50: percentile(us, 50), p99: percentile(us, 99) };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      mb: { type: 'string', default: '64' },
      writes: { type: 'string', default: '2000' },
      json: { type: 'boolean' },
    },
  });
  const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-bench-console-'));
  try {
    const mbps = await throughput(dir, Number(values.mb));
    const writes = Number(values.writes);
    const healthy = await setup(dir, 'healthy', parseSinkSpec(join(dir, 'healthy.log')), 1 << 20);
    const fifo = join(dir, 'stalled.fifo');
    execFileSync('mkfifo', [fifo]);
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const stalled = await setup(dir, 'stalled', parseSinkSpec(fifo), 1 << 20);
    // Warm both up, then interleave the measurements so load changes hit both alike.
    await latencies(healthy, 100);
    await latencies(stalled, 100);
    const h = await latencies(healthy, writes);
    const st = await latencies(stalled, writes);
    const sunk = stalled.service.streams[0].loggerStats.snapshot().sinkBytes;
    const result = {
      throughputMBps: Number(mbps.toFixed(1)),
      healthy: { p50us: Number(h.p50.toFixed(1)), p99us: Number(h.p99.toFixed(1)) },
      stalled: { p50us: Number(st.p50.toFixed(1)), p99us: Number(st.p99.toFixed(1)) },
      stalledSinkBytes: sunk,
      stalledBytesOffered: (writes + 100) * 100,
    };
    closeSync(reader);
    await teardown(healthy);
    await teardown(stalled);
    if (values.json) {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      return;
    }
    process.stdout.write(
      `console output through the ring to a file: ${result.throughputMBps} MB/s\n` +
        `transmit latency, healthy sink: p50 ${result.healthy.p50us} µs, p99 ${result.healthy.p99us} µs\n` +
        `transmit latency, stalled FIFO: p50 ${result.stalled.p50us} µs, p99 ${result.stalled.p99us} µs ` +
        `(the sink took ${sunk} of ${result.stalledBytesOffered} bytes meanwhile)\n`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
