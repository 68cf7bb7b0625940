/**
 * A sink that stalls must not delay the device worker: the console logs to a
 * FIFO that is open but nobody reads for two seconds. Every transmit must
 * complete while the FIFO is stalled — the ring absorbs the output
 * ('lossless' with a ring larger than the burst) or the policy drops and
 * counts it ('drop' with a small ring) — and once the FIFO is read, the log
 * holds everything ('lossless') or, in order, everything but the counted
 * drops, with a marker line where output resumed after each ('drop'). Latency numbers are the bench's job
 * (bench/console-stall.ts); this test asserts that no completion waited.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RingPolicy } from '../../src/logger/index.js';
import { parseSinkSpec } from '../../src/logger/index.js';
import { VhostUserServer } from '../../src/vhost-user/server.js';
import { ConsoleService } from '../../src/worker/console-service.js';
import { ConsoleDriver } from '../frontend/console-driver.js';
import { waitFor } from '../support/wait.js';

const STALL_MS = 2000;
const CHUNK = 100;
const CHUNKS = 3000; // 300 kB: more than four times a pipe's 64 KiB
const AFTER = 'after the stall\n';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-stall-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function chunk(i: number): Buffer {
  return Buffer.from(`${`chunk ${String(i).padStart(8, '0')} `.padEnd(CHUNK - 1, '.')}\n`);
}

/** Reads whatever the FIFO holds now, without waiting. */
function readAvailable(fd: number): Buffer {
  const parts: Buffer[] = [];
  const buf = Buffer.alloc(1 << 16);
  for (;;) {
    let n: number;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch (err) {
      if ((err as { code?: string }).code === 'EAGAIN') break;
      throw err;
    }
    if (n === 0) break;
    parts.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(parts);
}

async function stalledRun(policy: RingPolicy, ringBytes: number) {
  const fifo = join(dir, `${policy}.fifo`);
  execFileSync('mkfifo', [fifo]);
  // Open for reading (so the logger's open for writing succeeds), then do not read.
  const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  const log = () => {};
  const service = await ConsoleService.start(
    {
      options: {
        ports: [{ name: null, sinks: [parseSinkSpec(fifo)] }],
        multiport: false,
        cols: 80,
        rows: 25,
        policy,
        ringBytes,
        inputBufferBytes: 4096,
        queueSize: 256,
      },
      rt: {},
    },
    log,
  );
  const socketPath = join(dir, `${policy}.sock`);
  const server = new VhostUserServer(socketPath, service.device, log);
  const d = await ConsoleDriver.create({ socketPath, queueSize: 256 });
  try {
    const stallEnds = Date.now() + STALL_MS;
    let expected = '';
    for (let i = 0; i < CHUNKS; i++) {
      const c = chunk(i);
      expected += c.toString('latin1');
      await d.write(0, c);
    }
    const allDoneAt = Date.now();
    const sunkWhileStalled = service.streams[0].loggerStats.snapshot().sinkBytes;
    // Keep the FIFO unread for the whole stall window: this wait is the stall under test
    // (the sink is slow for STALL_MS), not a synchronisation.
    await new Promise((r) => setTimeout(r, Math.max(0, stallEnds - Date.now())));
    let got = Buffer.alloc(0);
    const drain = (done: () => boolean) => () => {
      got = Buffer.concat([got, readAvailable(reader)]);
      return done();
    };
    const stats = () => service.portSnapshot(0);
    const target = () => CHUNKS * CHUNK - stats().bytesDropped;
    await waitFor(
      drain(() => got.length >= target()),
      () => `the output through the FIFO (${got.length} of ${target()} bytes)`,
    );
    if (policy === 'drop') {
      await d.write(0, Buffer.from(AFTER));
      await waitFor(
        drain(() => got.includes(AFTER)),
        'the line written after the stall',
      );
    }
    return { allDoneAt, stallEnds, sunkWhileStalled, got, expected, stats: stats() };
  } finally {
    await d.close();
    await server.close();
    await service.shutdown();
    closeSync(reader);
  }
}

describe('a stalled sink does not delay the device worker', () => {
  it('lossless: the ring absorbs the burst, every transmit completes during the stall, nothing is lost', async () => {
    const r = await stalledRun('lossless', 1 << 20);
    expect(r.allDoneAt).toBeLessThan(r.stallEnds);
    // The sink really was stalled: at most a pipe's worth (plus one chunk) got through.
    expect(r.sunkWhileStalled).toBeLessThan(CHUNKS * CHUNK);
    expect(r.stats.ringFull).toBe(0);
    expect(r.stats.bytesOut).toBe(CHUNKS * CHUNK);
    expect(r.got.toString('latin1')).toBe(r.expected);
  }, 30_000);

  it('drop: a small ring drops and counts, every transmit completes, the marker says how much', async () => {
    const r = await stalledRun('drop', 8192);
    expect(r.allDoneAt).toBeLessThan(r.stallEnds);
    expect(r.stats.bytesDropped).toBeGreaterThan(0);
    expect(r.stats.bytesOut + r.stats.bytesDropped).toBe(CHUNKS * CHUNK + AFTER.length);
    const text = r.got.toString('latin1');
    const markers = [...text.matchAll(/\n\[vhost-rt: (\d+) bytes dropped: log ring full\]\n/g)];
    expect(markers.length).toBeGreaterThan(0);
    expect(markers.reduce((n, m) => n + Number(m[1]), 0)).toBe(r.stats.bytesDropped);
    expect(text.endsWith(AFTER)).toBe(true);
    // What was kept between markers is in order: each piece lies later in the output than the last.
    const pieces = text
      .slice(0, -AFTER.length)
      .split(/\n\[vhost-rt: \d+ bytes dropped: log ring full\]\n/);
    let at = 0;
    for (const piece of pieces) {
      const found = r.expected.indexOf(piece, at);
      expect(found).toBeGreaterThanOrEqual(at);
      at = found + piece.length;
    }
  }, 30_000);
});
