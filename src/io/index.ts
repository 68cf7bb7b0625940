/** I/O engines behind one interface, chosen per device with `--aio`. */
import { ConfigError } from '../errors.js';
import {
  IO_ENGINE_NAMES,
  type IoEngine,
  type IoEngineName,
  type IoEngineOptions,
} from './engine.js';
import { LinuxAioEngine } from './linux-aio.js';

export * from './engine.js';
export { LinuxAioEngine } from './linux-aio.js';

/** Checks an `--aio` value. */
export function parseEngineName(value: string): IoEngineName {
  if ((IO_ENGINE_NAMES as readonly string[]).includes(value)) return value as IoEngineName;
  throw new ConfigError(
    `--aio ${value}: unknown engine (choose from ${IO_ENGINE_NAMES.join(', ')})`,
  );
}

/** Opens the image with the named engine. */
export function createEngine(name: IoEngineName, options: IoEngineOptions): IoEngine {
  switch (name) {
    case 'linux-aio':
      return new LinuxAioEngine(options);
  }
}
