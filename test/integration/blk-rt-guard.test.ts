/**
 * Issue 14's RT guard on a real daemon: two blk devices whose images share a disk (one
 * directory), driven by the project's front end over real sockets. While device A has
 * RT-class requests in flight (or had within the window), device B keeps at most its cap
 * of lower-class requests in flight; its other requests wait in the ring and all complete.
 * Asserted on counts the device keeps (requests held, the peak in flight while A was
 * active), never on elapsed time: the window is 10 s, longer than any of these runs, so
 * "A was active" holds from A's first read to the end of each test.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkDriver, BlkStatus } from '../frontend/index.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { type Json, QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

let dir: string;
const daemons: Daemon[] = [];
let n = 0;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-guard-'));
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  rmSync(dir, { recursive: true, force: true });
});

const KiB = 1024;
const WINDOW = 'rt-guard-window-us=10000000';

interface Pair {
  a: BlkDriver;
  b: BlkDriver;
  qmp: QmpClient;
  /** The daemon's /metrics (served on 127.0.0.1). */
  metrics: string;
}

/** One daemon serving A (`aExtra`) and B (`bExtra`), images side by side in one directory. */
async function pair(aExtra: string[], bExtra: string[]): Promise<Pair> {
  const i = n++;
  const dev = (name: string, extra: string[]) => {
    const image = join(dir, `${name}${i}.img`);
    writeFileSync(image, Buffer.alloc(8 * 1024 * KiB));
    const socket = join(dir, `${name}${i}.sock`);
    return { socket, spec: [`socket-path=${socket}`, `image=${image}`, ...extra].join(',') };
  };
  const a = dev('a', aExtra);
  const b = dev('b', bExtra);
  const control = join(dir, `c${i}.qmp`);
  const d = await startDaemon([
    'blk',
    '--device',
    a.spec,
    '--device',
    b.spec,
    '--queues',
    '1',
    '--control-socket',
    control,
    '--metrics',
    '127.0.0.1:0',
  ]);
  daemons.push(d);
  await waitFor(() => d.log().includes(b.socket), "B's ready line");
  const port = await waitFor(
    () => /metrics: serving http:\/\/127\.0\.0\.1:(\d+)\/metrics/.exec(d.log())?.[1],
    'the metrics line',
  );
  return {
    a: await BlkDriver.create({ socketPath: a.socket }),
    b: await BlkDriver.create({ socketPath: b.socket }),
    qmp: await QmpClient.connect(control),
    metrics: `http://127.0.0.1:${port}/metrics`,
  };
}

