/**
 * A tiny QMP client for tests: node:net, line-delimited JSON, every message
 * kept in order; replies matched by id, events awaited by name (waitFor,
 * never sleeps).
 */
import { createConnection, type Socket } from 'node:net';
import { waitFor } from './wait.js';

/** A JSON object as QMP carries it. */
export type Json = Record<string, unknown>;

/** A line-delimited JSON client: every message received, in order. */
export class QmpClient {
  readonly messages: Json[] = [];
  /** Lines that did not parse (there should be none). */
  readonly garbage: string[] = [];
  closed = false;
  private pending = '';
  private seen = 0;

  private constructor(readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      this.pending += text;
      for (let nl = this.pending.indexOf('\n'); nl >= 0; nl = this.pending.indexOf('\n')) {
        const line = this.pending.slice(0, nl).trim();
        this.pending = this.pending.slice(nl + 1);
        try {
          this.messages.push(JSON.parse(line) as Json);
        } catch {
          this.garbage.push(line);
        }
      }
    });
    socket.on('close', () => {
      this.closed = true;
    });
    socket.on('error', () => {});
  }

  static async connect(path: string, negotiate = true): Promise<QmpClient> {
    const socket = createConnection(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const client = new QmpClient(socket);
    await client.next((m) => 'QMP' in m, 'the greeting');
    if (negotiate) {
      const r = await client.execute('qmp_capabilities');
      if (!('return' in r)) throw new Error(`qmp_capabilities refused: ${JSON.stringify(r)}`);
    }
    return client;
  }

  /**
   * Waits for the next message (after those already taken) that `match` accepts, at most
   * `timeoutMs` (waitFor's default unless given).
   */
  async next(match: (m: Json) => boolean, what: string, timeoutMs?: number): Promise<Json> {
    return waitFor(
      () => {
        for (let i = this.seen; i < this.messages.length; i++) {
          if (match(this.messages[i])) {
            this.seen = i + 1;
            return this.messages[i];
          }
        }
        return undefined;
      },
      () => `${what}; got ${JSON.stringify(this.messages.slice(this.seen))}`,
      timeoutMs,
    );
  }

  private ids = 0;

  /** Sends a command with a fresh id and resolves with its reply (waited for at most `timeoutMs`). */
  execute(command: string, args?: Json, timeoutMs?: number): Promise<Json> {
    const id = `c${++this.ids}`;
    const msg: Json = { execute: command, id };
    if (args !== undefined) msg.arguments = args;
    this.socket.write(`${JSON.stringify(msg)}\n`);
    return this.next((m) => m.id === id, `the reply to ${command}`, timeoutMs);
  }

  /** Sends raw bytes and resolves with the next reply that is not an event. */
  raw(bytes: string | Uint8Array): Promise<Json> {
    this.socket.write(bytes);
    return this.next((m) => 'return' in m || 'error' in m, `the reply to ${String(bytes)}`);
  }

  event(name: string): Promise<Json> {
    return this.next((m) => m.event === name, `event ${name}`);
  }

  close(): void {
    this.socket.destroy();
  }
}
