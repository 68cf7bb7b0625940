/**
 * `vhost-rt attach`: a terminal on a port. Standard input goes to the port's
 * input socket; with --output, a live log socket (`--log socket:PATH`) is
 * copied to standard output. `socat - UNIX-CONNECT:SOCK` does the same job.
 */
import { connect, type Socket } from 'node:net';
import { parseArgs } from 'node:util';
import { ConfigError } from '../errors.js';
import type { CliCommand } from './command.js';

const FLAGS = {
  output: { type: 'string' },
  raw: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

const HELP = `vhost-rt attach — type into a serial or console port

Usage:
  vhost-rt attach INPUT_SOCK [--output LOG_SOCK] [--raw]

  INPUT_SOCK           the port's --input socket; standard input is sent to it
  --output LOG_SOCK    also follow a --log socket:LOG_SOCK sink on standard output
  --raw                put the terminal in raw mode (keys go through unprocessed;
                       leave with Ctrl-] )
  --help               this text

Equivalent with socat: socat - UNIX-CONNECT:INPUT_SOCK
`;

/** Ctrl-] ends a raw session, as telnet does. */
const ESCAPE = 0x1d;

function parseAttachArgs(argv: string[]) {
  try {
    return parseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: true });
  } catch (err) {
    throw new ConfigError(`vhost-rt attach: ${(err as Error).message.split('\n')[0]}`);
  }
}

function open(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path, () => resolve(s));
    s.once('error', (err) =>
      reject(new ConfigError(`cannot connect to ${path}: ${(err as { code?: string }).code}`)),
    );
  });
}

async function run(argv: string[]): Promise<number> {
  const { values: v, positionals } = parseAttachArgs(argv);
  if (v.help === true) {
    process.stdout.write(HELP);
    return 0;
  }
  const outputPath = v.output;
  const target = positionals[0];
  if (target === undefined || positionals.length > 1)
    throw new ConfigError('vhost-rt attach: give exactly one INPUT_SOCK (try --help)');
  const input = await open(target);
  const output = outputPath === undefined ? null : await open(outputPath);
  // The input socket also carries refusal notices back: show them.
  input.pipe(process.stdout);
  output?.pipe(process.stdout);
  if (v.raw === true && process.stdin.isTTY) process.stdin.setRawMode(true);
  process.stdin.on('data', (d: Buffer) => {
    if (v.raw === true && d.includes(ESCAPE)) {
      input.end();
      output?.end();
      process.stdin.pause();
      return;
    }
    input.write(d);
  });
  await new Promise<void>((resolve) => {
    process.stdin.once('end', () => {
      input.end();
      output?.end();
    });
    input.once('close', () => resolve());
  });
  output?.destroy();
  process.stdin.pause();
  return 0;
}

/** `vhost-rt attach INPUT_SOCK [--output LOG_SOCK] [--raw]`; exits 0 once INPUT_SOCK closes. */
export const attachCommand: CliCommand = {
  name: 'attach',
  summary: 'type into a serial/console port (stdin to its --input socket)',
  help: HELP,
  run,
};
