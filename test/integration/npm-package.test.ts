/**
 * The package as a user gets it: `npm pack` of this tree, `npm install` of the
 * tarball into an empty project (which builds the native addon with node-gyp),
 * then the command, the library with its types, and the addon are used from there.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');
const VERSION = (
  JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }
).version;

function run(cmd: string, args: string[], cwd: string): string {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

describe('npm package', () => {
  let dir: string;
  let project: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'vhost-rt-pack-'));
    // dist/ is built by the test run's global setup; --ignore-scripts keeps prepack from
    // rewriting it under the workers of other test files (prepack runs tsc for real users).
    const packed = JSON.parse(
      run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], ROOT),
    ) as { filename: string; files: { path: string }[] }[];
    project = join(dir, 'project');
    mkdirSync(project);
    writeFileSync(
      join(project, 'package.json'),
      JSON.stringify({ name: 'uses-vhost-rt', private: true, type: 'module' }),
    );
    run(
      'npm',
      ['install', '--no-audit', '--no-fund', '--prefer-offline', join(dir, packed[0].filename)],
      project,
    );
  }, 600_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('installs a working vhost-rt command: --version and --help', () => {
    expect(run('npx', ['--no-install', 'vhost-rt', '--version'], project).trim()).toBe(
      `vhost-rt ${VERSION}`,
    );
    const help = run('npx', ['--no-install', 'vhost-rt', '--help'], project);
    expect(help).toMatch(/Commands:/);
    expect(help).toMatch(/vhost-rt blk/);
  });

  it('builds the native addon at install and the library uses it', () => {
    const pkg = join(project, 'node_modules', 'vhost-rt');
    expect(existsSync(join(pkg, 'native', 'build', 'Release', 'vhost_rt.node'))).toBe(true);
    expect(existsSync(join(pkg, 'LICENSE'))).toBe(true);
    const image = join(dir, 'disk.img');
    writeFileSync(image, Buffer.alloc(1 << 20));
    // Opening an engine goes through the addon (Linux AIO context, eventfd, the image's fd).
    const script = `
      import { BlkDevice, createVrings, LinuxAioEngine } from 'vhost-rt';
      import { VhostUserServer } from 'vhost-rt/vhost-user';
      import { BlkDeviceSet } from 'vhost-rt/daemon';
      const e = new LinuxAioEngine({ path: ${JSON.stringify(image)}, readonly: true, direct: false, depth: 4, maxIovs: 16, warn() {} });
      console.log(typeof BlkDevice, typeof createVrings, typeof VhostUserServer, typeof BlkDeviceSet, e.sizeBytes);
      e.close();
    `;
    const out = run('node', ['--input-type=module', '-e', script], project);
    expect(out.trim()).toBe(`function function function function ${1 << 20}`);
  });

  it('ships types: a strict TypeScript program importing the package type-checks', () => {
    writeFileSync(
      join(project, 'main.ts'),
      [
        "import { BlkDevice, type VirtioDeviceModel } from 'vhost-rt';",
        "import type { VhostUserDevice } from 'vhost-rt/vhost-user';",
        'export const kind: VirtioDeviceModel<never>["kind"] | undefined = undefined;',
        'export const ctor: typeof BlkDevice = BlkDevice;',
        'export type Device = VhostUserDevice;',
        '// @ts-expect-error: not an export of the package',
        "import { nothing } from 'vhost-rt';",
        'export const n = nothing;',
      ].join('\n'),
    );
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const typeRoots = join(ROOT, 'node_modules', '@types');
    run(
      'node',
      [
        tsc,
        '--noEmit',
        '--strict',
        '--module',
        'nodenext',
        '--moduleResolution',
        'nodenext',
        '--target',
        'es2022',
        '--typeRoots',
        typeRoots,
        '--types',
        'node',
        'main.ts',
      ],
      project,
    );
  });
});
