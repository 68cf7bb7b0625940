/**
 * Verified writes for live-backup tests (issue 12): every 4 KiB block
 * written carries its block number and a sequence number, and the model
 * knows, per block, the last write that completed. A backup's start instant
 * lies between sending `blockdev-backup` and receiving its reply; the
 * model's window over that span says, per block, which contents a correct
 * backup may hold: the one committed before the command was sent, or that
 * of any write in flight at that moment or issued before the reply.
 * Writes issued after the reply must never appear. No two writes to one
 * block are in flight at once, so "the last completed write" is exact.
 */
import { type BlkDriver, BlkStatus } from '../frontend/index.js';

/** Bytes per verified block. */
export const BLOCK = 4096;

/** The contents of `block` as written by write number `seq` (seq 0: never written, zeroes). */
export function blockData(block: number, seq: number): Uint8Array {
  const out = new Uint8Array(BLOCK);
  if (seq === 0) return out;
  const v = new DataView(out.buffer);
  v.setUint32(0, block, true);
  v.setUint32(4, seq, true);
  for (let i = 8; i < BLOCK; i++) out[i] = (block * 31 + seq * 17 + i) & 0xff;
  return out;
}

/** The seq a block's bytes carry: 0 for zeroes, -1 for bytes no single write produced (torn, foreign). */
export function blockSeq(bytes: Uint8Array, block: number): number {
  const v = new DataView(bytes.buffer, bytes.byteOffset, BLOCK);
  const seq = v.getUint32(4, true);
  const expect = blockData(block, seq);
  for (let i = 0; i < BLOCK; i++) if (bytes[i] !== expect[i]) return -1;
  return seq;
}

/** What a backup taken in one window may hold, per block. */
export interface BackupWindow {
  /** Seq committed per block when the window opened. */
  base: Int32Array;
  /** Seqs in flight at the opening or issued before the close, per block. */
  ambiguous: Map<number, number[]>;
  open: boolean;
}

