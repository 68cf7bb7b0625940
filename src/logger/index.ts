/** Decoupled logging: rings from device workers to a low-priority logger thread. */
export { LoggerError, type LoggerErrorCode } from './errors.js';
export {
  createLogStream,
  DEFAULT_RING_BYTES,
  LoggerThread,
  type LogStream,
  reopenLogFiles,
} from './host.js';
export { OutputStream, parseRingPolicy, RING_POLICIES, type RingPolicy } from './output.js';
export { PORT_STAT_NAMES, PortStat } from './port-stats.js';
export {
  describeSink,
  type FileSinkDefaults,
  parseSinkSpec,
  type SinkSpec,
  sinkKey,
} from './sinks.js';
export { LOGGER_STAT_NAMES, type LoggerInit, type LogStreamInit } from './stream.js';
