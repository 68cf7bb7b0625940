/** The virtio layer: guest memory translation, the split virtqueue, chain reader/writer, the drain loop, feature bits. */
export * from './chain.js';
export * from './descriptor-chain.js';
export * from './dirty-log.js';
export * from './drain.js';
export * from './errors.js';
export * from './features.js';
export * from './guest-memory.js';
export * from './split-ring.js';
export {
  DEFAULT_MAX_SEGMENTS,
  type SplitQueueConfig,
  SplitVirtqueue,
} from './virtqueue.js';
export * from './vring.js';
