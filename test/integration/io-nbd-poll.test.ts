/**
 * The nbd engine's busy poll (`--poll-us`) against a server that reads
 * slowly: a write bigger than the socket's buffers is half sent when the
 * server stops reading (SIGSTOP); a poll then must not make libnbd wait for
 * a reply instead of sending the rest. A read notified on a socket with
 * nothing to read paused the send; libnbd then waited for a reply that could
 * not come (direction READ only) and the request stayed in flight for ever —
 * a flaky CI run of blk-nbd.test.ts's --poll-us case, whose GET_VRING_BASE was
 * never answered. The busy poll now asks the native client to notify the read
 * only if the socket is readable (NBD_PUMP.IF_READABLE).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NBD_CMD, NBD_OP, NBD_OP_STRIDE, NBD_PUMP, NBD_STATUS, native } from '../../src/native.js';
import { type NbdServer, startNbdServer } from '../support/nbd-server.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;
/** Far more than a unix socket's buffers: the send cannot finish while the server sleeps. */
const WRITE_BYTES = 8 * MiB;

let dir: string;
let server: NbdServer;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-nbd-poll-'));
  server = await startNbdServer({
    kind: 'nbdkit',
    transport: 'unix',
    size: '64M',
    socket: join(dir, 'nbd.sock'),
  });
});

afterAll(async () => {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('nbd engine busy poll, server reading slowly', () => {
  it('a guessed read while a write is half sent leaves the send going, and the write completes', async () => {
    const client = new native.NbdClient(4, 4);
    client.connect(server.uri, 5000);
    const table = new native.BufferTable();
    table.set([new SharedArrayBuffer(WRITE_BYTES)]);
    try {
      server.signal('SIGSTOP');
      const ops = new Float64Array(NBD_OP_STRIDE);
      ops[NBD_OP.cmd] = NBD_CMD.WRITE;
      ops[NBD_OP.iovCount] = 1;
      ops[NBD_OP.userData] = 9;
      const status = client.submit(table, ops, 1, new Float64Array([0, 0, WRITE_BYTES]));
      expect(status & NBD_STATUS.WRITE).toBe(NBD_STATUS.WRITE);
      // The busy poll's guess: nothing to read. Without IF_READABLE libnbd pauses
      // the send to wait for a reply, and the status drops WRITE for good.
      for (let i = 0; i < 10; i++) {
        const after = client.pump(NBD_STATUS.READ | NBD_PUMP.IF_READABLE);
        expect(after & NBD_STATUS.WRITE).toBe(NBD_STATUS.WRITE);
      }
      server.signal('SIGCONT');
      // Driven as the engine drives it: notified only for the status' directions, when ready.
      const out = new Float64Array(2);
      const watcher = new native.FdWatcher(client.fd, (events) => {
        const s = client.pump(events);
        if ((s & NBD_STATUS.COMPLETIONS) !== 0 && client.getEvents(out, 1) === 1) watcher.close();
        else watcher.start(s & (NBD_STATUS.READ | NBD_STATUS.WRITE));
      });
      watcher.start(NBD_STATUS.READ | NBD_STATUS.WRITE);
      try {
        await waitFor(() => out[0] === 9, 'the 8 MiB write to complete');
      } finally {
        watcher.close();
      }
      expect(out[1]).toBe(WRITE_BYTES);
    } finally {
      server.signal('SIGCONT');
      client.close();
    }
  });
});
