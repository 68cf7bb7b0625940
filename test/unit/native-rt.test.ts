import { execFileSync } from 'node:child_process';
import { readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { native, projectRoot } from '../../src/native.js';

const c = native.constants;

/** Field 19 of /proc/thread-self/stat: the calling thread's nice value. */
function threadNice(): number {
  const stat = readFileSync('/proc/thread-self/stat', 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
}

describe('real-time knobs', () => {
  it('gettid names the calling thread', () => {
    const [, tid] = /\/task\/(\d+)$/.exec(readlinkSync('/proc/thread-self'))!;
    expect(native.gettid()).toBe(Number(tid));
  });

  it('schedGetScheduler(0) reports SCHED_OTHER for a normal thread', () => {
    expect(native.schedGetScheduler(0)).toEqual({ policy: c.SCHED_OTHER, priority: 0 });
    expect(native.schedGetScheduler(native.gettid())).toEqual({
      policy: c.SCHED_OTHER,
      priority: 0,
    });
  });

  it('sets SCHED_FIFO on this thread and goes back to SCHED_OTHER', () => {
    expect(native.schedGetPriorityMax(c.SCHED_FIFO)).toBe(99);
    try {
      native.schedSetScheduler(0, c.SCHED_FIFO, 10);
      expect(native.schedGetScheduler(0)).toEqual({ policy: c.SCHED_FIFO, priority: 10 });
    } finally {
      native.schedSetScheduler(0, c.SCHED_OTHER, 0);
    }
    expect(native.schedGetScheduler(0)).toEqual({ policy: c.SCHED_OTHER, priority: 0 });
    expect(() => native.schedSetScheduler(0, c.SCHED_OTHER, 5)).toThrow(
      expect.objectContaining({ code: 'EINVAL', syscall: 'sched_setscheduler' }),
    );
  });

  it('round-trips CPU affinity', () => {
    const original = native.schedGetAffinity(0);
    expect(original.length).toBeGreaterThan(0);
    try {
      native.schedSetAffinity(0, [original[0]]);
      expect(native.schedGetAffinity(0)).toEqual([original[0]]);
    } finally {
      native.schedSetAffinity(0, original);
    }
    expect(native.schedGetAffinity(0)).toEqual(original);
    expect(() => native.schedSetAffinity(0, [-1])).toThrow(/^cpus\[0\]/);
    expect(() => native.schedSetAffinity(0, [])).toThrow(
      expect.objectContaining({ code: 'EINVAL', syscall: 'sched_setaffinity' }),
    );
  });

  it('sets the nice value of one thread', () => {
    const before = threadNice();
    try {
      native.setNice(native.gettid(), 7);
      expect(threadNice()).toBe(7);
    } finally {
      native.setNice(0, before);
    }
    expect(threadNice()).toBe(before);
    expect(() => native.setNice(0, 20)).toThrow(RangeError);
  });

  it('mlockall locks a process (checked in a child) and rejects bad flags', () => {
    const addon = join(projectRoot, 'native', 'build', 'Release', 'vhost_rt.node');
    // process.exit, not a natural exit: V8 aborts when it tears down an isolate
    // whose pages are locked (madvise(MADV_DONTNEED) fails with EINVAL on them).
    const script = `const n = require(${JSON.stringify(addon)});
      n.mlockall(n.constants.MCL_CURRENT | n.constants.MCL_FUTURE);
      const status = require('fs').readFileSync('/proc/self/status', 'utf8');
      process.stdout.write(/VmLck:\\s+(\\d+)/.exec(status)[1], () => process.exit(0));`;
    const lockedKb = Number(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' }));
    expect(lockedKb).toBeGreaterThan(1024);
    expect(() => native.mlockall(0)).toThrow(
      expect.objectContaining({ code: 'EINVAL', syscall: 'mlockall' }),
    );
  });
});
