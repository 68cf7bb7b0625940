/**
 * The shared-disk experiment's own arithmetic (issue 14): cyclictest histogram
 * percentiles, medians and spreads over rounds in the table, and the chart.
 */
import { describe, expect, it } from 'vitest';
import type { LoadResult } from '../../bench/loadgen/generator.js';
import {
  cyclictestPercentiles,
  floorMarkdown,
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
        {
          idle: load(100, 1000),
          flood: load(200, 4000),
          b: load(0, 0, 500),
          disk: { samples: 100, writesP50: 3, writesMax: 9, readsMax: 1 },
          guard: { seconds: 2, heldRequests: 10, heldUs: 1_000_000, rateHolds: 5, bMbPerSec: 64 },
        },
        {
          idle: load(110, 1000),
          flood: load(220, 2000),
          b: load(0, 0, 700),
          disk: { samples: 100, writesP50: 1, writesMax: 4, readsMax: 1 },
          guard: { seconds: 2, heldRequests: 20, heldUs: 2_000_000, rateHolds: 7, bMbPerSec: 66 },
        },
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
      // B's guard column: medians over the rounds that measured it (MB/s, held share, rate holds).
      '| (1) one | 100 / 500 / 1,000 | 200 / 1,500 / 3,000 | 2,000–4,000 | 3.00× (2.00×–4.00×) | 600 | 2 / 9 | 65, 75 %, 6 | 1 | 3/3 |',
    );
    expect(md).toContain('(q) round 1: boom');
    expect(sdSvg([ok, bad])).toContain('(1) one');
  });

  it('puts the null-engine rows against the machine floor measured in the run', () => {
    const n: SdResult = {
      id: 'n4',
      name: 'null',
      detail: 'd',
      failures: [],
      rounds: [
        { idle: load(30, 100), flood: load(40, 300), b: load(0, 0) },
        { idle: load(30, 100), flood: load(50, 200), b: load(0, 0) },
      ],
    };
    const floors = [
      { p999Us: 100, note: 'before' },
      { p999Us: 300, note: 'after' },
      { note: 'not run' },
    ];
    // Floor: median(100, 300) = 200; flood p99.9 median(300, 200) = 250: 1.25×, rounds 1.00×..1.50×.
    expect(floorMarkdown([n], [floors])).toContain(
      '| (n4) null | 45.0 | 250 | 200 | 1.25× (1.00×–1.50×) | 1 |',
    );
    expect(floorMarkdown([n], [[{ note: 'no cyclictest' }]])).toContain('not measured');
  });

  it('runs the configurations the issue asks for', () => {
    expect(sharedDiskConfigs(1 << 26).map((c) => c.id)).toEqual([
      '1',
      '2',
      '2g',
      '2G',
      '2gG',
      '3',
      '4',
      '4G',
      '4S',
      '2gGB',
      '4GB',
      '2gGBw',
      '4GBw',
      '4GB4',
      '4GB32',
      '4+3',
      'q',
      'n1',
      'n4',
      'n4f',
      'n4fs',
      'n4g1',
      'n4g0',
      'n4gr',
      'n4c',
      'n4m',
    ]);
  });
});
