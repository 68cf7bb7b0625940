/**
 * Entry point of the logger thread: at the lowest priority (SCHED_IDLE, else
 * nice 19) it drains every stream's ring into that stream's sinks. Device
 * workers only ever write to the rings; whatever a sink does (a full disk, a
 * FIFO nobody reads) stalls this thread alone, and the ring-full policy
 * decides what the producers do meanwhile.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { WorkerCommand } from '../devices/messages.js';
import { post, rateLimitedWarn } from '../devices/worker-runtime.js';
import { SpscByteRing, StatCounters } from '../locking/index.js';
import { describeThread, lowerToBackground } from '../rt/index.js';
import { openSink, type Sink } from './sink.js';
import { sinkKey } from './sinks.js';
import { LOGGER_CHUNK_BYTES, LOGGER_STAT_NAMES, type LoggerInit, LoggerStat } from './stream.js';

interface Stream {
  name: string;
  ring: SpscByteRing;
  sinks: Sink[];
  stats: StatCounters;
  chunk: Uint8Array;
}

const warn = rateLimitedWarn();

async function openStreams(init: LoggerInit): Promise<{ streams: Stream[]; sinks: Sink[] }> {
  const byKey = new Map<string, Sink>();
  const streams: Stream[] = [];
  for (const s of init.streams) {
    const sinks: Sink[] = [];
    for (const spec of s.sinks) {
      const key = sinkKey(spec);
      let sink = byKey.get(key);
      if (sink === undefined) {
        sink = await openSink(spec);
        byKey.set(key, sink);
      }
      sinks.push(sink);
    }
    streams.push({
      name: s.name,
      ring: SpscByteRing.attach(s.ring),
      sinks,
      stats: StatCounters.attach(s.statsBuffer, LOGGER_STAT_NAMES),
      chunk: new Uint8Array(LOGGER_CHUNK_BYTES),
    });
  }
  return { streams, sinks: [...byKey.values()] };
}

/** Hands one chunk to every sink of the stream; a failing sink loses the chunk, counted. */
async function writeChunk(s: Stream, n: number): Promise<void> {
  const results = await Promise.allSettled(s.sinks.map((sink) => sink.write(s.chunk, n)));
  s.stats.add(LoggerStat.sinkWrites, 1);
  s.stats.add(LoggerStat.sinkBytes, n);
  for (const r of results) {
    if (r.status === 'fulfilled') continue;
    s.stats.add(LoggerStat.sinkErrors, 1);
    warn(`${s.name}: sink write failed: ${(r.reason as Error).message}`);
  }
}

/** Drains one ring until shutdown, then empties it. */
async function drain(s: Stream, closing: Promise<void>, isClosing: () => boolean): Promise<void> {
  for (;;) {
    const n = s.ring.read(s.chunk);
    if (n > 0) {
      // Space was freed: a lossless producer may be waiting for it.
      s.ring.notifyWriterIfWaiting();
      await writeChunk(s, n);
      continue;
    }
    if (isClosing()) return;
    // The producers stop before shutdown is asked for, so once `closing`
    // settles the ring only holds what is left to drain.
    await Promise.race([s.ring.waitReadable(), closing]);
  }
}

async function start(init: LoggerInit): Promise<void> {
  const background = lowerToBackground();
  const { streams, sinks } = await openStreams(init);
  let closingNow = false;
  let beginClose: () => void = () => {};
  const closing = new Promise<void>((resolve) => {
    beginClose = resolve;
  });
  const drains = streams.map((s) => drain(s, closing, () => closingNow));
  parentPort?.on('message', (cmd: WorkerCommand) => {
    if (cmd.op !== 'shutdown') {
      post({ kind: 'reply', id: cmd.id, ok: false, code: 'ERR_LOGGER_OP', message: cmd.op });
      return;
    }
    closingNow = true;
    beginClose();
    void finish(drains, sinks).then(() => {
      post({ kind: 'reply', id: cmd.id, ok: true, value: 0 });
      // Abandoned ring waits hold keep-alive timers: end the thread explicitly.
      setImmediate(() => process.exit(0));
    });
  });
  post({ kind: 'ready', thread: describeThread(), info: { background, sinks: sinks.length } });
}

async function finish(drains: Promise<void>[], sinks: Sink[]): Promise<void> {
  await Promise.allSettled(drains);
  await Promise.allSettled(sinks.map((s) => s.close()));
}

start(workerData as LoggerInit).catch((err: unknown) => {
  const code = (err as { code?: string }).code ?? 'ERR_WORKER_START';
  post({ kind: 'failed', code, message: err instanceof Error ? err.message : String(err) });
});
