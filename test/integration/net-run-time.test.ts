/**
 * device-add / device-del on a `vhost-rt net` switch (issue 10): a port added
 * at run time in a spare slot (--spare-ports) gets a worker of its own and
 * carries frames both ways, byte for byte, starting with empty rings (nothing
 * flooded towards the free slot before reaches it); a port removed is
 * disconnected and its socket goes, and the others keep switching. Bad
 * arguments are QMP errors naming the argument. The project's front end plays
 * the VMMs.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ethFrame, NetDriver } from '../frontend/net-driver.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { type Json, QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

const BROADCAST = 'ff:ff:ff:ff:ff:ff';
const MAC = { a: '02:00:00:00:00:0a', b: '02:00:00:00:00:0b', c: '02:00:00:00:00:0c' };

let dir: string;
let daemon: Daemon;
const sock = (name: string) => join(dir, `${name}.sock`);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-net-run-time-'));
  daemon = await startDaemon([
    'net',
    '--socket-path',
    sock('a'),
    '--socket-path',
    sock('b'),
    '--spare-ports',
    '1',
    '--ring-bytes',
    '65536',
    '--control-socket',
    join(dir, 'net.qmp'),
  ]);
}, 60_000);

afterAll(async () => {
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Sends `frame` from `from` and waits until `to` has it; returns it as received. */
async function cross(from: NetDriver, to: NetDriver, frame: Uint8Array): Promise<Uint8Array> {
  const start = to.received.length;
  await from.send(frame);
  const got = await waitFor(
    () => to.received.slice(start).find((f) => Buffer.from(frame).equals(f.frame)),
    'the frame at the other port',
  );
  return got.frame;
}

function error(reply: Json): string | undefined {
  return (reply.error as { desc: string } | undefined)?.desc;
}

describe('vhost-rt net at run time', () => {
  it('adds a port in a spare slot, switches frames through it, removes another', async () => {
    const c = await QmpClient.connect(join(dir, 'net.qmp'));
    const a = await NetDriver.create({ socketPath: sock('a') });
    const b = await NetDriver.create({ socketPath: sock('b') });
    try {
      // Flooded while the spare slot is free: it must not reach the port added later.
      const stale = ethFrame(BROADCAST, MAC.a, 80, 1);
      await cross(a, b, stale);

      const added = await c.execute('device-add', {
        kind: 'net',
        'socket-path': sock('c'),
        mac: '52:54:00:aa:bb:cc',
      });
      expect(added.return).toEqual({ device: 2, kind: 'net', socket: sock('c') });
      const devices = (await c.execute('query-devices')).return as { thread: { tid: number } }[];
      expect(devices).toHaveLength(3);
      expect(new Set(devices.map((d) => d.thread.tid)).size).toBe(3);

      const x = await NetDriver.create({ socketPath: sock('c') });
      try {
        const mac = new Uint8Array(await x.vmm.getConfig(6));
        expect(Buffer.from(mac).toString('hex')).toBe('525400aabbcc');
        // Both ways, byte for byte; the stale broadcast never arrives.
        for (let len = 60; len <= 1514; len += 363) {
          expect(await cross(a, x, ethFrame(BROADCAST, MAC.a, len, len))).toEqual(
            Buffer.from(ethFrame(BROADCAST, MAC.a, len, len)),
          );
          expect(await cross(x, b, ethFrame(BROADCAST, MAC.c, len, len + 1))).toEqual(
            Buffer.from(ethFrame(BROADCAST, MAC.c, len, len + 1)),
          );
        }
        expect(x.received.some((f) => Buffer.from(stale).equals(f.frame))).toBe(false);
        // Unicast after learning: A → C reaches C only.
        await cross(a, x, ethFrame(MAC.c, MAC.a, 100, 7));

        // Bad arguments name the argument; nothing is added.
        expect(
          error(await c.execute('device-add', { kind: 'blk', 'socket-path': sock('d') })),
        ).toMatch(/Parameter 'kind'/);
        expect(
          error(
            await c.execute('device-add', { kind: 'net', 'socket-path': sock('d'), image: 'x' }),
          ),
        ).toMatch(/Parameter 'image'/);
        expect(
          error(
            await c.execute('device-add', { kind: 'net', 'socket-path': sock('d'), mac: 'zz' }),
          ),
        ).toMatch(/mac/);
        expect(
          error(await c.execute('device-add', { kind: 'net', 'socket-path': sock('d') })),
        ).toMatch(/no free port slot.*--spare-ports/);
        expect((await c.execute('query-devices')).return).toHaveLength(3);

        // device-del of B: disconnected, socket gone; A and C switch on.
        let gone = false;
        void b.vmm.conn.closed.then(() => {
          gone = true;
        });
        expect((await c.execute('device-del', { device: 1 })).return).toEqual({
          device: 1,
          kind: 'net',
          socket: sock('b'),
        });
        await waitFor(() => gone, 'B to be disconnected');
        expect(existsSync(sock('b'))).toBe(false);
        await cross(x, a, ethFrame(MAC.a, MAC.c, 200, 9));
        await cross(a, x, ethFrame(MAC.c, MAC.a, 300, 10));
        const left = (await c.execute('query-devices')).return as { socket: string }[];
        expect(left.map((d) => d.socket)).toEqual([sock('a'), sock('c')]);

        // The freed slot takes a new port again.
        const again = await c.execute('device-add', { kind: 'net', 'socket-path': sock('d') });
        expect(again.return).toEqual({ device: 2, kind: 'net', socket: sock('d') });
        const y = await NetDriver.create({ socketPath: sock('d') });
        await cross(y, a, ethFrame(BROADCAST, MAC.b, 90, 11));
        await y.close();
      } finally {
        await x.close();
      }
    } finally {
      await a.close();
      await b.close().catch(() => {});
      c.close();
    }
  });
});
