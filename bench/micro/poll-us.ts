/**
 * Question: what does adaptive polling (`--poll-us N`) buy at queue depth 1,
 * and what does it cost in CPU?
 *
 * Not a tinybench case: it starts the real daemon once per (engine, window)
 * and drives it with the load generator (4k random reads, QD1), interleaving
 * the configurations over several rounds and reporting the median of each,
 * so that a noisy neighbour on a shared machine skews one sample, not the
 * table. Run: `node dist/bench/micro/poll-us.js [--quick] [--rounds N]`.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../../test/support/daemon.js';
import { type LoadResult, runLoad } from '../loadgen/generator.js';
import { isMain } from './common.js';

const ENGINES = ['io_uring', 'linux-aio'] as const;
const WINDOWS_US = [0, 20, 50, 200];
const IMAGE_BYTES = 256 * 1024 * 1024;

interface Sample {
  iops: number;
  p50: number;
  p99: number;
  p999: number;
  cpuUsPerIo: number;
  cpuPercent: number;
}

function argValue(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

async function measure(dir: string, engine: string, pollUs: number, seconds: number) {
  const socket = join(dir, `${engine}-${pollUs}.sock`);
  const image = join(dir, 'disk.img');
  const args = ['blk', '--socket-path', socket, '--image', image, '--aio', engine];
  const daemon = await startDaemon([...args, '--poll-us', String(pollUs)]);
  try {
    const r: LoadResult = await runLoad({
      socketPath: socket,
      backendPid: daemon.proc.pid,
      rw: 'randread',
      bs: 4096,
      iodepth: 1,
      runtimeSec: seconds,
      rampSec: 1,
    });
    return {
      iops: r.iops,
      p50: r.latency.p50Us,
      p99: r.latency.p99Us,
      p999: r.latency.p999Us,
      cpuUsPerIo: r.backendCpuUsPerIo ?? Number.NaN,
      cpuPercent: r.backendCpuPercent ?? Number.NaN,
    };
  } finally {
    await daemon.stop();
  }
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function printTable(samples: Map<string, Sample[]>): void {
  const lines = [
    '\npoll-us: 4k randread QD1, medians over rounds (latency in µs, CPU of the daemon)',
    '| engine | --poll-us | IOPS | p50 | p99 | p99.9 | CPU µs/IO | CPU % of a core |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const [key, list] of samples) {
    const m = (f: (s: Sample) => number) => median(list.map(f));
    const [engine, poll] = key.split('/');
    lines.push(
      `| ${engine} | ${poll} | ${m((s) => s.iops).toFixed(0)} | ${m((s) => s.p50).toFixed(1)} | ` +
        `${m((s) => s.p99).toFixed(1)} | ${m((s) => s.p999).toFixed(1)} | ` +
        `${m((s) => s.cpuUsPerIo).toFixed(1)} | ${m((s) => s.cpuPercent).toFixed(0)} |`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** Runs the question and prints its table. */
export async function run(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const rounds = argValue('--rounds', quick ? 1 : 3);
  const seconds = quick ? 2 : 4;
  const dir = mkdtempSync(join(tmpdir(), 'vhost-rt-poll-'));
  const samples = new Map<string, Sample[]>();
  try {
    // A sparse image: reads of holes still go through the file system and the engine.
    writeFileSync(join(dir, 'disk.img'), '');
    await truncate(join(dir, 'disk.img'), IMAGE_BYTES);
    for (let round = 0; round < rounds; round++) {
      for (const pollUs of WINDOWS_US) {
        for (const engine of ENGINES) {
          const key = `${engine}/${pollUs}`;
          const list = samples.get(key) ?? [];
          list.push(await measure(dir, engine, pollUs, seconds));
          samples.set(key, list);
          process.stderr.write('.');
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  printTable(new Map([...samples].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true }))));
}

if (isMain(import.meta.url)) await run();
