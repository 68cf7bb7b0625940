/**
 * The sd_notify(3) sender on its own: the variable is consumed, nothing is
 * sent without it, a datagram carries KEY=VALUE lines (a path or an
 * abstract address), and an unreachable NOTIFY_SOCKET is logged once and
 * never thrown.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SdNotifier } from '../../src/control/sd-notify.js';
import { NotifySocket } from '../support/systemd.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-sdnotify-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('SdNotifier', () => {
  it('is disabled without NOTIFY_SOCKET and sends nothing', () => {
    const env: NodeJS.ProcessEnv = {};
    const n = SdNotifier.fromEnv(env);
    expect(n.enabled).toBe(false);
    n.ready('x');
  });

  it('takes NOTIFY_SOCKET out of the environment and sends KEY=VALUE datagrams', async () => {
    for (const path of [join(dir, 'n.sock'), `@vhost-rt-unit-${process.pid}`]) {
      const sock = new NotifySocket(path);
      try {
        const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: path };
        const n = SdNotifier.fromEnv(env);
        expect(env.NOTIFY_SOCKET).toBeUndefined();
        n.ready('serving 1 device');
        n.status('two\nlines');
        n.stopping('SIGTERM: draining');
        expect(await sock.waitLine('READY=1')).toBe(
          `READY=1\nMAINPID=${process.pid}\nSTATUS=serving 1 device\n`,
        );
        expect(await sock.waitLine('STATUS=two lines')).toBe('STATUS=two lines\n');
        expect(await sock.waitLine('STOPPING=1')).toBe('STOPPING=1\nSTATUS=SIGTERM: draining\n');
      } finally {
        sock.close();
      }
    }
  });

  it('logs an unreachable NOTIFY_SOCKET once and goes on', () => {
    const lines: string[] = [];
    const n = SdNotifier.fromEnv({ NOTIFY_SOCKET: join(dir, 'nobody.sock') }, (_l, m) =>
      lines.push(m),
    );
    n.ready('a');
    n.status('b');
    expect(lines).toEqual([
      `NOTIFY_SOCKET ${join(dir, 'nobody.sock')}: cannot notify systemd (ENOENT)`,
    ]);
  });
});
