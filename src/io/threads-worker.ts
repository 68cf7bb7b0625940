/**
 * One thread of the threads engine's piscina pool: runs a single preadv,
 * pwritev, fdatasync or fallocate and returns bytes transferred, 0 or -errno.
 * Guest RAM arrives as SharedArrayBuffers only when the pool's memory
 * generation changes; a task from a newer generation than this thread knows
 * is answered with {@link NEED_BUFFERS} and sent again with the buffers.
 */
import { fdatasync } from 'node:fs';
import { workerData } from 'piscina';
import { ConfigError } from '../errors.js';
import { native } from '../native.js';
import { applyRtOptions } from '../rt/index.js';
import { IoOp, type ThreadPolicy } from './engine.js';
import { errnoOf } from './staging.js';
import { NEED_BUFFERS, type ThreadsWorkerData, type ThreadTask } from './threads-protocol.js';

const table = new native.BufferTable();
let generation = -1;

/** Why this thread could not take the asked scheduling; every task then fails with it. */
let policyError: Error | null = null;

function applyPolicy(policy: ThreadPolicy): void {
  try {
    applyRtOptions(policy);
  } catch (err) {
    const what = `${policy.policy}${policy.priority === undefined ? '' : `:${policy.priority}`}`;
    // The RT layer names --rt-policy; here the flag is the pool's own.
    const reason = (err as Error).message.replace(/^[^:]*: /, '');
    policyError = new ConfigError(`--aio-threads-policy ${what}: ${reason}`, { cause: err });
  }
}

const init = workerData as ThreadsWorkerData | undefined;
if (init?.policy !== undefined) applyPolicy(init.policy);

function fallocate(fd: number, mode: number, offset: number, length: number): Promise<number> {
  return new Promise((resolve) => {
    native.fallocateAsync(fd, mode, offset, length, (err) => resolve(err ? -errnoOf(err) : 0));
  });
}

function flush(fd: number): Promise<number> {
  return new Promise((resolve) => {
    fdatasync(fd, (err) => resolve(err ? -errnoOf(err) : 0));
  });
}

/** The I/O priority this pool thread last set on itself (0: none, the default). */
let currentIoprio = 0;

function readWrite(task: ThreadTask): number {
  const iovs = task.iovs ?? new Float64Array(0);
  const count = iovs.length / 3;
  try {
    const ioprio = task.ioprio ?? 0;
    if (ioprio !== currentIoprio) {
      native.ioprioSet(0, ioprio);
      currentIoprio = ioprio;
    }
    return task.op === IoOp.WRITE
      ? native.pwritev(task.fd, table, iovs, 0, count, task.offset)
      : native.preadv(task.fd, table, iovs, 0, count, task.offset);
  } catch (err) {
    return -errnoOf(err);
  }
}

/** The pool's task function. */
export default function run(task: ThreadTask): number | Promise<number> {
  if (policyError !== null) throw policyError;
  if (task.buffers !== undefined) {
    table.set(task.buffers);
    generation = task.gen;
  } else if (task.gen !== generation) return NEED_BUFFERS;
  switch (task.op) {
    case IoOp.READ:
    case IoOp.WRITE:
      return readWrite(task);
    case IoOp.FLUSH:
      return flush(task.fd);
    default:
      return fallocate(task.fd, task.mode ?? 0, task.offset, task.length ?? 0);
  }
}
