/**
 * A hostile front end hands the daemon descriptors of the wrong kind (issue
 * 11): pipe ends, sockets, directories, devices and read-only files where
 * kick, call and err eventfds or guest RAM belong. Each is refused with
 * VHOST_USER_BAD_FD naming the request, the ring or region and what the fd is,
 * the daemon closes it, and the very connection that sent it goes on moving
 * data (the ring keeps its old eventfds, the table its old regions) — for
 * blk, console and net, whose daemons share the protocol layer. A fresh
 * connection is served afterwards too.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import {
  encodeMemoryTable,
  encodeMemRegion,
  encodeVringFd,
  type MemRegionWire,
} from '../../src/vhost-user/codec.js';
import { Request } from '../../src/vhost-user/protocol.js';
import { ConsoleDriver } from '../frontend/console-driver.js';
import {
  BlkDriver,
  BlkStatus,
  fdTarget,
  heldTargets,
  outcome,
  type Vmm,
  type WrongFdKind,
  WrongFds,
} from '../frontend/index.js';
import { ethFrame, NetDriver } from '../frontend/net-driver.js';
import { pattern, same } from '../support/bytes.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;

/** A running driver whose connection receives the hostile messages. */
interface Served {
  vmm: Vmm;
  /** Moves data through the device and checks it arrived. */
  works(round: number): Promise<void>;
  close(): Promise<void>;
}

/** One device type: its daemon and a driver for it. */
interface Harness {
  name: string;
  start(dir: string): Promise<Daemon>;
  connect(dir: string): Promise<Served>;
  stop?(): Promise<void>;
}

const blk: Harness = {
  name: 'blk',
  start(dir) {
    const image = join(dir, 'disk.img');
    writeFileSync(image, Buffer.alloc(8 * MiB));
    return startDaemon(['blk', '--socket-path', join(dir, 'blk.sock'), '--image', image]);
  },
  async connect(dir) {
    const d = await BlkDriver.create({ socketPath: join(dir, 'blk.sock') });
    return {
      vmm: d.vmm,
      async works(round) {
        const data = pattern(round, 4096);
        expect((await d.write(8 * round, data)).status).toBe(BlkStatus.OK);
        const back = await d.read(8 * round, 4096);
        expect(back.status).toBe(BlkStatus.OK);
        expect(same(back.data, data)).toBe(true);
        expect(d.violations).toEqual([]);
      },
      close: () => d.close(),
    };
  },
};

const consoleHarness: Harness = {
  name: 'console',
  start(dir) {
    return startDaemon([
      'console',
      '--socket-path',
      join(dir, 'console.sock'),
      '--log',
      join(dir, 'console.log'),
    ]);
  },
  async connect(dir) {
    const d = await ConsoleDriver.create({ socketPath: join(dir, 'console.sock') });
    const log = () => {
      try {
        return readFileSync(join(dir, 'console.log'), 'utf8');
      } catch {
        return '';
      }
    };
    return {
      vmm: d.vmm,
      async works(round) {
        const line = `still here ${round}\n`;
        await d.write(0, Buffer.from(line));
        await waitFor(() => log().endsWith(line), `'${line.trim()}' in the console log`);
        expect(d.violations).toEqual([]);
      },
      close: () => d.close(),
    };
  },
};

/** Port A takes the hostile messages; port B, connected all along, must receive A's frames. */
let peer: NetDriver | undefined;
const net: Harness = {
  name: 'net',
  start(dir) {
    return startDaemon([
      'net',
      '--socket-path',
      join(dir, 'a.sock'),
      '--socket-path',
      join(dir, 'b.sock'),
    ]);
  },
  async connect(dir) {
    peer ??= await NetDriver.create({ socketPath: join(dir, 'b.sock') });
    const b = peer;
    const a = await NetDriver.create({ socketPath: join(dir, 'a.sock') });
    return {
      vmm: a.vmm,
      async works(round) {
        const frame = ethFrame('ff:ff:ff:ff:ff:ff', '02:00:00:00:00:0a', 128, round);
        const before = b.received.length;
        await a.send(frame);
        const got = await b.waitReceived(before + 1);
        expect(Buffer.from(got[before].frame).equals(Buffer.from(frame))).toBe(true);
      },
      close: () => a.close(),
    };
  },
  async stop() {
    await peer?.close();
    peer = undefined;
  },
};

