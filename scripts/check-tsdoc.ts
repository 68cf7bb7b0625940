/**
 * Every export of src/ carries TSDoc: a declaration exported from a module
 * (`export class`, `interface`, `type`, `function`, `const`, ...) must follow
 * a `/** ... *\/` block. Re-exports (`export { ... } from`, `export *`) are
 * documented where they are declared.
 *
 * Run it with `node dist/scripts/check-tsdoc.js [SRC_DIR]`: it prints one line
 * per undocumented export and exits 1 if there is any. test/unit/tsdoc.test.ts
 * runs it on src/.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** An exported declaration with no TSDoc block before it. */
export interface UndocumentedExport {
  file: string;
  line: number;
  text: string;
}

const DECLARATION =
  /^export\s+(?:default\s+)?(?:declare\s+)?(?:abstract\s+)?(?:async\s+)?(?:class|interface|type\s+[A-Za-z_$]|function\*?\s|const|let|enum|namespace)/;

/** The undocumented exported declarations of one file's source text. */
export function undocumentedExports(source: string, file: string): UndocumentedExport[] {
  const lines = source.split('\n');
  const out: UndocumentedExport[] = [];
  lines.forEach((text, i) => {
    if (!DECLARATION.test(text)) return;
    if (!documented(lines, i)) out.push({ file, line: i + 1, text: text.trim() });
  });
  return out;
}

/** Whether the lines above `at` (skipping blank lines and biome-ignore comments) end a `/**` block. */
function documented(lines: readonly string[], at: number): boolean {
  let i = at - 1;
  while (i >= 0 && (lines[i].trim() === '' || lines[i].trim().startsWith('// biome-ignore'))) i--;
  if (i < 0 || !lines[i].trim().endsWith('*/')) return false;
  while (i >= 0 && !lines[i].includes('/*')) i--;
  return i >= 0 && lines[i].includes('/**');
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sourceFiles(path);
    return name.endsWith('.ts') && !name.endsWith('.d.ts') ? [path] : [];
  });
}

/** Every undocumented export under `srcDir`. */
export function checkTsdoc(srcDir: string): UndocumentedExport[] {
  const root = dirname(srcDir);
  return sourceFiles(srcDir).flatMap((path) =>
    undocumentedExports(readFileSync(path, 'utf8'), relative(root, path)),
  );
}

function main(): void {
  const here = dirname(fileURLToPath(import.meta.url));
  const srcDir = process.argv[2] ?? join(here, '..', '..', 'src');
  const found = checkTsdoc(srcDir);
  for (const u of found) console.log(`${u.file}:${u.line}: undocumented export: ${u.text}`);
  process.exitCode = found.length > 0 ? 1 : 0;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main();
}
