/**
 * An fd that fails later breaks that ring only (issue 11). The vhost-user
 * back end refuses anything but a read-write eventfd for kick, call and err
 * fds, so a front end cannot hand the worker a pipe; but an fd can still fail
 * after it passed (closed or replaced behind the worker's back), and an
 * embedding program hands the worker fds that nothing checks. These tests
 * take that path: the daemon's pieces run in this process (device workers,
 * vhost-user servers), and one device is wrapped so that its worker gets a
 * failing fd instead of the front end's eventfd. The ring breaks
 * (DEVICE_BROKEN, its err fd signalled), the device's worker, its neighbour
 * on another worker and the process go on, and a new connection is served.
 */
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  constants,
  mkdtempSync,
  openSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Logger } from '../../src/log.js';
import { native } from '../../src/native.js';
import { onWorkerFailure } from '../../src/thread/index.js';
import type {
  BackendRequestSender,
  QueueStart,
  VhostUserDevice,
} from '../../src/vhost-user/device-backend.js';
import { VhostUserServer } from '../../src/vhost-user/server.js';
import type { MemoryRegion } from '../../src/virtio/index.js';
import { BlkDeviceSet } from '../../src/worker/blk-service.js';
import type { BrokenRing, DeviceHost } from '../../src/worker/device-host.js';
import { RingBreak } from '../../src/worker/messages.js';
import { NetSwitch } from '../../src/worker/net-service.js';
import { BlkDriver } from '../frontend/index.js';
import { ethFrame, NetDriver } from '../frontend/net-driver.js';
import { blkTraffic } from '../support/blk-traffic.js';
import { pattern } from '../support/bytes.js';
import { TEST_SWITCH_OPTIONS, testBlkSpec } from '../support/service-specs.js';
import { waitFor } from '../support/wait.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** What the worker is handed instead of the front end's fds (unset: the front end's). */
interface Sabotage {
  kickFd?: number;
  callFd?: number;
  errFd?: number;
}

/**
 * A device as the vhost-user back end sees it, forwarding to a DeviceHost,
 * but handing its worker the fds of {@link sabotage}: what a worker gets when
 * an fd is replaced behind its back, or from an embedder that checks nothing.
 */
class SabotagedDevice implements VhostUserDevice {
  sabotage: Sabotage = {};

  constructor(readonly host: DeviceHost) {}

  get kind(): string {
    return this.host.kind;
  }
  get deviceFeatures(): bigint {
    return this.host.deviceFeatures;
  }
  get servesConfig(): boolean {
    return this.host.servesConfig;
  }
  get raisesConfigChanges(): boolean {
    return this.host.raisesConfigChanges;
  }
  get numQueues(): number {
    return this.host.numQueues;
  }
  get maxQueueSize(): number {
    return this.host.maxQueueSize;
  }
  getConfig(offset: number, size: number): Promise<Uint8Array> {
    return this.host.getConfig(offset, size);
  }
  setConfig(offset: number, data: Uint8Array): Promise<boolean> {
    return this.host.setConfig(offset, data);
  }
  setMemory(regions: MemoryRegion[]): Promise<void> {
    return this.host.setMemory(regions);
  }
  startQueue(index: number, s: QueueStart): Promise<void> {
    const x = this.sabotage;
    return this.host.startQueue(index, {
      ...s,
      kickFd: x.kickFd ?? s.kickFd,
      callFd: x.callFd ?? s.callFd,
      errFd: x.errFd ?? s.errFd,
    });
  }
  setCall(index: number, fd: number): Promise<void> {
    return this.host.setCall(index, this.sabotage.callFd ?? fd);
  }
  setErr(index: number, fd: number): Promise<void> {
    return this.host.setErr(index, this.sabotage.errFd ?? fd);
  }
  setEnabled(index: number, enabled: boolean): Promise<void> {
    return this.host.setEnabled(index, enabled);
  }
  stopQueue(index: number): Promise<number> {
    return this.host.stopQueue(index);
  }
  setBackendChannel(channel: BackendRequestSender | null): void {
    this.host.setBackendChannel(channel);
  }
}

/** Failing fds of several kinds, all closed at the end. */
class BadFds {
  private readonly fds: number[] = [];
  private serial = 0;

  constructor(private readonly dir: string) {}

  /** Open for reading only: write(2) fails with EBADF. */
  readOnly(): number {
    return this.keep(openSync('/dev/null', constants.O_RDONLY));
  }

  /** The write end of a FIFO whose reader is gone: epoll reports EPOLLERR. */
  writerWithoutReader(): number {
    const path = this.fifo();
    const reader = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    const writer = this.keep(openSync(path, constants.O_WRONLY | constants.O_NONBLOCK));
    closeSync(reader);
    return writer;
  }

  /**
   * The read end of a FIFO full of zero bytes, its writer still open:
   * readable wake-up after wake-up, and every 8-byte read a count of 0.
   */
  zeroFilled(): number {
    const path = this.fifo();
    const reader = this.keep(openSync(path, constants.O_RDONLY | constants.O_NONBLOCK));
    const writer = this.keep(openSync(path, constants.O_WRONLY | constants.O_NONBLOCK));
    writeSync(writer, Buffer.alloc(4096));
    return reader;
  }

  /** A connected socket whose peer closed: epoll reports EPOLLRDHUP (a hang-up). */
  hungUpSocket(): number {
    const path = join(this.dir, `sock-${this.serial++}`);
    const listener = native.unixListen(path, 1);
    try {
      const client = this.keep(native.unixConnect(path));
      native.close(native.accept(listener));
      return client;
    } finally {
      native.close(listener);
    }
  }

  /** An eventfd the test reads (the err fd). */
  eventfd(): number {
    return this.keep(native.eventfd(0));
  }

  closeAll(): void {
    for (const fd of this.fds.splice(0)) native.close(fd);
  }

  private fifo(): string {
    const path = join(this.dir, `fifo-${this.serial++}`);
    execFileSync('mkfifo', [path]);
    return path;
  }

  private keep(fd: number): number {
    this.fds.push(fd);
    return fd;
  }
}

let dir: string;
let bad: BadFds;
const lines: string[] = [];
const failures: Error[] = [];
let stopWatching: () => void;
const log: Logger = (level, message) => lines.push(`${level}: ${message}`);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-hostile-fds-'));
  bad = new BadFds(dir);
  stopWatching = onWorkerFailure((err) => failures.push(err));
});

