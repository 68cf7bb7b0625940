/** I/O engines behind one interface, chosen per device with `--aio`. */
import { ConfigError } from '../errors.js';
import { RT_POLICIES, type RtPolicy } from '../rt/options.js';
import {
  IO_ENGINE_NAMES,
  type IoEngine,
  type IoEngineName,
  type IoEngineOptions,
  type ThreadPolicy,
} from './engine.js';
import { UringEngine } from './io-uring.js';
import { LinuxAioEngine } from './linux-aio.js';
import { MAX_NBD_TIMEOUT_MS, NbdEngine } from './nbd.js';
import { checkNbdUri, looksLikeNbdUri } from './nbd-uri.js';
import { NullEngine } from './null.js';
import { SyncEngine } from './sync.js';
import { MAX_AIO_THREADS, ThreadsEngine } from './threads.js';

export * from './engine.js';
export { SQPOLL_IDLE_MS, URING_CMD, URING_OP, UringEngine, UringSetupError } from './io-uring.js';
export * from './ioprio.js';
export { LinuxAioEngine } from './linux-aio.js';
export {
  DEFAULT_NBD_TIMEOUT_MS,
  MAX_NBD_TIMEOUT_MS,
  NBD_BACKOFF_MAX_MS,
  NBD_BACKOFF_MS,
  NbdConnectError,
  NbdEngine,
} from './nbd.js';
export { checkNbdUri, looksLikeNbdUri, NBD_URI_SCHEMES } from './nbd-uri.js';
export { NullEngine } from './null.js';
export * from './rate-pacer.js';
export { SyncEngine } from './sync.js';
export { MAX_AIO_THREADS, ThreadsEngine } from './threads.js';
export * from './throttle.js';

/** Checks an `--aio` value. */
export function parseEngineName(value: string): IoEngineName {
  if ((IO_ENGINE_NAMES as readonly string[]).includes(value)) return value as IoEngineName;
  throw new ConfigError(
    `--aio ${value}: unknown engine (choose from ${IO_ENGINE_NAMES.join(', ')})`,
  );
}

/** Checks an `--aio-threads` pool size. */
export function validateAioThreads(n: number): number {
  if (!Number.isInteger(n) || n < 1 || n > MAX_AIO_THREADS)
    throw new ConfigError(`--aio-threads ${n}: must be an integer in 1..${MAX_AIO_THREADS}`);
  return n;
}

/** Parses `--aio-threads-policy POLICY[:PRIO]` (fifo/rr need a priority in 1..99, others none). */
export function parseThreadPolicy(value: string): ThreadPolicy {
  const flag = '--aio-threads-policy';
  const [name, prio, extra] = value.split(':');
  if (extra !== undefined || !(RT_POLICIES as readonly string[]).includes(name))
    throw new ConfigError(
      `${flag} ${value}: expected POLICY[:PRIO], POLICY one of ${RT_POLICIES.join(', ')}`,
    );
  const policy = name as RtPolicy;
  if (policy === 'deadline')
    throw new ConfigError(
      `${flag} ${value}: deadline is for device workers (--rt-policy), not pool threads`,
    );
  const realTime = policy === 'fifo' || policy === 'rr';
  if (prio === undefined) {
    if (realTime)
      throw new ConfigError(`${flag} ${value}: ${policy} needs a priority (${policy}:1..99)`);
    return { policy };
  }
  const priority = /^\d+$/.test(prio) ? Number(prio) : Number.NaN;
  const ok = realTime ? priority >= 1 && priority <= 99 : priority === 0;
  if (!ok)
    throw new ConfigError(
      `${flag} ${value}: priority must be ${realTime ? '1..99' : '0'} for ${policy}`,
    );
  return { policy, priority };
}

/**
 * The engine for `image`: `aio` when given, else `nbd` for an NBD URI and the
 * default engine for a file. An NBD URI with a file engine, or a file with
 * `nbd`, is refused naming both; a malformed NBD URI is refused naming it.
 */
export function resolveEngine(image: string, aio: IoEngineName | undefined): IoEngineName {
  const uri = looksLikeNbdUri(image);
  if (uri) checkNbdUri(image);
  const name = aio ?? (uri ? 'nbd' : IO_ENGINE_NAMES[0]);
  if (uri && name !== 'nbd')
    throw new ConfigError(`--image ${image}: an NBD URI needs --aio nbd (not ${name})`);
  if (!uri && name === 'nbd')
    throw new ConfigError(
      `--image ${image}: --aio nbd needs an NBD URI (nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)`,
    );
  return name;
}

/** Checks `--nbd-timeout-ms`. */
export function validateNbdTimeout(ms: number): number {
  if (!Number.isInteger(ms) || ms < 1 || ms > MAX_NBD_TIMEOUT_MS)
    throw new ConfigError(`--nbd-timeout-ms ${ms}: must be an integer in 1..${MAX_NBD_TIMEOUT_MS}`);
  return ms;
}

/** Refuses engine options that do not apply to the chosen engine, naming the flag. */
export function validateEngineOptions(name: IoEngineName, o: Partial<IoEngineOptions>): void {
  if (o.nbdTimeoutMs !== undefined) {
    if (name !== 'nbd')
      throw new ConfigError(`--nbd-timeout-ms: only applies to --aio nbd (not ${name})`);
    validateNbdTimeout(o.nbdTimeoutMs);
  }
  if (o.uringSqpoll === true && name !== 'io_uring')
    throw new ConfigError(`--uring-sqpoll: only applies to --aio io_uring (not ${name})`);
  if (name === 'threads') {
    if (o.aioThreads !== undefined) validateAioThreads(o.aioThreads);
    return;
  }
  if (o.aioThreads !== undefined)
    throw new ConfigError(`--aio-threads: only applies to --aio threads (not ${name})`);
  if (o.aioThreadsPolicy !== undefined)
    throw new ConfigError(`--aio-threads-policy: only applies to --aio threads (not ${name})`);
}

/** Opens the image with the named engine. */
export function createEngine(name: IoEngineName, options: IoEngineOptions): IoEngine {
  validateEngineOptions(name, options);
  switch (name) {
    case 'linux-aio':
      return new LinuxAioEngine(options);
    case 'io_uring':
      return new UringEngine(options);
    case 'threads':
      return new ThreadsEngine(options);
    case 'sync':
      return new SyncEngine(options);
    case 'null':
      return new NullEngine(options);
    case 'nbd':
      return new NbdEngine(options);
  }
}
