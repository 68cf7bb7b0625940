/**
 * Main-thread handle on a device worker: starts the thread from compiled
 * JavaScript, sends commands and awaits their replies, and relays the
 * worker's log lines to the process log.
 */
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { VhostRtError } from '../errors.js';
import { projectRoot } from '../native.js';
import type { Logger } from '../vhost-user/connection.js';
import type { ThreadInfo, WorkerCommand, WorkerReply } from './messages.js';

/** Distributive Omit, so each command variant keeps its own fields. */
type CommandBody = WorkerCommand extends infer C
  ? C extends WorkerCommand
    ? Omit<C, 'id'>
    : never
  : never;

/** Absolute path of a compiled worker entry, e.g. `devices/blk/worker.js`. */
export function workerPath(relative: string): string {
  return join(projectRoot, 'dist', 'src', relative);
}

export interface StartedWorker {
  thread: ThreadInfo;
  info: Record<string, number | string | boolean>;
}

/** Called when a device worker ends without being asked to (a bug: an uncaught exception). */
export type WorkerFailureListener = (error: Error) => void;
const failureListeners = new Set<WorkerFailureListener>();

/**
 * Registers `listener` for any worker of this process that dies unasked; the
 * daemon uses it to stop and exit non-zero so a supervisor can restart it
 * (QEMU's `reconnect=` then reattaches). Returns the unregister function.
 */
export function onWorkerFailure(listener: WorkerFailureListener): () => void {
  failureListeners.add(listener);
  return () => failureListeners.delete(listener);
}

export class WorkerHost {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly waiting = new Map<
    number,
    { resolve: (v: number) => void; reject: (e: Error) => void }
  >();
  private exited = false;
  /** Set once shutdown or terminate was asked for: an exit is then expected. */
  private stopping = false;
  /** Resolves with the thread's description once the device is ready to serve. */
  readonly ready: Promise<StartedWorker>;

  constructor(
    entry: string,
    workerData: unknown,
    private readonly log: Logger,
    private readonly name: string,
  ) {
    this.worker = new Worker(workerPath(entry), { workerData });
    this.ready = new Promise((resolve, reject) => {
      this.worker.on('message', (m: WorkerReply) => this.onMessage(m, resolve, reject));
      this.worker.on('error', (err) => {
        this.log('error', `${name} worker crashed: ${err.stack ?? err.message}`);
        reject(err);
      });
      this.worker.on('exit', (code) => this.onExit(code, reject));
    });
  }

  private onMessage(
    m: WorkerReply,
    resolve: (s: StartedWorker) => void,
    reject: (e: Error) => void,
  ): void {
    switch (m.kind) {
      case 'ready':
        resolve({ thread: m.thread, info: m.info });
        return;
      case 'failed':
        reject(new VhostRtError(m.code, m.message));
        return;
      case 'log':
        this.log(m.level, `${this.name}: ${m.message}`);
        return;
      case 'reply': {
        const w = this.waiting.get(m.id);
        this.waiting.delete(m.id);
        if (m.ok) w?.resolve(m.value);
        else w?.reject(new VhostRtError(m.code, m.message));
      }
    }
  }

  private onExit(code: number, reject: (e: Error) => void): void {
    this.exited = true;
    const err = new VhostRtError('ERR_WORKER_EXITED', `${this.name} worker exited (code ${code})`);
    reject(err);
    if (!this.stopping) for (const listener of failureListeners) listener(err);
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
  }

  /** Sends one command and resolves with the worker's answer. */
  request(cmd: CommandBody): Promise<number> {
    if (this.exited)
      return Promise.reject(
        new VhostRtError('ERR_WORKER_EXITED', `${this.name} worker has exited`),
      );
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ ...cmd, id });
    });
  }

  /** Asks the worker to finish in-flight I/O and exit; resolves when it has. */
  async shutdown(): Promise<void> {
    this.stopping = true;
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    await this.request({ op: 'shutdown' }).catch(() => undefined);
    await exited;
  }

  /** Force-stops the thread (used when start-up failed). */
  async terminate(): Promise<void> {
    this.stopping = true;
    if (!this.exited) await this.worker.terminate();
  }
}
