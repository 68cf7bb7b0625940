import { execFileSync, spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { describeThread, policyName, policyNumber } from '../../src/rt/apply.js';
import { parseCpuList, type RtOptions, validateRtOptions } from '../../src/rt/options.js';
import { mapGuestPriority } from '../../src/rt/priority.js';

const CPUS = cpus().length;
const LAST = CPUS - 1;
const rtIndex = new URL('../../dist/src/rt/index.js', import.meta.url).href;

/** Workers and children load dist/: fail with the fix when it is older than the sources. */
function assertBuilt(): void {
  for (const name of ['rt/apply', 'rt/options', 'rt/priority', 'rt/index', 'native']) {
    const src = fileURLToPath(new URL(`../../src/${name}.ts`, import.meta.url));
    const out = fileURLToPath(new URL(`../../dist/src/${name}.js`, import.meta.url));
    const built = statSync(out, { throwIfNoEntry: false });
    if (built === undefined || built.mtimeMs < statSync(src).mtimeMs) {
      throw new Error(`dist/src/${name}.js is stale: run npx tsc -p tsconfig.json`);
    }
  }
}

function configMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError && err.code === 'ERR_CONFIG') return err.message;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('parseCpuList', () => {
  it('parses lists and ranges into sorted distinct CPUs', () => {
    expect(parseCpuList('0')).toEqual([0]);
    expect(parseCpuList(`0-${LAST}`)).toEqual([...Array(CPUS).keys()]);
    expect(parseCpuList(`${LAST},0,${LAST}`)).toEqual(LAST === 0 ? [0] : [0, LAST]);
    expect(parseCpuList(` 0 - ${LAST} , 0 `)).toEqual([...Array(CPUS).keys()]);
  });

  it('names the option on bad syntax', () => {
    for (const bad of ['', ' ', 'a', '0,,1', '1-0', '0-', '-1', '0x1', '1.5']) {
      expect(configMessage(() => parseCpuList(bad))).toMatch(/^--cpus '/);
    }
    expect(configMessage(() => parseCpuList('1-0'))).toBe("--cpus '1-0': range 1-0 runs backwards");
    expect(configMessage(() => parseCpuList('x', '--blk-cpus'))).toMatch(/^--blk-cpus 'x'/);
  });

  it('refuses CPUs this machine does not have', () => {
    expect(configMessage(() => parseCpuList(`0-${CPUS}`))).toBe(
      `--cpus '0-${CPUS}': CPU ${CPUS} does not exist (this machine has CPUs 0-${LAST})`,
    );
  });
});

describe('validateRtOptions', () => {
  it('accepts and normalises good options', () => {
    expect(validateRtOptions({})).toEqual({});
    expect(validateRtOptions({ policy: 'fifo', priority: 10 })).toEqual({
      policy: 'fifo',
      priority: 10,
    });
    expect(validateRtOptions({ policy: 'rr', priority: 99 })).toEqual({
      policy: 'rr',
      priority: 99,
    });
    expect(validateRtOptions({ policy: 'batch' })).toEqual({ policy: 'batch', priority: 0 });
    expect(validateRtOptions({ policy: 'idle', priority: 0 })).toEqual({
      policy: 'idle',
      priority: 0,
    });
    expect(validateRtOptions({ cpus: [LAST, 0, LAST], mlock: false })).toEqual({
      cpus: LAST === 0 ? [0] : [0, LAST],
      mlock: false,
    });
  });

  it('names the flags in its messages', () => {
    const m = (o: RtOptions) => configMessage(() => validateRtOptions(o));
    expect(m({ policy: 'fifo', priority: 120 })).toBe(
      '--rt-priority 120 is outside 1..99 for --rt-policy fifo',
    );
    expect(m({ policy: 'rr', priority: 0 })).toBe(
      '--rt-priority 0 is outside 1..99 for --rt-policy rr',
    );
    expect(m({ policy: 'fifo' })).toBe('--rt-policy fifo needs --rt-priority 1..99');
    expect(m({ policy: 'other', priority: 5 })).toBe(
      '--rt-priority 5 must be 0 or absent for --rt-policy other (only fifo and rr take one)',
    );
    expect(m({ priority: 5 })).toMatch(/^--rt-priority 5 must be 0 or absent without --rt-policy/);
    expect(m({ policy: 'realtime' as never })).toBe(
      '--rt-policy realtime is not one of fifo, rr, other, batch, idle, deadline',
    );
    expect(m({ policy: 'fifo', priority: 1.5 })).toBe('--rt-priority 1.5 is not an integer');
    expect(m({ cpus: [] })).toBe('--cpus must list at least one CPU');
    expect(m({ cpus: [-1] })).toBe('--cpus: -1 is not a CPU number');
    expect(m({ cpus: [CPUS] })).toMatch(new RegExp(`^--cpus ${CPUS}: CPU ${CPUS} does not exist`));
    expect(m({ mlock: 'yes' as never })).toBe('--mlock must be true or false, not yes');
  });
});

describe('mapGuestPriority', () => {
  it('computes floor(pGuest * pMax / 99)', () => {
    expect(mapGuestPriority(99, 50)).toBe(50);
    expect(mapGuestPriority(50, 50)).toBe(25); // 2500 / 99 = 25.25
    expect(mapGuestPriority(98, 50)).toBe(49); // 49.49
    expect(mapGuestPriority(1, 98)).toBe(0); // 0.99: below every RT priority
    expect(mapGuestPriority(0, 99)).toBe(0);
    expect(mapGuestPriority(99, 99)).toBe(99);
    expect(mapGuestPriority(42, 99)).toBe(42);
  });

  it('preserves order', () => {
    for (let p = 1; p <= 99; p++) {
      expect(mapGuestPriority(p, 30)).toBeGreaterThanOrEqual(mapGuestPriority(p - 1, 30));
    }
  });

  it('rejects out-of-range arguments, naming them', () => {
    expect(() => mapGuestPriority(100, 50)).toThrow('pGuest 100 is outside 0..99');
    expect(() => mapGuestPriority(-1, 50)).toThrow(RangeError);
    expect(() => mapGuestPriority(1.5, 50)).toThrow(RangeError);
    expect(() => mapGuestPriority(10, 0)).toThrow('pMax 0 is outside 1..99');
    expect(() => mapGuestPriority(10, 100)).toThrow(RangeError);
  });
});

type Reply = {
  before?: { tid: number; policy: string; priority: number; cpus: number[] };
  after?: { tid: number; policy: string; priority: number; cpus: number[] };
  mode?: string;
  error?: { name: string; code: string; message: string };
};

function inWorker(data: object): Promise<Reply> {
  const worker = new Worker(new URL('../fixtures/ring-rt-apply.mjs', import.meta.url), {
    workerData: data,
  });
  return new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
}

describe('applying RT options (native)', () => {
  it('describes the main thread: tid = pid, SCHED_OTHER, every CPU', () => {
    expect(describeThread()).toEqual({
      tid: process.pid,
      policy: 'other',
      priority: 0,
      cpus: [...Array(CPUS).keys()],
    });
  });

  it('maps policy names and numbers both ways', () => {
    for (const p of ['fifo', 'rr', 'other', 'batch', 'idle'] as const) {
      expect(policyName(policyNumber(p))).toBe(p);
    }
    expect(policyName(policyNumber('fifo') | 0x40000000)).toBe('fifo'); // SCHED_RESET_ON_FORK
    expect(policyName(6)).toBe('deadline');
    expect(policyName(42)).toBe('unknown(42)');
  });

  it('SCHED_FIFO 10 and affinity applied in a worker leave the main thread alone', async () => {
    assertBuilt();
    const main = describeThread();
    const reply = await inWorker({ options: { policy: 'fifo', priority: 10, cpus: [LAST] } });
    expect(reply.error).toBeUndefined();
    expect(reply.before).toMatchObject({ policy: 'other', priority: 0 });
    expect(reply.after).toEqual({
      tid: reply.before?.tid,
      policy: 'fifo',
      priority: 10,
      cpus: [LAST],
    });
    expect(reply.after?.tid).not.toBe(process.pid);
    expect(describeThread()).toEqual(main);
    expect(main).toMatchObject({ policy: 'other', priority: 0 });
  });

  it('rr and batch apply too', async () => {
    assertBuilt();
    const rr = await inWorker({ options: { policy: 'rr', priority: 1 } });
    expect(rr.after).toMatchObject({ policy: 'rr', priority: 1 });
    const batch = await inWorker({ options: { policy: 'batch' } });
    expect(batch.after).toMatchObject({ policy: 'batch', priority: 0 });
  });

  it('lowerToBackground puts the logger thread in SCHED_IDLE', async () => {
    assertBuilt();
    const reply = await inWorker({ background: true });
    expect(reply.mode).toBe('idle');
    expect(reply.after).toMatchObject({ policy: 'idle', priority: 0 });
    expect(describeThread().policy).toBe('other');
  });

  it('validation errors come back from a worker as ConfigErrors', async () => {
    assertBuilt();
    const reply = await inWorker({ options: { policy: 'fifo', priority: 100 } });
    expect(reply.error).toEqual({
      name: 'ConfigError',
      code: 'ERR_CONFIG',
      message: '--rt-priority 100 is outside 1..99 for --rt-policy fifo',
    });
  });

  it('a kernel refusal is a ConfigError naming the option, with the SystemError as cause', () => {
    assertBuilt();
    // A child without CAP_SYS_NICE: the kernel really refuses SCHED_FIFO (EPERM).
    const script = `
      const { applyRtOptions } = await import(${JSON.stringify(rtIndex)});
      try { applyRtOptions({ policy: 'fifo', priority: 10 }); console.log('{}'); }
      catch (e) {
        console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message,
          cause: { name: e.cause?.name, code: e.cause?.code, syscall: e.cause?.syscall } }));
      }`;
    const out = execFileSync(
      'setpriv',
      ['--bounding-set', '-sys_nice', process.execPath, '--input-type=module', '-e', script],
      { encoding: 'utf8' },
    );
    expect(JSON.parse(out)).toEqual({
      name: 'ConfigError',
      code: 'ERR_CONFIG',
      message: '--rt-policy fifo: the kernel refused sched_setscheduler (EPERM)',
      cause: { name: 'SystemError', code: 'EPERM', syscall: 'sched_setscheduler' },
    });
  });

  it('--mlock pins guest memory buffers, never the JS heap, and V8 keeps running', () => {
    assertBuilt();
    // In a child process: a lock must not touch the test runner. applyRtOptions only
    // records the wish; lockGuestMemory pins a mapped buffer; then the heap churns
    // (V8 madvises freed pages away, which fails on locked pages) and a worker ends.
    const nativeIndex = new URL('../../dist/src/native.js', import.meta.url).href;
    const script = `
      const { Worker } = await import('node:worker_threads');
      const rt = await import(${JSON.stringify(rtIndex)});
      const { native } = await import(${JSON.stringify(nativeIndex)});
      rt.applyRtOptions({ mlock: true });
      const requested = rt.guestMemoryLockRequested();
      const lockedBefore = rt.isMemoryLocked();
      const fd = native.memfdCreate('guest', 4 << 20);
      const ram = native.mmapShared(fd, 4 << 20, 0);
      rt.lockGuestMemory([ram]);
      const lockedAfter = rt.isMemoryLocked();
      let keep = [];
      for (let i = 0; i < 200; i++) { keep.push(new Array(100000).fill(i)); if (keep.length > 10) keep = []; }
      const w = new Worker('setTimeout(() => {}, 10)', { eval: true });
      await new Promise((r) => w.once('exit', r));
      console.log(JSON.stringify({ requested, lockedBefore, lockedAfter }));`;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8',
    });
    expect(child.stderr).not.toMatch(/Fatal error/);
    expect(child.status).toBe(0);
    expect(JSON.parse(child.stdout)).toEqual({
      requested: true,
      lockedBefore: false,
      lockedAfter: true,
    });
  });
});
