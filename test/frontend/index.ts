/**
 * The project's own vhost-user front end: a minimal VMM in TypeScript that
 * speaks vhost-user to a back-end exactly as QEMU 7.2 does for
 * vhost-user-blk-pci, with a virtio-blk driver on top.
 */
export * from './backend-channel.js';
export * from './blk-driver.js';
export * from './connection.js';
export * from './errors.js';
export * from './framing.js';
export * from './guest-heap.js';
export * from './hostile.js';
export * from './socket-io.js';
export * from './vmm.js';
