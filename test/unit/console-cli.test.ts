/** Flag parsing of `vhost-rt console` and `vhost-rt serial`: values, defaults, one-line errors. */
import { describe, expect, it } from 'vitest';
import { parseConsoleArgs } from '../../src/cli/console.js';
import { parseSerialArgs, ringSizeFlag, sizeFlag } from '../../src/cli/serial.js';
import {
  consoleQueueCount,
  encodeConsoleConfig,
  portOfQueue,
  rxQueueOf,
  txQueueOf,
} from '../../src/devices/console/config.js';

describe('vhost-rt console flags', () => {
  it('builds ports: the console, named ports with their sinks and inputs, then unnamed ones', () => {
    const spec = parseConsoleArgs([
      '--socket-path',
      'c.sock',
      '--log',
      'main.log',
      '--input',
      'in.sock',
      '--ports',
      '4',
      '--port',
      'org.one=socket:one.sock',
      '--port-input',
      'org.one=one.in',
      '--size',
      '120x40',
      '--policy',
      'drop',
      '--ring-size',
      '64k',
    ]);
    if (spec === 'help') throw new Error('help');
    const o = spec.options;
    expect(o.multiport).toBe(true);
    expect(o.ports.map((p) => p.name)).toEqual([null, 'org.one', null, null]);
    expect(o.ports[0].inputPath).toBe('in.sock');
    expect(o.ports[1]).toMatchObject({
      inputPath: 'one.in',
      sinks: [{ kind: 'socket', path: 'one.sock' }],
    });
    expect(o.ports[3].sinks[0]).toMatchObject({ kind: 'file', path: 'main.log' });
    expect([o.cols, o.rows, o.policy, o.ringBytes]).toEqual([120, 40, 'drop', 65536]);
  });

  it('defaults to one console port on stdout, lossless, 1 MiB ring', () => {
    const spec = parseConsoleArgs(['--socket-path', 'c.sock']);
    if (spec === 'help') throw new Error('help');
    expect(spec.options.multiport).toBe(false);
    expect(spec.options.ports).toEqual([
      { name: null, sinks: [{ kind: 'stdout' }], inputPath: undefined },
    ]);
    expect(spec.options.policy).toBe('lossless');
    expect(spec.options.ringBytes).toBe(1 << 20);
  });

  it('refuses bad values with one line naming the flag', () => {
    expect(() => parseConsoleArgs(['--socket-path', 's', '--size', '80'])).toThrow(/--size 80/);
    expect(() => parseConsoleArgs(['--socket-path', 's', '--port', 'x'])).toThrow(/NAME=VALUE/);
    expect(() => parseConsoleArgs(['--socket-path', 's', '--port-input', 'y=z'])).toThrow(
      /no such --port/,
    );
    expect(() => parseConsoleArgs(['--socket-path', 's', '--policy', 'block'])).toThrow(/--policy/);
    expect(() => ringSizeFlag('3000')).toThrow(/power of two/);
    expect(sizeFlag('x', '2M', 0)).toBe(2 * 1024 * 1024);
  });
});

describe('vhost-rt serial flags', () => {
  it('parses sockets, sinks with rotation and timestamps', () => {
    const spec = parseSerialArgs([
      '--socket-path',
      'u.sock',
      '--log',
      'u.log',
      '--log',
      'stdout',
      '--log-rotate',
      '10M',
      '--log-rotate-keep',
      '3',
      '--log-timestamps',
      '--input',
      'u.in',
    ]);
    if (spec === 'help') throw new Error('help');
    expect(spec.options).toMatchObject({
      socketPath: 'u.sock',
      inputPath: 'u.in',
      policy: 'lossless',
    });
    expect(spec.sinks).toEqual([
      {
        kind: 'file',
        path: 'u.log',
        rotateBytes: 10 * 1024 * 1024,
        rotateKeep: 3,
        timestamps: true,
      },
      { kind: 'stdout' },
    ]);
  });
});

describe('virtio-console layout', () => {
  it('numbers queues as §5.3.2 does', () => {
    expect([rxQueueOf(0), txQueueOf(0), rxQueueOf(1), txQueueOf(1), rxQueueOf(3)]).toEqual([
      0, 1, 4, 5, 8,
    ]);
    expect([0, 1, 2, 3, 4, 5, 9].map(portOfQueue)).toEqual([0, 0, -1, -1, 1, 1, 3]);
    expect(consoleQueueCount(1, false)).toBe(2);
    expect(consoleQueueCount(4, true)).toBe(10);
  });

  it('encodes the config space little-endian', () => {
    expect(Array.from(encodeConsoleConfig(0x150, 0x32, 3))).toEqual([
      0x50, 0x01, 0x32, 0, 3, 0, 0, 0, 0, 0, 0, 0,
    ]);
  });
});