/** A region that overlaps nothing the drivers use: 4 KiB at 64 GiB. */
const EXTRA_REGION: MemRegionWire = {
  guestPhysAddr: 0x10_0000_0000,
  size: 4096,
  userAddr: 0x7e00_0000_0000,
  mmapOffset: 0,
};

interface Case {
  what: string;
  request: number;
  kind: WrongFdKind;
  payload(vmm: Vmm): Uint8Array;
  log: RegExp;
}

const CASES: Case[] = [
  {
    what: 'SET_VRING_CALL with the read end of a pipe',
    request: Request.SET_VRING_CALL,
    kind: 'pipe-read',
    payload: () => encodeVringFd(0, false),
    log: /SET_VRING_CALL: vring 0 call fd is a pipe \(\/[^)]*\), not an eventfd \(VHOST_USER_BAD_FD\)/,
  },
  {
    what: 'SET_VRING_CALL with a socket',
    request: Request.SET_VRING_CALL,
    kind: 'socket',
    payload: () => encodeVringFd(0, false),
    log: /SET_VRING_CALL: vring 0 call fd is a socket \(socket:\[\d+\]\), not an eventfd \(VHOST_USER_BAD_FD\)/,
  },
  {
    what: 'SET_VRING_CALL with a directory',
    request: Request.SET_VRING_CALL,
    kind: 'directory',
    payload: () => encodeVringFd(0, false),
    log: /SET_VRING_CALL: vring 0 call fd is a directory \(\/[^)]*\), not an eventfd \(VHOST_USER_BAD_FD\)/,
  },
  {
    what: 'SET_VRING_CALL with a file opened read-only',
    request: Request.SET_VRING_CALL,
    kind: 'readonly-file',
    payload: () => encodeVringFd(0, false),
    log: /SET_VRING_CALL: vring 0 call fd is a regular file \(\/[^)]*\), not an eventfd \(VHOST_USER_BAD_FD\)/,
  },
  {
    // A write at a full counter would block the worker for ever.
    what: 'SET_VRING_CALL with a blocking eventfd',
    request: Request.SET_VRING_CALL,
    kind: 'blocking-eventfd',
    payload: () => encodeVringFd(0, false),
    log: /SET_VRING_CALL: vring 0 call fd is a blocking eventfd \(the back end needs EFD_NONBLOCK\) \(VHOST_USER_BAD_FD\)/,
  },
  {
    what: 'SET_VRING_KICK with the write end of a pipe',
    request: Request.SET_VRING_KICK,
    kind: 'pipe-write',
    payload: () => encodeVringFd(0, false),
    log: /SET_VRING_KICK: vring 0 kick fd is a pipe \(\/[^)]*\), not an eventfd \(VHOST_USER_BAD_FD\)/,
  },
  {
    what: 'SET_VRING_ERR with a socket',
    request: Request.SET_VRING_ERR,
    kind: 'socket',
    payload: () => encodeVringFd(0, false),
    log: /SET_VRING_ERR: vring 0 err fd is a socket \(socket:\[\d+\]\), not an eventfd \(VHOST_USER_BAD_FD\)/,
  },
  {
    what: 'SET_MEM_TABLE of the running table with a pipe for its region',
    request: Request.SET_MEM_TABLE,
    kind: 'pipe-read',
    payload: (vmm) => encodeMemoryTable(vmm.regions.map((r) => r.wire)),
    log: /SET_MEM_TABLE: region 0 at guest address 0x0: fd is a pipe \(\/[^)]*\), not a memfd, regular or hugetlbfs file \(VHOST_USER_BAD_FD\)/,
  },
  {
    what: 'SET_MEM_TABLE of the running table with a socket for its region',
    request: Request.SET_MEM_TABLE,
    kind: 'socket',
    payload: (vmm) => encodeMemoryTable(vmm.regions.map((r) => r.wire)),
    log: /SET_MEM_TABLE: region 0 at guest address 0x0: fd is a socket \(socket:\[\d+\]\), not a memfd, regular or hugetlbfs file \(VHOST_USER_BAD_FD\)/,
  },
  {
    what: 'ADD_MEM_REG with the write end of a pipe',
    request: Request.ADD_MEM_REG,
    kind: 'pipe-write',
    payload: () => encodeMemRegion(EXTRA_REGION),
    log: /ADD_MEM_REG: region at guest address 0x1000000000: fd is a pipe \(\/[^)]*\), not a memfd, regular or hugetlbfs file \(VHOST_USER_BAD_FD\)/,
  },
  {
    what: 'ADD_MEM_REG with a socket',
    request: Request.ADD_MEM_REG,
    kind: 'socket',
    payload: () => encodeMemRegion(EXTRA_REGION),
    log: /ADD_MEM_REG: region at guest address 0x1000000000: fd is a socket \(socket:\[\d+\]\), not a memfd, regular or hugetlbfs file \(VHOST_USER_BAD_FD\)/,
  },
  {
    what: 'ADD_MEM_REG with a character device (/dev/zero)',
    request: Request.ADD_MEM_REG,
    kind: 'char-device',
    payload: () => encodeMemRegion(EXTRA_REGION),
    log: /ADD_MEM_REG: region at guest address 0x1000000000: fd is a character device \(\/dev\/zero\), not a memfd, regular or hugetlbfs file \(VHOST_USER_BAD_FD\)/,
  },
  {
    what: 'ADD_MEM_REG with a memfd reopened read-only',
    request: Request.ADD_MEM_REG,
    kind: 'readonly-memfd',
    payload: () => encodeMemRegion(EXTRA_REGION),
    log: /ADD_MEM_REG: region at guest address 0x1000000000: fd is a memfd \(\/memfd:hostile-\d+ \(deleted\)\) not opened for reading and writing \(VHOST_USER_BAD_FD\)/,
  },
];

