/**
 * The virtio-console device (worker thread, log rings, logger thread) served
 * over a real vhost-user socket to the project's own front end: memfd guest
 * RAM, real eventfds, QEMU 7.2's negotiation plus the BACKEND_REQ channel.
 * Output is checked in the log files the logger thread writes; input goes
 * through the ports' real input sockets.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ConsoleOptions, ConsolePortOptions } from '../../src/devices/console/options.js';
import { parseSinkSpec } from '../../src/logger/index.js';
import { ProtocolFeature } from '../../src/vhost-user/protocol.js';
import { VhostUserServer } from '../../src/vhost-user/server.js';
import { ConsoleService } from '../../src/worker/console-service.js';
import { ConsoleDriver, ConsoleFeature, ControlEvent } from '../frontend/console-driver.js';
import { waitFor } from '../support/wait.js';

let dir: string;
const logs: string[] = [];
const log = (level: string, message: string) => logs.push(`${level}: ${message}`);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-console-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Running {
  service: ConsoleService;
  server: VhostUserServer;
  socketPath: string;
  stop(): Promise<void>;
}

const running: Running[] = [];
afterEach(async () => {
  for (const r of running.splice(0)) await r.stop();
});

let serial = 0;
function port(name: string | null, sink: string, input?: string): ConsolePortOptions {
  return { name, sinks: [parseSinkSpec(join(dir, sink))], inputPath: input && join(dir, input) };
}

async function startConsole(over: Partial<ConsoleOptions>): Promise<Running> {
  const options: ConsoleOptions = {
    ports: [port(null, `c${serial}.log`)],
    multiport: false,
    cols: 100,
    rows: 40,
    policy: 'lossless',
    ringBytes: 1 << 20,
    inputBufferBytes: 64 * 1024,
    queueSize: 256,
    ...over,
  };
  const service = await ConsoleService.start({ options, rt: {} }, log);
  const socketPath = join(dir, `console${serial++}.sock`);
  const server = new VhostUserServer(socketPath, service.device, log);
  const r: Running = {
    service,
    server,
    socketPath,
    stop: async () => {
      await server.close();
      await service.shutdown();
    },
  };
  running.push(r);
  return r;
}

function attach(path: string): Promise<Socket & { got: () => string }> {
  return new Promise((resolve, reject) => {
    let text = '';
    const s = connect(path, () => resolve(Object.assign(s, { got: () => text })));
    s.on('data', (d) => {
      text += d.toString('latin1');
    });
    s.once('error', reject);
  });
}

function lines(from: number, count: number): string {
  let out = '';
  for (let i = from; i < from + count; i++) out += `line ${String(i).padStart(6, '0')}\n`;
  return out;
}

async function waitFile(path: string, predicate: (text: string) => boolean): Promise<string> {
  let text = '';
  await waitFor(
    () => {
      text = existsSync(path) ? readFileSync(path, 'latin1') : '';
      return predicate(text);
    },
    () => `${path} to match (it holds ${text.length} bytes)`,
  );
  return text;
}

describe('virtio-console, single port', () => {
  it('negotiates its features and config, carries output to the log and input to the guest', async () => {
    const r = await startConsole({ ports: [port(null, 'single.log', 'single.in')] });
    const d = await ConsoleDriver.create({ socketPath: r.socketPath, indirect: true });
    try {
      expect(d.vmm.hasFeature(ConsoleFeature.SIZE)).toBe(true);
      expect(d.vmm.hasFeature(ConsoleFeature.EMERG_WRITE)).toBe(true);
      expect(d.vmm.hasFeature(ConsoleFeature.MULTIPORT)).toBe(false);
      for (const bit of [28, 29, 32]) expect(d.vmm.hasFeature(bit)).toBe(true);
      expect(await d.readConfig()).toEqual({ cols: 100, rows: 40, maxPorts: 1 });
      const text = lines(0, 2000);
      const chunks: string[] = [];
      for (let i = 0; i < text.length; i += 700) chunks.push(text.slice(i, i + 700));
      const done = await Promise.all(chunks.map((c, i) => d.write(0, Buffer.from(c), 1 + (i % 4))));
      expect(done.every((len) => len === 0)).toBe(true);
      await waitFile(join(dir, 'single.log'), (t) => t === text);
      const client = await attach(join(dir, 'single.in'));
      client.write('hello guest\n');
      await waitFor(() => d.text(0) === 'hello guest\n', 'input on port 0');
      client.end();
      await d.emergencyWrite('!'.charCodeAt(0));
      await waitFile(join(dir, 'single.log'), (t) => t === `${text}!`);
      const s = r.service.portSnapshot(0);
      expect(s.bytesOut).toBe(text.length + 1);
      expect(s.bytesIn).toBe(12);
      expect(s.ringHighWater).toBeGreaterThan(0);
      expect(r.service.deviceStats.snapshot().emergWrites).toBe(1);
      expect(d.violations).toEqual([]);
    } finally {
      await d.close();
    }
  });

  it('resizes at run time with a config-change message on the BACKEND_REQ channel', async () => {
    const r = await startConsole({});
    const d = await ConsoleDriver.create({ socketPath: r.socketPath });
    try {
      expect(d.vmm.hasProtocolFeature(ProtocolFeature.BACKEND_REQ)).toBe(true);
      await r.service.resize(132, 50);
      await waitFor(() => d.vmm.backendChannel?.configChanges === 1, 'CONFIG_CHANGE_MSG');
      expect(await d.readConfig()).toEqual({ cols: 132, rows: 50, maxPorts: 1 });
    } finally {
      await d.close();
    }
  });

  it('holds input while the guest posts no receive buffers, and refuses what does not fit', async () => {
    const r = await startConsole({
      ports: [port(null, 'norx.log', 'norx.in')],
      inputBufferBytes: 1024,
    });
    const d = await ConsoleDriver.create({ socketPath: r.socketPath, rxBuffers: 0 });
    try {
      const client = await attach(join(dir, 'norx.in'));
      const input = Buffer.from(lines(0, 300));
      client.write(input);
      await waitFor(() => r.service.portSnapshot(0).inputRefused > 0, 'refusal');
      await waitFor(() => client.got().includes('input bytes refused'), 'notice');
      expect(r.service.portSnapshot(0).inputRefused).toBe(input.length - 1024);
      expect(d.text(0)).toBe('');
      d.postReceive(0, 4);
      await waitFor(() => d.ports[0].received.length === 1024, 'held input');
      expect(d.text(0)).toBe(input.subarray(0, 1024).toString('latin1'));
      expect(r.service.portSnapshot(0).bytesIn).toBe(1024);
      client.end();
    } finally {
      await d.close();
    }
  });
});

describe('virtio-console, multiport', () => {
  it('adds named ports, routes each to its own log, resizes and removes ports', async () => {
    const r = await startConsole({
      multiport: true,
      ports: [
        port(null, 'mp0.log'),
        port('org.vhost-rt.one', 'mp1.log', 'mp1.in'),
        port('two', 'mp2.log'),
      ],
    });
    const d = await ConsoleDriver.create({ socketPath: r.socketPath, ports: 3 });
    try {
      expect(d.vmm.hasFeature(ConsoleFeature.MULTIPORT)).toBe(true);
      expect((await d.readConfig()).maxPorts).toBe(3);
      await waitFor(() => d.ports.every((p) => p.added && p.hostOpen), 'ports open');
      expect(d.ports.map((p) => p.name)).toEqual([null, 'org.vhost-rt.one', 'two']);
      expect(d.ports.map((p) => p.console)).toEqual([true, false, false]);
      await Promise.all([
        d.write(0, Buffer.from('to zero\n')),
        d.write(1, Buffer.from('to one\n')),
        d.write(2, Buffer.from('to two\n')),
      ]);
      await waitFile(join(dir, 'mp0.log'), (t) => t === 'to zero\n');
      await waitFile(join(dir, 'mp1.log'), (t) => t === 'to one\n');
      await waitFile(join(dir, 'mp2.log'), (t) => t === 'to two\n');
      const client = await attach(join(dir, 'mp1.in'));
      client.write('input for one');
      await waitFor(() => d.text(1) === 'input for one', 'input on port 1');
      expect(d.text(0)).toBe('');
      client.end();

      await r.service.resize(90, 30);
      await waitFor(() => d.control.some((m) => m.event === ControlEvent.RESIZE), 'RESIZE');
      const resize = d.control.find((m) => m.event === ControlEvent.RESIZE);
      expect(resize?.id).toBe(0);
      expect(Array.from(resize?.payload ?? [])).toEqual([90, 0, 30, 0]);

      await r.service.setPortPresent(2, false);
      await waitFor(() => d.ports[2].removed, 'PORT_REMOVE');
      await r.service.setPortPresent(2, true);
      await waitFor(() => !d.ports[2].removed && d.ports[2].added, 'PORT_ADD again');
      expect(d.violations).toEqual([]);
    } finally {
      await d.close();
    }
  });

  it('answers malformed control messages with a clear warning and keeps serving', async () => {
    const r = await startConsole({
      multiport: true,
      ports: [port(null, 'bad0.log'), port('p1', 'bad1.log')],
    });
    const d = await ConsoleDriver.create({ socketPath: r.socketPath, ports: 2 });
    try {
      await waitFor(() => d.ports.every((p) => p.hostOpen), 'ports open');
      logs.length = 0;
      await d.sendRawControl(Uint8Array.of(1, 2, 3));
      await d.sendControl(0, ControlEvent.PORT_ADD, 0);
      await d.sendControl(99, ControlEvent.PORT_OPEN, 1);
      await d.sendControl(1, ControlEvent.PORT_OPEN, 7);
      await waitFor(() => r.service.deviceStats.snapshot().badControl === 4, 'counted');
      await waitFor(() => logs.some((l) => l.includes('CONSOLE_BAD_CONTROL')), 'warned');
      expect(logs.join('\n')).toMatch(/3 bytes, a control message has at least 8/);
      expect(logs.join('\n')).toMatch(/PORT_ADD is not an event a driver sends/);
      expect(logs.join('\n')).toMatch(/no port 99/);
      await d.write(1, Buffer.from('still alive\n'));
      await waitFile(join(dir, 'bad1.log'), (t) => t === 'still alive\n');
    } finally {
      await d.close();
    }
  });
});
