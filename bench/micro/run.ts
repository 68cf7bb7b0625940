/**
 * `npm run bench:micro`: every micro-benchmark, one question each, one table
 * each. `--quick` shortens every case. Build first (`npm run build:ts`).
 * The adaptive-polling question starts real daemons and takes about a minute
 * per round, so it runs on its own: `node dist/bench/micro/poll-us.js`.
 */
import * as codec from './codec.js';
import * as descriptorChain from './descriptor-chain.js';
import * as spscRing from './spsc-ring.js';
import * as virtqueue from './virtqueue.js';

const QUESTIONS = [virtqueue, descriptorChain, codec, spscRing];

process.stdout.write(`vhost-rt micro-benchmarks (tinybench), node ${process.version}\n`);
for (const q of QUESTIONS) await q.run();
