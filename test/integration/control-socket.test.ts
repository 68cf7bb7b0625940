/**
 * The QMP control socket (`--control-socket`) of a real daemon, driven by a
 * tiny QMP client over node:net: greeting, capabilities negotiation, the
 * query commands, front-end events, garbage input answered with errors, and
 * `quit` draining the daemon like SIGTERM.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkDriver } from '../frontend/index.js';
import { type Daemon, startBlkDaemon, startDaemon } from '../support/daemon.js';
import { type Json, QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

let dir: string;
const daemons: Daemon[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-control-'));
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  rmSync(dir, { recursive: true, force: true });
});

async function blkDaemon(
  name: string,
): Promise<{ socket: string; control: string; daemon: Daemon }> {
  const image = join(dir, `${name}.img`);
  const socket = join(dir, `${name}.sock`);
  const control = join(dir, `${name}.qmp`);
  writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
  const daemon = await startBlkDaemon(image, socket, control);
  daemons.push(daemon);
  return { socket, control, daemon };
}

function errorClass(reply: Json): string | undefined {
  return (reply.error as { class?: string } | undefined)?.class;
}

describe('vhost-rt blk --control-socket', () => {
  let blk: { socket: string; control: string; daemon: Daemon };

  beforeAll(async () => {
    blk = await blkDaemon('blk');
  });

  it('greets in QMP shape and requires capabilities negotiation first', async () => {
    const pkg = fileURLToPath(new URL('../../package.json', import.meta.url));
    const { version } = JSON.parse(readFileSync(pkg, 'utf8')) as { version: string };
    const c = await QmpClient.connect(blk.control, false);
    const greeting = c.messages[0] as { QMP: Json };
    const [major, minor, micro] = version.split('.').map(Number);
    expect(greeting).toEqual({
      QMP: {
        version: { qemu: { major, minor, micro }, package: `vhost-rt ${version}` },
        capabilities: [],
      },
    });
    const early = await c.execute('query-version');
    expect(errorClass(early)).toBe('CommandNotFound');
    expect(await c.execute('qmp_capabilities')).toMatchObject({ return: {} });
    expect(errorClass(await c.execute('qmp_capabilities'))).toBe('CommandNotFound');
    expect(await c.execute('query-version')).toMatchObject({
      return: { qemu: { major, minor, micro }, package: `vhost-rt ${version}` },
    });
    c.close();
  });

  it('reports the device, FRONTEND_CONNECTED/DISCONNECTED, and counters that move after I/O', async () => {
    const c = await QmpClient.connect(blk.control);
    const before = (await c.execute('query-devices')).return as Json[];
    expect(before).toHaveLength(1);
    expect(before[0]).toMatchObject({
      device: 0,
      kind: 'blk',
      socket: blk.socket,
      connected: false,
      features: null,
      queues: 1,
      'broken-rings': [],
    });
    const thread = before[0].thread as { tid: number; policy: string; cpus: number[] };
    expect(thread.tid).toBeGreaterThan(0);
    expect(typeof thread.policy).toBe('string');
    expect(Array.isArray(thread.cpus)).toBe(true);

    const stats0 = ((await c.execute('query-stats')).return as { stats: Json }[])[0].stats;
    expect(typeof stats0.requests).toBe('number');

    const driver = await BlkDriver.create({ socketPath: blk.socket });
    const up = await c.event('FRONTEND_CONNECTED');
    expect(up.data).toEqual({ device: 0, socket: blk.socket });
    expect(up.timestamp).toMatchObject({
      seconds: expect.any(Number),
      microseconds: expect.any(Number),
    });
    const during = ((await c.execute('query-devices')).return as Json[])[0];
    expect(during.connected).toBe(true);
    expect(during.features).toMatch(/^0x[0-9a-f]+$/);
    expect(BigInt(during.features as string) & (1n << 32n)).toBe(1n << 32n); // VERSION_1

    const data = new Uint8Array(4096).fill(0x5a);
    expect((await driver.write(8, data)).status).toBe(0);
    const stats1 = ((await c.execute('query-stats')).return as { stats: Json }[])[0].stats;
    expect(stats1.requests as number).toBeGreaterThan(stats0.requests as number);
    expect(stats1.bytesWritten as number).toBeGreaterThanOrEqual(
      (stats0.bytesWritten as number) + 4096,
    );

    await driver.close();
    const down = await c.event('FRONTEND_DISCONNECTED');
    expect(down.data).toEqual({ device: 0, socket: blk.socket });
    const after = ((await c.execute('query-devices')).return as Json[])[0];
    expect(after).toMatchObject({ connected: false, features: null, 'front-ends-served': 1 });
    c.close();
  });

  it('answers garbage with QMP errors and keeps serving', async () => {
    const c = await QmpClient.connect(blk.control);
    const random = Buffer.from(
      Array.from({ length: 300 }, (_, i) => (i * 151 + 7) % 256).filter((b) => b !== 10),
    );
    const cases: [string | Uint8Array, string][] = [
      [Buffer.concat([random, Buffer.from('\n')]), 'GenericError'],
      ['{\n', 'GenericError'],
      ['[]\n', 'GenericError'],
      ['"text"\n', 'GenericError'],
      ['{"execute": 5}\n', 'GenericError'],
      ['{"arguments": {}}\n', 'GenericError'],
      ['{"execute": "query-version", "bogus": 1}\n', 'GenericError'],
      ['{"execute": "query-version", "arguments": 7}\n', 'GenericError'],
      ['{"execute": "no-such-command"}\n', 'CommandNotFound'],
      ['{"execute": "query-stats", "arguments": {"device": "zero"}}\n', 'GenericError'],
      ['{"execute": "query-stats", "arguments": {"device": 9}}\n', 'GenericError'],
      ['{"execute": "query-devices", "arguments": {"nope": true}}\n', 'GenericError'],
    ];
    for (const [input, cls] of cases) {
      const reply = await c.raw(input);
      expect(errorClass(reply), String(input)).toBe(cls);
      expect(typeof (reply.error as { desc: unknown }).desc).toBe('string');
    }
    expect(await c.execute('query-stats', { device: 0 })).toMatchObject({
      return: [{ device: 0 }],
    });
    expect(await c.execute('query-version')).toHaveProperty('return');
    expect(c.garbage).toEqual([]);
    c.close();
  });

  it('closes a client that sends over 1 MiB without a newline, and serves the others', async () => {
    const big = await QmpClient.connect(blk.control);
    const other = await QmpClient.connect(blk.control);
    big.socket.write('{"execute": "query-version", "pad": "');
    big.socket.write(Buffer.alloc(1024 * 1024 + 16, 0x61));
    const reply = await big.next((m) => 'error' in m, 'the too-long error');
    expect((reply.error as { desc: string }).desc).toMatch(/longer than 1048576 bytes/);
    await waitFor(() => big.closed, 'the daemon closing the client');
    await waitFor(
      () => /closing a client: .*ERR_QMP_LINE_TOO_LONG/.test(blk.daemon.log()),
      'the log line',
    );
    expect(await other.execute('query-version')).toHaveProperty('return');
    other.close();
  });

  it('survives many clients at once and clients that vanish mid-message', async () => {
    const clients = await Promise.all(
      Array.from({ length: 20 }, () => QmpClient.connect(blk.control)),
    );
    for (const c of clients.slice(0, 10)) {
      c.socket.write('{"execute": "query-dev');
      c.close();
    }
    const replies = await Promise.all(clients.slice(10).map((c) => c.execute('query-devices')));
    for (const r of replies) expect(r.return).toHaveLength(1);
    const halfClosed = await QmpClient.connect(blk.control);
    halfClosed.socket.end('{"execute": "query-version", "id": "last"}\n');
    expect(await halfClosed.next((m) => m.id === 'last', 'the reply before EOF')).toHaveProperty(
      'return',
    );
    await waitFor(() => halfClosed.closed, 'the daemon closing a half-closed client');
    const late = await QmpClient.connect(blk.control);
    expect(await late.execute('query-version')).toHaveProperty('return');
    for (const c of [...clients, late]) c.close();
  });

  it('quit: replies, drains (DRAIN_COMPLETE), exits 0 and removes its sockets', async () => {
    const d = await blkDaemon('quit');
    const c = await QmpClient.connect(d.control);
    const watcher = await QmpClient.connect(d.control);
    const exit = new Promise<number | null>((resolve) => d.daemon.proc.once('exit', resolve));
    expect(await c.execute('quit')).toEqual({ return: {}, id: 'c2' });
    await c.event('DRAIN_COMPLETE');
    await watcher.event('DRAIN_COMPLETE');
    expect(await exit).toBe(0);
    expect(existsSync(d.socket)).toBe(false);
    expect(existsSync(d.control)).toBe(false);
    expect(d.daemon.log()).toMatch(/quit \(control socket\): completing in-flight requests/);
  });

  it('refuses a control socket where a daemon already listens', async () => {
    const image = join(dir, 'second.img');
    writeFileSync(image, Buffer.alloc(1024 * 1024));
    await expect(
      startDaemon([
        'blk',
        '--socket-path',
        join(dir, 'second.sock'),
        '--image',
        image,
        '--control-socket',
        blk.control,
      ]),
    ).rejects.toThrow(/--control-socket .*another process is listening/);
    expect(existsSync(join(dir, 'second.sock'))).toBe(false);
  });
});

describe('vhost-rt net --control-socket', () => {
  it('lists both vhost-user ports', async () => {
    const a = join(dir, 'net-a.sock');
    const b = join(dir, 'net-b.sock');
    const control = join(dir, 'net.qmp');
    const daemon = await startDaemon([
      'net',
      '--socket-path',
      a,
      '--socket-path',
      b,
      '--control-socket',
      control,
    ]);
    daemons.push(daemon);
    const c = await QmpClient.connect(control);
    const devices = (await c.execute('query-devices')).return as Json[];
    expect(devices.map((d) => [d.device, d.kind, d.socket, d.connected, d.queues])).toEqual([
      [0, 'net', a, false, 3], // rx, tx and the control queue
      [1, 'net', b, false, 3],
    ]);
    const tids = devices.map((d) => (d.thread as { tid: number }).tid);
    expect(new Set(tids).size).toBe(2); // a worker thread per port
    const stats = (await c.execute('query-stats')).return as { stats: Json }[];
    expect(stats.map((s) => typeof s.stats.packets)).toEqual(['number', 'number']);
    c.close();
  });
});

describe('vhost-rt console and serial --control-socket', () => {
  it('console: the device with per-port counters', async () => {
    const socket = join(dir, 'console.sock');
    const control = join(dir, 'console.qmp');
    const daemon = await startDaemon([
      'console',
      '--socket-path',
      socket,
      '--ports',
      '2',
      '--log',
      join(dir, 'console.log'),
      '--control-socket',
      control,
    ]);
    daemons.push(daemon);
    const c = await QmpClient.connect(control);
    const devices = (await c.execute('query-devices')).return as Json[];
    expect(devices).toMatchObject([{ device: 0, kind: 'console', socket, connected: false }]);
    const stats = (await c.execute('query-stats')).return as { stats: Json; ports: Json[] }[];
    expect(stats[0].ports).toHaveLength(2);
    expect(typeof stats[0].ports[0].bytesOut).toBe('number');
    c.close();
  });

  it('serial: the UART and its counters', async () => {
    const socket = join(dir, 'uart.sock');
    const control = join(dir, 'uart.qmp');
    const daemon = await startDaemon([
      'serial',
      '--socket-path',
      socket,
      '--log',
      join(dir, 'uart.log'),
      '--control-socket',
      control,
    ]);
    daemons.push(daemon);
    const c = await QmpClient.connect(control);
    const devices = (await c.execute('query-devices')).return as Json[];
    expect(devices).toMatchObject([{ device: 0, kind: 'serial', socket, connected: null }]);
    const stats = (await c.execute('query-stats')).return as { stats: Json }[];
    expect(Object.values(stats[0].stats).every((v) => typeof v === 'number')).toBe(true);
    c.close();
  });
});
