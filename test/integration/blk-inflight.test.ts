/**
 * Inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, issue 9) on the
 * real `vhost-rt blk` daemon, driven by the project's own front end over a real
 * socket: the area GET_INFLIGHT_FD hands out (a memfd of the right size), the
 * region's contents after traffic (version, desc_num, used_idx, the last-batch
 * list, counters in pop order), the exact resubmission order when SET_INFLIGHT_FD
 * brings a region with requests in flight, the switch that turns the feature off,
 * and SET_INFLIGHT_FD payloads and fds a front end must not get away with.
 *
 * The daemon runs the `sync` engine here: requests run in the order they were
 * popped and come back in that order, so the used ring shows the pop order.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import { encodeInflight } from '../../src/vhost-user/codec.js';
import { ProtocolFeature, Request } from '../../src/vhost-user/protocol.js';
import { inflightAreaBytes, inflightQueueBytes } from '../../src/virtio/inflight.js';
import { BlkDriver, BlkStatus, SECTOR_SIZE } from '../frontend/index.js';
import { onDisk, pattern, same } from '../support/bytes.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;
const QUEUE_SIZE = 16;
let dir: string;
const daemons: Daemon[] = [];
const drivers: BlkDriver[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-inflight-'));
});

afterAll(async () => {
  for (const d of drivers) await d.close().catch(() => {});
  await Promise.all(daemons.map((d) => d.stop()));
  rmSync(dir, { recursive: true, force: true });
});

async function serve(
  name: string,
  extra: string[] = [],
  env: NodeJS.ProcessEnv = {},
): Promise<{ socket: string; image: string; daemon: Daemon }> {
  const image = join(dir, `${name}.img`);
  const socket = join(dir, `${name}.sock`);
  writeFileSync(image, Buffer.alloc(8 * MiB));
  const daemon = await startDaemon(
    [
      'blk',
      '--socket-path',
      socket,
      '--image',
      image,
      '--aio',
      'sync',
      '--queue-size',
      String(QUEUE_SIZE),
      ...extra,
    ],
    undefined,
    env,
  );
  daemons.push(daemon);
  return { socket, image, daemon };
}

async function connect(socket: string, queues = 1): Promise<BlkDriver> {
  // Indirect tables: one head per request, so a batch can fill the 16-entry ring.
  const driver = await BlkDriver.create({
    socketPath: socket,
    queueSize: QUEUE_SIZE,
    indirect: true,
    queues,
  });
  drivers.push(driver);
  return driver;
}

/** Records the used ids of queue 0 in used-ring order, keeping the driver's own handling. */
function usedOrder(driver: BlkDriver): number[] {
  const q = driver.vmm.queues[0];
  const seen: number[] = [];
  const inner = q.onUsed;
  q.onUsed = (used) => {
    seen.push(used.id);
    inner?.(used);
  };
  return seen;
}

/** Queue `queue`'s region of the VMM's inflight area, by the spec's offsets. */
function region(driver: BlkDriver, queue = 0) {
  const area = driver.vmm.inflight;
  if (area === undefined) throw new Error('no inflight area was negotiated');
  const dv = new DataView(area.mapping, queue * inflightQueueBytes(area.queueSize));
  const at = (head: number) => 16 + 16 * head;
  return {
    version: () => dv.getUint16(8, true),
    descNum: () => dv.getUint16(10, true),
    lastBatchHead: () => dv.getUint16(12, true),
    usedIdx: () => dv.getUint16(14, true),
    inflight: (h: number) => dv.getUint8(at(h)),
    next: (h: number) => dv.getUint16(at(h) + 6, true),
    counter: (h: number) => Number(dv.getBigUint64(at(h) + 8, true)),
    mark: (h: number, counter: number) => {
      dv.setBigUint64(at(h) + 8, BigInt(counter), true);
      dv.setUint8(at(h), 1);
    },
    marked: () =>
      Array.from({ length: dv.getUint16(10, true) }, (_, h) => h).filter(
        (h) => dv.getUint8(at(h)) !== 0,
      ),
  };
}

/** The heads the driver put in avail slots [from, from + n), read from the avail ring. */
function availHeads(driver: BlkDriver, from: number, n: number): number[] {
  const d = driver.vmm.queues[0].driver;
  const ring = driver.vmm.ram.u16(d.availRing, 2 + d.size);
  return Array.from({ length: n }, (_, i) => ring[2 + ((from + i) & (d.size - 1))]);
}

