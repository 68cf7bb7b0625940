/**
 * `npm run fuzz -- [--target T[,T...]] [--inputs N] [--seconds S] [--seed X]
 * [--replay FILE]`: runs each fuzz target in this process (no sockets, no
 * device worker threads) and prints, per target, inputs, inputs/s, crashes,
 * hangs and out-of-region accesses. Exits 1 on any failure, after writing the
 * failing case to .cache/fuzz-crash-<target>-<seed>-<index>.json; `--replay`
 * runs such a file's case again.
 *
 * `--inputs` and `--seconds` apply per target (whichever comes first; the
 * default is 10 s each). A watchdog thread catches a case that never returns
 * (a synchronous loop): after `--hang-ms` (10 s) without progress it writes
 * the crash file itself and kills the process.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { type FailureRecord, fuzzTarget, type RunResult, replayCase } from './harness.js';
import { TARGETS } from './targets/index.js';

interface Cli {
  targets: string[];
  inputs: number;
  seconds: number;
  seed: number;
  replay: string | null;
  hangMs: number;
  out: string;
}

function usage(): string {
  const lines = TARGETS.map((t) => `  ${t.name.padEnd(10)} ${t.description}`);
  return [
    'usage: npm run fuzz -- [--target T[,T...]] [--inputs N] [--seconds S] [--seed X] [--replay FILE]',
    '',
    'targets:',
    ...lines,
  ].join('\n');
}

function parseNumber(flag: string, text: string | undefined): number {
  const n = Number(text);
  if (text === undefined || !Number.isFinite(n) || n < 0) {
    throw new RangeError(`${flag} needs a non-negative number, got ${text}`);
  }
  return n;
}

function parseArgs(argv: string[]): Cli {
  const cli: Cli = {
    targets: TARGETS.map((t) => t.name),
    inputs: Number.POSITIVE_INFINITY,
    seconds: Number.POSITIVE_INFINITY,
    seed: 0x5eed,
    replay: null,
    hangMs: 10_000,
    out: '.cache',
  };
  let limited = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = argv[i + 1];
    i++;
    if (arg === '--target') cli.targets = String(value).split(',');
    else if (arg === '--inputs') {
      cli.inputs = Math.floor(parseNumber(arg, value));
      limited = true;
    } else if (arg === '--seconds') {
      cli.seconds = parseNumber(arg, value);
      limited = true;
    } else if (arg === '--seed') cli.seed = Number(value) >>> 0;
    else if (arg === '--replay') cli.replay = String(value);
    else if (arg === '--hang-ms') cli.hangMs = parseNumber(arg, value);
    else if (arg === '--out') cli.out = String(value);
    else {
      console.log(usage());
      process.exit(arg === '--help' || arg === '-h' ? 0 : 2);
    }
  }
  if (!limited) cli.seconds = 10;
  for (const name of cli.targets) {
    if (!TARGETS.some((t) => t.name === name)) throw new RangeError(`unknown target ${name}`);
  }
  return cli;
}

/** Heartbeat shared with the watchdog: [cases started, target index, case index, seed]. */
const WATCHDOG = `
const { workerData } = require('node:worker_threads');
const fs = require('node:fs');
const { beat, hangMs, names, out } = workerData;
const slots = new Int32Array(beat);
let last = -1;
let since = Date.now();
setInterval(() => {
  const now = Date.now();
  const count = Atomics.load(slots, 0);
  if (count !== last || count === 0) { last = count; since = now; return; }
  if (now - since < hangMs) return;
  const target = names[Atomics.load(slots, 1)];
  const index = Atomics.load(slots, 2);
  const seed = Atomics.load(slots, 3) >>> 0;
  const record = { target, kind: 'hang', message: 'no progress for ' + hangMs + ' ms', seed, index,
    replay: 'npm run fuzz -- --target ' + target + ' --seed ' + seed + ' --inputs ' + (index + 1) };
  const file = out + '/fuzz-crash-' + target + '-' + seed + '-' + index + '.json';
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(file, JSON.stringify(record, null, 2));
  process.stderr.write('fuzz: HANG in ' + target + ' case ' + index + ' (seed ' + seed + '): ' + file + '\\n');
  process.kill(process.pid, 'SIGKILL');
}, 250);
`;

