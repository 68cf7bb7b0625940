/**
 * The QMP server in process, over fake devices around a real DeviceHost:
 * DEVICE_BROKEN reaches negotiated clients, line handling (split chunks,
 * multi-byte characters, CRLF, the length limit), argument checks, close.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkArguments } from '../../src/control/commands.js';
import { QmpCommandError } from '../../src/control/errors.js';
import { type ControlledDevice, QmpServer } from '../../src/control/index.js';
import type { DeviceDescription } from '../../src/devices/index.js';
import { DeviceHost, type DeviceWorker } from '../../src/worker/device-host.js';
import { QmpClient } from '../support/qmp-client.js';
import { waitFor } from '../support/wait.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-qmp-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const THREAD = { tid: 42, policy: 'fifo', priority: 10, cpus: [1] } as const;

function fakeHost(): DeviceHost {
  const worker = { request: async () => undefined } as unknown as DeviceWorker;
  const description = {
    kind: 'blk',
    features: 1n << 9n,
    numQueues: 2,
    maxQueueSize: 256,
    raisesConfigChanges: false,
  } as unknown as DeviceDescription;
  return new DeviceHost(worker, 0, description, { ...THREAD, cpus: [1] });
}

async function open(name: string, maxLineBytes?: number) {
  const host = fakeHost();
  const devices: ControlledDevice[] = [
    {
      kind: 'blk',
      socketPath: '/nowhere.sock',
      server: null,
      host,
      thread: host.thread,
      stats: () => ({ requests: 7 }),
    },
  ];
  const quits: number[] = [];
  const path = join(dir, `${name}.qmp`);
  const logs: string[] = [];
  const server = await QmpServer.open({
    path,
    devices,
    log: (_l, m) => logs.push(m),
    onQuit: () => quits.push(1),
    maxLineBytes,
    version: { major: 1, minor: 2, micro: 3, package: 'vhost-rt 1.2.3' },
  });
  return { host, server, path, quits, logs };
}

describe('QmpServer', () => {
  it('sends DEVICE_BROKEN from the DeviceHost hook to negotiated clients only', async () => {
    const s = await open('broken');
    const ready = await QmpClient.connect(s.path);
    const early = await QmpClient.connect(s.path, false);
    s.host.onEvent({
      device: 0,
      type: 'device-broken',
      queue: 1,
      code: 'ERR_X',
      reason: 'bad ring',
    });
    const ev = await ready.event('DEVICE_BROKEN');
    expect(ev.data).toEqual({
      device: 0,
      socket: '/nowhere.sock',
      queue: 1,
      code: 'ERR_X',
      reason: 'bad ring',
    });
    const devices = (await ready.execute('query-devices')).return as Record<string, unknown>[];
    expect(devices[0]).toMatchObject({
      kind: 'blk',
      connected: null,
      queues: 2,
      'device-features': '0x200',
      thread: THREAD,
      'ring-breaks': 1,
      'broken-rings': [{ queue: 1, code: 'ERR_X', reason: 'bad ring' }],
    });
    // The un-negotiated client got no event: its next message is the reply to its command.
    expect((await early.execute('qmp_capabilities')).return).toEqual({});
    expect(early.messages.some((m) => 'event' in m)).toBe(false);
    ready.close();
    early.close();
    await s.server.close();
  });

  it('reassembles lines split across writes, multi-byte characters and CRLF', async () => {
    const s = await open('lines');
    const c = await QmpClient.connect(s.path);
    const line = Buffer.from('{"execute": "query-stats", "id": "é€"}\r\n');
    for (let i = 0; i < line.length; i += 3) c.socket.write(line.subarray(i, i + 3));
    const reply = await c.next((m) => m.id === 'é€', 'the reassembled reply');
    expect(reply.return).toEqual([
      { device: 0, kind: 'blk', socket: '/nowhere.sock', stats: { requests: 7 } },
    ]);
    c.close();
    await s.server.close();
  });

  it('closes a client past the line limit, saying so, and keeps listening', async () => {
    const s = await open('limit', 64);
    const c = await QmpClient.connect(s.path);
    c.socket.write('x'.repeat(40));
    c.socket.write('y'.repeat(40));
    const err = await c.next((m) => 'error' in m, 'the line-limit error');
    expect(err.error).toEqual({
      class: 'GenericError',
      desc: 'a line longer than 64 bytes without a newline: closing the connection',
    });
    await waitFor(() => c.closed, 'the close');
    expect(s.logs.join('\n')).toMatch(/ERR_QMP_LINE_TOO_LONG/);
    const d = await QmpClient.connect(s.path);
    expect((await d.execute('query-version')).return).toEqual({
      qemu: { major: 1, minor: 2, micro: 3 },
      package: 'vhost-rt 1.2.3',
    });
    d.close();
    await s.server.close();
  });

  it('quit replies first, then calls onQuit; close ends clients, unhooks and removes the socket', async () => {
    const s = await open('quit');
    const c = await QmpClient.connect(s.path);
    expect(await c.execute('quit')).toMatchObject({ return: {} });
    await waitFor(() => s.quits.length === 1, 'onQuit');
    s.server.emit('DRAIN_COMPLETE', {});
    await c.event('DRAIN_COMPLETE');
    await s.server.close();
    await waitFor(() => c.closed, 'the client closed');
    expect(existsSync(s.path)).toBe(false);
    expect(s.host.onBroken).toBeNull();
  });

  it('checks arguments in QEMU words: missing, unexpected, wrong type', () => {
    const spec = { index: { type: 'integer', required: true } } as const;
    expect(checkArguments(spec, { index: 3 })).toEqual({ index: 3 });
    expect(() => checkArguments(spec, {})).toThrow("Parameter 'index' is missing");
    expect(() => checkArguments(spec, { index: 1.5 })).toThrow(
      "Invalid parameter type for 'index', expected: integer",
    );
    expect(() => checkArguments(spec, { index: 1, x: 0 })).toThrow(QmpCommandError);
  });
});
