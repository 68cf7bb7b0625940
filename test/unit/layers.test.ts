/**
 * Imports under src/ run one way, top to bottom: scripts/check-layers.ts over
 * the real tree (the failure lists every offending import), and the checker
 * itself over a small tree built for the purpose.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  checkLayers,
  defaultSrcDir,
  edgeProblem,
  formatViolation,
  importSpecifiers,
  LAYERS,
} from '../../scripts/check-layers.js';

describe('the layering of src/', () => {
  it('has no import that goes up, sideways or into an unmapped unit', () => {
    expect(checkLayers(defaultSrcDir()).map(formatViolation)).toEqual([]);
  });
});

describe('check-layers', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-layers-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let trees = 0;
  const tree = (files: Record<string, string>) => {
    const src = join(dir, String(trees++), 'src');
    for (const [path, text] of Object.entries(files)) {
      mkdirSync(dirname(join(src, path)), { recursive: true });
      writeFileSync(join(src, path), text);
    }
    return src;
  };

  it('reads every form of static import and re-export, one line or several', () => {
    const source = [
      "import { a } from './a.js';",
      "import type { B } from '../b/index.js';",
      'import {',
      '  c,',
      '  type D,',
      "} from '../c/d.js';",
      "import * as e from 'node:fs';",
      "import f, { g } from './f.js';",
      "export { h } from './h.js';",
      "export type { I } from '../i.js';",
      "export * from './j.js';",
      "export * as k from './k.js';",
      "import './side-effect.js';",
      "const s = 'not an import from \\'./x.js\\'';",
      ' * import { doc } from "./comment.js"',
      'export const from = 1;',
    ].join('\n');
    expect(importSpecifiers(source)).toEqual([
      './a.js',
      '../b/index.js',
      '../c/d.js',
      'node:fs',
      './f.js',
      './h.js',
      '../i.js',
      './j.js',
      './k.js',
      './side-effect.js',
    ]);
  });

  it('allows down and within a unit; refuses up, sideways, unmapped and outside src/', () => {
    const src = tree({
      'index.ts': "export * from './cli/main.js';\nexport { E } from './errors.js';\n",
      'cli/main.ts': "import { w } from '../worker/run.js';\nimport { x } from './flags.js';\n",
      'cli/flags.ts': '',
      'worker/run.ts': [
        "import { d } from '../devices/blk/device.js';", // down: fine
        "import type { C } from '../cli/flags.js';", // up
        "import { n } from '../native.js';", // down to a root file: fine
      ].join('\n'),
      'devices/blk/device.ts': [
        "import { v } from '../../virtio/queue.js';", // down
        "import { q } from '../index.js';", // own unit
      ].join('\n'),
      'devices/index.ts': "export * from './blk/device.js';\n",
      'virtio/queue.ts': "import { l } from '../logger/log.js';\n", // same layer, other unit
      'logger/log.ts': "import { s } from '../stray/thing.js';\n", // unmapped target
      'stray/thing.ts': "import { e } from '../errors.js';\n", // unmapped importer
      'native.ts': "import pkg from '../package.json';\n", // outside src/
      'errors.ts': '',
    });
    expect(checkLayers(src).map((v) => `${v.file} ${v.specifier}`)).toEqual([
      'src/logger/log.ts ../stray/thing.js',
      'src/native.ts ../package.json',
      'src/stray/thing.ts ../errors.js',
      'src/virtio/queue.ts ../logger/log.js',
      'src/worker/run.ts ../cli/flags.js',
    ]);
    expect(formatViolation(checkLayers(src)[4])).toBe(
      "src/worker/run.ts: '../cli/flags.js': worker (layer 3) -> cli (layer 0): imports a higher layer",
    );
  });

  it('places every unit of the design in exactly one layer', () => {
    const units = LAYERS.flat();
    expect(new Set(units).size).toBe(units.length);
    expect(edgeProblem('chardev', 'logger')).toBeUndefined();
    expect(edgeProblem('logger', 'chardev')).toMatch(/higher layer/);
    expect(edgeProblem('net', 'virtio')).toMatch(/own layer/);
    expect(edgeProblem('devices', 'chardev')).toBeUndefined();
    expect(edgeProblem('logger', 'thread')).toBeUndefined();
    expect(edgeProblem('thread', 'rt')).toBeUndefined();
    expect(edgeProblem('errors.ts', 'log.ts')).toMatch(/own layer/);
    expect(edgeProblem('index.ts', 'cli')).toBeUndefined();
    expect(edgeProblem('native.ts', 'thread')).toMatch(/higher layer/);
  });
});