function writeCrash(out: string, f: FailureRecord): string {
  mkdirSync(out, { recursive: true });
  const file = join(out, `fuzz-crash-${f.target}-${f.seed}-${f.index}.json`);
  const replay = `npm run fuzz -- --replay ${file}`;
  writeFileSync(file, `${JSON.stringify({ ...f, replay }, null, 2)}\n`);
  return file;
}

function formatRow(r: RunResult): string {
  const cells = [
    r.target.padEnd(10),
    String(r.inputs).padStart(11),
    Math.round(r.inputsPerSecond).toString().padStart(9),
    r.seconds.toFixed(1).padStart(8),
    String(r.crashes).padStart(7),
    String(r.hangs).padStart(5),
    String(r.oob).padStart(4),
    String(r.outcomes.size).padStart(8),
  ];
  return cells.join(' ');
}

async function replay(file: string): Promise<number> {
  const record = JSON.parse(readFileSync(file, 'utf8')) as FailureRecord;
  const target = TARGETS.find((t) => t.name === record.target);
  if (target === undefined) throw new RangeError(`unknown target ${record.target}`);
  try {
    const outcome = await replayCase(target, record.case);
    console.log(`replay ${file}: no failure (outcome ${outcome})`);
    return 0;
  } catch (err) {
    console.log(`replay ${file}: FAILS`);
    console.log(err instanceof Error ? (err.stack ?? err.message) : String(err));
    return 1;
  } finally {
    target.close?.();
  }
}

async function main(): Promise<number> {
  const cli = parseArgs(process.argv.slice(2));
  if (cli.replay !== null) return replay(cli.replay);
  // Errors are what hostile input produces by the million: no stack for each
  // (a failing case is run again with stacks, see harness.ts).
  Error.stackTraceLimit = 0;
  const beat = new SharedArrayBuffer(16);
  const slots = new Int32Array(beat);
  const names = TARGETS.map((t) => t.name);
  const watchdog = new Worker(WATCHDOG, {
    eval: true,
    workerData: { beat, hangMs: cli.hangMs, names, out: cli.out },
  });
  const limit = `${cli.inputs === Number.POSITIVE_INFINITY ? '-' : cli.inputs} inputs, ${cli.seconds === Number.POSITIVE_INFINITY ? '-' : cli.seconds} s`;
  console.log(`fuzz: seed 0x${cli.seed.toString(16)}, per target at most ${limit}`);
  console.log('target          inputs  inputs/s  seconds crashes hangs  oob outcomes');
  let failed = false;
  let total = 0;
  for (const name of cli.targets) {
    const target = TARGETS.find((t) => t.name === name)!;
    Atomics.store(slots, 1, names.indexOf(name));
    Atomics.store(slots, 3, cli.seed | 0);
    let nextReport = 60;
    const result = await fuzzTarget(target, {
      seed: cli.seed,
      inputs: cli.inputs,
      seconds: cli.seconds,
      onCase(index) {
        Atomics.store(slots, 2, index);
        Atomics.add(slots, 0, 1);
      },
      onProgress(inputs, elapsed) {
        if (elapsed < nextReport) return;
        nextReport += 60;
        const rate = Math.round(inputs / elapsed);
        process.stderr.write(
          `fuzz: ${name}: ${inputs} inputs in ${Math.round(elapsed)} s (${rate}/s)\n`,
        );
      },
    });
    target.close?.();
    total += result.inputs;
    console.log(formatRow(result));
    if (result.failure !== null) {
      failed = true;
      const file = writeCrash(cli.out, result.failure);
      console.log(`  FAILURE (${result.failure.kind}): ${result.failure.message}`);
      console.log(`  case written to ${file}`);
    }
  }
  await watchdog.terminate();
  console.log(`fuzz: ${total} inputs in total, ${failed ? 'FAILURES above' : '0 failures'}`);
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : String(err));
    process.exit(2);
  },
);
