/**
 * NBD URIs as --image takes them: which engine an image picks, and the
 * malformed URIs refused on the main thread, each error naming the URI.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { checkNbdUri, looksLikeNbdUri, resolveEngine } from '../../src/io/index.js';

describe('NBD URIs', () => {
  it('recognises the NBD schemes and nothing else', () => {
    for (const uri of ['nbd://h/e', 'NBD://h', 'nbds://h:1/e', 'nbd+unix:///e?socket=/s'])
      expect(looksLikeNbdUri(uri)).toBe(true);
    for (const image of ['/tmp/disk.img', 'disk.img', 'file:///x', 'nbd.img', './nbd://x'])
      expect(looksLikeNbdUri(image)).toBe(false);
  });

  it('accepts the standard forms', () => {
    for (const uri of [
      'nbd://127.0.0.1:10809/disk',
      'nbd://server/',
      'nbd://[::1]:10809/disk',
      'nbds://host/export',
      'nbd+unix:///disk?socket=/run/nbd.sock',
      'nbd+unix:///?socket=/tmp/s',
    ])
      expect(checkNbdUri(uri)).toBe(uri);
  });

  it.each([
    ['nbd+unix:///disk', /missing \?socket=PATH/],
    ['nbd+unix://host/disk?socket=/s', /has no host/],
    ['nbd://:10809/disk', /missing host|does not parse/],
    ['nbd://h:70000/disk', /does not parse|port/],
    ['nbd+vsock:///1', /scheme must be one of/],
  ])('refuses %s naming it', (uri, why) => {
    expect(() => checkNbdUri(uri)).toThrow(ConfigError);
    expect(() => checkNbdUri(uri)).toThrow(why);
    expect(() => checkNbdUri(uri)).toThrow(`--image ${uri}: not a usable NBD URI`);
  });

  it('picks nbd for a URI, the default engine for a file, and refuses a mismatch', () => {
    expect(resolveEngine('nbd://h/e', undefined)).toBe('nbd');
    expect(resolveEngine('nbd://h/e', 'nbd')).toBe('nbd');
    expect(resolveEngine('/tmp/x.img', undefined)).toBe('linux-aio');
    expect(resolveEngine('/tmp/x.img', 'io_uring')).toBe('io_uring');
    expect(() => resolveEngine('nbd://h/e', 'linux-aio')).toThrow(/needs --aio nbd/);
    expect(() => resolveEngine('/tmp/x.img', 'nbd')).toThrow(/--aio nbd needs an NBD URI/);
  });
});
