#!/usr/bin/env node
/** The `vhost-rt` command. */
import { ConfigError, VhostRtError } from '../errors.js';
import { HELP, parseCommand } from './args.js';
import { runBlk } from './blk.js';

async function main(argv: string[]): Promise<number> {
  const cmd = parseCommand(argv);
  if (cmd.command === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  await runBlk(cmd);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const known =
      err instanceof ConfigError || err instanceof RangeError || err instanceof VhostRtError;
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`vhost-rt: ${known ? message : ((err as Error).stack ?? message)}\n`);
    process.exitCode = 2;
  },
);
