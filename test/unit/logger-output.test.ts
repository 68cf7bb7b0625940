/**
 * The producer end of a log stream (OutputStream) on a real SpscByteRing:
 * the 'lossless' policy takes what fits and reports it, the 'drop' policy
 * drops the newest bytes, counts them and writes one marker line when output
 * resumes. Plus sink and policy parsing.
 */
import { describe, expect, it } from 'vitest';
import { SpscByteRing, StatCounters } from '../../src/locking/index.js';
import {
  describeSink,
  LoggerError,
  OutputStream,
  PORT_STAT_NAMES,
  parseRingPolicy,
  parseSinkSpec,
} from '../../src/logger/index.js';

function stream(policy: 'lossless' | 'drop', capacity = 64) {
  const ring = SpscByteRing.create(capacity);
  const stats = StatCounters.create(PORT_STAT_NAMES);
  return { ring, stats, out: new OutputStream(ring, policy, stats) };
}

function drain(ring: SpscByteRing): string {
  const buf = new Uint8Array(ring.capacity);
  return Buffer.from(buf.subarray(0, ring.read(buf))).toString('latin1');
}

const bytes = (s: string) => Buffer.from(s, 'latin1');

describe('OutputStream, lossless', () => {
  it('takes what fits, reports the rest, and takes it after the consumer made room', async () => {
    const { ring, stats, out } = stream('lossless', 16);
    const src = bytes('0123456789abcdefGHIJ');
    expect(out.offer(src, 0, src.length)).toBe(16);
    expect(stats.snapshot().ringFull).toBe(1);
    const waiting = out.waitWritable(4);
    expect(drain(ring)).toBe('0123456789abcdef');
    ring.notifyWriterIfWaiting();
    expect(await waiting).toBe(true);
    expect(out.offer(src, 16, 4)).toBe(4);
    expect(drain(ring)).toBe('GHIJ');
    expect(stats.snapshot().bytesOut).toBe(20);
    expect(stats.snapshot().bytesDropped).toBe(0);
  });
});

describe('OutputStream, drop', () => {
  it('drops the newest bytes, counts them and writes a marker line when output resumes', () => {
    const { ring, stats, out } = stream('drop', 64);
    const line = bytes(`${'x'.repeat(39)}\n`);
    expect(out.offer(line, 0, 40)).toBe(40);
    expect(out.offer(line, 0, 40)).toBe(40); // 24 fit, 16 dropped
    expect(out.offer(line, 0, 40)).toBe(40); // ring full: all 40 dropped
    expect(stats.snapshot().bytesDropped).toBe(56);
    expect(out.unreportedDrops).toBe(56);
    expect(drain(ring)).toBe(`${'x'.repeat(39)}\n${'x'.repeat(24)}`);
    expect(out.offer(bytes('ok\n'), 0, 3)).toBe(3);
    expect(drain(ring)).toBe('\n[vhost-rt: 56 bytes dropped: log ring full]\nok\n');
    expect(out.unreportedDrops).toBe(0);
    const s = stats.snapshot();
    expect(s.bytesOut).toBe(40 + 24 + 3);
    expect(s.ringFull).toBe(1);
  });

  it('keeps dropping while the marker itself does not fit', () => {
    const { ring, stats, out } = stream('drop', 64);
    out.offer(bytes('y'.repeat(64)), 0, 64);
    out.offer(bytes('z'), 0, 1);
    ring.read(new Uint8Array(20));
    // 20 bytes free: too few for the marker, so this byte is dropped too, and nothing written.
    out.offer(bytes('v'), 0, 1);
    expect(ring.readable).toBe(44);
    expect(stats.snapshot().bytesDropped).toBe(2);
    expect(out.unreportedDrops).toBe(2);
  });
});

describe('sink and policy parsing', () => {
  it('parses every sink form', () => {
    expect(parseSinkSpec('stdout')).toEqual({ kind: 'stdout' });
    expect(parseSinkSpec('socket:/run/c.sock')).toEqual({ kind: 'socket', path: '/run/c.sock' });
    expect(parseSinkSpec('/var/log/g.log', { rotateBytes: 1024, timestamps: true })).toEqual({
      kind: 'file',
      path: '/var/log/g.log',
      rotateBytes: 1024,
      rotateKeep: 5,
      timestamps: true,
    });
    expect(parseSinkSpec('file:x.log').kind).toBe('file');
    expect(describeSink(parseSinkSpec('a.log', { rotateBytes: 10, rotateKeep: 2 }))).toBe(
      'file:a.log (rotate 10x2)',
    );
  });

  it('refuses empty paths and unknown policies with coded errors', () => {
    expect(() => parseSinkSpec('socket:')).toThrow(LoggerError);
    expect(() => parseSinkSpec('file:')).toThrow(/empty path/);
    expect(parseRingPolicy('drop')).toBe('drop');
    try {
      parseRingPolicy('block');
      expect.unreachable();
    } catch (err) {
      expect((err as LoggerError).code).toBe('LOG_BAD_POLICY');
    }
  });
});