describe.each([blk, consoleHarness, net])('vhost-rt $name given fds of the wrong kind', (h) => {
  let dir: string;
  let daemon: Daemon;
  let served: Served;
  let round = 0;
  const wrong = new WrongFds();

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), `vhost-rt-hostile-${h.name}-`));
    daemon = await h.start(dir);
    served = await h.connect(dir);
    await served.works(round++);
  });

  afterAll(async () => {
    await served?.close();
    await h.stop?.();
    await daemon?.stop();
    wrong.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it.each(CASES)('refuses $what, closes it, and the connection keeps moving data', async (c) => {
    const pid = daemon.proc.pid!;
    const fd = wrong.open(c.kind);
    const target = fdTarget(fd);
    const heldBefore = heldTargets(pid).filter((t) => t === target).length;
    const sent = served.vmm.conn.request(c.request, c.payload(served.vmm), [fd], {
      needReply: true,
    });
    expect(await outcome(sent)).toBe('FRONTEND_NACK');
    // The reply comes after the fd was closed; the log line may trail it on the stderr pipe.
    expect(heldTargets(pid).filter((t) => t === target).length).toBe(heldBefore);
    await waitFor(
      () => c.log.test(daemon.log()),
      () => `${c.log} in the log:\n${daemon.log()}`,
    );
    await served.works(round++);
  });

  // The err fd is device-agnostic plumbing: one device shows it (defined for blk only).
  if (h.name === 'blk')
    it('hands a good err eventfd to the running ring, which signals it when the ring breaks', async () => {
      const errFd = native.eventfd(0);
      try {
        const sent = served.vmm.conn.request(
          Request.SET_VRING_ERR,
          encodeVringFd(0, false),
          [errFd],
          { needReply: true },
        );
        expect(await outcome(sent)).toBe('ack');
        // avail.idx far ahead of anything the device has seen: the ring breaks at the kick.
        const q = served.vmm.queues[0];
        q.driver.setAvailIdx(q.driver.availIdx + 4 * q.driver.size);
        q.kick();
        await waitFor(() => native.eventfdRead(errFd) > 0, 'the err eventfd to be signalled');
      } finally {
        native.close(errFd);
      }
    });

  it('refused only what it had to, with coded errors, and serves a fresh connection', async () => {
    await served.close();
    served = await h.connect(dir);
    await served.works(round++);
    const log = daemon.log();
    expect(log.match(/\(VHOST_USER_BAD_FD\)/g)?.length).toBe(CASES.length);
    // Every refusal was a coded error: no stack trace, no uncoded failure.
    expect(log).not.toMatch(/\n\s+at |\(ERR\)/);
    expect(daemon.proc.exitCode).toBeNull();
  });
});
