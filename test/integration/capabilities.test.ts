/**
 * `--print-capabilities` (QEMU docs/interop/vhost-user.json, backend
 * discovery): the JSON each backend type prints, without opening anything
 * and without the native addon; and the conventional block options it
 * advertises (`--blk-file`, `--read-only`) serving a real disk.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkDriver, BlkFeature, BlkStatus } from '../frontend/index.js';
import { CLI, type Daemon, runCli, startDaemon } from '../support/daemon.js';

let dir: string;
const daemons: Daemon[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-caps-'));
});

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  rmSync(dir, { recursive: true, force: true });
});

describe('--print-capabilities', () => {
  it.each([
    { command: 'blk', expected: { type: 'block', features: ['read-only', 'blk-file'] } },
    { command: 'net', expected: { type: 'net' } },
    { command: 'console', expected: { type: 'console' } },
  ])('$command prints $expected.type and exits 0', async ({ command, expected }) => {
    const { code, stdout, stderr } = await runCli([command, '--print-capabilities']);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toEqual(expected);
  });

  it('needs neither the other flags nor the native addon', async () => {
    // A copy of the compiled tree with no native/build beside it: the addon cannot load.
    const root = join(dir, 'no-addon');
    const repo = dirname(dirname(dirname(dirname(CLI))));
    mkdirSync(join(root, 'dist'), { recursive: true });
    cpSync(join(repo, 'dist', 'src'), join(root, 'dist', 'src'), { recursive: true });
    cpSync(join(repo, 'package.json'), join(root, 'package.json'));
    symlinkSync(join(repo, 'node_modules'), join(root, 'node_modules'));
    const main = join(root, 'dist', 'src', 'cli', 'main.js');
    const probe = spawnSync(
      process.execPath,
      [main, 'blk', '--print-capabilities', '--image', '/nonexistent'],
      {
        encoding: 'utf8',
      },
    );
    expect(probe.status).toBe(0);
    expect(JSON.parse(probe.stdout)).toEqual({
      type: 'block',
      features: ['read-only', 'blk-file'],
    });
    // The copy really lacks the addon: serving a real image fails, naming it.
    const image = join(dir, 'probe.img');
    writeFileSync(image, Buffer.alloc(64 * 1024));
    const serve = spawnSync(
      process.execPath,
      [main, 'blk', '--socket-path', join(dir, 'x.sock'), '--image', image],
      { encoding: 'utf8' },
    );
    expect(serve.status).not.toBe(0);
    expect(serve.stderr).toMatch(/native addon .* cannot be loaded/);
  });

  it('serves a disk with the advertised --blk-file and --read-only', async () => {
    const image = join(dir, 'disk.img');
    const socket = join(dir, 'disk.sock');
    writeFileSync(image, Buffer.alloc(1024 * 1024, 0x33));
    const daemon = await startDaemon([
      'blk',
      '--socket-path',
      socket,
      '--blk-file',
      image,
      '--read-only',
    ]);
    daemons.push(daemon);
    expect(daemon.log()).toContain(`image ${image}`);
    const d = await BlkDriver.create({ socketPath: socket });
    expect(d.vmm.hasFeature(BlkFeature.RO)).toBe(true);
    const r = await d.read(0, 4096);
    expect(r.status).toBe(BlkStatus.OK);
    expect(r.data.every((b) => b === 0x33)).toBe(true);
    expect((await d.write(0, new Uint8Array(4096))).status).toBe(BlkStatus.IOERR);
    await d.close();
  });

  it('refuses --image and --blk-file together', async () => {
    const { code, stderr } = await runCli([
      'blk',
      '--socket-path',
      join(dir, 'y.sock'),
      '--image',
      'a',
      '--blk-file',
      'b',
    ]);
    expect(code).not.toBe(0);
    expect(stderr).toMatch(/--image and --blk-file are the same option/);
  });
});
