import { describe, expect, it } from 'vitest';
import { parseEngines, qsdArgs } from '../../bench/loadgen/backends.js';
import { parseSize } from '../../bench/loadgen/cli.js';
import { fioArgs, parseFioJson } from '../../bench/loadgen/fio.js';
import {
  fmtCount,
  fmtRatio,
  fmtUs,
  latencyChartSvg,
  logBounds,
  markdownTable,
} from '../../bench/report.js';
import {
  addRatios,
  backendSpecs,
  computeTargets,
  type MatrixRow,
  WORKLOADS,
} from '../../bench/run.js';

const lat = (p50Us: number) => ({
  count: 1,
  minUs: p50Us,
  meanUs: p50Us,
  p50Us,
  p90Us: p50Us,
  p99Us: p50Us * 2,
  p999Us: p50Us * 3,
  maxUs: p50Us * 4,
});

function row(backend: string, workload: string, iops: number, p50 = 100, cpu = 10): MatrixRow {
  const kind = backend.startsWith('fio') ? 'fio' : backend.startsWith('qsd') ? 'qsd' : 'vhost-rt';
  return {
    backend,
    kind,
    engine: backend.split(' ')[1],
    workload,
    status: 'ok',
    iops,
    mbPerSec: iops / 10,
    latency: lat(p50),
    backendCpuUsPerIo: cpu,
    generatorCpuUsPerIo: 1,
  };
}

describe('markdown and number formatting', () => {
  it('builds a table with a rule line and escapes pipes', () => {
    const md = markdownTable(['a', 'b'], [['1', 'x|y']]);
    expect(md.split('\n')).toEqual(['| a | b |', '|---|---|', '| 1 | x\\|y |']);
  });

  it('formats counts, microseconds and ratios', () => {
    expect(fmtCount(123_456)).toBe('123k');
    expect(fmtCount(12_345)).toBe('12.3k');
    expect(fmtCount(999)).toBe('999');
    expect(fmtCount(null)).toBe('—');
    expect(fmtUs(12.34)).toBe('12.3');
    expect(fmtUs(12_345.6)).toBe('12,346');
    expect(fmtRatio(1.234)).toBe('1.23×');
    expect(fmtRatio(Number.NaN)).toBe('—');
  });
});

describe('latency chart SVG', () => {
  it('covers the values with whole decades', () => {
    expect(logBounds([15, 2500])).toEqual({ lo: 1, hi: 4 });
    expect(logBounds([100])).toEqual({ lo: 2, hi: 3 });
  });

  it('draws three bars per row, a legend and labelled axes, escaping text', () => {
    const svg = latencyChartSvg('t <1>', [
      { title: 'w', rows: [{ label: 'a&b', p50Us: 10, p99Us: 100, p999Us: 1000 }] },
    ]);
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect(svg).toContain('t &lt;1&gt;');
    expect(svg).toContain('a&amp;b');
    expect(svg.match(/<title>/g)?.length).toBe(3);
    expect(svg).toContain('1 ms');
    expect(svg).toContain('10 µs');
  });
});

describe('matrix ratios and targets', () => {
  it('marks engines vhost-rt does not offer as not available', () => {
    const specs = backendSpecs(['linux-aio'], false);
    const vr = specs.filter((s) => s.kind === 'vhost-rt');
    expect(vr.map((s) => [s.engine, s.available])).toEqual([
      ['linux-aio', true],
      ['io_uring', false],
      ['threads', false],
      ['sync', false],
    ]);
    expect(specs.find((s) => s.engine === 'threads')?.fioRef).toBe('fio posixaio');
    expect(backendSpecs(['linux-aio'], true).map((s) => s.label)).toEqual([
      'vhost-rt linux-aio',
      'qsd aio=native',
      'fio libaio',
    ]);
  });

  it('divides by qsd aio=native and the matching fio engine of the same workload', () => {
    const w = WORKLOADS[1].name;
    const rows = [
      row('vhost-rt linux-aio', w, 90, 50, 6),
      row('qsd aio=native', w, 100, 100, 10),
      row('fio libaio', w, 120),
    ];
    addRatios(rows, backendSpecs(['linux-aio'], true));
    expect(rows[0].vsQsd).toBeCloseTo(0.9);
    expect(rows[0].vsFio).toBeCloseTo(0.75);
    expect(rows[1].vsQsd).toBeNull();
    expect(rows[1].vsFio).toBeCloseTo(100 / 120);
    const targets = computeTargets(rows);
    expect(targets[0]).toMatchObject({ ratio: 0.9, met: false });
    expect(targets[2]).toMatchObject({ ratio: 0.6, met: true });
    // No QD1 rows: that target has no ratio rather than a made-up one.
    expect(targets[1]).toMatchObject({ ratio: null, met: null });
  });
});