function usedIdxOf(driver: BlkDriver): number {
  return driver.vmm.queues[0].driver.usedIdx;
}

describe('vhost-rt blk: inflight I/O tracking', () => {
  it('hands out a zeroed memfd laid out for every queue and keeps the region in step with the ring', async () => {
    const { socket, image } = await serve('contents');
    const driver = await connect(socket);
    const area = driver.vmm.inflight;
    expect(driver.vmm.hasProtocolFeature(ProtocolFeature.INFLIGHT_SHMFD)).toBe(true);
    expect(area).toMatchObject({
      mmapSize: inflightAreaBytes(1, QUEUE_SIZE),
      mmapOffset: 0,
      numQueues: 1,
      queueSize: QUEUE_SIZE,
    });
    expect(native.fdInfo(area?.fd ?? -1).link).toMatch(/^\/memfd:/);
    const r = region(driver);
    // The ring initialises its region when it starts (SET_VRING_KICK has no reply to wait for).
    await waitFor(() => r.version() === 1, 'the region initialised by the started ring');
    expect([r.descNum(), r.usedIdx(), r.marked()]).toEqual([QUEUE_SIZE, 0, []]);

    const seen = usedOrder(driver);
    const data = Array.from({ length: 8 }, (_, i) => pattern(i + 1, 4096));
    const results = await driver.submitBatch(
      data.map((d, i) => ({ type: 'write' as const, sector: 8 * i, data: d })),
    );
    expect(results.map((x) => x.status)).toEqual(data.map(() => BlkStatus.OK));
    for (const [i, d] of data.entries()) expect(same(onDisk(image, 4096 * i, 4096), d)).toBe(true);

    // Completed and published: nothing marked, used_idx follows used.idx.
    expect(seen).toHaveLength(8);
    expect(r.marked()).toEqual([]);
    expect(r.usedIdx()).toBe(usedIdxOf(driver));
    // Counters follow the pop order (= used order with the sync engine).
    const counters = seen.map((h) => r.counter(h));
    expect(counters).toEqual([...counters].sort((a, b) => a - b));
    expect(new Set(counters).size).toBe(8);
    // The last batch's list runs from last_batch_head back through every head of the batch.
    expect(r.lastBatchHead()).toBe(seen[7]);
    const list = [r.lastBatchHead()];
    while (list.length < 8) list.push(r.next(list[list.length - 1]));
    expect(list).toEqual([...seen].reverse());
  });

  it('resubmits exactly the heads marked inflight, in counter order, before the requests behind them', async () => {
    const { socket, image, daemon } = await serve('resubmit');
    const driver = await connect(socket);
    for (let i = 0; i < 3; i++) await driver.write(8 * i, pattern(100 + i, 4096));
    await driver.vmm.stop();
    const used = usedIdxOf(driver);
    expect(used).toBe(3);

    // Five writes land in avail slots used..used+4 while the rings are stopped. The
    // region then says a back end popped the first three (counters 30, 10, 20) and
    // returned none of them: as a daemon killed at that moment would have left it.
    const data = Array.from({ length: 5 }, (_, i) => pattern(200 + i, 4096));
    const seen = usedOrder(driver);
    const done = data.map((d, i) => driver.post({ type: 'write', sector: 64 + 8 * i, data: d }));
    const heads = availHeads(driver, used, 5);
    const r = region(driver);
    r.mark(heads[0], 30);
    r.mark(heads[1], 10);
    r.mark(heads[2], 20);

    // QEMU rewinds the ring to used.idx for a back end that vanished: SET_VRING_BASE(used).
    driver.vmm.queues[0].base = used;
    await driver.vmm.start();
    const results = await Promise.all(done);
    expect(results.map((x) => x.status)).toEqual(data.map(() => BlkStatus.OK));

    const expected = [heads[1], heads[2], heads[0], heads[3], heads[4]];
    expect(seen).toEqual(expected);
    for (const [i, d] of data.entries())
      expect(same(onDisk(image, (64 + 8 * i) * SECTOR_SIZE, 4096), d)).toBe(true);
    // Resubmitted heads keep their counters; new ones count on from the largest.
    expect(expected.map((h) => r.counter(h))).toEqual([10, 20, 30, 31, 32]);
    expect(r.marked()).toEqual([]);
    expect(r.usedIdx()).toBe(used + 5);
    expect(r.lastBatchHead()).toBe(heads[4]);
    const line = await waitFor(
      () => /queue 0: inflight region: resubmitting 3 request\(s\)[^\n]*/.exec(daemon.log())?.[0],
      'the resubmission line in the daemon log',
    );
    expect(line).toContain(`resuming at avail index ${used + 3}`);
  });

  it('interrupts once when a ring that completed requests starts again, so a driver that lost the last interrupt goes on', async () => {
    // A back end killed after it published a completion but before its interrupt leaves a
    // driver waiting for that one request with nothing more to send (seen in
    // test/e2e/blk-crash-reconnect.test.ts: a guest hung on a flush after a restart). The
    // next back end's ring therefore interrupts once as it is enabled, unasked.
    const { socket } = await serve('restart-interrupt');
    const driver = await connect(socket);
    const q = driver.vmm.queues[0];
    await driver.write(0, pattern(7, 4096));
    await driver.vmm.stop();
    const before = q.interrupts;
    await driver.vmm.start();
    await waitFor(() => q.interrupts === before + 1, 'the interrupt of the restarted ring');
    // The driver finds nothing new behind it, and the ring serves on.
    expect(usedIdxOf(driver)).toBe(1);
    const r = await driver.write(8, pattern(8, 4096));
    expect(r.status).toBe(BlkStatus.OK);
  });

  it('gives every queue its own region of the area', async () => {
    const { socket } = await serve('mq', ['--queues', '2']);
    const driver = await connect(socket, 2);
    expect(driver.vmm.inflight).toMatchObject({
      numQueues: 2,
      mmapSize: inflightAreaBytes(2, QUEUE_SIZE),
    });
    const [r0, r1] = [region(driver, 0), region(driver, 1)];
    await waitFor(() => r0.version() === 1 && r1.version() === 1, 'both regions initialised');
    for (let i = 0; i < 3; i++) await driver.write(8 * i, pattern(300 + i, 4096), 1);
    expect([r1.usedIdx(), r1.marked(), r1.counter(r1.lastBatchHead())]).toEqual([3, [], 3]);
    expect([r0.usedIdx(), r0.lastBatchHead()]).toEqual([0, 0]);
  });

  it('is not offered with VHOST_RT_INFLIGHT=off (the A/B switch)', async () => {
    const served = await serve('off', [], { VHOST_RT_INFLIGHT: 'off' });
    const driver = await connect(served.socket);
    expect(driver.vmm.hasProtocolFeature(ProtocolFeature.INFLIGHT_SHMFD)).toBe(false);
    expect(driver.vmm.inflight).toBeUndefined();
    expect((await driver.write(0, pattern(7, 4096))).status).toBe(BlkStatus.OK);
  });

  it('refuses SET_INFLIGHT_FD with a wrong fd kind, a file shorter than the area, or a bad shape', async () => {
    const { socket, daemon } = await serve('hostile');
    const driver = await connect(socket);
    await driver.vmm.stop();
    const good = {
      mmapSize: inflightAreaBytes(1, QUEUE_SIZE),
      mmapOffset: 0,
      numQueues: 1,
      queueSize: QUEUE_SIZE,
    };
    const short = native.memfdCreate('short', 4096);
    const efd = native.eventfd(0);
    const send = (payload: typeof good, fd: number) =>
      driver.vmm.conn.request(Request.SET_INFLIGHT_FD, encodeInflight(payload), [fd], {
        needReply: true,
      });
    try {
      await expect(send(good, efd)).rejects.toThrow();
      await expect(send({ ...good, mmapSize: 8192 }, short)).rejects.toThrow();
      await expect(
        send({ ...good, numQueues: 300 }, driver.vmm.inflight?.fd ?? -1),
      ).rejects.toThrow();
      await expect(
        send({ ...good, mmapSize: 64 }, driver.vmm.inflight?.fd ?? -1),
      ).rejects.toThrow();
    } finally {
      native.close(short);
      native.close(efd);
    }
    const log = daemon.log();
    expect(log).toMatch(/SET_INFLIGHT_FD: SET_INFLIGHT_FD fd is an eventfd[^\n]*VHOST_USER_BAD_FD/);
    expect(log).toMatch(/claims 8192 bytes of a 4096-byte file \(VHOST_USER_BAD_REGION\)/);
    expect(log).toMatch(/num queues 300 is outside 1\.\.\d+ \(VHOST_USER_BAD_VALUE\)/);
    // The daemon still serves the front end with its good area.
    await driver.vmm.start();
    expect((await driver.write(0, pattern(9, 4096))).status).toBe(BlkStatus.OK);
  });
});
