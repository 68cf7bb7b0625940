/**
 * How long one cache line takes to travel between two CPUs, measured right
 * now: two threads, each pinned to one CPU, bounce a counter in a
 * SharedArrayBuffer (one stores n + 1 when it sees n). Half the time of a
 * round trip is the one-way latency.
 *
 * Why a bench needs it: a virtio switch's cost per frame is mostly the
 * cache lines the front end's CPU wrote and the switch's CPU reads
 * (descriptors, frame bytes, ring indexes). On a virtual machine the
 * hypervisor places (and moves) the two vCPUs on host cores; the same code
 * then runs at very different speeds from one minute to the next (seen here:
 * 230 to 3600 ns one way, and rounds of the net bench at 0.28 vs 0.59 µs per
 * frame). Recording this latency with each round says which rounds ran on
 * a slow placement, so a figure is read with the machine's state beside it.
 *
 * Written here (no library measures this from Node): a worker per CPU, pinned
 * with the project's own sched_setaffinity wrapper.
 *
 *   node dist/bench/cache-line-probe.js [--cpus 0,1] [--iterations 100000] [--repeat 5]
 */
import { parseArgs } from 'node:util';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { applyRtOptions } from '../src/rt/index.js';

interface ProbeData {
  cpu: number;
  shared: SharedArrayBuffer;
  iterations: number;
  /** 0: starts the bounce (stores odd values), 1: answers (stores even values). */
  side: 0 | 1;
}

/** Slot 0: the bounced counter; slot 16 (own cache line): threads ready. */
const COUNTER = 0;
const READY = 16;

function bounce(d: ProbeData): number {
  applyRtOptions({ cpus: [d.cpu] });
  const a = new Int32Array(d.shared);
  Atomics.add(a, READY, 1);
  while (Atomics.load(a, READY) < 2) {
    // both threads pinned and spinning before the clock starts
  }
  const t0 = performance.now();
  const n = 2 * d.iterations;
  if (d.side === 0) {
    for (let v = 0; v < n; v += 2) {
      Atomics.store(a, COUNTER, v + 1);
      while (Atomics.load(a, COUNTER) !== v + 2) {
        // wait for the answer
      }
    }
  } else {
    for (let v = 1; v < n; v += 2) {
      while (Atomics.load(a, COUNTER) !== v) {
        // wait for the ball
      }
      Atomics.store(a, COUNTER, v + 1);
    }
  }
  return performance.now() - t0;
}

if (!isMainThread && (workerData as { cacheLineProbe?: boolean })?.cacheLineProbe) {
  const d = workerData as ProbeData & { cacheLineProbe: true };
  parentPort?.postMessage(bounce(d));
}

/**
 * One-way cache-line latency between `cpuA` and `cpuB` in nanoseconds
 * (`iterations` round trips; 100,000 take about 50 ms at 250 ns).
 */
export async function crossCpuLatencyNs(
  cpuA: number,
  cpuB: number,
  iterations = 100_000,
): Promise<number> {
  // 64-byte lines: the counter and the ready count on separate lines.
  const shared = new SharedArrayBuffer(128);
  const run = (cpu: number, side: 0 | 1) =>
    new Promise<number>((resolve, reject) => {
      const w = new Worker(new URL(import.meta.url), {
        workerData: { cacheLineProbe: true, cpu, shared, iterations, side },
      });
      w.once('message', (ms: number) => resolve(ms));
      w.once('error', reject);
    });
  const [ms] = await Promise.all([run(cpuA, 0), run(cpuB, 1)]);
  return (ms * 1e6) / iterations / 2;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      cpus: { type: 'string', default: '0,1' },
      iterations: { type: 'string', default: '100000' },
      repeat: { type: 'string', default: '5' },
    },
  });
  const [a, b] = values.cpus.split(',').map(Number);
  for (let i = 0; i < Number(values.repeat); i++) {
    const ns = await crossCpuLatencyNs(a, b, Number(values.iterations));
    console.log(`CPU ${a} <-> CPU ${b}: ${ns.toFixed(0)} ns one way`);
  }
}

if (isMainThread && import.meta.url === `file://${process.argv[1]}`) await main();
