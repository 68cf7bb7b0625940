/**
 * Question: what does the control plane pay to decode and encode the
 * vhost-user messages it handles — the header of every message, the vring
 * set-up messages, and the largest common one (SET_MEM_TABLE, 8 regions)?
 * None of this is on the data path; the numbers say how far from it it is.
 */
import {
  decodeHeader,
  decodeMemoryTable,
  decodeU64,
  decodeVringAddr,
  encodeMemoryTable,
  encodeMessage,
  encodeU64,
  encodeVringAddr,
  type MemRegionWire,
} from '../../src/vhost-user/codec.js';
import { HeaderFlag, Request } from '../../src/vhost-user/protocol.js';
import { isMain, type MicroRow, runMicro } from './common.js';

const REGIONS: MemRegionWire[] = Array.from({ length: 8 }, (_, i) => ({
  guestPhysAddr: i * 0x4000_0000,
  size: 0x4000_0000,
  userAddr: 0x7f00_0000_0000 + i * 0x4000_0000,
  mmapOffset: 0,
}));
const ADDR = {
  index: 0,
  flags: 0,
  descUserAddr: 0x7f00_0000_1000,
  usedUserAddr: 0x7f00_0000_3000,
  availUserAddr: 0x7f00_0000_2000,
  logGuestAddr: 0,
};

/** Keeps results alive so the JIT cannot drop the work. */
let sink: unknown;

/** Runs the question and prints its table. */
export function run(): Promise<MicroRow[]> {
  const header = encodeMessage(Request.GET_FEATURES, HeaderFlag.VERSION);
  const u64 = encodeU64(0x1_4000_0000n);
  const vringAddr = encodeVringAddr(ADDR);
  const memTable = encodeMemoryTable(REGIONS);
  return runMicro('vhost-user codec: one message', [
    { name: 'decodeHeader', opsPerCall: 1, fn: () => (sink = decodeHeader(header)) },
    { name: 'decodeU64', opsPerCall: 1, fn: () => (sink = decodeU64(u64)) },
    {
      name: 'encodeMessage(u64 payload)',
      opsPerCall: 1,
      fn: () => (sink = encodeMessage(1, 0, u64)),
    },
    { name: 'decodeVringAddr', opsPerCall: 1, fn: () => (sink = decodeVringAddr(vringAddr)) },
    { name: 'encodeVringAddr', opsPerCall: 1, fn: () => (sink = encodeVringAddr(ADDR)) },
    { name: 'decodeMemoryTable(8)', opsPerCall: 1, fn: () => (sink = decodeMemoryTable(memTable)) },
    { name: 'encodeMemoryTable(8)', opsPerCall: 1, fn: () => (sink = encodeMemoryTable(REGIONS)) },
  ]);
}

/** The last result, exported so the work cannot be optimised away. */
export function lastResult(): unknown {
  return sink;
}

if (isMain(import.meta.url)) await run();
