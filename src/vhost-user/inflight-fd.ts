/**
 * GET_INFLIGHT_FD and SET_INFLIGHT_FD (§"Front-end message types",
 * VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): the back end creates the inflight
 * area as a memfd laid out as src/virtio/inflight.ts describes and hands it
 * to the front end, which keeps it for the device's life and gives it back
 * with SET_INFLIGHT_FD to every back end it (re)connects to, before the rings
 * start. Each ring then tracks its requests in its own part of the area.
 *
 * Everything in the payload and the fd is checked before anything is mapped:
 * queue counts and sizes against what the device serves, the fd's kind
 * (fds.ts), and that the file really holds the claimed range (a shorter file
 * would turn the first bookkeeping store past its end into a SIGBUS).
 */
import { native } from '../native.js';
import {
  INFLIGHT_MAX_QUEUE_SIZE,
  type InflightArea,
  inflightAreaBytes,
  inflightQueueBytes,
} from '../virtio/inflight.js';
import { decodeInflight, encodeInflight, type InflightPayload } from './codec.js';
import { RequestError } from './errors.js';
import { expectMemoryFd } from './fds.js';

/**
 * Environment switch that turns inflight tracking off (the feature is then
 * not offered, so no front end sends GET/SET_INFLIGHT_FD): `VHOST_RT_INFLIGHT=off`.
 * For A/B measurements of its cost and as an escape hatch.
 */
export const INFLIGHT_ENV = 'VHOST_RT_INFLIGHT';

/** Whether inflight tracking may be offered: unless {@link INFLIGHT_ENV} is `off` (or `0`). */
export function inflightTrackingEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env[INFLIGHT_ENV];
  return v !== 'off' && v !== '0';
}

const PAGE = 4096;

/** A mapped inflight area (SET_INFLIGHT_FD), shared by the device's rings. */
export interface InflightMapping {
  buffer: SharedArrayBuffer;
  numQueues: number;
  queueSize: number;
}

/** Checks num queues and queue size of an inflight payload against the device. */
function checkShape(p: InflightPayload, maxQueues: number, what: string): void {
  if (p.numQueues < 1 || p.numQueues > maxQueues)
    throw new RequestError(
      'VHOST_USER_BAD_VALUE',
      `${what}: num queues ${p.numQueues} is outside 1..${maxQueues}`,
    );
  if (p.queueSize < 1 || p.queueSize > INFLIGHT_MAX_QUEUE_SIZE)
    throw new RequestError(
      'VHOST_USER_BAD_VALUE',
      `${what}: queue size ${p.queueSize} is outside 1..${INFLIGHT_MAX_QUEUE_SIZE}`,
    );
}

/**
 * GET_INFLIGHT_FD: creates a zeroed memfd holding `numQueues` regions of
 * `queueSize` descriptors. Returns the reply payload and the fd, which the
 * caller sends along with the reply and then closes (the front end keeps its copy).
 */
export function createInflightFd(
  payload: Uint8Array,
  maxQueues: number,
): { reply: Uint8Array; fd: number } {
  const ask = decodeInflight(payload);
  checkShape(ask, maxQueues, 'GET_INFLIGHT_FD');
  const mmapSize = inflightAreaBytes(ask.numQueues, ask.queueSize);
  // A fresh memfd reads as zeros: every region has version 0, "uninitialised".
  const fd = native.memfdCreate('vhost-rt-inflight', mmapSize);
  const reply = encodeInflight({
    mmapSize,
    mmapOffset: 0,
    numQueues: ask.numQueues,
    queueSize: ask.queueSize,
  });
  return { reply, fd };
}

/**
 * SET_INFLIGHT_FD: validates the payload and `fd` (a memfd, regular or
 * hugetlbfs file open read-write that holds the whole area) and maps the area.
 * The fd stays with the message (closed with it): the mapping outlives it.
 */
export function mapInflightFd(payload: Uint8Array, fd: number, maxQueues: number): InflightMapping {
  const p = decodeInflight(payload);
  checkShape(p, maxQueues, 'SET_INFLIGHT_FD');
  const need = inflightAreaBytes(p.numQueues, p.queueSize);
  if (p.mmapSize < need)
    throw new RequestError(
      'VHOST_USER_BAD_VALUE',
      `SET_INFLIGHT_FD: mmap size ${p.mmapSize} is below the ${need} bytes of ${p.numQueues} queues of ${p.queueSize}`,
    );
  if (p.mmapOffset % PAGE !== 0)
    throw new RequestError(
      'VHOST_USER_BAD_VALUE',
      `SET_INFLIGHT_FD: mmap offset ${p.mmapOffset} is not a multiple of the page size`,
    );
  const file = expectMemoryFd(fd, 'SET_INFLIGHT_FD fd');
  if (file.size < p.mmapOffset + p.mmapSize)
    throw new RequestError(
      'VHOST_USER_BAD_REGION',
      `SET_INFLIGHT_FD claims ${p.mmapOffset + p.mmapSize} bytes of a ${file.size}-byte file`,
    );
  const buffer = native.mmapShared(fd, p.mmapSize, p.mmapOffset);
  return { buffer, numQueues: p.numQueues, queueSize: p.queueSize };
}

/**
 * Queue `index`'s part of `mapping`, for the ring's start; null when the area
 * has no region for that queue (the front end announced fewer queues).
 */
export function inflightAreaOf(mapping: InflightMapping, index: number): InflightArea | null {
  if (index >= mapping.numQueues) return null;
  return {
    buffer: mapping.buffer,
    offset: index * inflightQueueBytes(mapping.queueSize),
    queueSize: mapping.queueSize,
  };
}
