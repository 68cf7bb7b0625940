/**
 * Device A's client for the shared-disk experiment (issue 14): ONE load-generator connection
 * that runs its measured windows back to back, the load never pausing between them, so the
 * RT guard sees A as the steady RT neighbour a real guest is. (The first version of the
 * experiment ran A's idle and flood runs as two connections: between them A had no I/O, B's
 * flood started unheld, and the host was still writing B's first second back while A was
 * measured.)
 *
 *   node dist/bench/priority-inversion-a-client.js --windows 2 LOADGEN-FLAGS...
 *
 * LOADGEN-FLAGS are bench/loadgen/cli.js's (--socket, --rw, --bs, --runtime, --ramp, ...);
 * each window ramps `--ramp` seconds and measures `--runtime` seconds. Protocol, one JSON
 * object per stdout line:
 *   {"event":"waiting","window":i}  before window i > 0: the load runs on, unmeasured, until
 *                                   a line arrives on stdin (the bench starts B meanwhile);
 *   {"event":"measure","window":i}  window i's measured part starts (after its ramp);
 *   {"event":"result","window":i,"result":LoadResult}  window i ended.
 */
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { parseLoadArgs } from './loadgen/cli.js';
import { type LoadWindow, runLoadWindows } from './loadgen/generator.js';

function say(msg: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(msg)}\n`);
}

/** Splits `--windows N` off the load generator's flags. */
export function windowsArg(argv: string[]): { windows: number; rest: string[] } {
  const at = argv.indexOf('--windows');
  if (at < 0) return { windows: 1, rest: argv };
  const windows = Number(argv[at + 1]);
  if (!Number.isInteger(windows) || windows < 1 || windows > 16)
    throw new RangeError(`--windows must be an integer in [1, 16], got ${argv[at + 1]}`);
  return { windows, rest: [...argv.slice(0, at), ...argv.slice(at + 2)] };
}

async function main(): Promise<void> {
  const { windows, rest } = windowsArg(process.argv.slice(2));
  const { options } = parseLoadArgs(rest);
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const plan: LoadWindow[] = [];
  for (let i = 0; i < windows; i++) {
    plan.push({
      rampSec: options.rampSec ?? 0,
      runtimeSec: options.runtimeSec,
      before:
        i === 0
          ? undefined
          : async () => {
              say({ event: 'waiting', window: i });
              const next = await lines.next();
              if (next.done === true) throw new RangeError(`stdin closed before window ${i}`);
            },
      onMeasure: () => say({ event: 'measure', window: i }),
      onResult: (result) => say({ event: 'result', window: i, result }),
    });
  }
  try {
    await runLoadWindows(options, plan);
  } finally {
    process.stdin.destroy();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: Error) => {
    process.stderr.write(`priority-inversion-a-client: ${err.message}\n`);
    process.exitCode = 1;
  });
}