describe('fio and the command line', () => {
  it('reads fio JSON: the side that moved data, lat percentiles, CPU per I/O', () => {
    const side = (ios: number) => ({
      iops: ios / 2,
      bw_bytes: ios * 2048,
      total_ios: ios,
      lat_ns: {
        min: 1000,
        max: 9000,
        mean: 3000,
        percentile: { '50.000000': 2000, '90.000000': 4000, '99.000000': 6000, '99.900000': 8000 },
      },
    });
    const report = {
      jobs: [{ read: side(0), write: side(1000), job_runtime: 2000, usr_cpu: 10, sys_cpu: 15 }],
    };
    const r = parseFioJson(`note: a warning\n${JSON.stringify(report)}`);
    expect(r.iops).toBe(500);
    expect(r.latency.p50Us).toBe(2);
    expect(r.latency.p999Us).toBe(8);
    expect(r.latency.maxUs).toBe(9);
    // 25 % of 2 s = 0.5 s over 1000 I/Os.
    expect(r.cpuUsPerIo).toBeCloseTo(500);
    expect(() => parseFioJson('fio: error')).toThrow(/no JSON/);
  });

  it('asks fio for O_DIRECT, time-based runs and JSON', () => {
    const job = {
      filename: 'f',
      ioengine: 'libaio',
      rw: 'randread',
      bs: 4096,
      iodepth: 32,
      runtimeSec: 5,
      rampSec: 1,
    };
    const args = fioArgs(job);
    expect(args).toContain('--direct=1');
    expect(args).toContain('--iodepth=32');
    expect(args).toContain('--output-format=json');
  });

  it('finds engines on the --aio entry of vhost-rt blk --help only', () => {
    const help = [
      '  --queue-size N       ring size',
      '  --aio ENGINE         I/O engine: linux-aio, io_uring, threads or sync',
      '                       (default linux-aio)',
      '  --no-direct          do not open with O_DIRECT (sync is slow)',
    ].join('\n');
    expect(parseEngines(help)).toEqual(['linux-aio', 'io_uring', 'threads', 'sync']);
    expect(
      parseEngines('  --aio ENGINE  I/O engine: linux-aio (default linux-aio)\n  --x sync'),
    ).toEqual(['linux-aio']);
    expect(parseEngines('no such flag')).toEqual([]);
  });

  it('parses sizes with binary units', () => {
    expect(parseSize('4k')).toBe(4096);
    expect(parseSize('1M')).toBe(1 << 20);
    expect(parseSize('512')).toBe(512);
    expect(() => parseSize('4x')).toThrow(RangeError);
  });

  it('exports each image of qemu-storage-daemon on its own node', () => {
    const args = qsdArgs(
      [
        { image: '/i,a', socket: '/s' },
        { image: '/j', socket: '/t' },
      ],
      'io_uring',
    );
    expect(args.filter((a) => a === '--export')).toHaveLength(2);
    expect(args[1]).toBe('driver=file,node-name=f0,filename=/i,,a,cache.direct=on,aio=io_uring');
    expect(args[5]).toContain('node-name=f1');
  });
});
