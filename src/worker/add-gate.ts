/**
 * The one rule for run-time additions (`device-add`) while a daemon stops: once the stop
 * begins, nothing more is added, and an addition still starting then is undone rather than
 * joined — the shutdown walks the set it knows, so a worker that joined after it began would
 * outlive it and keep the daemon from exiting. Blk devices and net ports share it.
 */
import { VhostRtError } from '../errors.js';

/** A run-time addition refused because the daemon has begun to stop. */
export class DaemonStoppingError extends VhostRtError {
  constructor(what: string) {
    super('ERR_DAEMON_STOPPING', `the daemon is stopping: no ${what} is added`);
  }
}

/** Admits run-time additions until {@link AddGate.close}; refuses them after. */
export class AddGate {
  private closed = false;

  /** @param what What is added, as the refusal names it ("device", "port"). */
  constructor(private readonly what: string) {}

  /** The daemon begins to stop: every later {@link check} or {@link admit} refuses. */
  close(): void {
    this.closed = true;
  }

  /** Throws {@link DaemonStoppingError} once the gate is closed; call before an addition starts. */
  check(): void {
    if (this.closed) throw new DaemonStoppingError(this.what);
  }

  /**
   * Call once an addition has started, before it joins the set: if the stop began meanwhile,
   * runs `undo` (ends what was started) and throws {@link DaemonStoppingError}.
   */
  async admit(undo: () => Promise<void>): Promise<void> {
    if (!this.closed) return;
    await undo();
    this.check();
  }
}
