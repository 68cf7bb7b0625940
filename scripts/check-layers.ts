/**
 * The layering check: imports under src/ run one way, top to bottom
 * (DESIGN.md, "Modules"). Reads every .ts file under src/, takes each
 * `import ... from '...'`, `import type ... from '...'`, `export ... from '...'`
 * and `import '...'` statement, resolves relative specifiers to the unit they
 * land in (a top-level directory of src/, or a file at its root such as
 * src/errors.ts) and checks the edge against {@link LAYERS}.
 *
 * Run it with `node dist/scripts/check-layers.js [SRC_DIR]`: it prints one line
 * per offending import and exits 1. test/unit/layers.test.ts runs it in the
 * test suite.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/**
 * THE layer map of src/, top to bottom; change it here and nowhere else.
 *
 * A module may import its own unit and any unit of a LOWER layer (a larger
 * index), never a higher one, and never another unit of its OWN layer unless
 * that edge is listed in {@link SAME_LAYER_ALLOWED}. A unit is a top-level
 * directory of src/ (`'devices'`) or a file at its root (`'errors.ts'`). A
 * unit missing from this map fails the check: a new folder must be placed here.
 * src/index.ts, the package's public API, sits above every layer
 * ({@link PUBLIC_API}) and may import anything.
 */
export const LAYERS: readonly (readonly string[])[] = [
  /* 0 */ ['cli'],
  /* 1 */ ['control'],
  /* 2 */ ['vhost-user'],
  /* 3 */ ['worker'],
  /* 4 */ ['devices'],
  /* 5 */ ['chardev'],
  /* 6 */ ['net', 'virtio', 'io', 'logger'],
  /* 7 */ ['thread'],
  /* 8 */ ['locking', 'rt', 'sockets'],
  /* 9 */ ['native.ts'],
  /* 10 */ ['errors.ts', 'log.ts'],
];

/**
 * Imports allowed between two different units of the same layer, as
 * `[from, to]`. Empty: every such edge so far was a unit in the wrong place.
 */
export const SAME_LAYER_ALLOWED: readonly (readonly [string, string])[] = [];

/** The root file that is the public API: rank -1, above every layer. */
export const PUBLIC_API = 'index.ts';

/** One import that breaks the layering. */
export interface LayerViolation {
  /** The importing file, relative to the repository (`src/devices/blk/host.ts`). */
  file: string;
  /** The specifier as written (`'../../worker/device-host.js'`). */
  specifier: string;
  /** Why it is refused. */
  reason: string;
}

/** Static imports and re-exports; the clause holds only names, braces, `*`, `as`, `type`. */
const FROM_STATEMENT = /^[ \t]*(?:import|export)\b[\w\s{},*$]*?\bfrom\s*(['"])([^'"\n]+)\1/gm;
/** Imports for their side effects only: `import './x.js';`. */
const BARE_IMPORT = /^[ \t]*import\s*(['"])([^'"\n]+)\1/gm;

/** The module specifiers that `source` imports or re-exports from, in order. */
export function importSpecifiers(source: string): string[] {
  const found: { at: number; specifier: string }[] = [];
  for (const re of [FROM_STATEMENT, BARE_IMPORT]) {
    for (const m of source.matchAll(re)) found.push({ at: m.index ?? 0, specifier: m[2] });
  }
  return found.sort((a, b) => a.at - b.at).map((f) => f.specifier);
}

/** The rank of `unit` in {@link LAYERS}; -1 for the public API; undefined when unmapped. */
export function rankOf(unit: string): number | undefined {
  if (unit === PUBLIC_API) return -1;
  const rank = LAYERS.findIndex((layer) => layer.includes(unit));
  return rank < 0 ? undefined : rank;
}

/**
 * The unit that `path` (absolute) lies in: its top-level directory under
 * `srcDir`, or its own name for a file at the root (a `.js` specifier names
 * the `.ts` source); undefined outside `srcDir`.
 */
export function unitOf(srcDir: string, path: string): string | undefined {
  const rel = relative(srcDir, path);
  if (rel === '' || rel.startsWith('..') || rel.startsWith(sep)) return undefined;
  const parts = rel.split(sep);
  if (parts.length > 1) return parts[0];
  return parts[0].replace(/\.js$/, '.ts');
}

/** Why an import from unit `from` to unit `to` is refused, or undefined when it is fine. */
export function edgeProblem(from: string, to: string): string | undefined {
  if (from === to) return undefined;
  const fromRank = rankOf(from);
  const toRank = rankOf(to);
  if (fromRank === undefined) return `'${from}' is not in the layer map (scripts/check-layers.ts)`;
  if (toRank === undefined) return `'${to}' is not in the layer map (scripts/check-layers.ts)`;
  const edge = `${from} (layer ${fromRank}) -> ${to} (layer ${toRank})`;
  if (toRank < fromRank) return `${edge}: imports a higher layer`;
  if (toRank > fromRank) return undefined;
  if (SAME_LAYER_ALLOWED.some(([a, b]) => a === from && b === to)) return undefined;
  return `${edge}: imports another unit of its own layer (not in SAME_LAYER_ALLOWED)`;
}

/** Every .ts file under `dir`, sorted. */
function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sourceFiles(path));
    else if (entry.isFile() && entry.name.endsWith('.ts')) out.push(path);
  }
  return out.sort();
}

/** The problems of one file's imports; `srcDir` is absolute, `file` lies under it. */
function checkFile(srcDir: string, file: string, shownAs: string): LayerViolation[] {
  const from = unitOf(srcDir, file) ?? '';
  const out: LayerViolation[] = [];
  for (const specifier of importSpecifiers(readFileSync(file, 'utf8'))) {
    if (!specifier.startsWith('.')) continue; // node:*, packages
    const to = unitOf(srcDir, resolve(dirname(file), specifier));
    const reason = to === undefined ? 'imports from outside src/' : edgeProblem(from, to);
    if (reason !== undefined) out.push({ file: shownAs, specifier, reason });
  }
  return out;
}

/**
 * Checks every import of every .ts file under `srcDir` against the layer map
 * and returns the offending ones (empty: the tree is layered). File names are
 * shown relative to `srcDir`'s parent (`src/...`).
 */
export function checkLayers(srcDir: string): LayerViolation[] {
  const abs = resolve(srcDir);
  const base = dirname(abs);
  return sourceFiles(abs).flatMap((f) => checkFile(abs, f, relative(base, f)));
}

/** One line per violation: `src/a/b.ts: '../c/d.js': reason`. */
export function formatViolation(v: LayerViolation): string {
  return `${v.file}: '${v.specifier}': ${v.reason}`;
}

/** The repository's src/, whether this runs from scripts/ or (compiled) dist/scripts/. */
export function defaultSrcDir(): string {
  const root = join(fileURLToPath(new URL('.', import.meta.url)), '..').replace(/\/dist\/?$/, '');
  return join(root, 'src');
}

function main(): void {
  const srcDir = process.argv[2] ?? defaultSrcDir();
  const violations = checkLayers(srcDir);
  for (const v of violations) console.log(formatViolation(v));
  if (violations.length > 0) {
    console.log(`check-layers: ${violations.length} import(s) break the layering`);
    process.exitCode = 1;
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main();
}
