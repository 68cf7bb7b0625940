/**
 * vitest global setup: compiles the tree before any test runs. Tests import
 * src/ directly, but device workers, the CLI daemons and the fixtures load the
 * COMPILED JavaScript under dist/; without this step a test would run an edited
 * test file against a stale worker. `npx vitest` therefore tests the edit.
 *
 * The build is `tsc -p tsconfig.json`, incremental with the state that
 * scripts/setup.sh keeps (dist/.tsbuildinfo: deleting dist/ forgets it too,
 * so a missing dist/ is always rebuilt in full). When tsc reports errors the
 * run fails with tsc's output. The native addon is scripts/setup.sh's job.
 *
 * `VHOST_RT_SKIP_TSC=1` skips the build: scripts/test.sh sets it because its
 * set-up step has just run the same tsc.
 */
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root, whether this runs from test/support or (compiled) dist/test/support. */
const root = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..').replace(/\/dist$/, '');

/** The tsc command line, relative to the repository root. */
export const TSC_ARGS = [
  '-p',
  'tsconfig.json',
  '--incremental',
  '--tsBuildInfoFile',
  'dist/.tsbuildinfo',
] as const;

/** Runs tsc over the tree; throws with its output when it fails. */
export function buildTree(): void {
  const tsc = createRequire(join(root, 'package.json')).resolve('typescript/bin/tsc');
  // Under flock(1) when it exists: two test runs started together in one tree (or a test
  // run beside a manual build) would otherwise write dist/ and its build state at once.
  const command = [process.execPath, tsc, ...TSC_ARGS];
  const locked = spawnSync('flock', ['--version'], { encoding: 'utf8' }).status === 0;
  const [file, ...args] = locked ? ['flock', '/tmp/vhost-rt-tsc.lock', ...command] : command;
  const run = spawnSync(file as string, args, { cwd: root, encoding: 'utf8' });
  if (run.error !== undefined) throw run.error;
  if (run.status !== 0) {
    const output = `${run.stdout}${run.stderr}`.trim();
    throw new Error(`tsc ${TSC_ARGS.join(' ')} failed (status ${run.status}):\n${output}`);
  }
}

/** vitest's global setup entry: build unless the caller already did. */
export default function setup(): void {
  if (process.env.VHOST_RT_SKIP_TSC === '1') return;
  buildTree();
}
