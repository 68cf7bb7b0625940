/**
 * Guest memory cannot vanish under the daemon (issue 11). A front end that
 * shrinks the memfd behind guest RAM after SET_MEM_TABLE and then kicks would
 * have the device worker touch pages past the end of the file: SIGBUS, whose
 * default action kills the daemon and every device in it. native/sigbus.cc
 * answers such a fault with zero pages; the worker runtime sees the fault
 * counter move and breaks the rings of that device only (DEVICE_BROKEN,
 * "guest memory shrank (SIGBUS)"); a new connection with fresh memory is
 * served again, and the other devices never notice.
 */
import { spawnSync } from 'node:child_process';
import { ftruncateSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native, projectRoot } from '../../src/native.js';
import { GUEST_MEMORY_SHRANK as SHRANK } from '../../src/worker/messages.js';
import { BlkDriver } from '../frontend/index.js';
import { ethFrame, NetDriver } from '../frontend/net-driver.js';
import { blkTraffic } from '../support/blk-traffic.js';
import { pattern } from '../support/bytes.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { waitFor } from '../support/wait.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** Guest RAM of the hostile front end. */
const RAM = 4 * MiB;
/**
 * 17 pages: the rings (page 0) and the first request's header survive, the
 * end of a 64 KiB request placed at 4 KiB (its status byte at 69648) does not.
 */
const KEEP_RINGS = 69632;

describe('native SIGBUS handler', () => {
  it('answers a fault past the end of a shrunk mapping with zeros and counts it', () => {
    const counter = native.guestFaultCounter();
    const fd = native.memfdCreate('hostile-worker-shrink', 64 * KiB);
    try {
      const buffer = native.mmapShared(fd, 64 * KiB, 0);
      const bytes = new Uint8Array(buffer);
      bytes.fill(0x5a);
      const before = Atomics.load(counter, 0);
      expect(native.guestFaults(buffer)).toBe(0);
      ftruncateSync(fd, 8 * KiB);
      // Below the new end: the file's pages, unchanged.
      expect(bytes[8 * KiB - 1]).toBe(0x5a);
      // Past it: a SIGBUS, answered with zero pages; the access is retried.
      expect(bytes[8 * KiB]).toBe(0);
      expect(bytes[64 * KiB - 1]).toBe(0);
      bytes[10 * KiB] = 7;
      expect(bytes[10 * KiB]).toBe(7);
      // One fault covered the rest of the mapping.
      expect(native.guestFaults(buffer)).toBe(1);
      expect(Atomics.load(counter, 0)).toBe(before + 1);
      // A plain SharedArrayBuffer is no guest mapping.
      expect(native.guestFaults(new SharedArrayBuffer(16))).toBe(0);
    } finally {
      native.close(fd);
    }
  });

  it('never runs out of room for front ends that come and go', () => {
    // Retired mappings (retireMapping: what the back end does when a front end
    // goes) wait for the garbage collector, and their slots are reused meanwhile.
    for (let i = 0; i < 5000; i++) {
      const fd = native.memfdCreate('hostile-worker-churn', 4096);
      try {
        native.retireMapping(native.mmapShared(fd, 4096, 0));
      } finally {
        native.close(fd);
      }
    }
    const fd = native.memfdCreate('hostile-worker-last', 4096);
    try {
      const last = native.mmapShared(fd, 4096, 0);
      ftruncateSync(fd, 0);
      expect(new Uint8Array(last)[0]).toBe(0);
      expect(native.guestFaults(last)).toBe(1);
    } finally {
      native.close(fd);
    }
  });

  it('leaves any other SIGBUS fatal', () => {
    // A child process with a registered mapping (the handler installed) that is sent SIGBUS.
    const script = `
      import { createRequire } from 'node:module';
      const native = createRequire(import.meta.url)(${JSON.stringify(
        join(projectRoot, 'native', 'build', 'Release', 'vhost_rt.node'),
      )});
      const fd = native.memfdCreate('hostile-worker-child', 4096);
      native.mmapShared(fd, 4096, 0);
      if (native.guestRangeCount() < 1) process.exit(3);
      process.kill(process.pid, 'SIGBUS');
      setTimeout(() => process.exit(4), 5000);
    `;
    const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(run.stderr).toBe('');
    expect(run.signal).toBe('SIGBUS');
  });
});

