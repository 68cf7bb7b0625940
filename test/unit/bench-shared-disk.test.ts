/**
 * The shared-disk experiment's own arithmetic (issue 14): cyclictest histogram
 * percentiles, medians and spreads over rounds in the table, and the chart.
 */
import { describe, expect, it } from 'vitest';
import type { LoadResult } from '../../bench/loadgen/generator.js';
import {
  cyclictestPercentiles,
  type SdResult,
  sdMarkdown,
  sdSvg,
  sharedDiskConfigs,
} from '../../bench/priority-inversion-shared-disk.js';

function load(p50: number, p999: number, mbPerSec = 1): LoadResult {
  const latency = {
    count: 1000,
    minUs: 1,
    meanUs: p50,
    p50Us: p50,
    p90Us: p50,
    p99Us: p999 / 2,
    p999Us: p999,
    maxUs: p999 * 2,
  };
  return { latency, mbPerSec } as LoadResult;
}

describe('shared-disk experiment', () => {
  it('reads percentiles from a cyclictest histogram, overflows counted past the end', () => {
    const lines = ['# Histogram', '000010 000900', '000020 000090', '000050 000009'];
    const text = [...lines, '# Histogram Overflows: 00001', '# Max Latencies: 00300', ''].join(
      '\n',
    );
    expect(cyclictestPercentiles(text)).toEqual({ p50Us: 10, p99Us: 20, p999Us: 50, maxUs: 300 });
    expect(cyclictestPercentiles('nothing')).toBeNull();
  });

  it('tables medians over rounds with the spread, and failures', () => {
    const ok: SdResult = {
      id: '1',
      name: 'one',
      detail: 'd',
      failures: [],
      rounds: [
        { idle: load(100, 1000), flood: load(200, 4000), b: load(0, 0, 500) },
        { idle: load(110, 1000), flood: load(220, 2000), b: load(0, 0, 700) },
        { idle: load(90, 1000), flood: load(180, 3000), b: load(0, 0, 600) },
      ],
    };
    const bad: SdResult = {
      id: 'q',
      name: 'qsd',
      detail: 'x',
      rounds: [],
      failures: ['round 1: boom'],
    };
    const md = sdMarkdown([ok, bad], 2, 3);
    expect(md).toContain(
      '| (1) one | 100 / 500 / 1,000 | 200 / 1,500 / 3,000 | 2,000–4,000 | 3.00× (2.00×–4.00×) | 600 | 3/3 |',
    );
    expect(md).toContain('(q) round 1: boom');
    expect(sdSvg([ok, bad])).toContain('(1) one');
  });

  it('runs the configurations the issue asks for', () => {
    expect(sharedDiskConfigs(1 << 26).map((c) => c.id)).toEqual([
      '1',
      '2',
      '2g',
      '3',
      '4',
      '4+3',
      'q',
      'n1',
      'n4',
    ]);
  });
});
