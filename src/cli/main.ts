#!/usr/bin/env node
/** The `vhost-rt` command: one subcommand per device kind. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, VhostRtError } from '../errors.js';
import { projectRoot } from '../native.js';
import { attachCommand } from './attach.js';
import { blkCommand } from './blk.js';
import type { CliCommand } from './command.js';
import { consoleCommand } from './console.js';
import { netCommand } from './net.js';
import { serialCommand } from './serial.js';

const COMMANDS: readonly CliCommand[] = [
  blkCommand,
  serialCommand,
  consoleCommand,
  attachCommand,
  netCommand,
];

function topHelp(): string {
  const lines = COMMANDS.map((c) => `  vhost-rt ${c.name.padEnd(8)} ${c.summary}`);
  const details = COMMANDS.map((c) => c.help).join('\n');
  return `vhost-rt — real-time-aware virtio device back ends over vhost-user

  vhost-rt --version   print the version

Commands:
${lines.join('\n')}

${details}`;
}

/** The version in the package.json this build belongs to. */
function version(): string {
  const pkg = JSON.parse(readFileSync(join(projectRoot, 'package.json'), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === '--version' || name === '-V' || name === 'version') {
    process.stdout.write(`vhost-rt ${version()}\n`);
    return 0;
  }
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(topHelp());
    return 0;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (command === undefined)
    throw new ConfigError(`unknown command '${name}' (try: vhost-rt --help)`);
  return command.run(rest);
}

const argv = process.argv.slice(2);
/** Who says it: `vhost-rt blk` for a known subcommand, else `vhost-rt`. */
const speaker = COMMANDS.some((c) => c.name === argv[0]) ? `vhost-rt ${argv[0]}` : 'vhost-rt';

main(argv).then(
  (code) => {
    // A failure found while serving (a worker died) has already set a non-zero status.
    process.exitCode = process.exitCode || code;
  },
  (err: unknown) => {
    const known =
      err instanceof ConfigError || err instanceof RangeError || err instanceof VhostRtError;
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`${speaker}: ${known ? message : ((err as Error).stack ?? message)}\n`);
    process.exitCode = 2;
  },
);
