/**
 * The inside of a worker thread: {@link runWorker} is the one entry helper
 * every worker entry uses. It starts the worker's service from workerData,
 * reports ready (or the start-up failure), serves commands one reply each,
 * and on `shutdown` lets the service release everything before the thread
 * ends. A worker never writes to a file or terminal itself: {@link post}
 * sends its log lines and events to the main thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { LogLevel } from '../log.js';
import { describeThread } from '../rt/index.js';
import type { Numbered, ShutdownCommand, ThreadCommandBase, ThreadMessage } from './messages.js';

/** What a worker's start function returns: its ready payload and how it serves commands. */
export interface WorkerService<Ready, Command extends ThreadCommandBase> {
  /** Posted to the main thread once start-up succeeded. */
  ready: Ready;
  /** Carries out one command; the value (or the thrown error) becomes its reply. */
  handle(cmd: Command): unknown;
  /**
   * Finishes in-flight work and releases every handle that keeps the
   * thread's event loop alive (watchers, sockets, timers): the thread ends
   * when it returns.
   */
  shutdown(): Promise<void> | void;
}

/** Posts a message to the main thread. */
export function post<Ready, Event>(message: ThreadMessage<Ready, Event>): void {
  parentPort?.postMessage(message);
}

/** Sends a log line to the main thread's log. */
export function postLog(level: LogLevel, message: string): void {
  post({ kind: 'log', level, message });
}

/** Sends an event the worker raises on its own (not a reply). */
export function postEvent<Event>(event: Event): void {
  post<never, Event>({ kind: 'event', event });
}

/**
 * Forwards warnings with a budget, so that a hostile guest cannot turn the log
 * into a denial of service: at most `perSecond` lines, then a count.
 */
export function rateLimitedWarn(perSecond = 10): (message: string) => void {
  let windowStart = 0;
  let sent = 0;
  let suppressed = 0;
  return (message) => {
    const now = Date.now();
    if (now - windowStart >= 1000) {
      if (suppressed > 0) postLog('warn', `${suppressed} similar warnings suppressed`);
      windowStart = now;
      sent = 0;
      suppressed = 0;
    }
    if (sent++ < perSecond) postLog('warn', message);
    else suppressed++;
  };
}

/**
 * Runs this thread's worker: `start` builds the service from workerData (it
 * may apply RT options to the thread first, and may be async). Commands are answered in the
 * order their promises settle; `shutdown` is answered after the service has
 * shut down, and the thread then ends on its own (its loop has nothing left).
 */
export function runWorker<Init, Ready, Command extends ThreadCommandBase>(
  start: (init: Init) => WorkerService<Ready, Command> | Promise<WorkerService<Ready, Command>>,
): void {
  const failed = (err: unknown) =>
    post({ kind: 'failed', code: errorCode(err, 'ERR_WORKER_START'), message: errorText(err) });
  let started: WorkerService<Ready, Command> | Promise<WorkerService<Ready, Command>>;
  try {
    started = start(workerData as Init);
  } catch (err) {
    failed(err);
    return;
  }
  Promise.resolve(started).then((service) => {
    serve(service);
    post({ kind: 'ready', thread: describeThread(), ready: service.ready });
  }, failed);
}

function serve<Ready, Command extends ThreadCommandBase>(
  service: WorkerService<Ready, Command>,
): void {
  let closing: Promise<void> | null = null;
  const run = async (cmd: Numbered<Command | ShutdownCommand>): Promise<unknown> => {
    if (cmd.op !== 'shutdown') return service.handle(cmd as Numbered<Command>);
    closing ??= Promise.resolve(service.shutdown());
    await closing;
    return 0;
  };
  parentPort?.on('message', (cmd: Numbered<Command | ShutdownCommand>) => {
    run(cmd).then(
      (value) => {
        post({ kind: 'reply', id: cmd.id, ok: true, value });
        if (cmd.op === 'shutdown') parentPort?.close();
      },
      (err: unknown) =>
        post({
          kind: 'reply',
          id: cmd.id,
          ok: false,
          code: errorCode(err, 'ERR_WORKER'),
          message: errorText(err),
        }),
    );
  });
}

function errorCode(err: unknown, fallback: string): string {
  return (err as { code?: string } | null)?.code ?? fallback;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
