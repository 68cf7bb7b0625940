/**
 * One question: how does vhost-rt's nbd engine compare with qemu-storage-daemon's nbd
 * driver, both clients of the same qemu-nbd export over TCP on 127.0.0.1? Both back ends
 * run side by side for the whole run and are driven by the same load generator
 * (bench/loadgen) in interleaved rounds (the order alternates per round), so machine
 * noise hits both alike; each round gives one vhost-rt / qsd ratio per workload, and the
 * report gives the median ratio with its min..max over the rounds. Prints the table and
 * writes every sample to bench/results/nbd.json (bench/results/nbd.md discusses a run).
 *
 *   node dist/bench/nbd.js [--transport tcp|unix] [--rounds N] [--runtime SEC] [--ramp SEC]
 *                          [--image PATH] [--out DIR]
 *                          [--baseline DIR]   (a built checkout of another vhost-rt version:
 *                                              a third back end in the same rounds, before/after)
 *
 * The server is `qemu-nbd --persistent --shared=4 -f raw` on a 1 GiB image of random data,
 * read into the page cache first: the server answers from RAM, so the clients' own costs show.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  type Backend,
  BackendError,
  ensureImage,
  REPO_ROOT,
  startVhostRt,
} from './loadgen/backends.js';
import { type LoadResult, runLoad } from './loadgen/generator.js';
import { fmtCount, fmtRatio, fmtUs, markdownTable, writeJson } from './report.js';
import type { Workload } from './run.js';

/** The workloads of issue 12. */
const WORKLOADS: readonly Workload[] = [
  { name: '4k randread QD1', rw: 'randread', bs: 4096, iodepth: 1, metric: 'iops' },
  { name: '4k randread QD32', rw: 'randread', bs: 4096, iodepth: 32, metric: 'iops' },
  { name: '1M seq read QD8', rw: 'read', bs: 1 << 20, iodepth: 8, metric: 'mbPerSec' },
];

const BACKENDS = ['vhost-rt nbd', 'qsd driver=nbd', 'vhost-rt nbd baseline'] as const;
type Label = (typeof BACKENDS)[number];

interface Sample {
  round: number;
  backend: Label;
  workload: string;
  result: LoadResult;
}

function waitAccepting(at: Address, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 10_000;
  return new Promise((resolve, reject) => {
    const probe = () => {
      if (child.exitCode !== null) return reject(new BackendError('BENCH_NBD', 'qemu-nbd exited'));
      const c = 'port' in at ? connect(at.port, '127.0.0.1') : connect(at.path);
      c.once('connect', () => {
        c.destroy();
        resolve();
      });
      c.once('error', () => {
        if (Date.now() > deadline) reject(new BackendError('BENCH_NBD', 'qemu-nbd not up'));
        else setTimeout(probe, 50);
      });
    };
    probe();
  });
}

/** Where qemu-nbd listens: a TCP port on 127.0.0.1, or a unix socket path. */
type Address = { port: number } | { path: string };

async function startQemuNbd(image: string, at: Address): Promise<ChildProcess> {
  const args = ['--persistent', '--shared=4', '-f', 'raw', '-x', 'disk'];
  if ('port' in at) args.push('-b', '127.0.0.1', '-p', String(at.port), image);
  else args.push(`--socket=${at.path}`, image);
  const child = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitAccepting(at, child);
  return child;
}

