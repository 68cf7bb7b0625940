/**
 * Entry point of the logger thread: at the lowest priority (SCHED_IDLE, else
 * nice 19) it drains every stream's ring into that stream's sinks. Device
 * workers only ever write to the rings; whatever a sink does (a full disk, a
 * FIFO nobody reads) stalls this thread alone, and the ring-full policy
 * decides what the producers do meanwhile.
 */
import { SpscByteRing, StatCounters } from '../locking/index.js';
import { lowerToBackground } from '../rt/index.js';
import { rateLimitedWarn, runWorker } from '../thread/index.js';
import { LoggerError } from './errors.js';
import { openSink, type Sink } from './sink.js';
import { sinkKey } from './sinks.js';
import {
  LOGGER_CHUNK_BYTES,
  LOGGER_STAT_NAMES,
  type LoggerCommand,
  type LoggerInit,
  type LoggerReady,
  LoggerStat,
} from './stream.js';

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

/** Reopens every sink that can be reopened (files); resolves to how many were. */
async function reopenSinks(sinks: Sink[]): Promise<number> {
  let n = 0;
  for (const sink of sinks) {
    if (sink.reopen === undefined) continue;
    await sink.reopen();
    n++;
  }
  return n;
}

runWorker<LoggerInit, LoggerReady, LoggerCommand>(async (init) => {
  const background = lowerToBackground();
  const { streams, sinks } = await openStreams(init);
  let closingNow = false;
  let beginClose: () => void = () => {};
  const closing = new Promise<void>((resolve) => {
    beginClose = resolve;
  });
  const drains = streams.map((s) => drain(s, closing, () => closingNow));
  return {
    ready: { background, sinks: sinks.length },
    handle: (cmd: LoggerCommand) => {
      if (cmd.op === 'reopen') return reopenSinks(sinks);
      throw new LoggerError(
        'LOG_BAD_COMMAND',
        `the logger thread has no command ${String(cmd.op)}`,
      );
    },
    shutdown: async () => {
      closingNow = true;
      beginClose();
      await Promise.allSettled(drains);
      await Promise.allSettled(sinks.map((s) => s.close()));
      // Abandoned ring waits hold keep-alive timers: end them so the thread can exit.
      for (const s of streams) s.ring.cancelWaits();
    },
  };
});
