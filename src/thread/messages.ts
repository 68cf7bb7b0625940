/**
 * The envelope of every message between the main thread and a worker thread
 * of vhost-rt (device workers, the UART worker, the logger thread). What a
 * command or an event says is the business of the layer that owns the
 * thread; the envelope only pairs each command with exactly one reply, so the
 * main thread can await each step in order.
 */
import type { LogLevel } from '../log.js';
import type { ThreadRtState } from '../rt/index.js';

/** Every command names its operation; `shutdown` is understood by every worker. */
export interface ThreadCommandBase {
  op: string;
}

/** Ends a worker: finish what is in flight, release everything, exit the thread. */
export interface ShutdownCommand {
  op: 'shutdown';
}

/** A command as it travels: with the id its reply will carry. */
export type Numbered<C> = C & { id: number };

/** What a worker posts to the main thread. */
export type ThreadMessage<Ready, Event> =
  /** The answer to command `id`. */
  | { kind: 'reply'; id: number; ok: true; value: unknown }
  | { kind: 'reply'; id: number; ok: false; code: string; message: string }
  /** Start-up finished: how the thread is scheduled and what the worker reports about itself. */
  | { kind: 'ready'; thread: ThreadRtState; ready: Ready }
  /** Start-up failed; the thread ends. */
  | { kind: 'failed'; code: string; message: string }
  /** A log line for the process log (workers never write logs themselves). */
  | { kind: 'log'; level: LogLevel; message: string }
  /** Something the worker reports on its own, e.g. a device's config space changed. */
  | { kind: 'event'; event: Event };
