/**
 * `vhost-rt/vhost-user`: the vhost-user back end for programs that serve
 * devices themselves — the listening server, the per-connection state
 * machine, the device interface it drives, and the pure message codec.
 */
export {
  type IncomingMessage,
  MAX_MEM_SLOTS,
  RequestError,
  VhostUserBackend,
} from './backend.js';
export * as codec from './codec.js';
export { VhostUserConnection } from './connection.js';
export type { BackendRequestSender, QueueStart, VhostUserDevice } from './device-backend.js';
export * as protocol from './protocol.js';
export { VhostUserServer } from './server.js';
