// The package's "install" script: builds the native addon with node-gyp unless a build
// newer than every native source is already there (a repository checkout that ran
// `npm run build:native`). On failure it names the Debian packages the build needs.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const addon = join(here, 'build', 'Release', 'vhost_rt.node');
const sources = readdirSync(here).filter((f) => /\.(cc|h|gyp)$/.test(f));

function fresh() {
  if (!existsSync(addon)) return false;
  const built = statSync(addon).mtimeMs;
  return sources.every((f) => statSync(join(here, f)).mtimeMs <= built);
}

if (!fresh()) {
  // npm hands lifecycle scripts its own node-gyp; a plain `node native/install.mjs` uses PATH's.
  const gyp = process.env.npm_config_node_gyp;
  const [cmd, args] = gyp
    ? [process.execPath, [gyp, 'rebuild', '--directory', here]]
    : ['node-gyp', ['rebuild', '--directory', here]];
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(
      'vhost-rt: building the native addon failed. It needs a C++ toolchain and the Linux AIO and ' +
        'io_uring and libnbd headers; on Debian: apt-get install g++ make python3 libaio-dev liburing-dev libnbd-dev',
    );
    process.exit(1);
  }
}
