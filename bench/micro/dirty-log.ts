/**
 * Question: what does dirty logging (live migration, issue 9) cost a blk
 * device while it is on, and is it free while off?
 *
 * One `vhost-rt blk` daemon per engine — linux-aio (O_DIRECT, the real
 * disk) and null (no I/O: what is left is the CPU path, where logging's cost
 * shows undiluted) — is driven by the load
 * generator with 4k random reads at QD1 and QD32, with the front end's dirty
 * log off (A) and on (B: SET_LOG_BASE, VHOST_F_LOG_ALL, the rings' LOG flag,
 * the bitmap cleared every 100 ms as QEMU's log sync does). The same daemon
 * serves both, so only logging differs; A and B alternate within each round
 * (AB, then BA, ...) so drift on a shared machine hits both. Per round the
 * ratio B/A is taken; the table gives the median ratio and its spread (min..max).
 *
 * Run: `node dist/bench/micro/dirty-log.js [--rounds N] [--seconds S]`; writes
 * bench/results/dirty-log.md.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../../test/support/daemon.js';
import { REPO_ROOT } from '../loadgen/backends.js';
import { type LoadResult, runLoad } from '../loadgen/generator.js';
import { isMain } from './common.js';

const IMAGE_BYTES = 256 * 1024 * 1024;
const DEPTHS = [1, 32] as const;
const ENGINES = ['linux-aio', 'null'] as const;

/** One measured run. */
interface Sample {
  iops: number;
  p50: number;
  p99: number;
  cpuUsPerIo: number;
}

