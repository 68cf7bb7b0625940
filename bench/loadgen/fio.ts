/**
 * fio on the raw image: the physical limit each back end is compared with. Runs
 * `fio --output-format=json` with O_DIRECT and the ioengine matching a vhost-rt engine, and
 * reads IOPS, bandwidth, completion-inclusive latency percentiles and fio's own CPU use.
 */
import { spawn } from 'node:child_process';
import { VhostRtError } from '../../src/errors.js';
import type { LatencySummary } from './histogram.js';

/** fio failed or printed something that is not its JSON report. */
export class FioError extends VhostRtError {}

/** The fio ioengine standing for each vhost-rt engine. */
export const FIO_ENGINE_FOR: Record<string, string> = {
  'linux-aio': 'libaio',
  io_uring: 'io_uring',
  threads: 'posixaio',
  sync: 'psync',
};

/** One fio job. */
export interface FioJob {
  filename: string;
  ioengine: string;
  rw: string;
  bs: number;
  iodepth: number;
  runtimeSec: number;
  rampSec: number;
  /** Bytes of the file used; default the whole file. */
  size?: number;
}

/** What fio measured. */
export interface FioResult {
  iops: number;
  mbPerSec: number;
  ios: number;
  latency: LatencySummary;
  /** fio's own CPU microseconds per I/O (usr_cpu + sys_cpu over the runtime). */
  cpuUsPerIo: number;
}

/** The fio command line of a job. */
export function fioArgs(job: FioJob): string[] {
  const args = [
    '--name=bench',
    `--filename=${job.filename}`,
    `--ioengine=${job.ioengine}`,
    '--direct=1',
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.iodepth}`,
    '--time_based',
    `--runtime=${job.runtimeSec}`,
    `--ramp_time=${job.rampSec}`,
    '--lat_percentiles=1',
    '--percentile_list=50:90:99:99.9',
    '--output-format=json',
  ];
  if (job.size) args.push(`--size=${job.size}`);
  return args;
}

interface FioSide {
  iops: number;
  bw_bytes: number;
  total_ios: number;
  lat_ns: {
    min: number;
    max: number;
    mean: number;
    percentile?: Record<string, number>;
  };
}

/** Reads the first job of fio's JSON report (the side that moved data). */
export function parseFioJson(text: string): FioResult {
  const start = text.indexOf('{');
  if (start < 0) throw new FioError('BENCH_FIO_OUTPUT', `no JSON in fio output: ${text}`);
  const report = JSON.parse(text.slice(start));
  const job = report.jobs?.[0];
  if (!job) throw new FioError('BENCH_FIO_OUTPUT', 'fio report has no jobs');
  const side: FioSide = job.read.total_ios >= job.write.total_ios ? job.read : job.write;
  const pct = side.lat_ns.percentile ?? {};
  const us = (key: string) => (pct[key] ?? 0) / 1000;
  const runtimeSec = (job.job_runtime ?? job.read.runtime ?? 0) / 1000;
  const cpuSec = ((job.usr_cpu + job.sys_cpu) / 100) * runtimeSec;
  return {
    iops: side.iops,
    mbPerSec: side.bw_bytes / 1e6,
    ios: side.total_ios,
    latency: {
      count: side.total_ios,
      minUs: side.lat_ns.min / 1000,
      meanUs: side.lat_ns.mean / 1000,
      p50Us: us('50.000000'),
      p90Us: us('90.000000'),
      p99Us: us('99.000000'),
      p999Us: us('99.900000'),
      maxUs: side.lat_ns.max / 1000,
    },
    cpuUsPerIo: side.total_ios > 0 ? (cpuSec * 1e6) / side.total_ios : 0,
  };
}

/** Runs fio and parses its report. */
export function runFio(job: FioJob): Promise<FioResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('fio', fioArgs(job), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.once('error', (e) => reject(new FioError('BENCH_FIO_SPAWN', e.message)));
    child.once('close', (code) => {
      if (code !== 0) return reject(new FioError('BENCH_FIO_EXIT', `fio exited ${code}: ${err}`));
      try {
        resolve(parseFioJson(out));
      } catch (e) {
        reject(e);
      }
    });
  });
}
