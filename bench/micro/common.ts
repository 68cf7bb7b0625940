/**
 * What every micro-benchmark shares: tinybench runs each case, a case may do
 * many operations per call (so the timer's resolution does not dominate), and
 * the result is one small table per question, in nanoseconds per operation.
 */
import { pathToFileURL } from 'node:url';
import { Bench } from 'tinybench';

/** One line of a question's table. */
export interface MicroCase {
  name: string;
  /** Operations one call of `fn` performs; the table divides by it. */
  opsPerCall: number;
  fn: () => void;
}

/** A measured case, in nanoseconds per operation. */
export interface MicroRow {
  name: string;
  nsPerOp: number;
  p99NsPerOp: number;
  mopsPerSec: number;
}

/** Milliseconds each case runs (after warm-up); `--quick` on the command line halves it. */
function caseTimeMs(): number {
  return process.argv.includes('--quick') ? 150 : 400;
}

/** Runs `cases`, prints `question` and the table, returns the rows. */
export async function runMicro(question: string, cases: MicroCase[]): Promise<MicroRow[]> {
  const bench = new Bench({ time: caseTimeMs(), warmupTime: 100 });
  for (const c of cases) bench.add(c.name, c.fn);
  await bench.run();
  const rows = bench.tasks.map((task, i): MicroRow => {
    const r = task.result as { latency?: { mean: number; p99: number } };
    const per = cases[i].opsPerCall;
    const mean = ((r.latency?.mean ?? Number.NaN) * 1e6) / per;
    const p99 = ((r.latency?.p99 ?? Number.NaN) * 1e6) / per;
    return { name: task.name, nsPerOp: mean, p99NsPerOp: p99, mopsPerSec: 1e3 / mean };
  });
  printTable(question, rows);
  return rows;
}

function printTable(question: string, rows: MicroRow[]): void {
  const width = Math.max(4, ...rows.map((r) => r.name.length));
  const lines = [
    `\n${question}`,
    `| ${'case'.padEnd(width)} | ns/op (mean) | ns/op (p99) |   Mop/s |`,
    `|${'-'.repeat(width + 2)}|-------------:|------------:|--------:|`,
    ...rows.map(
      (r) =>
        `| ${r.name.padEnd(width)} | ${r.nsPerOp.toFixed(1).padStart(12)} | ` +
        `${r.p99NsPerOp.toFixed(1).padStart(11)} | ${r.mopsPerSec.toFixed(2).padStart(7)} |`,
    ),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** True when `moduleUrl` is the script node was started with (run standalone). */
export function isMain(moduleUrl: string): boolean {
  return process.argv[1] !== undefined && moduleUrl === pathToFileURL(process.argv[1]).href;
}