function argValue(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function sample(r: LoadResult): Sample {
  return {
    iops: r.iops,
    p50: r.latency.p50Us,
    p99: r.latency.p99Us,
    cpuUsPerIo: r.backendCpuUsPerIo ?? Number.NaN,
  };
}

/** The B/A ratios of one metric over the rounds: median and spread. */
function ratio(a: Sample[], b: Sample[], f: (s: Sample) => number): string {
  const r = a.map((s, i) => f(b[i]) / f(s));
  const lo = Math.min(...r);
  const hi = Math.max(...r);
  return `${median(r).toFixed(3)} (${lo.toFixed(3)}..${hi.toFixed(3)})`;
}

/** Runs the rounds and returns the report (markdown). */
export async function runDirtyLogBench(rounds: number, seconds: number): Promise<string> {
  const parts: string[] = [];
  for (const engine of ENGINES) parts.push(await runEngine(engine, rounds, seconds));
  return header(rounds, seconds) + parts.join('\n');
}

async function runEngine(engine: string, rounds: number, seconds: number): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-dirty-bench-'));
  const image = join(dir, 'disk.img');
  const socket = join(dir, 'blk.sock');
  writeFileSync(image, Buffer.alloc(0));
  await truncate(image, IMAGE_BYTES);
  const args = ['blk', '--socket-path', socket, '--image', image, '--aio', engine];
  const daemon = await startDaemon(args);
  const results = new Map<string, Sample[]>();
  try {
    for (let round = 0; round < rounds; round++) {
      for (const depth of DEPTHS) {
        const order = round % 2 === 0 ? [false, true] : [true, false];
        for (const dirtyLog of order) {
          const r = await runLoad({
            socketPath: socket,
            backendPid: daemon.proc.pid,
            rw: 'randread',
            bs: 4096,
            iodepth: depth,
            runtimeSec: seconds,
            rampSec: 1,
            dirtyLog,
          });
          if (r.errors > 0) throw new Error(`${r.errors} I/O errors at QD${depth}`);
          const key = `${depth}/${dirtyLog ? 'on' : 'off'}`;
          results.set(key, [...(results.get(key) ?? []), sample(r)]);
          process.stderr.write(
            `${engine} round ${round + 1}/${rounds} QD${depth} log ${dirtyLog ? 'on ' : 'off'}: ` +
              `${r.iops.toFixed(0)} IOPS p50 ${r.latency.p50Us.toFixed(1)} µs ` +
              `CPU ${(r.backendCpuUsPerIo ?? 0).toFixed(2)} µs/IO\n`,
          );
        }
      }
    }
  } finally {
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  return report(engine, results);
}

function report(engine: string, results: Map<string, Sample[]>): string {
  const lines = [
    '| QD | log | IOPS | p50 µs | p99 µs | daemon CPU µs/IO |',
    '|---:|---|---:|---:|---:|---:|',
  ];
  const ratios = [
    '| QD | IOPS on/off | p50 on/off | p99 on/off | CPU µs/IO on/off |',
    '|---:|---|---|---|---|',
  ];
  for (const depth of DEPTHS) {
    const off = results.get(`${depth}/off`) ?? [];
    const on = results.get(`${depth}/on`) ?? [];
    for (const [name, list] of [
      ['off', off],
      ['on', on],
    ] as const) {
      const m = (f: (s: Sample) => number) => median(list.map(f));
      lines.push(
        `| ${depth} | ${name} | ${m((s) => s.iops).toFixed(0)} | ${m((s) => s.p50).toFixed(1)} | ` +
          `${m((s) => s.p99).toFixed(1)} | ${m((s) => s.cpuUsPerIo).toFixed(2)} |`,
      );
    }
    ratios.push(
      `| ${depth} | ${ratio(off, on, (s) => s.iops)} | ${ratio(off, on, (s) => s.p50)} | ` +
        `${ratio(off, on, (s) => s.p99)} | ${ratio(off, on, (s) => s.cpuUsPerIo)} |`,
    );
  }
  return [
    `## --aio ${engine}`,
    '',
    'Medians over the rounds:',
    '',
    ...lines,
    '',
    'Ratios on/off, per round: median (min..max):',
    '',
    ...ratios,
    '',
  ].join('\n');
}

function header(rounds: number, seconds: number): string {
  return [
    '# Dirty logging: cost while on, and while off',
    '',
    'Question: what does dirty logging for live migration (issue 9) cost a blk device while',
    'QEMU has it on, and does it cost anything while off?',
    '',
    `Setup: one \`vhost-rt blk\` daemon per engine (linux-aio: O_DIRECT, a ${IMAGE_BYTES / 1024 / 1024} MiB image`,
    'on the local disk; null: no I/O, the CPU path alone) driven by the load generator',
    '(`bench/loadgen`, 4k random reads) at QD1 and',
    'QD32, the front end with its dirty log off, then on (SET_LOG_BASE, VHOST_F_LOG_ALL, the',
    "rings' LOG flag; the bitmap cleared every 100 ms as QEMU's log sync does). Same daemon for",
    `both; ${rounds} rounds of ${seconds} s per run (plus 1 s ramp), off/on alternating in order`,
    'per round (AB, BA, ...). 2-CPU VM shared with other jobs, no KVM.',
    `Command: \`node dist/bench/micro/dirty-log.js --rounds ${rounds} --seconds ${seconds}\`.`,
    '',
    'What it costs while on, per request: walking the returned chain once more from the',
    'descriptor table (the checks pop makes, no allocation), one `Atomics.or` per bitmap byte',
    'touched (a 4 KiB read and its status byte: two or three), and per batch one or two for the',
    "used element(s) and used.idx. While off, a ring's `dirtyLog` is null: one null test per batch",
    '(`Vring.flush`), nothing per request; the off rows are the build without logging in',
    'every respect but that test.',
    '',
  ].join('\n');
}

if (isMain(import.meta.url)) {
  const rounds = argValue('--rounds', 5);
  const seconds = argValue('--seconds', 4);
  const md = await runDirtyLogBench(rounds, seconds);
  writeFileSync(join(REPO_ROOT, 'bench', 'results', 'dirty-log.md'), md);
  process.stdout.write(md);
}
