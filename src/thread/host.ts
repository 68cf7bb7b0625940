/**
 * Main-thread handle on one worker thread: starts it from compiled
 * JavaScript, waits for its typed ready payload, sends commands and awaits
 * their replies, relays its log lines and events, and reports a thread that
 * dies unasked.
 */
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { VhostRtError } from '../errors.js';
import type { Logger } from '../log.js';
import { projectRoot } from '../native.js';
import type { ThreadRtState } from '../rt/index.js';
import type { Numbered, ShutdownCommand, ThreadCommandBase, ThreadMessage } from './messages.js';

/** Absolute path of a compiled worker entry, e.g. `worker/device-worker.js`. */
export function workerPath(relative: string): string {
  return join(projectRoot, 'dist', 'src', relative);
}

/** What a started worker reported: its scheduling and its own ready payload. */
export interface StartedWorker<Ready> {
  thread: ThreadRtState;
  ready: Ready;
}

/** Called when a worker ends without being asked to (a bug: an uncaught exception). */
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

/** Options of a {@link WorkerHost}. */
export interface WorkerHostOptions<Event> {
  /** Name in log lines, e.g. `blk` or `port1`. */
  name: string;
  log: Logger;
  /** Receives the events the worker posts on its own. */
  onEvent?: (event: Event) => void;
}

/**
 * A worker thread of type `Init → Ready`, answering commands `Command`.
 * Commands run in the worker one at a time per device as the caller awaits
 * each; the host never looks inside them.
 */
export class WorkerHost<Init, Ready, Command extends ThreadCommandBase, Event = never> {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly waiting = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void }
  >();
  private exited = false;
  /** Set once shutdown or terminate was asked for: an exit is then expected. */
  private stopping = false;
  /**
   * Set once the worker reported ready. Only a started worker's unasked exit is a failure of
   * the daemon's: one whose start failed is its starter's to handle, through `ready` (a
   * device-add of a locked image, say), and must not stop the devices already serving.
   */
  private started = false;
  private readonly name: string;
  private readonly log: Logger;
  private readonly onEvent: ((event: Event) => void) | undefined;
  /** Resolves once the worker is ready to serve. */
  readonly ready: Promise<StartedWorker<Ready>>;

  /** Starts `entry` (relative to dist/src, or a path relative to it) with `init` as workerData. */
  constructor(entry: string, init: Init, options: WorkerHostOptions<Event>) {
    this.name = options.name;
    this.log = options.log;
    this.onEvent = options.onEvent;
    this.worker = new Worker(workerPath(entry), { workerData: init });
    this.ready = new Promise((resolve, reject) => {
      this.worker.on('message', (m: ThreadMessage<Ready, Event>) =>
        this.onMessage(m, resolve, reject),
      );
      this.worker.on('error', (err) => {
        this.log('error', `${this.name} worker crashed: ${err.stack ?? err.message}`);
        reject(err);
      });
      this.worker.on('exit', (code) => this.onExit(code, reject));
    });
  }

  private onMessage(
    m: ThreadMessage<Ready, Event>,
    resolve: (s: StartedWorker<Ready>) => void,
    reject: (e: Error) => void,
  ): void {
    switch (m.kind) {
      case 'ready':
        this.started = true;
        resolve({ thread: m.thread, ready: m.ready });
        return;
      case 'failed':
        reject(new VhostRtError(m.code, m.message));
        return;
      case 'log':
        this.log(m.level, `${this.name}: ${m.message}`);
        return;
      case 'event':
        this.onEvent?.(m.event);
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
    // Why not `stopping` alone: the worker ends on its own after reporting a failed start,
    // and when this thread's loop was busy, the failure and the exit arrive in one turn
    // (Node drains the worker's port, then emits 'exit'), before the starter's reaction to
    // the rejected `ready` (terminate) has run.
    if (this.started && !this.stopping) for (const listener of failureListeners) listener(err);
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
  }

  /** Sends one command and resolves with the worker's answer. */
  request(cmd: Command | ShutdownCommand): Promise<unknown> {
    if (this.exited)
      return Promise.reject(
        new VhostRtError('ERR_WORKER_EXITED', `${this.name} worker has exited`),
      );
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      const numbered: Numbered<Command | ShutdownCommand> = { ...cmd, id };
      this.worker.postMessage(numbered);
    });
  }

  /** Asks the worker to finish in-flight work and exit; resolves when it has. */
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
