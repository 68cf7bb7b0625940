/**
 * Summarises V8 .cpuprofile files (from `node --cpu-prof`): self time per function, top N,
 * one table per profile (each thread writes its own file).
 *
 *   node dist/bench/loadgen/profile-summary.js DIR-or-FILE... [--top 15]
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { pathToFileURL } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** One function's share of a profile. */
export interface SelfTime {
  name: string;
  where: string;
  ms: number;
  percent: number;
}

/** Self time per function (samples × their time deltas), largest first. */
export function selfTimes(profile: CpuProfile): SelfTime[] {
  const byNode = new Map<number, ProfileNode>(profile.nodes.map((n) => [n.id, n]));
  const totals = new Map<string, { name: string; where: string; us: number }>();
  let all = 0;
  profile.samples.forEach((id, i) => {
    const node = byNode.get(id);
    if (!node) return;
    const us = profile.timeDeltas[i] ?? 0;
    const { functionName, url, lineNumber } = node.callFrame;
    const name = functionName || '(anonymous)';
    const where = url ? `${basename(url)}:${lineNumber + 1}` : '';
    const key = `${name}@${where}`;
    const t = totals.get(key) ?? { name, where, us: 0 };
    t.us += us;
    totals.set(key, t);
    all += us;
  });
  return [...totals.values()]
    .map((t) => ({
      name: t.name,
      where: t.where,
      ms: t.us / 1000,
      percent: (100 * t.us) / (all || 1),
    }))
    .sort((a, b) => b.ms - a.ms);
}

function files(args: string[]): string[] {
  return args.flatMap((a) =>
    statSync(a).isDirectory()
      ? readdirSync(a)
          .filter((f) => f.endsWith('.cpuprofile'))
          .map((f) => join(a, f))
      : [a],
  );
}

function main(): void {
  const args = process.argv.slice(2);
  const topAt = args.indexOf('--top');
  const top = topAt >= 0 ? Number(args.splice(topAt, 2)[1]) : 15;
  for (const file of files(args)) {
    const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
    const wall = (profile.endTime - profile.startTime) / 1e6;
    process.stdout.write(`\n${basename(file)} (${wall.toFixed(1)} s)\n`);
    for (const t of selfTimes(profile).slice(0, top)) {
      const line = `${t.percent.toFixed(1).padStart(5)} %  ${t.ms.toFixed(0).padStart(7)} ms  ${t.name}  ${t.where}`;
      process.stdout.write(`${line}\n`);
    }
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) main();
