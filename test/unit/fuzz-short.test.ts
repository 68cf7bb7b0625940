/**
 * The bounded fuzz pass CI runs: every target of test/fuzz (codec, back-end
 * state machine, split and packed virtqueues, blk, net, console) for a fixed number of
 * inputs from a fixed seed, in this process. Each must finish its inputs with
 * no crash, hang or out-of-region access, and reach a spread of outcomes (so
 * the generators still reach past the first check). The long run is
 * `npm run fuzz` (bench/results/fuzz.md).
 */
import { describe, expect, it } from 'vitest';
import { FuzzFailure, type FuzzTarget, fuzzTarget, replayCase } from '../fuzz/harness.js';
import { Prng } from '../fuzz/prng.js';
import { TARGETS } from '../fuzz/targets/index.js';

/** Inputs per target and the fewest distinct outcomes each must reach. */
const PLAN: Record<string, { inputs: number; outcomes: number }> = {
  codec: { inputs: 15_000, outcomes: 500 },
  backend: { inputs: 500, outcomes: 100 },
  virtqueue: { inputs: 2_000, outcomes: 50 },
  packed: { inputs: 2_000, outcomes: 30 },
  blk: { inputs: 1_200, outcomes: 12 },
  net: { inputs: 800, outcomes: 15 },
  console: { inputs: 500, outcomes: 50 },
};
const SEED = 0xc1f022;

/** Runs with error stacks off, as `npm run fuzz` does (a failure is re-run with them). */
async function quietly<T>(fn: () => Promise<T>): Promise<T> {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return await fn();
  } finally {
    Error.stackTraceLimit = limit;
  }
}

describe('bounded fuzz pass (fixed seed)', () => {
  it('covers every target', () => {
    expect(TARGETS.map((t) => t.name).sort()).toEqual(Object.keys(PLAN).sort());
  });

  for (const target of TARGETS) {
    const plan = PLAN[target.name];
    it(`${target.name}: ${plan.inputs} inputs, 0 crashes, 0 hangs, 0 out-of-region accesses`, async () => {
      const r = await quietly(() =>
        fuzzTarget(target, { seed: SEED, inputs: plan.inputs, seconds: Number.POSITIVE_INFINITY }),
      );
      target.close?.();
      const failure =
        r.failure === null ? null : `${r.failure.kind}: ${r.failure.message}\n${r.failure.stack}`;
      expect(failure).toBeNull();
      expect([r.crashes, r.hangs, r.oob]).toEqual([0, 0, 0]);
      expect(r.inputs).toBe(plan.inputs);
      expect(r.outcomes.size).toBeGreaterThanOrEqual(plan.outcomes);
      expect(r.corpus).toBeGreaterThan(0);
    });
  }

  it('replays a case from its JSON with the same outcome, for every target', async () => {
    for (const target of TARGETS) {
      const rng = new Prng(7);
      const c = target.generate(rng, []);
      const direct = await quietly(async () => target.execute(c));
      const json = JSON.parse(JSON.stringify(target.toJson(c)));
      expect(await quietly(() => replayCase(target, json)), target.name).toBe(direct);
      target.close?.();
    }
  });
});

describe('the fuzz loop itself', () => {
  const numbers: FuzzTarget<number> = {
    name: 'numbers',
    description: 'a target that fails on one value',
    generate: (rng) => rng.below(1000),
    execute: (n) => {
      if (n === 999) throw new TypeError('not a named error');
      if (n === 998) throw new FuzzFailure('oob', 'a guard byte changed');
      return String(n % 10);
    },
    toJson: (n) => n,
    fromJson: (j) => Number(j),
  };

  it('stops at the first failure and records a replayable case', async () => {
    const r = await fuzzTarget(numbers, { seed: 1, inputs: 100_000, seconds: 30 });
    expect(r.failure).not.toBeNull();
    const f = r.failure!;
    expect(f.kind === 'crash' ? r.crashes : r.oob).toBe(1);
    expect([998, 999]).toContain(f.case);
    expect(r.inputs).toBe(f.index + 1);
    await expect(replayCase(numbers, f.case)).rejects.toThrow();
    // The run is a function of its seed: the same seed fails at the same case.
    const again = await fuzzTarget(numbers, { seed: 1, inputs: f.index + 1, seconds: 30 });
    expect(again.failure?.case).toBe(f.case);
  });

  it('reports an async case that never settles as a hang', async () => {
    const stuck: FuzzTarget<number> = {
      ...numbers,
      execute: (n) => (n === 5 ? new Promise<string>(() => {}) : Promise.resolve('ok')),
      generate: (rng) => rng.below(10),
    };
    const r = await fuzzTarget(stuck, { seed: 3, inputs: 1000, seconds: 30 });
    expect(r.failure?.kind).toBe('hang');
    expect(r.hangs).toBe(1);
    expect(r.failure?.case).toBe(5);
  });
});