async function startQsdNbd(at: Address, socket: string): Promise<Backend> {
  await rm(socket, { force: true });
  const server =
    'port' in at
      ? `server.type=inet,server.host=127.0.0.1,server.port=${at.port}`
      : `server.type=unix,server.path=${at.path}`;
  const node = `driver=nbd,node-name=n0,${server},export=disk`;
  const exp = `type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path=${socket},writable=on`;
  const child = spawn('qemu-storage-daemon', ['--blockdev', node, '--export', exp], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const deadline = Date.now() + 10_000;
  while (!existsSync(socket)) {
    if (child.exitCode !== null || Date.now() > deadline)
      throw new BackendError('BENCH_QSD', 'qemu-storage-daemon did not export its socket');
    await new Promise((r) => setTimeout(r, 50));
  }
  const stop = async () => {
    if (child.exitCode === null) child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
    return '';
  };
  return { label: 'qsd driver=nbd', pid: child.pid ?? -1, sockets: [socket], stop };
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function metricOf(w: Workload, r: LoadResult): number {
  return w.metric === 'iops' ? r.iops : r.mbPerSec;
}

function report(samples: Sample[], rounds: number, runtimeSec: number, transport: string): string {
  const rows: string[][] = [];
  for (const w of WORKLOADS) {
    const of = (b: Label) => samples.filter((s) => s.workload === w.name && s.backend === b);
    /** Per-round ratios of `b` to qsd. */
    const ratiosOf = (b: Label) => {
      const ratios: number[] = [];
      for (let r = 0; r < rounds; r++) {
        const v = of(b).find((s) => s.round === r);
        const q = of('qsd driver=nbd').find((s) => s.round === r);
        if (v && q) ratios.push(metricOf(w, v.result) / metricOf(w, q.result));
      }
      return ratios;
    };
    for (const b of BACKENDS) {
      const xs = of(b);
      if (xs.length === 0) continue;
      const ratios = ratiosOf(b);
      const m = xs.map((s) => metricOf(w, s.result));
      const unit = w.metric === 'iops' ? 'IOPS' : 'MB/s';
      rows.push([
        w.name,
        b,
        `${fmtCount(median(m))} ${unit} (${fmtCount(Math.min(...m))}..${fmtCount(Math.max(...m))})`,
        fmtUs(median(xs.map((s) => s.result.latency.p50Us))),
        fmtUs(median(xs.map((s) => s.result.latency.p99Us))),
        fmtUs(median(xs.map((s) => s.result.backendCpuUsPerIo ?? Number.NaN))),
        b !== 'qsd driver=nbd'
          ? `${fmtRatio(median(ratios))} (${fmtRatio(Math.min(...ratios))}..${fmtRatio(Math.max(...ratios))})`
          : '1',
        String(xs.reduce((n, s) => n + s.result.errors, 0)),
      ]);
    }
  }
  const header = [
    'workload',
    'back end',
    'throughput, median (min..max)',
    'p50 µs',
    'p99 µs',
    'CPU µs/IO',
    '× qsd, median (min..max)',
    'errors',
  ];
  return `${markdownTable(header, rows)}\n\n${rounds} interleaved rounds of ${runtimeSec} s per cell, ${transport}.\n`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '3' },
      runtime: { type: 'string', default: '3' },
      ramp: { type: 'string', default: '1' },
      image: { type: 'string' },
      out: { type: 'string' },
      transport: { type: 'string', default: 'tcp' },
      baseline: { type: 'string' },
    },
  });
  const rounds = Number(values.rounds);
  const runtimeSec = Number(values.runtime);
  const rampSec = Number(values.ramp);
  const image = values.image ?? join(REPO_ROOT, '.cache', 'bench', 'image-1g.raw');
  const out = values.out ?? join(REPO_ROOT, 'bench', 'results');
  const work = join(REPO_ROOT, '.cache', 'bench', `nbd-${process.pid}`);
  await mkdir(work, { recursive: true });
  ensureImage(image, 1 << 30);
  // Into the page cache (qemu-nbd's default cache mode uses it): the server answers from RAM,
  // so what differs between the rows is the clients, not the disk's queue.
  spawnSync('dd', [`if=${image}`, 'of=/dev/null', 'bs=4M', 'status=none'], { stdio: 'inherit' });
  const unix = values.transport === 'unix';
  const at: Address = unix
    ? { path: join(work, 'nbd.sock') }
    : { port: 20000 + (process.pid % 20000) };
  const server = await startQemuNbd(image, at);
  const uri =
    'port' in at ? `nbd://127.0.0.1:${at.port}/disk` : `nbd+unix:///disk?socket=${at.path}`;
  const backends: Backend[] = [];
  const samples: Sample[] = [];
  try {
    backends.push(
      await startVhostRt({
        label: 'vhost-rt nbd',
        devices: [`socket-path=${join(work, 'vhost-rt.sock')},image=${uri}`],
      }),
    );
    backends.push(await startQsdNbd(at, join(work, 'qsd.sock')));
    if (values.baseline !== undefined)
      backends.push(
        await startVhostRt({
          label: 'vhost-rt nbd baseline',
          devices: [`socket-path=${join(work, 'baseline.sock')},image=${uri}`],
          cli: join(values.baseline, 'dist', 'src', 'cli', 'main.js'),
        }),
      );
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? backends : [...backends].reverse();
      for (const w of WORKLOADS) {
        for (const b of order) {
          const result = await runLoad({
            socketPath: b.sockets[0],
            backendPid: b.pid,
            rw: w.rw,
            bs: w.bs,
            iodepth: w.iodepth,
            runtimeSec,
            rampSec,
          });
          samples.push({ round, backend: b.label as Label, workload: w.name, result });
          process.stderr.write(
            `round ${round + 1}/${rounds} ${w.name} ${b.label}: ${fmtCount(metricOf(w, result))}\n`,
          );
        }
      }
    }
  } finally {
    for (const b of backends) await b.stop();
    server.kill('SIGTERM');
    await rm(work, { recursive: true, force: true });
  }
  const table = report(samples, rounds, runtimeSec, unix ? 'unix socket' : 'TCP on 127.0.0.1');
  process.stdout.write(table);
  await mkdir(out, { recursive: true });
  await writeJson(join(out, unix ? 'nbd-unix.json' : 'nbd.json'), {
    transport: unix ? 'unix' : 'tcp',
    date: new Date().toISOString(),
    rounds,
    runtimeSec,
    rampSec,
    samples,
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
