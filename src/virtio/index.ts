/** The virtio layer: guest memory translation, the split and packed virtqueues, chain reader/writer, the drain loop, feature bits. */
export * from './chain.js';
export * from './descriptor-chain.js';
export * from './dirty-log.js';
export * from './drain.js';
export * from './errors.js';
export * from './features.js';
export * from './guest-memory.js';
export * from './packed-ring.js';
export { PackedVirtqueue } from './packed-virtqueue.js';
export * from './split-ring.js';
export {
  DEFAULT_MAX_SEGMENTS,
  type SplitQueueConfig,
  SplitVirtqueue,
  type Virtqueue,
} from './virtqueue.js';
export * from './vring.js';