/** A device's sample of `name` in the daemon's exposition. */
async function metric(p: Pair, name: string, device: number): Promise<number> {
  const text = await (await fetch(p.metrics)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{device="${device}"`));
  if (line === undefined) throw new Error(`no ${name} sample of device ${device} in:\n${text}`);
  return Number(line.slice(line.lastIndexOf(' ') + 1));
}

async function stats(c: QmpClient, device: number): Promise<Record<string, number>> {
  return ((await c.execute('query-stats', { device })).return as { stats: Json }[])[0]
    .stats as Record<string, number>;
}

/** A's reads, one at a time, until `until` says stop; resolves with how many completed. */
async function readLoop(a: BlkDriver, until: () => boolean, ioprio?: number): Promise<number> {
  let done = 0;
  do {
    const r = await a.submit({ type: 'read', sector: (done % 64) * 8, length: 4096, ioprio });
    expect(r.status).toBe(BlkStatus.OK);
    done++;
  } while (!until());
  return done;
}

/** B's `count` writes of `size` bytes, `depth` at a time; all must succeed. */
async function flood(b: BlkDriver, count: number, depth: number, size: number): Promise<void> {
  const data = new Uint8Array(size);
  let next = 0;
  const lane = async () => {
    while (next < count) {
      const sector = ((next++ * size) / 512) % (8192 - size / 512);
      const r = await b.submit({ type: 'write', sector, data });
      expect(r.status).toBe(BlkStatus.OK);
    }
  };
  await Promise.all(Array.from({ length: depth }, lane));
}

/** A reads while B floods: B's flood starts after A's first read and A stops after it. */
async function contend(p: Pair, ioprio?: number): Promise<void> {
  let over = false;
  const first = await p.a.submit({ type: 'read', sector: 0, length: 4096, ioprio });
  expect(first.status).toBe(BlkStatus.OK);
  const reads = readLoop(p.a, () => over, ioprio);
  await flood(p.b, 96, 8, 64 * KiB);
  over = true;
  expect(await reads).toBeGreaterThan(0);
}

describe('the RT guard', () => {
  it('caps B at --rt-guard-requests while A (--ioprio rt) is active; every request completes', async () => {
    const p = await pair(['ioprio=rt:0'], [WINDOW, 'rt-guard-requests=2']);
    await contend(p);
    const b = await stats(p.qmp, 1);
    expect(b.bytesWritten).toBe(96 * 64 * KiB);
    expect(b.guardHeldRequests).toBeGreaterThan(0);
    expect(b.guardHeldUs).toBeGreaterThan(0);
    expect(b.guardPeakRequests).toBeGreaterThan(0);
    expect(b.guardPeakRequests).toBeLessThanOrEqual(2);
    // A is never held: its own requests are RT, and B never had any.
    expect((await stats(p.qmp, 0)).guardHeldRequests).toBe(0);
    // The same counters on /metrics (the held time in seconds). B's last held
    // interval may still be published after the query above (a later batch or
    // its guard timer), so each scrape must lie between two query-stats reads.
    const heldRequests = await metric(p, 'vhost_rt_blk_rt_guard_held_requests_total', 1);
    const heldSeconds = await metric(p, 'vhost_rt_blk_rt_guard_held_seconds_total', 1);
    const after = await stats(p.qmp, 1);
    expect(heldRequests).toBeGreaterThanOrEqual(b.guardHeldRequests);
    expect(heldRequests).toBeLessThanOrEqual(after.guardHeldRequests);
    expect(heldSeconds).toBeGreaterThanOrEqual(b.guardHeldUs / 1e6);
    expect(heldSeconds).toBeLessThanOrEqual(after.guardHeldUs / 1e6);
    expect(await metric(p, 'vhost_rt_blk_rt_guard_held_requests_total', 0)).toBe(0);
    await Promise.all([p.a.close(), p.b.close()]);
  });

  it('caps bytes: at most one request past --rt-guard-bytes', async () => {
    const p = await pair(['ioprio=rt:0'], [WINDOW, 'rt-guard-bytes=100000']);
    await contend(p);
    const b = await stats(p.qmp, 1);
    expect(b.guardHeldRequests).toBeGreaterThan(0);
    // Admitted below 100000 bytes, then counted whole: 2 × 64 KiB at most.
    expect(b.guardPeakBytes).toBeLessThanOrEqual(100000 + 64 * KiB);
    expect(b.guardPeakRequests).toBeLessThanOrEqual(2);
    await Promise.all([p.a.close(), p.b.close()]);
  });

  it('guest-sent RT (the header, --guest-ioprio honor) makes A the RT neighbour too', async () => {
    const p = await pair(['guest-ioprio=honor'], [WINDOW]);
    await contend(p, 1 << 13);
    const b = await stats(p.qmp, 1);
    expect(b.guardHeldRequests).toBeGreaterThan(0);
    expect(b.guardPeakRequests).toBe(1);
    await Promise.all([p.a.close(), p.b.close()]);
  });

  it('strict (--rt-guard-requests 0): B submits nothing while A is active, and all of it after', async () => {
    // A 50 ms window: B goes on (its timer looks again) once A's reads have stopped for that long.
    const p = await pair(['ioprio=rt:0'], ['rt-guard-window-us=50000', 'rt-guard-requests=0']);
    const first = await p.a.submit({ type: 'read', sector: 0, length: 4096 });
    expect(first.status).toBe(BlkStatus.OK);
    // A reads a fixed count (B cannot end before A does: it is starved meanwhile).
    let reads = 0;
    const aRun = readLoop(p.a, () => ++reads >= 200);
    await flood(p.b, 32, 8, 64 * KiB);
    expect(await aRun).toBe(200);
    const b = await stats(p.qmp, 1);
    expect(b.bytesWritten).toBe(32 * 64 * KiB);
    expect(b.guardHeldRequests).toBeGreaterThan(0);
    // Whatever B admitted, it admitted in a batch that found A inactive.
    expect(b.guardPeakRequests).toBe(0);
    await Promise.all([p.a.close(), p.b.close()]);
  });

  it('the rate term: B added by device-add with rt-guard-bps is held by its bucket while A is active; every request completes', async () => {
    // The cap wide open, so only the rate can hold B. 1 MiB/s: a 10 KiB bucket, each 64 KiB
    // write puts it in debt, so B is held again and again (with nothing in flight too: its
    // timer wakes it when the bucket refilled, else the flood would never end).
    const p = await pair(['ioprio=rt:0'], [WINDOW]);
    const image = join(dir, 'added.img');
    writeFileSync(image, Buffer.alloc(8 * 1024 * KiB));
    const socket = join(dir, 'added.sock');
    const added = await p.qmp.execute('device-add', {
      kind: 'blk',
      'socket-path': socket,
      image,
      'rt-guard-window-us': 10_000_000,
      'rt-guard-requests': 64,
      'rt-guard-bytes': 64 * 1024 * KiB,
      'rt-guard-bps': 1024 * KiB,
    });
    const index = (added.return as { device: number }).device;
    const c = await BlkDriver.create({ socketPath: socket });
    let over = false;
    const first = await p.a.submit({ type: 'read', sector: 0, length: 4096 });
    expect(first.status).toBe(BlkStatus.OK);
    const reads = readLoop(p.a, () => over);
    await flood(c, 24, 8, 64 * KiB);
    over = true;
    expect(await reads).toBeGreaterThan(0);
    const s = await stats(p.qmp, index);
    expect(s.bytesWritten).toBe(24 * 64 * KiB);
    expect(s.guardRateHolds).toBeGreaterThan(0);
    expect(s.guardHeldRequests).toBeGreaterThan(0);
    expect(await metric(p, 'vhost_rt_blk_rt_guard_rate_holds_total', index)).toBe(s.guardRateHolds);
    // A bad value is refused by name, and the daemon goes on.
    const bad = await p.qmp.execute('device-add', {
      kind: 'blk',
      'socket-path': join(dir, 'bad.sock'),
      image,
      'rt-guard-bps': -1,
    });
    expect(JSON.stringify(bad)).toContain('rt-guard-bps');
    await Promise.all([p.a.close(), p.b.close(), c.close()]);
  });

  it('holds nothing with --no-rt-guard on B, nor when A sends no RT request', async () => {
    const off = await pair(['ioprio=rt:0'], ['no-rt-guard']);
    await contend(off);
    const b = await stats(off.qmp, 1);
    expect(b.guardHeldRequests).toBe(0);
    expect(b.guardPeakRequests).toBe(0);
    expect(b.guardRateHolds).toBe(0);
    await Promise.all([off.a.close(), off.b.close()]);

    const be = await pair([], [WINDOW]);
    await contend(be);
    expect((await stats(be.qmp, 1)).guardHeldRequests).toBe(0);
    await Promise.all([be.a.close(), be.b.close()]);
  });
});
