/** Worker-thread plumbing shared by device workers, the UART worker and the logger thread. */
export {
  onWorkerFailure,
  type StartedWorker,
  type WorkerFailureListener,
  WorkerHost,
  type WorkerHostOptions,
  workerPath,
} from './host.js';
export type { Numbered, ShutdownCommand, ThreadCommandBase, ThreadMessage } from './messages.js';
export { post, postEvent, postLog, rateLimitedWarn, runWorker, type WorkerService } from './run.js';
