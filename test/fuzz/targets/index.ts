/** Every fuzz target, in the order `npm run fuzz` runs them. */
import type { FuzzTarget } from '../harness.js';
import { backendTarget } from './backend.js';
import { blkTarget } from './blk.js';
import { codecTarget } from './codec.js';
import { consoleTarget } from './console.js';
import { netTarget } from './net.js';
import { packedVirtqueueTarget } from './packed-virtqueue.js';
import { virtqueueTarget } from './virtqueue.js';

/** The targets by name. */
// biome-ignore lint/suspicious/noExplicitAny: each target has its own case type; the runner treats cases as opaque.
export const TARGETS: FuzzTarget<any>[] = [
  codecTarget,
  backendTarget,
  virtqueueTarget,
  packedVirtqueueTarget,
  blkTarget,
  netTarget,
  consoleTarget,
];