describe('vhost-rt blk with two devices, one front end shrinking its guest RAM', () => {
  let dir: string;
  let daemon: Daemon;
  const sockets: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vhost-rt-hostile-mem-'));
    const args = ['blk'];
    for (const name of ['victim', 'bystander']) {
      const image = join(dir, `${name}.img`);
      const socket = join(dir, `${name}.sock`);
      writeFileSync(image, Buffer.alloc(16 * MiB));
      sockets.push(socket);
      args.push('--device', `socket-path=${socket},image=${image},serial=${name}`);
    }
    daemon = await startDaemon(args);
  });

  afterAll(async () => {
    const { code, log } = await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
    // A worker that died would have made the daemon exit 1.
    expect(code, log).toBe(0);
  });

  /** Serves one fresh connection with fresh memory on `socket`: 'ok' or what went wrong. */
  async function freshConnection(socket: string, seed: number): Promise<string> {
    const d = await BlkDriver.create({
      socketPath: socket,
      regions: [{ size: RAM }],
      heapBytes: MiB,
    });
    try {
      const result = await blkTraffic(d, 4, seed, { bytes: 16 * KiB, slots: 64 });
      return d.violations.length > 0 ? d.violations.join('; ') : result;
    } finally {
      await d.close();
    }
  }

  /**
   * The victim's front end publishes `request`, shrinks its memfd to `keep`
   * bytes and kicks, while the bystander runs I/O; resolves once the daemon
   * logged the victim's broken ring.
   */
  async function shrinkUnderTraffic(
    keep: number,
    request: Parameters<BlkDriver['post']>[0],
    seed: number,
  ): Promise<void> {
    const bystander = await BlkDriver.create({ socketPath: sockets[1] });
    const victim = await BlkDriver.create({
      socketPath: sockets[0],
      regions: [{ size: RAM }],
      heapBytes: MiB,
      requestTimeoutMs: 60_000,
    });
    try {
      expect(await blkTraffic(victim, 1, seed, { bytes: 16 * KiB, slots: 64 })).toBe('ok');
      const logged = daemon.log().length;
      const running = blkTraffic(bystander, 40, seed + 100, { bytes: 16 * KiB, slots: 64 }).catch(
        (e: Error) => e.message,
      );
      // The answer (if any) is read from shrunk memory: only the daemon's fate matters.
      victim.post(request).catch(() => undefined);
      victim.vmm.shrinkRegion(0, keep);
      victim.vmm.queues[0].kick();
      const line = await waitFor(
        () => /[^\n]*queue 0 broken[^\n]*\n/.exec(daemon.log().slice(logged))?.[0],
        () => `the victim's broken ring in the daemon log:\n${daemon.log().slice(logged)}`,
      );
      expect(line).toContain(
        'blk0: queue 0 broken: guest memory shrank (SIGBUS) (ERR_GUEST_MEMORY)',
      );
      expect(await running).toBe('ok');
      expect(bystander.violations).toEqual([]);
    } finally {
      await victim.close();
      await bystander.close();
    }
    expect(daemon.proc.exitCode).toBeNull();
    expect(daemon.log()).not.toMatch(/worker exited|worker crashed/);
  }

  it('lives when guest RAM shrinks to nothing under a kick; the other device keeps serving', async () => {
    await shrinkUnderTraffic(0, { type: 'read', sector: 8, length: 4 * KiB }, 1);
    // A new front end with fresh memory is served on the victim's socket; the bystander too.
    expect(await freshConnection(sockets[0], 11)).toBe('ok');
    expect(await freshConnection(sockets[1], 12)).toBe('ok');
  });

  it('lives when guest RAM shrinks to 69632 bytes under a request that ends past it', async () => {
    // Header at 4 KiB, 64 KiB of data, status byte at 69648: past the new end.
    await shrinkUnderTraffic(
      KEEP_RINGS,
      { type: 'write', sector: 256, data: pattern(7, 64 * KiB) },
      2,
    );
    expect(await freshConnection(sockets[0], 21)).toBe('ok');
    expect(await freshConnection(sockets[1], 22)).toBe('ok');
  });
});

describe('vhost-rt net with three ports, one front end shrinking its guest RAM', () => {
  let dir: string;
  let daemon: Daemon;
  const sockets = ['a', 'b', 'c'].map((n) => `port-${n}.sock`);
  const BROADCAST = 'ff:ff:ff:ff:ff:ff';
  const MAC = ['52:54:00:00:10:01', '52:54:00:00:10:02', '52:54:00:00:10:03'];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vhost-rt-hostile-net-'));
    const args = ['net'];
    for (const s of sockets) args.push('--socket-path', join(dir, s));
    daemon = await startDaemon(args);
  });

  afterAll(async () => {
    const { code, log } = await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
    expect(code, log).toBe(0);
  });

  const connect = (i: number, small = false) =>
    NetDriver.create({
      socketPath: join(dir, sockets[i]),
      ...(small ? { regions: [{ size: RAM }], heapBytes: MiB } : {}),
    });

  it('breaks the shrinking port only; the other two keep exchanging frames', async () => {
    const b = await connect(1);
    const c = await connect(2);
    const a = await connect(0, true);
    try {
      const logged = daemon.log().length;
      a.vmm.shrinkRegion(0, 0);
      void a.send(ethFrame(BROADCAST, MAC[0], 64, 1));
      a.vmm.queues[1].kick();
      for (const q of [0, 1]) {
        await waitFor(
          () => daemon.log().slice(logged).includes(`port0: queue ${q} broken: ${SHRANK}`),
          () => `port 0 queue ${q} to break; log:\n${daemon.log().slice(logged)}`,
        );
      }
      for (let i = 0; i < 8; i++) {
        expect(await b.send(ethFrame(BROADCAST, MAC[1], 100 + i, i))).toBe(0);
        expect(await c.send(ethFrame(MAC[1], MAC[2], 200 + i, i))).toBe(0);
      }
      const atC = await c.waitReceived(8);
      const atB = await b.waitReceived(8);
      expect(atC.map((f) => f.frame.length)).toEqual([100, 101, 102, 103, 104, 105, 106, 107]);
      expect(atB.map((f) => f.frame.length)).toEqual([200, 201, 202, 203, 204, 205, 206, 207]);
      expect([...b.violations, ...c.violations]).toEqual([]);
    } finally {
      await a.close();
    }
    // Port 0 serves a new front end with fresh memory.
    const fresh = await connect(0);
    try {
      expect(await b.send(ethFrame(BROADCAST, MAC[1], 300, 9))).toBe(0);
      expect((await fresh.waitReceived(1))[0].frame.length).toBe(300);
    } finally {
      await fresh.close();
      await b.close();
      await c.close();
    }
    expect(daemon.proc.exitCode).toBeNull();
  });
});
