/**
 * Every request that expects an answer gets one (issue 11): the requests the
 * spec gives a reply of their own (§"Communication" and each request's
 * "reply payload") are answered even when this back end does not implement
 * or advertise them — with an empty payload where the reply carries the
 * answer, with a non-zero u64 where it is a status — and NEED_REPLY gets an
 * ack even when REPLY_ACK was never negotiated. The daemon keeps serving the
 * same connection and the next one.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  decodeU64,
  encodeInflight,
  encodeU64,
  encodeVringState,
} from '../../src/vhost-user/codec.js';
import { ProtocolFeature, Request } from '../../src/vhost-user/protocol.js';
import {
  BlkDriver,
  BlkStatus,
  closeAll,
  FrontendConnection,
  fdTarget,
  heldTargets,
  WrongFds,
} from '../frontend/index.js';
import { type Daemon, startDaemon } from '../support/daemon.js';
import { waitFor } from '../support/wait.js';

let dir: string;
let socket: string;
let daemon: Daemon;
const wrong = new WrongFds();

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-replies-'));
  const image = join(dir, 'disk.img');
  socket = join(dir, 'blk.sock');
  writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
  daemon = await startDaemon(['blk', '--socket-path', socket, '--image', image, '--queues', '1']);
});

afterAll(async () => {
  await daemon?.stop();
  wrong.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A bare connection; with `replyAck` it negotiates REPLY_ACK first, as QEMU does. */
async function connect(replyAck: boolean): Promise<FrontendConnection> {
  const conn = await FrontendConnection.connect(socket, { replyTimeoutMs: 5000 });
  closeAll((await conn.call(Request.GET_FEATURES)).fds);
  closeAll((await conn.call(Request.GET_PROTOCOL_FEATURES)).fds);
  const features = replyAck ? 1n << BigInt(ProtocolFeature.REPLY_ACK) : 0n;
  conn.send(Request.SET_PROTOCOL_FEATURES, encodeU64(features));
  conn.replyAck = replyAck;
  return conn;
}

/** What a refusal must look like. */
type Refusal = { empty: true } | { status: bigint };

interface Asked {
  request: keyof typeof Request;
  payload?: Uint8Array;
  /** Hand a pipe over with it (SET_DEVICE_STATE_FD's transfer channel). */
  pipe?: boolean;
  refusal: Refusal;
}

const ASKED: Asked[] = [
  {
    request: 'GET_INFLIGHT_FD',
    payload: encodeInflight({ mmapSize: 0, mmapOffset: 0, numQueues: 1, queueSize: 128 }),
    refusal: { empty: true },
  },
  { request: 'GET_STATUS', refusal: { empty: true } },
  { request: 'POSTCOPY_ADVISE', refusal: { empty: true } },
  { request: 'CREATE_CRYPTO_SESSION', payload: new Uint8Array(64), refusal: { empty: true } },
  // A ring index this single-queue device does not have.
  {
    request: 'GET_VRING_BASE',
    payload: encodeVringState({ index: 5, num: 0 }),
    refusal: { empty: true },
  },
  { request: 'POSTCOPY_END', refusal: { status: 1n } },
  { request: 'IOTLB_MSG', payload: new Uint8Array(32), refusal: { status: 1n } },
  { request: 'GET_SHARED_OBJECT', payload: new Uint8Array(16), refusal: { status: 1n } },
  // Error in bits 0-7, and bit 8: no fd comes back.
  {
    request: 'SET_DEVICE_STATE_FD',
    payload: new Uint8Array(8),
    pipe: true,
    refusal: { status: 0x101n },
  },
  { request: 'CHECK_DEVICE_STATE', refusal: { status: 1n } },
];

describe('requests that expect a reply', () => {
  it.each(ASKED)('refuses an unserved $request with a reply, and keeps serving', async (a) => {
    const conn = await connect(true);
    try {
      const fds = a.pipe ? [wrong.open('pipe-write')] : [];
      const targets = fds.map((fd) => fdTarget(fd));
      const reply = await conn.call(Request[a.request], a.payload, fds);
      expect(reply.fds).toEqual([]);
      if ('empty' in a.refusal) expect(reply.payload.byteLength).toBe(0);
      else expect(decodeU64(reply.payload)).toBe(a.refusal.status);
      // The daemon kept no fd of the refused message.
      const held = heldTargets(daemon.proc.pid!);
      for (const t of targets) expect(held).not.toContain(t);
      // Same connection, next request: still in step.
      expect(decodeU64((await conn.call(Request.GET_QUEUE_NUM)).payload)).toBe(1n);
    } finally {
      conn.close();
    }
    await waitFor(
      () => daemon.log().includes(`${a.request}: `),
      `the refusal of ${a.request} in the log`,
    );
  });

  it('acks NEED_REPLY even without REPLY_ACK negotiated, refused or not', async () => {
    const conn = await connect(false);
    try {
      // A request code no spec defines, and one this back end does not serve.
      expect(await conn.ack(99)).toBe(1n);
      expect(await conn.ack(Request.SET_STATUS, encodeU64(0n))).toBe(1n);
      // SET_LOG_BASE has a reply of its own only under LOG_SHMFD: here an ack.
      expect(await conn.ack(Request.SET_LOG_BASE, new Uint8Array(16))).toBe(1n);
      // And one that succeeds.
      expect(await conn.ack(Request.SET_OWNER)).toBe(0n);
      expect(decodeU64((await conn.call(Request.GET_QUEUE_NUM)).payload)).toBe(1n);
    } finally {
      conn.close();
    }
  });

  it('sends nothing for requests that expect nothing, and stays in step', async () => {
    const conn = await connect(true);
    try {
      // Unknown, unserved and reply-less without LOG_SHMFD: no NEED_REPLY, so no answer...
      conn.send(200);
      conn.send(Request.SET_LOG_BASE, new Uint8Array(16));
      conn.send(Request.SET_STATUS, encodeU64(0n));
      // ...which the sentinel proves: its reply is the next message on the socket.
      expect(decodeU64((await conn.call(Request.GET_QUEUE_NUM)).payload)).toBe(1n);
      expect(conn.isOpen).toBe(true);
    } finally {
      conn.close();
    }
  });

  it('still moves data for a well-behaved front end afterwards', async () => {
    const d = await BlkDriver.create({ socketPath: socket });
    try {
      const data = new Uint8Array(4096).fill(0x3c);
      expect((await d.write(8, data)).status).toBe(BlkStatus.OK);
      expect(Buffer.from((await d.read(8, 4096)).data!).equals(Buffer.from(data))).toBe(true);
    } finally {
      await d.close();
    }
    expect(daemon.log()).not.toMatch(/\n\s+at /);
    expect(daemon.proc.exitCode).toBeNull();
  });
});
