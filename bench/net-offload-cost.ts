/**
 * What the switch's software offload work costs (issue 13). One question:
 * how long does the receiving port take, in TypeScript, to segment one
 * 64 KiB TCP frame (src/net/offload.ts TcpSegmenter) and to complete one
 * 1514-byte frame's checksum (completeChecksum) — against the reference of
 * moving the same bytes once (`TypedArray.set` of the frame into a
 * SharedArrayBuffer, as into a packet ring), measured in the same rounds?
 * This is the figure that decides whether a native helper would pay.
 *
 *   node dist/bench/net-offload-cost.js [--rounds 5] [--out bench/results/net-offload-cost.json]
 *
 * Run it under /tmp/with-bench-lock.
 */
import { loadavg } from 'node:os';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { completeChecksum, TcpSegmenter } from '../src/net/offload.js';
import { fmtRatio, markdownTable, writeJson } from './report.js';

const MSS = 1448;
/** Ethernet + IPv4 + TCP headers and the payload of a 64 KiB TCP frame. */
const GSO_FRAME = 14 + 20 + 20 + 65_495;
const AT = 4096;

function tcpFrame(length: number): Uint8Array {
  const f = new Uint8Array(length);
  f.set([2, 0, 0, 0, 0, 11, 2, 0, 0, 0, 0, 10, 8, 0, 0x45]);
  f[16] = (length - 14) >> 8;
  f[17] = (length - 14) & 0xff;
  f[23] = 6;
  f.set([169, 254, 0, 1, 169, 254, 0, 2], 26);
  f[46] = 0x50;
  f[47] = 0x18;
  for (let i = 54; i < length; i++) f[i] = i & 0xff;
  return f;
}

/** µs per call of `fn`, over `n` calls. */
function time(n: number, fn: () => void): number {
  const t = performance.now();
  for (let i = 0; i < n; i++) fn();
  return ((performance.now() - t) * 1000) / n;
}

function spread(v: number[], digits: number): string {
  const s = [...v].sort((a, b) => a - b);
  return `${s[s.length >> 1].toFixed(digits)} (${s[0].toFixed(digits)}..${s[s.length - 1].toFixed(digits)})`;
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    options: {
      rounds: { type: 'string', default: '5' },
      out: { type: 'string', default: 'bench/results/net-offload-cost.json' },
    },
  });
  const ring = new Uint8Array(new SharedArrayBuffer(1 << 20));
  const gso = tcpFrame(GSO_FRAME);
  const small = tcpFrame(1514);
  const hdr = new Uint8Array(12);
  hdr[0] = 1; // NEEDS_CSUM
  hdr[1] = 1; // TCPV4
  hdr[4] = MSS & 0xff;
  hdr[5] = MSS >> 8;
  hdr[6] = 34; // csum_start: the TCP header
  const seg = new TcpSegmenter();
  const copyGso = () => ring.set(gso, AT);
  const segment = () => {
    ring.set(gso, AT);
    const n = seg.begin(ring, 0, AT, GSO_FRAME, hdr, 0);
    for (let k = 0; k < n; k++) seg.writeSegment(ring, AT, k);
  };
  ring.set(small, AT);
  const copySmall = () => ring.set(small, AT);
  const checksum = () => completeChecksum(ring, AT, 1514, 34, 16);
  // Warm-up: every function compiled before the first window.
  for (let i = 0; i < 300; i++) {
    segment();
    checksum();
    copySmall();
  }
  const rows: { segUs: number; segCopyUs: number; csumUs: number; csumCopyUs: number }[] = [];
  for (let r = 0; r < Number(v.rounds); r++) {
    // Interleaved: reference, work, reference, work.
    const segCopyUs = time(300, copyGso);
    const segUs = time(300, segment) - segCopyUs;
    const csumCopyUs = time(30_000, copySmall);
    const csumUs = time(30_000, checksum);
    rows.push({ segUs, segCopyUs, csumUs, csumCopyUs });
  }
  const table = markdownTable(
    ['work', 'µs per frame', 'reference: one copy of its bytes, µs', 'ratio'],
    [
      [
        `segment a ${GSO_FRAME}-byte TCP frame into ${Math.ceil((GSO_FRAME - 54) / MSS)} segments (headers, checksums)`,
        spread(
          rows.map((x) => x.segUs),
          1,
        ),
        spread(
          rows.map((x) => x.segCopyUs),
          1,
        ),
        fmtRatio(rows.map((x) => x.segUs / x.segCopyUs).sort((a, b) => a - b)[rows.length >> 1]),
      ],
      [
        'complete one 1514-byte frame checksum',
        spread(
          rows.map((x) => x.csumUs),
          2,
        ),
        spread(
          rows.map((x) => x.csumCopyUs),
          2,
        ),
        fmtRatio(rows.map((x) => x.csumUs / x.csumCopyUs).sort((a, b) => a - b)[rows.length >> 1]),
      ],
    ],
  );
  const conditions = [
    `${rows.length} interleaved rounds, medians (min..max); loadavg ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  ];
  console.log(table);
  console.log(conditions.map((c) => `- ${c}`).join('\n'));
  await writeJson(v.out as string, { conditions, rows });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