afterAll(() => {
  stopWatching();
  bad.closeAll();
  rmSync(dir, { recursive: true, force: true });
});

afterEach(() => {
  // No worker died: each failure stayed inside its ring.
  expect(failures).toEqual([]);
});

describe('blk: two devices on two workers, the first handed failing fds', () => {
  let blk: BlkDeviceSet;
  let victim: SabotagedDevice;
  const servers: VhostUserServer[] = [];
  const sockets: string[] = [];

  beforeAll(async () => {
    const specs = ['victim', 'bystander'].map((name) => {
      const image = join(dir, `${name}.img`);
      writeFileSync(image, Buffer.alloc(8 * MiB));
      sockets.push(join(dir, `${name}.sock`));
      return testBlkSpec(image, name);
    });
    blk = await BlkDeviceSet.start(specs, false, log);
    victim = new SabotagedDevice(blk.devices[0].host);
    servers.push(new VhostUserServer(sockets[0], victim, log));
    servers.push(new VhostUserServer(sockets[1], blk.devices[1].host, log));
  });

  afterAll(async () => {
    for (const s of servers) await s.close();
    await blk?.shutdown();
  });

  /**
   * Connects the victim with `sabotage`, runs `trigger`, and waits for its
   * ring 0 to break while the bystander runs I/O; then a new connection
   * without sabotage must be served. Resolves with the break.
   */
  async function breakVictim(
    sabotage: Sabotage,
    trigger: (d: BlkDriver) => void,
    seed: number,
  ): Promise<BrokenRing> {
    const bystander = await BlkDriver.create({ socketPath: sockets[1] });
    victim.sabotage = sabotage;
    const d = await BlkDriver.create({ socketPath: sockets[0], requestTimeoutMs: 60_000 });
    let broken: BrokenRing;
    try {
      const running = blkTraffic(bystander, 20, seed, { bytes: 8 * KiB, slots: 32 });
      trigger(d);
      broken = await waitFor(
        () => victim.host.brokenRings.get(0),
        () => `victim ring 0 to break; log:\n${lines.join('\n')}`,
      );
      expect(await running).toBe('ok');
    } finally {
      victim.sabotage = {};
      await d.close();
      await bystander.close();
    }
    const fresh = await BlkDriver.create({ socketPath: sockets[0] });
    try {
      expect(await blkTraffic(fresh, 3, seed + 50, { bytes: 8 * KiB, slots: 32 })).toBe('ok');
      expect(victim.host.brokenRings.size).toBe(0);
    } finally {
      await fresh.close();
    }
    return broken;
  }

  /** A request on the victim: its answer may never come (no interrupt), so nobody waits for it. */
  const request = (d: BlkDriver) => {
    d.write(0, pattern(99, 4 * KiB)).catch(() => undefined);
  };

  it('breaks the ring whose call fd fails, signals its err fd, and serves the next front end', async () => {
    const errFd = bad.eventfd();
    const broken = await breakVictim({ callFd: bad.readOnly(), errFd }, request, 1);
    expect(broken.code).toBe(RingBreak.CALL_FD);
    expect(broken.reason).toMatch(/writing call fd \d+ failed: EBADF/);
    expect(native.eventfdRead(errFd)).toBeGreaterThan(0);
    expect(lines.join('\n')).toMatch(
      /blk0: queue 0 broken: writing call fd \d+ failed: EBADF.*\(ERR_CALL_FD\)/,
    );
  });

  it('breaks the ring whose kick fd reports an error, without spinning on it', async () => {
    const broken = await breakVictim({ kickFd: bad.writerWithoutReader() }, request, 2);
    expect(broken.code).toBe(RingBreak.KICK_FD);
    expect(broken.reason).toMatch(/kick fd \d+ reports EBADF/);
  });

  it('breaks the ring whose kick fd hangs up', async () => {
    const broken = await breakVictim({ kickFd: bad.hungUpSocket() }, request, 3);
    expect(broken.code).toBe(RingBreak.KICK_FD);
    expect(broken.reason).toMatch(/kick fd \d+ hung up/);
  });

  it('unwatches a kick fd that stays readable without ever delivering a count', async () => {
    const broken = await breakVictim({ kickFd: bad.zeroFilled() }, request, 4);
    expect(broken.code).toBe(RingBreak.KICK_SPIN);
    expect(broken.reason).toMatch(/stays readable without a count/);
  });
});

