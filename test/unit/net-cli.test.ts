import { describe, expect, it } from 'vitest';
import { parseNetArgs } from '../../src/cli/net.js';
import { ConfigError } from '../../src/errors.js';
import { formatMac } from '../../src/net/mac-table.js';

describe('vhost-rt net arguments', () => {
  it('makes one port per socket, then the TAP, with MACs counted up from --mac-base', () => {
    const plan = parseNetArgs([
      '--socket-path',
      '/tmp/a.sock',
      '--socket-path',
      '/tmp/b.sock',
      '--tap',
      'vhrt0',
      '--queues',
      '2',
      '--mac-base',
      '52:54:00:00:00:ff',
      '--rt-policy',
      'fifo',
      '--rt-priority',
      '10',
    ]);
    if (plan === 'help') throw new Error('unexpected help');
    expect(plan.ports.map((p) => p.kind)).toEqual(['vhost-user', 'vhost-user', 'tap']);
    const macs = plan.ports.flatMap((p) => (p.kind === 'vhost-user' ? [formatMac(p.mac)] : []));
    expect(macs).toEqual(['52:54:00:00:00:ff', '52:54:00:00:01:00']);
    expect(plan.options.queuePairs).toBe(2);
    expect(plan.options.rt).toEqual({ policy: 'fifo', priority: 10 });
  });

  it('refuses what cannot work, naming the flag', () => {
    expect(() => parseNetArgs([])).toThrow(ConfigError);
    expect(() => parseNetArgs(['--socket-path', 'x', '--socket-path', 'x'])).toThrow(/share/);
    expect(() => parseNetArgs(['--socket-path', 'x', '--mac-base', '01:00:00:00:00:00'])).toThrow(
      /multicast/,
    );
    expect(() => parseNetArgs(['--socket-path', 'x', '--mac-base', 'nope'])).toThrow(/mac-base/);
    expect(() => parseNetArgs(['--socket-path', 'x', '--queues', 'two'])).toThrow(/--queues/);
    expect(parseNetArgs(['--help'])).toBe('help');
    expect(() => parseNetArgs(['--socket-path', 'x', '--frame-loop', 'fast'])).toThrow(
      /--frame-loop fast: must be native or typescript/,
    );
    expect(() => parseNetArgs(['--socket-path', 'x', '--poll-us', '-1'])).toThrow(/--poll-us/);
  });

  it('takes the frame loop (native unless told) and the poll window', () => {
    const plain = parseNetArgs(['--socket-path', 'x']);
    const told = parseNetArgs([
      '--socket-path',
      'x',
      '--frame-loop',
      'typescript',
      '--poll-us',
      '50',
    ]);
    if (plain === 'help' || told === 'help') throw new Error('unexpected help');
    expect([plain.options.frameLoop, plain.options.pollUs]).toEqual(['native', 0]);
    expect([told.options.frameLoop, told.options.pollUs]).toEqual(['typescript', 50]);
  });
});
