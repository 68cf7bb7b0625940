/**
 * The control plane: the QMP control socket (`--control-socket`), served on
 * the main thread only (DESIGN.md rule 10).
 */
export { COMMANDS, type CommandContext, type CommandSpec, executeCommand } from './commands.js';
export { QmpCommandError, type QmpErrorClass, QmpLineTooLongError } from './errors.js';
export { daemonVersion, MAX_LINE_BYTES, QmpServer, type QmpServerOptions } from './qmp-server.js';
export type { ControlledDevice, ControlVersion, DeviceChanges } from './types.js';