/** A seeded xorshift: the same blocks every run. */
function rng(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/** The model of a disk of `blocks` blocks under verified writes. */
export class WriteModel {
  readonly committed: Int32Array;
  private readonly inFlight: Int32Array;
  private nextSeq = 1;
  private readonly windows: BackupWindow[] = [];
  /** Writes that completed with a status other than OK (must stay empty). */
  readonly errors: string[] = [];
  /** Writes completed. */
  completed = 0;
  private readonly random: () => number;
  /** Writes go to blocks [0, span): all of them unless set lower. */
  span: number;

  constructor(
    readonly blocks: number,
    seed = 12,
  ) {
    this.committed = new Int32Array(blocks);
    this.inFlight = new Int32Array(blocks);
    this.random = rng(seed);
    this.span = blocks;
  }

  /**
   * Takes the disk's present contents (`image`, read while nothing writes)
   * as the committed state: a disk earlier writers left behind.
   */
  adopt(image: Uint8Array): void {
    for (let b = 0; b < this.blocks; b++) {
      const seq = blockSeq(image.subarray(b * BLOCK, (b + 1) * BLOCK), b);
      if (seq < 0) throw new Error(`block ${b} holds bytes no verified write produced`);
      this.committed[b] = seq;
    }
  }

  /** Opens a window (just before a backup command is sent). */
  openWindow(): BackupWindow {
    const w: BackupWindow = { base: this.committed.slice(), ambiguous: new Map(), open: true };
    for (let b = 0; b < this.blocks; b++) if (this.inFlight[b] !== 0) addTo(w, b, this.inFlight[b]);
    this.windows.push(w);
    return w;
  }

  /** Closes it (the reply arrived). */
  closeWindow(w: BackupWindow): void {
    w.open = false;
  }

  /** Picks a block no write is in flight to and reserves it with a new seq. */
  private issue(): { block: number; seq: number } {
    for (;;) {
      const block = Math.floor(this.random() * this.span);
      if (this.inFlight[block] !== 0) continue;
      const seq = this.nextSeq++;
      this.inFlight[block] = seq;
      for (const w of this.windows) if (w.open) addTo(w, block, seq);
      return { block, seq };
    }
  }

  /** `depth` writers in parallel until `stop()`; resolves when all stopped. */
  async run(driver: BlkDriver, depth: number, stop: () => boolean): Promise<void> {
    const writer = async () => {
      while (!stop()) {
        const { block, seq } = this.issue();
        const r = await driver.write((block * BLOCK) / 512, blockData(block, seq));
        this.inFlight[block] = 0;
        if (r.status !== BlkStatus.OK)
          this.errors.push(`write of block ${block}: status ${r.status}`);
        else this.committed[block] = seq;
        this.completed++;
      }
    };
    await Promise.all(Array.from({ length: depth }, writer));
  }

  /** Reads that returned exactly what the model had committed (see runReads). */
  verifiedReads = 0;

  /**
   * `depth` readers in parallel until `stop()`: each reads 1..`maxBlocks` adjacent
   * blocks no write is in flight to (reserved against new writes while it reads,
   * so the contents are exact) and checks every block against the model.
   */
  async runReads(
    driver: BlkDriver,
    depth: number,
    maxBlocks: number,
    stop: () => boolean,
  ): Promise<void> {
    const reader = async () => {
      while (!stop()) {
        const n = 1 + Math.floor(this.random() * maxBlocks);
        const first = Math.floor(this.random() * Math.max(1, this.span - n));
        let free = true;
        for (let b = first; b < first + n; b++) if (this.inFlight[b] !== 0) free = false;
        if (!free) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          continue;
        }
        for (let b = first; b < first + n; b++) this.inFlight[b] = -1;
        const r = await driver.read((first * BLOCK) / 512, n * BLOCK);
        for (let b = first; b < first + n; b++) this.inFlight[b] = 0;
        if (r.status !== BlkStatus.OK) {
          this.errors.push(`read of blocks ${first}+${n}: status ${r.status}`);
          continue;
        }
        const data = r.data as Uint8Array;
        for (let i = 0; i < n; i++) {
          const b = first + i;
          const seq = blockSeq(data.subarray(i * BLOCK, (i + 1) * BLOCK), b);
          if (seq !== this.committed[b])
            this.errors.push(`read of block ${b}: seq ${seq}, model ${this.committed[b]}`);
        }
        this.verifiedReads++;
      }
    };
    await Promise.all(Array.from({ length: depth }, reader));
  }

  /** 'ok', or the first blocks of `image` (a backup) that window `w` does not allow. */
  check(image: Uint8Array, w: BackupWindow): string {
    const bad: string[] = [];
    for (let b = 0; b < this.blocks && bad.length < 5; b++) {
      const seq = blockSeq(image.subarray(b * BLOCK, (b + 1) * BLOCK), b);
      if (seq === w.base[b] || (w.ambiguous.get(b) ?? []).includes(seq)) continue;
      bad.push(`block ${b}: seq ${seq}, allowed ${w.base[b]} or [${w.ambiguous.get(b) ?? []}]`);
    }
    return bad.length === 0 ? 'ok' : bad.join('; ');
  }

  /** 'ok', or the first blocks of `image` (the live disk, all writes done) that differ from the model. */
  checkLive(image: Uint8Array): string {
    const bad: string[] = [];
    for (let b = 0; b < this.blocks && bad.length < 5; b++) {
      const seq = blockSeq(image.subarray(b * BLOCK, (b + 1) * BLOCK), b);
      if (seq !== this.committed[b]) bad.push(`block ${b}: seq ${seq}, model ${this.committed[b]}`);
    }
    return bad.length === 0 ? 'ok' : bad.join('; ');
  }
}

function addTo(w: BackupWindow, block: number, seq: number): void {
  const list = w.ambiguous.get(block);
  if (list === undefined) w.ambiguous.set(block, [seq]);
  else list.push(seq);
}
