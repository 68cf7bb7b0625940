/**
 * The logger's sinks and thread on real files and sockets: append, size
 * rotation, per-line timestamps, several live socket readers, and the logger
 * thread draining a ring (at SCHED_IDLE or nice 19) into a file.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SpscByteRing } from '../../src/locking/index.js';
import { createLogStream, LoggerThread, parseSinkSpec } from '../../src/logger/index.js';
import { FileSink, openSink, SocketSink } from '../../src/logger/sink.js';
import { waitFor } from '../support/wait.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-sinks-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const enc = (s: string) => Buffer.from(s);

describe('FileSink', () => {
  it('appends to an existing file', async () => {
    const path = join(dir, 'append.log');
    writeFileSync(path, 'before\n');
    const sink = await FileSink.open({ ...parseSinkSpec(path), kind: 'file' } as never);
    await sink.write(enc('after\n'), 6);
    await sink.close();
    expect(readFileSync(path, 'utf8')).toBe('before\nafter\n');
  });

  it('rotates by size and keeps N old files, newest first', async () => {
    const path = join(dir, 'rot.log');
    const sink = await openSink(parseSinkSpec(path, { rotateBytes: 20, rotateKeep: 2 }));
    for (const word of ['aaaaaaaaa\n', 'bbbbbbbbb\n', 'ccccccccc\n', 'ddddddddd\n', 'eeeeeeeee\n'])
      await sink.write(enc(word), word.length);
    await sink.close();
    expect(readFileSync(path, 'utf8')).toBe('eeeeeeeee\n');
    expect(readFileSync(`${path}.1`, 'utf8')).toBe('ccccccccc\nddddddddd\n');
    expect(readFileSync(`${path}.2`, 'utf8')).toBe('aaaaaaaaa\nbbbbbbbbb\n');
    expect(existsSync(`${path}.3`)).toBe(false);
  });

  it('stamps every line, also lines split across chunks', async () => {
    const path = join(dir, 'ts.log');
    const sink = await openSink(parseSinkSpec(path, { timestamps: true }));
    await sink.write(enc('one\ntw'), 6);
    await sink.write(enc('o\nthree\n'), 8);
    await sink.close();
    const lines = readFileSync(path, 'utf8').split('\n');
    expect(lines.slice(0, 3).map((l) => l.replace(/^\d{4}-\d\d-\d\dT[\d:.]+Z /, ''))).toEqual([
      'one',
      'two',
      'three',
    ]);
    expect(lines[1]).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z two$/);
  });
});

function reader(path: string): Promise<{ socket: Socket; text: () => string }> {
  return new Promise((resolve, reject) => {
    let text = '';
    const socket = connect(path, () => resolve({ socket, text: () => text }));
    socket.on('data', (d) => {
      text += d.toString();
    });
    socket.once('error', reject);
  });
}

describe('SocketSink', () => {
  it('streams to every reader attached, from the moment each attaches', async () => {
    const path = join(dir, 'live.sock');
    const sink = await SocketSink.listen({ kind: 'socket', path });
    const a = await reader(path);
    await waitFor(() => sink.readerCount === 1, 'the first reader', 5000);
    await sink.write(enc('first\n'), 6);
    const b = await reader(path);
    await waitFor(() => sink.readerCount === 2, 'the second reader', 5000);
    await sink.write(enc('second\n'), 7);
    await waitFor(
      () => a.text() === 'first\nsecond\n' && b.text() === 'second\n',
      () => `both readers' text (A: ${JSON.stringify(a.text())}, B: ${JSON.stringify(b.text())})`,
      5000,
    );
    await sink.close();
    expect(existsSync(path)).toBe(false);
  });
});

describe('LoggerThread', () => {
  it('drains a ring into a file at background priority and empties it at shutdown', async () => {
    const path = join(dir, 'thread.log');
    const stream = createLogStream('t', 4096, [parseSinkSpec(path)]);
    const logger = await LoggerThread.start([stream], () => {});
    expect(['idle', 'nice']).toContain(logger.background);
    expect(logger.thread.policy === 'idle' || logger.background === 'nice').toBe(true);
    const producer = SpscByteRing.attach(stream.ring.buffer);
    let expected = '';
    for (let i = 0; i < 2000; i++) {
      const line = enc(`record ${i}\n`);
      while (producer.writable < line.length) await producer.waitWritable(line.length);
      producer.write(line);
      producer.notifyIfWaiting();
      expected += line.toString();
    }
    await logger.shutdown();
    expect(readFileSync(path, 'utf8')).toBe(expected);
    expect(stream.loggerStats.snapshot().sinkBytes).toBe(expected.length);
  });
});
