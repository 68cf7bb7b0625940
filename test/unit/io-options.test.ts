/**
 * The engine options as the CLI takes them: every new flag is documented in
 * `vhost-rt blk --help`, reaches the device options, and a bad value is a
 * one-line ConfigError naming the flag.
 */
import { describe, expect, it } from 'vitest';
import { blkCommand, parseBlkArgs } from '../../src/cli/blk.js';
import { validateBlkOptions } from '../../src/devices/blk/options.js';
import { ConfigError } from '../../src/errors.js';
import {
  IO_ENGINE_NAMES,
  parseEngineName,
  parseThreadPolicy,
  validateEngineOptions,
} from '../../src/io/index.js';

const BASE = ['--socket-path', '/tmp/x.sock', '--image', '/tmp/x.img'];

function optionsOf(args: string[]) {
  const plan = parseBlkArgs([...BASE, ...args]);
  if (plan === 'help') throw new Error('help');
  return plan.devices[0].spec.options;
}

function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('no error');
}

describe('engine flags', () => {
  it('documents every engine and every new flag in --help', () => {
    for (const name of IO_ENGINE_NAMES) expect(blkCommand.help).toContain(name);
    for (const flag of ['--uring-sqpoll', '--aio-threads N', '--aio-threads-policy', '--poll-us N'])
      expect(blkCommand.help).toContain(flag);
    expect(blkCommand.help).toMatch(/sync .*BLOCKS/s);
  });

  it('carries the engine options into the device options', () => {
    expect(optionsOf([]).aio).toBe('linux-aio');
    expect(optionsOf(['--aio', 'io_uring', '--uring-sqpoll'])).toMatchObject({
      aio: 'io_uring',
      uringSqpoll: true,
    });
    expect(
      optionsOf(['--aio', 'threads', '--aio-threads', '8', '--aio-threads-policy', 'fifo:10']),
    ).toMatchObject({
      aio: 'threads',
      aioThreads: 8,
      aioThreadsPolicy: { policy: 'fifo', priority: 10 },
    });
    expect(optionsOf(['--poll-us', '50']).pollUs).toBe(50);
    const plan = parseBlkArgs([
      '--aio',
      'threads',
      '--device',
      'socket-path=/tmp/a,image=/tmp/a.img,aio-threads=2',
      '--device',
      'socket-path=/tmp/b,image=/tmp/b.img,aio=sync,poll-us=10',
    ]);
    if (plan === 'help') throw new Error('help');
    expect(plan.devices[0].spec.options).toMatchObject({ aio: 'threads', aioThreads: 2 });
    expect(plan.devices[1].spec.options).toMatchObject({ aio: 'sync', pollUs: 10 });
  });

  it('refuses bad values with one line naming the flag', () => {
    const cases: [string[], RegExp][] = [
      [['--aio', 'posix'], /^--aio posix: unknown engine/],
      [['--uring-sqpoll'], /^--uring-sqpoll: only applies to --aio io_uring/],
      [['--aio', 'threads', '--aio-threads', '0'], /^--aio-threads 0: must be/],
      [['--aio', 'threads', '--aio-threads', 'many'], /^--aio-threads many: not a whole number/],
      [['--aio-threads', '2'], /^--aio-threads: only applies to --aio threads/],
      [['--aio', 'threads', '--aio-threads-policy', 'rr'], /^--aio-threads-policy rr: rr needs/],
      [['--aio', 'threads', '--aio-threads-policy', 'deadline'], /^--aio-threads-policy deadline:/],
      [['--aio', 'threads', '--aio-threads-policy', 'batch:1'], /^--aio-threads-policy batch:1:/],
      [['--poll-us', 'soon'], /^--poll-us soon: not a whole number/],
    ];
    for (const [args, message] of cases) {
      const err = errorOf(() => optionsOf(args));
      expect(err, args.join(' ')).toBeInstanceOf(ConfigError);
      expect(err.message).toMatch(message);
      expect(err.message).not.toContain('\n');
    }
    const tooLong = { ...optionsOf([]), pollUs: 5_000_000 };
    expect(errorOf(() => validateBlkOptions(tooLong)).message).toMatch(/^--poll-us 5000000: /);
  });

  it('parses policies and checks options against the engine', () => {
    expect(parseThreadPolicy('idle')).toEqual({ policy: 'idle' });
    expect(parseThreadPolicy('rr:99')).toEqual({ policy: 'rr', priority: 99 });
    expect(parseThreadPolicy('other:0')).toEqual({ policy: 'other', priority: 0 });
    expect(() => parseThreadPolicy('fifo:0')).toThrow(ConfigError);
    expect(() => parseThreadPolicy('fifo:1:2')).toThrow(ConfigError);
    expect(() => validateEngineOptions('sync', { aioThreadsPolicy: { policy: 'idle' } })).toThrow(
      /^--aio-threads-policy: only applies/,
    );
    expect(parseEngineName('io_uring')).toBe('io_uring');
  });
});