describe('net: a switch of two ports, the first handed a failing call fd', () => {
  let sw: NetSwitch;
  let victim: SabotagedDevice;
  const servers: VhostUserServer[] = [];
  const sockets = ['port0.sock', 'port1.sock'];
  const MACS = ['52:54:00:00:00:01', '52:54:00:00:00:02'];
  const BROADCAST = 'ff:ff:ff:ff:ff:ff';

  beforeAll(async () => {
    const paths = sockets.map((s) => join(dir, s));
    sw = await NetSwitch.start(
      paths.map((socketPath, i) => ({
        kind: 'vhost-user' as const,
        socketPath,
        mac: Uint8Array.from(MACS[i].split(':'), (h) => Number.parseInt(h, 16)),
      })),
      TEST_SWITCH_OPTIONS,
      log,
    );
    const [p0, p1] = sw.ports.map((p) => p.device as DeviceHost);
    victim = new SabotagedDevice(p0);
    servers.push(new VhostUserServer(paths[0], victim, log));
    servers.push(new VhostUserServer(paths[1], p1, log));
  });

  afterAll(async () => {
    for (const s of servers) await s.close();
    await sw?.shutdown();
  });

  it("breaks only the failing port's rings; the other port keeps forwarding", async () => {
    const errFd = bad.eventfd();
    victim.sabotage = { callFd: bad.readOnly(), errFd };
    const p1 = await NetDriver.create({ socketPath: join(dir, sockets[1]) });
    const p0 = await NetDriver.create({ socketPath: join(dir, sockets[0]) });
    try {
      // Port 0 transmits: its frame reaches port 1, but raising port 0's tx interrupt fails.
      void p0.send(ethFrame(BROADCAST, MACS[0], 80, 1));
      expect((await p1.waitReceived(1))[0].frame.length).toBe(80);
      const tx = await waitFor(() => victim.host.brokenRings.get(1), 'port 0 transmitq to break');
      expect(tx.code).toBe(RingBreak.CALL_FD);
      // Port 1 transmits: port 0 receives it, and its receiveq breaks the same way.
      for (let i = 0; i < 8; i++)
        expect(await p1.send(ethFrame(BROADCAST, MACS[1], 96, i))).toBe(0);
      const rx = await waitFor(() => victim.host.brokenRings.get(0), 'port 0 receiveq to break');
      expect(rx.code).toBe(RingBreak.CALL_FD);
      expect(native.eventfdRead(errFd)).toBeGreaterThan(0);
      // Port 1 goes on: its transmits complete, its receive path works.
      for (let i = 0; i < 8; i++) expect(await p1.send(ethFrame(MACS[0], MACS[1], 128, i))).toBe(0);
      expect(p1.violations).toEqual([]);
    } finally {
      victim.sabotage = {};
      await p0.close();
    }
    // A new front end on port 0 is served again.
    const fresh = await NetDriver.create({ socketPath: join(dir, sockets[0]) });
    try {
      await p1.send(ethFrame(MACS[0], MACS[1], 200, 7));
      const got = await fresh.waitReceived(1);
      expect(got[0].frame.length).toBe(200);
      expect(victim.host.brokenRings.size).toBe(0);
    } finally {
      await fresh.close();
      await p1.close();
    }
    expect(lines.join('\n')).toMatch(/port0: queue 1 broken: writing call fd \d+ failed: EBADF/);
  });
});
