/**
 * Entry point of the serial worker: it serves QEMU's chardev socket (the
 * guest's 16550 UART). Bytes from QEMU go into the log ring, under the
 * ring-full policy; with 'lossless' the worker stops reading the socket while
 * the ring is full, so QEMU's UART stops taking the guest's bytes and the
 * guest's own write waits. Input clients' bytes go to QEMU through a bounded
 * buffer.
 */
import { SpscByteRing, StatCounters } from '../locking/index.js';
import { OutputStream, PORT_STAT_NAMES, PortStat } from '../logger/index.js';
import { POLL_DISCONNECT, POLL_READABLE, POLL_WRITABLE } from '../native.js';
import { applyRtOptions } from '../rt/index.js';
import { runWorker } from '../thread/index.js';
import { InputBuffer } from './input-buffer.js';
import { InputHub } from './input-hub.js';
import type { SerialWorkerInit } from './uart-options.js';
import { StreamPeer, UnixListener, WOULD_BLOCK } from './unix-stream.js';

const READ_BYTES = 64 * 1024;
/** A stalled lossless port resumes once this much of the ring is free, not byte by byte. */
const RESUME_BYTES = 4096;

class SerialPort {
  private qemu: StreamPeer | null = null;
  private readonly buf = new Uint8Array(READ_BYTES);
  private stalled = false;
  private readonly listener: UnixListener;
  private readonly inputs: InputHub | null;
  private readonly input: InputBuffer;
  /** QEMU front ends served so far. */
  connections = 0;

  constructor(
    init: SerialWorkerInit,
    private readonly output: OutputStream,
    private readonly stats: StatCounters,
  ) {
    const o = init.options;
    this.input = new InputBuffer(o.inputBufferBytes);
    this.listener = new UnixListener(
      o.socketPath,
      '--socket-path',
      (fd) => this.accept(fd),
      o.socketPermissions,
    );
    this.inputs =
      o.inputPath === undefined
        ? null
        : new InputHub(
            o.inputPath,
            '--input',
            (b, off, len) => this.queueInput(b, off, len),
            (n) => this.stats.add(PortStat.inputRefused, n),
            o.socketPermissions,
          );
  }

  /** One QEMU at a time: a second connection replaces the first (QEMU reconnected). */
  private accept(fd: number): void {
    this.qemu?.close();
    this.connections++;
    this.qemu = new StreamPeer(fd, (p, events) => this.onQemu(p, events));
    this.rewatch();
    this.flushInput();
  }

  private rewatch(): void {
    const q = this.qemu;
    if (q === null) return;
    const read = this.stalled ? 0 : POLL_READABLE;
    const write = this.input.length > 0 ? POLL_WRITABLE : 0;
    q.watch(read | write | POLL_DISCONNECT);
  }

  private onQemu(peer: StreamPeer, events: number): void {
    if (peer !== this.qemu) return;
    if (events < 0) {
      this.dropQemu();
      return;
    }
    if ((events & POLL_WRITABLE) !== 0) this.flushInput();
    if (!this.stalled) this.pumpOutput(peer);
    else if ((events & POLL_DISCONNECT) !== 0) this.dropQemu();
  }

  /** Moves what QEMU sent into the ring; one logger wake-up per batch. */
  private pumpOutput(peer: StreamPeer): void {
    const lossless = this.output.policy === 'lossless';
    for (;;) {
      const room = lossless ? Math.min(READ_BYTES, this.output.ring.writable) : READ_BYTES;
      if (room === 0) {
        this.stall();
        break;
      }
      const n = peer.read(this.buf, 0, room);
      if (n === WOULD_BLOCK) break;
      if (n === 0) {
        this.dropQemu();
        break;
      }
      this.output.offer(this.buf, 0, n);
      this.stats.add(PortStat.transmits, 1);
      if (n < room) break;
    }
    this.output.flush();
  }

  /** Lossless and the ring is full: stop reading until the logger has made room. */
  private stall(): void {
    this.stalled = true;
    this.stats.add(PortStat.ringFull, 1);
    this.rewatch();
    void this.output.waitWritable(RESUME_BYTES).then((writable) => {
      // false: the port closed and cancelled the wait.
      if (!writable) return;
      this.stalled = false;
      this.rewatch();
      if (this.qemu !== null) this.pumpOutput(this.qemu);
    });
  }

  private dropQemu(): void {
    this.qemu?.close();
    this.qemu = null;
  }

  private queueInput(buf: Uint8Array, off: number, len: number): number {
    const taken = this.input.push(buf, off, len);
    this.flushInput();
    return taken;
  }

  /** Hands waiting input to QEMU as far as its socket takes it now. */
  private flushInput(): void {
    const q = this.qemu;
    while (q !== null && this.input.length > 0) {
      const n = q.write(this.input.bytes, this.input.contiguousStart, this.input.contiguousLength);
      if (n === WOULD_BLOCK || n === 0) break;
      this.input.consume(n);
      this.stats.add(PortStat.bytesIn, n);
    }
    this.rewatch();
  }

  close(): void {
    this.inputs?.close();
    this.listener.close();
    this.dropQemu();
    // A stalled port's ring wait holds a keep-alive timer: end it so the thread can exit.
    this.output.cancelWait();
    this.output.flush();
  }
}

runWorker<SerialWorkerInit, Record<string, never>, never>((init) => {
  applyRtOptions(init.rt);
  const stats = StatCounters.attach(init.statsBuffer, PORT_STAT_NAMES);
  const output = new OutputStream(SpscByteRing.attach(init.ring), init.options.policy, stats);
  const port = new SerialPort(init, output, stats);
  return {
    ready: {},
    handle: () => {
      throw new RangeError('the serial worker takes no commands but shutdown');
    },
    shutdown: () => port.close(),
  };
});
