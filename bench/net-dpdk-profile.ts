/**
 * Summarises V8 CPU profiles (`node --cpu-prof`) of the switch's threads: self
 * time per function, the busiest first, one table per profile. Used with
 * `node dist/bench/net-dpdk.js --only vhost-rt "--node-args=--cpu-prof --cpu-prof-dir=DIR"`.
 *
 *   node dist/bench/net-dpdk-profile.js DIR [--top 25]
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
}

/** Self samples per function (name, file and line) of one profile, busiest first. */
export function selfTimes(p: Profile): { name: string; share: number }[] {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const counts = new Map<string, number>();
  for (const id of p.samples) {
    const f = byId.get(id)?.callFrame;
    if (f === undefined) continue;
    const file = f.url.split('/').slice(-2).join('/');
    const key = `${f.functionName || '(anonymous)'} ${file}:${f.lineNumber + 1}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  const total = p.samples.length || 1;
  return [...counts.entries()]
    .map(([name, n]) => ({ name, share: n / total }))
    .sort((a, b) => b.share - a.share);
}

function main(): void {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { top: { type: 'string', default: '25' } },
  });
  const dir = positionals[0] ?? '.';
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.cpuprofile'))) {
    const p = JSON.parse(readFileSync(join(dir, f), 'utf8')) as Profile;
    console.log(`## ${f} (${p.samples.length} samples)`);
    for (const { name, share } of selfTimes(p).slice(0, Number(values.top)))
      console.log(`${(100 * share).toFixed(1).padStart(5)} %  ${name}`);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) main();
