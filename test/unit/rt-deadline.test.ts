/**
 * Issue 14: `--rt-policy deadline` (SCHED_DEADLINE through sched_setattr).
 * Validation is pure; applying it runs in a worker thread (the policy is the
 * thread's own) and asserts on whichever answer the kernel gives here —
 * admitted (the thread then reports 'deadline' and its parameters) or refused
 * (a ConfigError naming the flags, with the errno's name) — plus two requests
 * every kernel refuses past our checks: more bandwidth than admission control
 * allows (EBUSY) and a period past sched_deadline_period_max_us (EINVAL).
 */
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { parseRtFlags } from '../../src/cli/flags.js';
import { parseThreadPolicy } from '../../src/io/index.js';
import { validateRtOptions } from '../../src/rt/options.js';

type Reply = {
  after?: { policy: string };
  error?: { name: string; code: string; message: string };
};

function inWorker(options: object): Promise<Reply> {
  const worker = new Worker(new URL('../fixtures/ring-rt-apply.mjs', import.meta.url), {
    workerData: { options },
  });
  return new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
}

describe('--rt-policy deadline: validation', () => {
  const dl = { policy: 'deadline' as const };

  it('takes runtime ≤ deadline ≤ period, the period defaulting to the deadline', () => {
    expect(validateRtOptions({ ...dl, runtimeUs: 100, deadlineUs: 500, periodUs: 1000 })).toEqual({
      ...dl,
      priority: 0,
      runtimeUs: 100,
      deadlineUs: 500,
      periodUs: 1000,
    });
    expect(validateRtOptions({ ...dl, runtimeUs: 100, deadlineUs: 500 }).periodUs).toBe(500);
    expect(
      parseRtFlags({ 'rt-policy': 'deadline', 'rt-runtime-us': '50', 'rt-deadline-us': '100' }),
    ).toMatchObject({ policy: 'deadline', runtimeUs: 50, deadlineUs: 100, periodUs: 100 });
  });

  it('refuses what the kernel would, naming the flag', () => {
    const bad: [object, string][] = [
      [{ ...dl }, '--rt-deadline-us'],
      [{ ...dl, runtimeUs: 100 }, '--rt-deadline-us'],
      [
        { ...dl, runtimeUs: 600, deadlineUs: 500 },
        '--rt-runtime-us 600 exceeds --rt-deadline-us 500',
      ],
      [{ ...dl, runtimeUs: 100, deadlineUs: 500, periodUs: 400 }, 'exceeds --rt-period-us 400'],
      [{ ...dl, runtimeUs: 1, deadlineUs: 500 }, '1024 ns'],
      [{ ...dl, runtimeUs: 1.5, deadlineUs: 500 }, '--rt-runtime-us'],
      [{ ...dl, runtimeUs: 100, deadlineUs: 500, priority: 5 }, '--rt-priority'],
      [{ ...dl, runtimeUs: 100, deadlineUs: 500, cpus: [0] }, '--cpus'],
      [{ policy: 'fifo', priority: 5, runtimeUs: 100 }, '--rt-runtime-us applies only to'],
      [{ periodUs: 100 }, '--rt-period-us applies only to'],
    ];
    for (const [o, message] of bad)
      expect(() => validateRtOptions(o), JSON.stringify(o)).toThrow(message);
    expect(() => parseThreadPolicy('deadline')).toThrow('--aio-threads-policy');
  });
});

describe('--rt-policy deadline: the kernel', () => {
  it('admits a modest reservation, or refuses it with the errno named', async () => {
    const reply = await inWorker({
      policy: 'deadline',
      runtimeUs: 100,
      deadlineUs: 1000,
      periodUs: 1000,
    });
    if (reply.error === undefined) {
      expect(reply.after?.policy).toBe('deadline');
    } else {
      expect(reply.error.name).toBe('ConfigError');
      expect(reply.error.message).toMatch(
        /^--rt-policy deadline --rt-runtime-us 100 .*the kernel refused sched_setattr \((EPERM|EBUSY|EINVAL)\)/,
      );
    }
  });

  it('refuses periods outside sched_deadline_period_min_us..max_us with EINVAL, named', async () => {
    // Our checks pass both (runtime <= deadline <= period, >= 1024 ns); the kernel's limits do not
    // (defaults 100 µs .. 4.19 s; EPERM where the container withholds CAP_SYS_NICE).
    const short = await inWorker({
      policy: 'deadline',
      runtimeUs: 10,
      deadlineUs: 50,
      periodUs: 50,
    });
    expect(short.error?.name).toBe('ConfigError');
    expect(short.error?.message).toMatch(
      /--rt-period-us 50: the kernel refused sched_setattr \((EINVAL|EPERM)\)/,
    );
    const long = await inWorker({
      policy: 'deadline',
      runtimeUs: 100,
      deadlineUs: 1000,
      periodUs: 60_000_000,
    });
    expect(long.error?.name).toBe('ConfigError');
    expect(long.error?.message).toMatch(/sched_setattr \((EINVAL|EPERM)\)/);
  });
});
