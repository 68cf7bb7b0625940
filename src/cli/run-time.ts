/**
 * Run-time changes of a daemon's devices driven by the control socket
 * (`device-add`, `device-del`, `block-resize`) and SIGHUP, shared by the
 * `blk` and `net` commands: device-add's arguments become the command's own
 * flags (so they are checked exactly as on the command line), and an error
 * naming a flag (`--queues 0: ...`) names the argument instead (`'queues'`).
 */
import type { ControlledDevice } from '../control/index.js';
import { ConfigError } from '../errors.js';

/**
 * `device-add`'s checked arguments as command-line flags: `true` is a bare
 * flag, `direct: false` is `--no-direct`, `kind` is left out.
 */
export function argumentsToFlags(args: Record<string, unknown>): string[] {
  const flags: string[] = [];
  for (const [name, value] of Object.entries(args)) {
    if (name === 'kind' || value === undefined || value === false) continue;
    if (name === 'direct') continue;
    if (value === true) flags.push(`--${name}`);
    else flags.push(`--${name}`, String(value));
  }
  if (args.direct === false) flags.push('--no-direct');
  return flags;
}

/** An error from flag parsing, with `--flag` written as the argument `'flag'`. */
export function asArgumentError(err: unknown): Error {
  if (!(err instanceof Error)) return new ConfigError(String(err));
  const message = err.message
    .replace(/ \(see vhost-rt [^)]*\)$/, '')
    .replace(/^Unknown option '--([a-z-]+)'/, "Parameter '$1' is unexpected")
    .replace(/'?--no-direct'?/g, "'direct'")
    .replace(/'?--([a-z][a-z-]*)'?/g, "Parameter '$1'");
  return new ConfigError(message, { cause: err });
}

/** Removes `device` from `list` (the control socket's device list), if it is there. */
export function dropDevice(list: ControlledDevice[], device: ControlledDevice): void {
  const i = list.indexOf(device);
  if (i >= 0) list.splice(i, 1);
}
