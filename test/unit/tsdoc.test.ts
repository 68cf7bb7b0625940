/**
 * Every exported declaration under src/ carries TSDoc (scripts/check-tsdoc.ts),
 * and the checker itself tells documented from undocumented exports.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkTsdoc, undocumentedExports } from '../../scripts/check-tsdoc.js';

describe('check-tsdoc', () => {
  it('finds no undocumented export in src/', () => {
    const found = checkTsdoc(join(import.meta.dirname, '..', '..', 'src'));
    expect(found.map((u) => `${u.file}:${u.line}: ${u.text}`)).toEqual([]);
  });

  it('tells a documented declaration from an undocumented one, and skips re-exports', () => {
    const source = [
      '/** Documented. */',
      'export const a = 1;',
      '',
      '// a line comment is not TSDoc',
      'export function b(): void {}',
      '/**',
      ' * Documented over',
      ' * several lines.',
      ' */',
      '// biome-ignore lint/x: y',
      'export class C {}',
      '/* not TSDoc */',
      'export interface D {}',
      "export { e } from './e.js';",
      "export type { F } from './f.js';",
      "export * from './g.js';",
      'export type H = number;',
    ].join('\n');
    expect(undocumentedExports(source, 'x.ts').map((u) => u.line)).toEqual([5, 13, 17]);
  });
});
