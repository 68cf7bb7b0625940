/**
 * One question (issue 12): what does a running live backup cost the guest's write latency —
 * vhost-rt's journal (a write to an uncopied chunk waits for one read of the old chunk; the
 * target is written by an idle-priority copier) against qemu-storage-daemon's
 * `blockdev-backup` (copy-before-write: the old cluster is read and written to the target
 * inside the guest's write)? Both back ends serve the same image side by side (qsd with
 * locking=off: only one is driven at a time), the same load generator drives 4k randwrite at
 * QD1 and QD32, each without a backup and during a full backup to a raw file on the same
 * disk, interleaved per round. Each round gives, per back end, during/idle ratios of p50, p99
 * and p99.9, and the ratio of those ratios (vhost-rt's over qsd's); the report gives medians
 * with min..max over the rounds. Writes every sample to bench/results/backup.json.
 *
 *   node dist/bench/backup.js [--rounds N] [--runtime SEC] [--ramp SEC] [--speed MiB/s]
 *     [--journal MiB]   (vhost-rt's journal-size; its default is 16 MiB)
 *     [--xfs]           (image and targets on an XFS file system made for the run, on a loop
 *                        device with direct I/O over a file of the same disk: vhost-rt's
 *                        backup then reads a reflink clone; writes bench/results/backup-xfs.json)
 *     [--method auto|clone|journal]   (vhost-rt's blockdev-backup method; default auto)
 *     [--image-mib N]   (the image's size; default 256. A bigger one keeps most writes first
 *                        touches of a block for longer windows)
 *     [--depths 1,32]   (queue depths measured)
 *     [--yield MS]      (vhost-rt's yield-ms: the disk pass waits for the guest to be quiet)
 *     [--yield-ab MS]   (a third back end in the same rounds: vhost-rt's daemon, its backups
 *                        with yield-ms MS; the plain vhost-rt rows keep --yield, default none)
 *     [--hot-mib N]     (the writes go to the image's last N MiB only: a guest whose writes
 *                        cluster, where the default spreads them over the whole image)
 *     [--read-around-ab] (one more back end in the same rounds: vhost-rt's daemon, its backups
 *                        with read-around)
 *     [--baseline DIR]  (a built checkout of another vhost-rt version: its daemon as one more
 *                        back end in the same rounds, with the same backup arguments as
 *                        vhost-rt's; both daemons then open the image with share-rw)
 *     [--baseline-read-around] (the baseline's backups with read-around, to compare it with
 *                        the --read-around-ab row)
 *     [--max-chunk-ab BYTES] (one more back end in the same rounds: vhost-rt's daemon, its
 *                        backups with max-chunk BYTES, and read-around with --read-around-ab)
 *     [--redirect-ab]   (one more back end in the same rounds: vhost-rt's daemon, its backups
 *                        with method redirect. Its backup window is followed by a third, the
 *                        merge: the same load while the overlay merges back after the cancel;
 *                        the next window starts only once it is merged (BACKUP_MERGED). The
 *                        merge's latency and time are reported)
 *     [--redirect-keep] (with --redirect-ab: its backups with keep-overlay, so that from the
 *                        second round on the overlay's blocks are allocated already; the
 *                        overlay is removed at the end)
 *     [--redirect-max-chunk-ab BYTES] (with --redirect-ab: one more back end in the same
 *                        rounds, vhost-rt's daemon with the redirect row's backups and
 *                        max-chunk BYTES; both rows share the kept overlay)
 *     [--redirect-merge-speed-ab MiB/s] (with --redirect-ab: one more back end in the same
 *                        rounds, vhost-rt's daemon with the redirect row's backups and
 *                        merge-speed MiB/s: the merge window at another pace than the copy)
 *     [--redirect-prefill] (with --redirect-ab: its backups with prefill-overlay: the first
 *                        one writes the kept overlay's whole data area before its start
 *                        instant, so no redirected write allocates; removed at the end)
 *                        With --redirect-keep or --redirect-prefill the kept overlay is probed
 *                        at the end: fio alone, 4k randwrite QD32 over the image and over the
 *                        overlay's data area, interleaved (--probe-rounds, default 3, of
 *                        --probe-seconds, default 5): how fast this disk takes writes where
 *                        the overlay's blocks are against where the image's are
 *     [--pause-slices N] (the backup window becomes 2N slices of --runtime/N seconds each,
 *                        the backup's disk pass running and paused in turn (ABBA: run, pause,
 *                        pause, run, ...; vhost-rt's backup-pause / backup-resume, qsd's
 *                        block-job-pause / -resume), each change followed by --slice-settle
 *                        seconds unmeasured (default 0.2). Phase 'backup' is then the running
 *                        slices pooled, phase 'paused' the paused ones: the copy's own cost,
 *                        measured within seconds of its reference, where this disk's tail
 *                        changes mode between the separate idle and backup windows. A redirect
 *                        backup's merge window is sliced the same way (backup-pause pauses the
 *                        merge once the backup ended): phases 'merge' and 'merge-paused')
 *     [--only LABELS]   (only these rows, a comma-separated list of their labels, e.g.
 *                        'vhost-rt redirect,vhost-rt redirect merge-speed': a shorter run
 *                        that compares two of them; the rest's daemons still start, idle)
 *     [--dir PATH]      (image and targets in PATH, e.g. a file system on a zram device: a
 *                        device whose own tail is steady, unlike this machine's disk; see
 *                        bench/zram-fs.sh)
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { mkdir, rm, truncate } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { decodeRedirectHeader, redirectPath } from '../src/io/redirect-file.js';
import {
  type Backend,
  BackendError,
  ensureImage,
  REPO_ROOT,
  startVhostRt,
} from './loadgen/backends.js';
import { type LoadOptions, type LoadResult, runLoad, runLoadWindows } from './loadgen/generator.js';
import { LatencyHistogram } from './loadgen/histogram.js';
import { fmtRatio, fmtUs, markdownTable, writeText } from './report.js';

const MiB = 1024 * 1024;
/** The image's size when --image-mib is not given. */
const DEFAULT_IMAGE_MIB = 256;
/**
 * The back ends; 'vhost-rt yield' is vhost-rt's daemon with `yield-ms` (--yield-ab);
 * 'vhost-rt read-around' its backups with `read-around` (--read-around-ab); 'vhost-rt max-chunk' with
 * `max-chunk` (--max-chunk-ab); 'vhost-rt redirect' with method redirect (--redirect-ab), and
 * 'vhost-rt redirect max-chunk' with it and `max-chunk` (--redirect-max-chunk-ab), 'vhost-rt redirect
 * merge-speed' with `merge-speed` (--redirect-merge-speed-ab); 'vhost-rt baseline'
 * another build's daemon (--baseline) on the same image.
 */
type Label =
  | 'vhost-rt'
  | 'vhost-rt yield'
  | 'vhost-rt read-around'
  | 'vhost-rt max-chunk'
  | 'vhost-rt redirect'
  | 'vhost-rt redirect max-chunk'
  | 'vhost-rt redirect merge-speed'
  | 'vhost-rt baseline'
  | 'qsd';
/**
 * 'merge': a redirect backup's overlay merging back after the backup (--redirect-ab);
 * 'paused': with --pause-slices, the backup window's slices with its disk pass paused;
 * 'merge-paused': the merge window's slices with the merge paused.
 */
type Phase = 'idle' | 'backup' | 'merge' | 'paused' | 'merge-paused';

/** vhost-rt's backup counters over one cell (query-backups just before the cancel). */
interface BackupCounters {
  /** 4 KiB blocks saved into the journal before a guest write overwrote them. */
  journaled: number;
  /** Journal reads: one per run of blocks a held write needed saved (at QD1: the writes that waited for one). */
  journalReads: number;
  /** Guest requests that waited for a free journal entry (journal full). */
  fullWaits: number;
  /** Most journal entries in use at once. */
  highWater: number;
  /** Journal entries in all. */
  entries: number;
  /** Times a waiting request raised the copier out of SCHED_IDLE. */
  boosts: number;
  /** Bytes the copier had in the target. */
  copiedBytes: number;
  /** Disk-pass reads that waited for the guest to go quiet (`yield-ms`). */
  yields: number;
  /** Disk-pass reads made at the longest wait with the guest still busy. */
  forcedReads: number;
}

/** vhost-rt's own `blockdev-backup` arguments from the command line (undefined: its default). */
interface VhostRtBackupArgs {
  journalBytes?: number;
  method?: string;
  yieldMs?: number;
  readAround?: boolean;
  maxChunk?: number;
  keepOverlay?: boolean;
  prefillOverlay?: boolean;
  /** merge-speed in bytes/s (undefined: the daemon's default, `speed`). */
  mergeSpeed?: number;
  /** How long a redirect backup's merge may take (ms): up to the whole disk at its pace. */
  mergeWaitMs?: number;
  /**
   * How long a backup may take to reach its start instant (ms): a first prefill-overlay backup
   * reaches it only after its pass over the whole disk, paced at `speed` (BACKUP_STARTED; the
   * command answers at once since the pass became a phase of the backup, and before that only
   * after the pass).
   */
  answerMs?: number;
}

interface Sample {
  round: number;
  backend: Label;
  depth: number;
  phase: Phase;
  result: LoadResult;
  counters?: BackupCounters;
  /**
   * Phase 'merge': bytes merged, of them copied at the quiet pace (the guest quiet: after the
   * window, merge-quiet-ms), ms from the cancel to BACKUP_MERGED.
   */
  merge?: { bytes: number; quietBytes: number; ms: number };
}

/** What stopping a backup gives: vhost-rt's counters, and for a redirect backup its merge's end. */
interface Stopped {
  counters?: BackupCounters;
  merged?: Promise<{ bytes: number; quietBytes: number; ms: number }>;
}

/** A line-JSON QMP client (greeting, qmp_capabilities, execute, events). */
class Qmp {
  private buf = '';
  readonly messages: Record<string, unknown>[] = [];
  private waiters: (() => void)[] = [];
  private id = 0;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (t: string) => {
      this.buf += t;
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (line !== '') this.messages.push(JSON.parse(line) as Record<string, unknown>);
      }
      for (const w of this.waiters.splice(0)) w();
    });
  }

  static async open(path: string): Promise<Qmp> {
    const deadline = Date.now() + 10_000;
    while (!existsSync(path)) {
      if (Date.now() > deadline) throw new BackendError('BENCH_QMP', `no QMP socket ${path}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const socket = connect(path);
    await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const q = new Qmp(socket);
    await q.next((m) => 'QMP' in m);
    await q.execute('qmp_capabilities');
    return q;
  }

  /** The first message from `from` on that `match` accepts. */
  async next(match: (m: Record<string, unknown>) => boolean, from = 0, timeoutMs = 120_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.messages.slice(from).find(match);
      if (m !== undefined) return m;
      if (Date.now() > deadline) throw new BackendError('BENCH_QMP', 'QMP: timed out');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 500);
      });
    }
  }

  async execute(command: string, args?: Record<string, unknown>, timeoutMs?: number) {
    const id = `b${++this.id}`;
    this.socket.write(
      `${JSON.stringify({ execute: command, id, ...(args ? { arguments: args } : {}) })}\n`,
    );
    const r = await this.next((m) => m.id === id, 0, timeoutMs);
    if ('error' in r) throw new BackendError('BENCH_QMP', `${command}: ${JSON.stringify(r.error)}`);
    return r.return;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** qsd: the image (locking=off), a target node, the vhost-user-blk export and a QMP monitor. */
async function startQsdWithMonitor(image: string, target: string, socket: string, qmp: string) {
  await rm(socket, { force: true });
  await rm(qmp, { force: true });
  const args = [
    '--blockdev',
    `driver=file,node-name=f0,filename=${image},cache.direct=on,aio=native,locking=off`,
    '--blockdev',
    `driver=file,node-name=t0,filename=${target},cache.direct=on,aio=native`,
    '--export',
    `type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=${socket},writable=on`,
    '--chardev',
    `socket,id=m0,path=${qmp},server=on,wait=off`,
    '--monitor',
    'chardev=m0',
  ];
  const child: ChildProcess = spawn('qemu-storage-daemon', args, {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const deadline = Date.now() + 10_000;
  while (!existsSync(socket)) {
    if (child.exitCode !== null || Date.now() > deadline)
      throw new BackendError('BENCH_QSD', 'qemu-storage-daemon did not export its socket');
    await new Promise((r) => setTimeout(r, 50));
  }
  const stop = async () => {
    if (child.exitCode === null) child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
    return '';
  };
  return {
    backend: { label: 'qsd', pid: child.pid ?? -1, sockets: [socket], stop } as Backend,
    qmp: await Qmp.open(qmp),
  };
}

/**
 * Starts a full backup on `label`, returns how to stop it (cancel, wait for its end); for
 * vhost-rt the stop resolves with the backup's counters, read just before the cancel.
 */
async function startBackup(
  label: Label,
  q: Qmp,
  target: string,
  speed: number,
  extra: VhostRtBackupArgs,
): Promise<() => Promise<Stopped>> {
  const {
    journalBytes,
    method,
    yieldMs,
    readAround,
    maxChunk,
    keepOverlay,
    prefillOverlay,
    mergeSpeed,
  } = extra;
  const from = q.messages.length;
  if (label !== 'qsd') {
    const started = (await q.execute(
      'blockdev-backup',
      {
        device: 0,
        target,
        sync: 'full',
        speed,
        ...(journalBytes === undefined ? {} : { 'journal-size': journalBytes }),
        ...(method === undefined ? {} : { method }),
        ...(yieldMs === undefined ? {} : { 'yield-ms': yieldMs }),
        ...(readAround ? { 'read-around': true } : {}),
        ...(maxChunk === undefined ? {} : { 'max-chunk': maxChunk }),
        ...(keepOverlay ? { 'keep-overlay': true } : {}),
        ...(prefillOverlay ? { 'prefill-overlay': true } : {}),
        ...(mergeSpeed === undefined ? {} : { 'merge-speed': mergeSpeed }),
      },
      extra.answerMs,
    )) as Record<string, unknown>;
    // A prefill pass answers at once; the window starts at the instant, after the pass.
    if (started.prefilling === true)
      Object.assign(
        started,
        (await q.next((m) => m.event === 'BACKUP_STARTED', from, extra.answerMs)).data,
      );
    process.stderr.write(
      `vhost-rt backup: method ${String(started.method)}${started['method-reason'] === undefined ? '' : ` (${String(started['method-reason'])})`}, writes held ${String(started['start-held-us'])} µs at the start\n`,
    );
    return async () => {
      const [st] = (await q.execute('query-backups', { device: 0 })) as Record<string, number>[];
      await q.execute('backup-cancel', { device: 0 });
      await q.next((m) => /^BACKUP_(CANCELLED|COMPLETED|FAILED)$/.test(String(m.event)), from);
      // A redirect backup's overlay merges back after the end (the 'merge' window).
      const t0 = performance.now();
      const merged =
        method === 'redirect'
          ? q
              .next((m) => m.event === 'BACKUP_MERGED', from, extra.mergeWaitMs)
              .then((m) => ({
                bytes: (m.data as Record<string, number>)['merged-bytes'],
                quietBytes: (m.data as Record<string, number>)['merge-quiet-bytes'],
                ms: Math.round(performance.now() - t0),
              }))
          : undefined;
      const counters: BackupCounters = {
        journaled: st.journaled,
        journalReads: st['journal-reads'],
        fullWaits: st['journal-full-waits'],
        highWater: st['journal-high-water'],
        entries: st['journal-entries'],
        boosts: st['copier-boosts'],
        copiedBytes: st['copied-bytes'],
        yields: st['copier-yields'],
        forcedReads: st['copier-forced-reads'],
      };
      return { counters, merged };
    };
  }
  await q.execute('blockdev-backup', {
    'job-id': 'b0',
    device: 'f0',
    target: 't0',
    sync: 'full',
    speed,
  });
  return async () => {
    const completedMs = qsdJobCompletedMs(q, from);
    if (completedMs !== undefined)
      process.stderr.write(
        `qsd: the backup job completed by itself ${completedMs} ms after its start\n`,
      );
    await q.execute('block-job-cancel', { device: 'b0', force: true }).catch(() => undefined);
    await q.next((m) => /^BLOCK_JOB_(CANCELLED|COMPLETED)$/.test(String(m.event)), from);
    // The job is gone only after its JOB_STATUS_CHANGE to null; dismiss is automatic (auto-dismiss).
    await q.next(
      (m) => m.event === 'JOB_STATUS_CHANGE' && (m.data as { status?: string }).status === 'null',
      from,
    );
    return {};
  };
}

/**
 * Pauses (or resumes) the running backup's disk pass, or a redirect backup's merge once the
 * backup ended: vhost-rt's backup-pause, qsd's job pause. False when the job has ended by
 * itself since message `from` (jobEnded: qsd's job completed, under random writes at QD32
 * its copy-before-write copies every cluster within seconds and its own pass finds nothing
 * left; vhost-rt's merge is done); any other refusal throws.
 */
async function setBackupPaused(
  label: Label,
  q: Qmp,
  paused: boolean,
  from: number,
): Promise<boolean> {
  try {
    if (label === 'qsd')
      await q.execute(paused ? 'block-job-pause' : 'block-job-resume', { device: 'b0' });
    else await q.execute(paused ? 'backup-pause' : 'backup-resume', { device: 0 });
    return true;
  } catch (err) {
    if (jobEnded(label, q, from)) return false;
    throw err;
  }
}

/**
 * Whether the job of a sliced window ended by itself since message `from`: qsd's backup
 * job completed, or vhost-rt's backup completed or its redirect overlay merged.
 */
function jobEnded(label: Label, q: Qmp, from: number): boolean {
  if (label === 'qsd') return qsdJobCompletedMs(q, from) !== undefined;
  return q.messages
    .slice(from)
    .some((m) => m.event === 'BACKUP_COMPLETED' || m.event === 'BACKUP_MERGED');
}

/**
 * When qsd's backup job completed by itself (BLOCK_JOB_COMPLETED without a cancel), in ms
 * after the QMP message `from` (its `blockdev-backup`), by QMP's event timestamps; undefined
 * if it has not.
 */
function qsdJobCompletedMs(q: Qmp, from: number): number | undefined {
  const ms = (m: Record<string, unknown>) => {
    const t = m.timestamp as { seconds: number; microseconds: number } | undefined;
    return t === undefined ? undefined : t.seconds * 1000 + t.microseconds / 1000;
  };
  const events = q.messages.slice(from);
  const done = events.find((m) => m.event === 'BLOCK_JOB_COMPLETED');
  const started = events.find((m) => m.event === 'JOB_STATUS_CHANGE');
  const end = done && ms(done);
  const start = started && ms(started);
  return end === undefined || start === undefined ? undefined : Math.round(end - start);
}

/**
 * The backup window as 2n slices of `sliceSec`, its disk pass running and paused in turn
 * (ABBA, so that a drift over the window weighs on both alike), one connection and one
 * steady load throughout; each change of state is followed by `settleSec` unmeasured (the
 * read in flight at a pause completes; qsd's job stops at its next pause point). Ends
 * running, so that the backup is stopped as in an unsliced window. Returns the running
 * slices and the paused ones, each pooled.
 */
async function runPauseSlices(
  o: LoadOptions,
  label: Label,
  q: Qmp,
  from: number,
  n: number,
  sliceSec: number,
  settleSec: number,
): Promise<{ running: LoadResult; paused: LoadResult | undefined; endedAtSlice?: number }> {
  const running: LoadResult[] = [];
  const paused: LoadResult[] = [];
  let was = false;
  // The slice in or before which the backup was found to have ended (qsd): it and the later ones
  // measure no backup, and are left out of both pools.
  let endedAtSlice: number | undefined;
  const windows = Array.from({ length: 2 * n }, (_, k) => {
    const pause = ((k + 1) >> 1) % 2 === 1;
    const change = pause !== was;
    was = pause;
    return {
      before: change
        ? async () => {
            if (endedAtSlice === undefined && !(await setBackupPaused(label, q, pause, from)))
              endedAtSlice = k;
          }
        : undefined,
      rampSec: k === 0 ? (o.rampSec ?? 0) : change ? settleSec : 0,
      runtimeSec: sliceSec,
      onResult: (r: LoadResult) => {
        // A job can also end inside a slice (a qsd job at a resume, its pass finding the
        // clusters all copied by copy-before-write; a merge copying its last run): its event
        // has arrived by the slice's end, and that slice measured partly no job, so it is left
        // out too.
        if (endedAtSlice === undefined && jobEnded(label, q, from)) endedAtSlice = k;
        if (endedAtSlice === undefined) (pause ? paused : running).push(r);
      },
    };
  });
  await runLoadWindows(o, windows);
  if (was && endedAtSlice === undefined) await setBackupPaused(label, q, false, from);
  return {
    running: poolResults(running),
    paused: paused.length > 0 ? poolResults(paused) : undefined,
    endedAtSlice,
  };
}

/** Windows of one load as one result: their histograms merged, counts and times summed. */
function poolResults(rs: LoadResult[]): LoadResult {
  const h = new LatencyHistogram();
  for (const r of rs) if (r.histogram) h.merge(LatencyHistogram.fromSparse(r.histogram));
  const sum = (f: (r: LoadResult) => number) => rs.reduce((n, r) => n + f(r), 0);
  const seconds = sum((r) => r.seconds);
  const ios = sum((r) => r.ios);
  const bytes = sum((r) => r.bytes);
  // Per-I/O figures weighted by I/Os, percentages by time.
  const perIo = (f: (r: LoadResult) => number | null) =>
    rs.some((r) => f(r) === null) ? null : sum((r) => (f(r) as number) * r.ios) / ios;
  const perSec = (f: (r: LoadResult) => number | null) =>
    rs.some((r) => f(r) === null) ? null : sum((r) => (f(r) as number) * r.seconds) / seconds;
  return {
    ...rs[0],
    seconds,
    ios,
    bytes,
    iops: ios / seconds,
    mbPerSec: bytes / seconds / 1e6,
    errors: sum((r) => r.errors),
    latency: h.summary(),
    histogram: h.toSparse(),
    backendCpuUsPerIo: perIo((r) => r.backendCpuUsPerIo),
    backendCpuPercent: perSec((r) => r.backendCpuPercent),
    generatorCpuUsPerIo: perIo((r) => r.generatorCpuUsPerIo) as number,
    generatorCpuPercent: perSec((r) => r.generatorCpuPercent) as number,
  };
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const fmtRange = (xs: number[]) =>
  xs.length === 0
    ? 'n/a'
    : `${fmtRatio(median(xs))} (${fmtRatio(Math.min(...xs))}..${fmtRatio(Math.max(...xs))})`;

/**
 * The back end's CPU per write over windows (its process's user + system time, the copier's
 * included): median (min..max). Where a method's cost is CPU (a write into a sparse overlay
 * allocates a block in io_submit, on the device's worker), it shows here and not on the disk.
 */
function cpuPerWrite(xs: Sample[]): string {
  const v = xs.map((s) => s.result.backendCpuUsPerIo).filter((x): x is number => x !== null);
  if (v.length === 0) return '-';
  return `${median(v).toFixed(1)} (${Math.min(...v).toFixed(1)}..${Math.max(...v).toFixed(1)})`;
}

const PCTS = [
  ['p50', (r: LoadResult) => r.latency.p50Us],
  ['p99', (r: LoadResult) => r.latency.p99Us],
  ['p99.9', (r: LoadResult) => r.latency.p999Us],
] as const;

/**
 * Every round's window of one back end, depth and phase as one histogram. Why pooled as well
 * as per round: this disk's own QD32 tail is bimodal over seconds (bench/disk-tail.sh), so a
 * per-round during/idle ratio of p99.9 swings with whichever mode each of the two windows
 * landed in; the pooled windows, interleaved with the other phase's, compare the two phases'
 * latency distributions over the same stretch of the disk's behaviour.
 */
function pooled(xs: Sample[]): LatencyHistogram {
  const h = new LatencyHistogram();
  for (const s of xs)
    if (s.result.histogram) h.merge(LatencyHistogram.fromSparse(s.result.histogram));
  return h;
}

/** Writes `value` as JSON without indentation. */
function writeJsonCompact(path: string, value: unknown): Promise<void> {
  return writeText(path, JSON.stringify(value));
}

/** The pooled table: per back end and depth, idle and during-backup percentiles and their ratios. */
function pooledReport(samples: Sample[], depths: readonly number[]): string {
  const rows: string[][] = [];
  const labels = [...new Set(samples.map((s) => s.backend))];
  for (const depth of depths)
    for (const b of labels) {
      const of = (p: Phase) =>
        pooled(samples.filter((s) => s.backend === b && s.depth === depth && s.phase === p));
      const pairs = [
        ['idle', 'backup', b],
        ['idle', 'merge', `${b} (merging)`],
        ['paused', 'backup', `${b} (slices: paused → running)`],
        ['merge-paused', 'merge', `${b} (merge slices: paused → running)`],
      ] as const;
      for (const [ref, p, label] of pairs) {
        const idle = of(ref);
        const during = of(p);
        if (idle.count === 0 || during.count === 0) continue;
        const cells = POOLED_PCTS.map((pct) => {
          const i = idle.percentile(pct);
          const d = during.percentile(pct);
          return `${fmtUs(i / 1000)} → ${fmtUs(d / 1000)} (${fmtRatio(d / i)})`;
        });
        rows.push([`4k randwrite QD${depth}`, label, `${idle.count} / ${during.count}`, ...cells]);
      }
    }
  return markdownTable(
    [
      'workload',
      'back end',
      'writes pooled (idle / during)',
      ...POOLED_PCTS.map((p) => `p${p} µs idle → during (ratio)`),
    ],
    rows,
  );
}

/** Percentiles of the pooled table. */
const POOLED_PCTS = [50, 99, 99.9] as const;

function report(samples: Sample[], rounds: number, depths: readonly number[]): string {
  const rows: string[][] = [];
  const labels = [...new Set(samples.map((s) => s.backend))];
  const ours = labels.filter((b) => b !== 'qsd');
  for (const depth of depths) {
    const get = (b: Label, p: Phase, round: number) =>
      samples.find(
        (s) => s.backend === b && s.depth === depth && s.phase === p && s.round === round,
      )?.result;
    for (const b of labels) {
      for (const p of ['idle', 'backup', 'paused', 'merge', 'merge-paused'] as const) {
        const xs = samples.filter((s) => s.backend === b && s.depth === depth && s.phase === p);
        if (xs.length === 0) continue;
        rows.push([
          `4k randwrite QD${depth}`,
          b,
          p,
          String(Math.round(median(xs.map((s) => s.result.iops)))),
          ...PCTS.map(
            ([, f]) =>
              `${fmtUs(median(xs.map((s) => f(s.result))))} (${fmtUs(Math.min(...xs.map((s) => f(s.result))))}..${fmtUs(Math.max(...xs.map((s) => f(s.result))))})`,
          ),
          String(xs.reduce((n, s) => n + s.result.errors, 0)),
          cpuPerWrite(xs),
        ]);
      }
    }
    const cells: string[] = [`4k randwrite QD${depth}`, 'during/idle', 'ratios'];
    for (const [, f] of PCTS) {
      // Per round: each back end's during/idle, and each of ours over qsd's.
      const during = (b: Label) => {
        const xs: number[] = [];
        for (let r = 0; r < rounds; r++) {
          const i = get(b, 'idle', r);
          const d = get(b, 'backup', r);
          xs.push(i && d ? f(d) / f(i) : Number.NaN);
        }
        return xs;
      };
      const q = during('qsd');
      const parts = ours.map((b) => {
        const v = during(b);
        const rr = v.map((x, r) => x / q[r]).filter((x) => !Number.isNaN(x));
        return `${b} ${fmtRange(v.filter((x) => !Number.isNaN(x)))}; ${b}/qsd ${fmtRange(rr)}`;
      });
      cells.push(`${parts.join('; ')}; qsd ${fmtRange(q.filter((x) => !Number.isNaN(x)))}`);
    }
    rows.push([...cells, '', '']);
  }
  const header = [
    'workload',
    'back end',
    'phase',
    'IOPS (median)',
    'p50 µs',
    'p99 µs',
    'p99.9 µs',
    'errors',
    'back end CPU µs per write',
  ];
  const counterRows: string[][] = [];
  for (const depth of depths)
    for (const b of ours) {
      const xs = samples.filter(
        (s) => s.backend === b && s.depth === depth && s.counters !== undefined,
      );
      if (xs.length === 0) continue;
      const cell = (f: (s: Sample) => number) =>
        `${Math.round(median(xs.map(f)))} (${Math.round(Math.min(...xs.map(f)))}..${Math.round(Math.max(...xs.map(f)))})`;
      const k = (s: Sample) => s.counters as BackupCounters;
      counterRows.push([
        `4k randwrite QD${depth}`,
        b,
        cell((s) => s.result.ios),
        cell((s) => k(s).journalReads),
        cell((s) => k(s).journaled),
        cell((s) => k(s).fullWaits),
        `${cell((s) => k(s).highWater)} of ${k(xs[0]).entries}`,
        cell((s) => k(s).boosts),
        cell((s) => k(s).copiedBytes / MiB),
        `${cell((s) => k(s).yields)} / ${cell((s) => k(s).forcedReads)}`,
      ]);
    }
  const counters = markdownTable(
    [
      'workload',
      'back end',
      'writes measured',
      'journal reads (writes that waited for one)',
      'blocks journaled',
      'journal-full waits',
      'journal high water',
      'copier boosts',
      'copied MiB',
      'disk-pass reads that yielded / went at the longest wait',
    ],
    counterRows,
  );
  return `${markdownTable(header, rows)}\n\n${rounds} interleaved rounds; latency cells: median (min..max) over the rounds; the "during/idle" rows give per-round ratios.\n\nPooled: every round's window of a back end, depth and phase merged into one histogram (the disk's own tail changes mode between windows; pooled interleaved windows compare the phases over the same stretch of it):\n\n${pooledReport(samples, depths)}\n\nvhost-rt's backup counters per backup cell (query-backups just before the cancel; the backup starts just before the measured window and runs a little past it), median (min..max):\n\n${counters}\n`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '3' },
      runtime: { type: 'string', default: '3' },
      ramp: { type: 'string', default: '0' },
      speed: { type: 'string', default: '32' },
      journal: { type: 'string' },
      out: { type: 'string' },
      xfs: { type: 'boolean', default: false },
      method: { type: 'string' },
      'image-mib': { type: 'string', default: String(DEFAULT_IMAGE_MIB) },
      depths: { type: 'string', default: '1,32' },
      yield: { type: 'string' },
      'yield-ab': { type: 'string' },
      dir: { type: 'string' },
      baseline: { type: 'string' },
      'read-around-ab': { type: 'boolean', default: false },
      'baseline-read-around': { type: 'boolean', default: false },
      'max-chunk-ab': { type: 'string' },
      'redirect-ab': { type: 'boolean', default: false },
      'redirect-max-chunk-ab': { type: 'string' },
      'redirect-merge-speed-ab': { type: 'string' },
      'redirect-keep': { type: 'boolean', default: false },
      'redirect-prefill': { type: 'boolean', default: false },
      'probe-rounds': { type: 'string', default: '3' },
      'probe-seconds': { type: 'string', default: '5' },
      'hot-mib': { type: 'string' },
      'pause-slices': { type: 'string', default: '0' },
      'slice-settle': { type: 'string', default: '0.2' },
      only: { type: 'string' },
    },
  });
  const only = values.only === undefined ? null : values.only.split(',').map((l) => l.trim());
  const pauseSlices = Number(values['pause-slices']);
  const sliceSettle = Number(values['slice-settle']);
  if (!(Number.isInteger(pauseSlices) && pauseSlices >= 0 && sliceSettle >= 0))
    throw new Error(
      `--pause-slices must be a whole number from 0 and --slice-settle 0 or more seconds, not ${values['pause-slices']} and ${values['slice-settle']}`,
    );
  const imageMiB = Number(values['image-mib']);
  if (!Number.isInteger(imageMiB) || imageMiB < 16)
    throw new Error(
      `--image-mib must be a whole number of MiB, at least 16, not ${values['image-mib']}`,
    );
  const imageBytes = imageMiB * MiB;
  const depths = values.depths.split(',').map(Number);
  if (depths.some((d) => !Number.isInteger(d) || d < 1 || d > 128))
    throw new Error(`--depths must list queue depths 1..128, not ${values.depths}`);
  if (
    values.method !== undefined &&
    !['auto', 'clone', 'journal', 'redirect'].includes(values.method)
  )
    throw new Error(`--method must be auto, clone, journal or redirect, not ${values.method}`);
  const rounds = Number(values.rounds);
  const runtimeSec = Number(values.runtime);
  const rampSec = Number(values.ramp);
  const speed = Number(values.speed) * MiB;
  const journalBytes = values.journal === undefined ? undefined : Number(values.journal) * MiB;
  const yieldMs = values.yield === undefined ? undefined : Number(values.yield);
  const yieldAb = values['yield-ab'] === undefined ? undefined : Number(values['yield-ab']);
  const hotMiB = values['hot-mib'] === undefined ? undefined : Number(values['hot-mib']);
  if (hotMiB !== undefined && !(Number.isInteger(hotMiB) && hotMiB >= 1 && hotMiB <= imageMiB))
    throw new Error(
      `--hot-mib must be a whole number of MiB in 1..${imageMiB}, not ${values['hot-mib']}`,
    );
  const hotBytes = hotMiB === undefined ? undefined : hotMiB * MiB;
  const out = values.out ?? join(REPO_ROOT, 'bench', 'results');
  const work = join(REPO_ROOT, '.cache', 'bench', `backup-${process.pid}`);
  await mkdir(work, { recursive: true });
  if (values.xfs && values.dir !== undefined) throw new Error('--xfs and --dir exclude each other');
  const fs = values.xfs ? await mountXfs(work, imageMiB) : null;
  const data = fs?.mountpoint ?? values.dir ?? work;
  // Made in 4 KiB O_DIRECT writes, as a prefilled overlay is (ensureImage says why); the
  // name says so, so an image made otherwise by an older version is not reused.
  const imageName = `backup-${imageMiB}m-w4k.raw`;
  const image =
    fs === null && values.dir === undefined
      ? join(REPO_ROOT, '.cache', 'bench', imageName)
      : join(data, imageName);
  ensureImage(image, imageBytes, 4096);
  const vTarget = join(data, 'vhost-rt-target.raw');
  const qTarget = join(data, 'qsd-target.raw');
  await truncate(qTarget, imageBytes).catch(async () => {
    const { writeFile } = await import('node:fs/promises');
    await writeFile(qTarget, '');
    await truncate(qTarget, imageBytes);
  });
  const ctl = join(work, 'vhost-rt.qmp');
  const samples: Sample[] = [];
  // Two daemons on one image need share-rw (only one is driven at a time, as with qsd's locking=off).
  const share = values.baseline === undefined ? '' : ',share-rw';
  const v = await startVhostRt({
    label: 'vhost-rt',
    devices: [`socket-path=${join(work, 'vhost-rt.sock')},image=${image}${share}`],
    flags: ['--queues', '1', '--control-socket', ctl],
  });
  const vq = await Qmp.open(ctl);
  const bCtl = join(work, 'baseline.qmp');
  const base =
    values.baseline === undefined
      ? null
      : await startVhostRt({
          label: 'vhost-rt baseline',
          cli: join(values.baseline, 'dist', 'src', 'cli', 'main.js'),
          devices: [`socket-path=${join(work, 'baseline.sock')},image=${image}${share}`],
          flags: ['--queues', '1', '--control-socket', bCtl],
        });
  const bq = base === null ? null : await Qmp.open(bCtl);
  const q = await startQsdWithMonitor(
    image,
    qTarget,
    join(work, 'qsd.sock'),
    join(work, 'qsd.qmp'),
  );
  /** A row of vhost-rt's daemon whose backups use method redirect (--redirect-ab). */
  const redirectRow = (
    label: 'vhost-rt redirect' | 'vhost-rt redirect max-chunk' | 'vhost-rt redirect merge-speed',
  ) => ({
    label,
    backend: v,
    qmp: vq,
    target: vTarget,
    yieldMs,
    method: 'redirect',
    keepOverlay: values['redirect-keep'],
    prefillOverlay: values['redirect-prefill'],
  });
  const allSides: {
    label: Label;
    backend: Backend;
    qmp: Qmp;
    target: string;
    yieldMs?: number;
    readAround?: boolean;
    maxChunk?: number;
    method?: string;
    keepOverlay?: boolean;
    prefillOverlay?: boolean;
    mergeSpeed?: number;
  }[] = [
    { label: 'vhost-rt', backend: v, qmp: vq, target: vTarget, yieldMs },
    ...(yieldAb === undefined
      ? []
      : [
          {
            label: 'vhost-rt yield' as const,
            backend: v,
            qmp: vq,
            target: vTarget,
            yieldMs: yieldAb,
          },
        ]),
    ...(values['read-around-ab']
      ? [
          {
            label: 'vhost-rt read-around' as const,
            backend: v,
            qmp: vq,
            target: vTarget,
            yieldMs,
            readAround: true,
          },
        ]
      : []),
    ...(values['max-chunk-ab'] === undefined
      ? []
      : [
          {
            label: 'vhost-rt max-chunk' as const,
            backend: v,
            qmp: vq,
            target: vTarget,
            yieldMs,
            readAround: values['read-around-ab'],
            maxChunk: Number(values['max-chunk-ab']),
          },
        ]),
    ...(values['redirect-ab'] ? [redirectRow('vhost-rt redirect')] : []),
    ...(values['redirect-ab'] && values['redirect-max-chunk-ab'] !== undefined
      ? [
          {
            ...redirectRow('vhost-rt redirect max-chunk'),
            maxChunk: Number(values['redirect-max-chunk-ab']),
          },
        ]
      : []),
    ...(values['redirect-ab'] && values['redirect-merge-speed-ab'] !== undefined
      ? [
          {
            ...redirectRow('vhost-rt redirect merge-speed'),
            mergeSpeed: Number(values['redirect-merge-speed-ab']) * MiB,
          },
        ]
      : []),
    ...(base === null || bq === null
      ? []
      : [
          {
            label: 'vhost-rt baseline' as const,
            backend: base,
            qmp: bq,
            target: join(data, 'baseline-target.raw'),
            yieldMs,
            readAround: values['baseline-read-around'],
          },
        ]),
    { label: 'qsd', backend: q.backend, qmp: q.qmp, target: qTarget },
  ];
  const sides = allSides.filter((side) => only === null || only.includes(side.label));
  if (sides.length === 0)
    throw new Error(`--only ${values.only} names no back end of this run's rows`);
  const probeRounds = Number(values['probe-rounds']);
  const probeSeconds = Number(values['probe-seconds']);
  if (!(Number.isInteger(probeRounds) && probeRounds >= 1 && probeSeconds > 0))
    throw new Error(
      `--probe-rounds must be a whole number from 1 and --probe-seconds above 0, not ${values['probe-rounds']} and ${values['probe-seconds']}`,
    );
  let measured = false;
  let placement: Placement | null = null;
  try {
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? sides : [...sides].reverse();
      for (const depth of depths) {
        for (const side of order) {
          let merged: Promise<{ bytes: number; quietBytes: number; ms: number }> | undefined;
          const phases: Phase[] =
            side.method === 'redirect' ? ['idle', 'backup', 'merge'] : ['idle', 'backup'];
          for (const phase of phases) {
            const jobFrom = side.qmp.messages.length;
            const stop =
              phase === 'backup'
                ? await startBackup(side.label, side.qmp, side.target, speed, {
                    journalBytes,
                    method: side.method ?? values.method,
                    yieldMs: side.yieldMs,
                    readAround: side.readAround,
                    maxChunk: side.maxChunk,
                    keepOverlay: side.keepOverlay,
                    prefillOverlay: side.prefillOverlay,
                    mergeSpeed: side.mergeSpeed,
                    // The prefill pass at `speed` (about 37 MiB/s at most here), twice over.
                    answerMs: side.prefillOverlay
                      ? 120_000 + (2000 * imageBytes) / Math.min(speed || 37 * MiB, 37 * MiB)
                      : undefined,
                    mergeWaitMs:
                      120_000 + (1000 * imageBytes) / ((side.mergeSpeed ?? speed) || 37 * MiB),
                  })
                : null;
            const load: LoadOptions = {
              keepHistogram: true,
              socketPath: side.backend.sockets[0],
              backendPid: side.backend.pid,
              rw: 'randwrite',
              bs: 4096,
              // The hot region is the image's END: the disk pass copies from the start, so
              // in a window it does not reach the region and the journal is what is measured.
              ...(hotBytes === undefined ? {} : { offset: imageBytes - hotBytes, size: hotBytes }),
              iodepth: depth,
              runtimeSec,
              rampSec,
            };
            let result: LoadResult;
            let pausedResult: LoadResult | undefined;
            if ((phase === 'backup' || phase === 'merge') && pauseSlices > 0) {
              // 2N slices of runtime/N: the running ones add up to one unsliced window.
              const sliced = await runPauseSlices(
                load,
                side.label,
                side.qmp,
                jobFrom,
                pauseSlices,
                runtimeSec / pauseSlices,
                sliceSettle,
              );
              result = sliced.running;
              pausedResult = sliced.paused;
              if (sliced.endedAtSlice !== undefined)
                process.stderr.write(
                  `round ${round + 1}/${rounds} QD${depth} ${side.label}: the ${phase === 'merge' ? 'merge' : 'backup'} ended in or before slice ${sliced.endedAtSlice + 1} of ${2 * pauseSlices}; only the slices before it are pooled\n`,
                );
            } else result = await runLoad(load);
            const stopped = await stop?.();
            const counters = stopped?.counters;
            if (stopped?.merged !== undefined) merged = stopped.merged;
            const merge = phase === 'merge' ? await merged : undefined;
            samples.push({ round, backend: side.label, depth, phase, result, counters, merge });
            if (pausedResult !== undefined) {
              samples.push({
                round,
                backend: side.label,
                depth,
                phase: phase === 'merge' ? 'merge-paused' : 'paused',
                result: pausedResult,
              });
              const pl = pausedResult.latency;
              process.stderr.write(
                `round ${round + 1}/${rounds} QD${depth} ${side.label} ${phase === 'merge' ? 'merge ' : ''}paused slices: ${Math.round(pausedResult.iops)} IOPS p50 ${pl.p50Us.toFixed(0)} p99 ${pl.p99Us.toFixed(0)} p99.9 ${pl.p999Us.toFixed(0)} µs\n`,
              );
            }
            const l = result.latency;
            const k =
              counters === undefined
                ? ''
                : ` [journal reads ${counters.journalReads} (blocks ${counters.journaled}) for ${result.ios} writes, full waits ${counters.fullWaits}, high water ${counters.highWater}/${counters.entries}, boosts ${counters.boosts}, copied ${(counters.copiedBytes / MiB).toFixed(0)} MiB, yields ${counters.yields}, forced reads ${counters.forcedReads}]`;
            const m =
              merge === undefined
                ? ''
                : ` [merged ${(merge.bytes / MiB).toFixed(0)} MiB (${(merge.quietBytes / MiB).toFixed(0)} MiB at the quiet pace) in ${merge.ms} ms from the cancel]`;
            process.stderr.write(
              `round ${round + 1}/${rounds} QD${depth} ${side.label} ${phase}: ${Math.round(result.iops)} IOPS p50 ${l.p50Us.toFixed(0)} p99 ${l.p99Us.toFixed(0)} p99.9 ${l.p999Us.toFixed(0)} µs${k}${m}\n`,
            );
          }
        }
      }
    }
    measured = true;
  } finally {
    vq.close();
    bq?.close();
    q.qmp.close();
    await v.stop();
    await base?.stop();
    await q.backend.stop();
    // The kept overlay, merged and closed by now: where its blocks are against the image's.
    if (measured && (values['redirect-keep'] || values['redirect-prefill']))
      placement = probePlacement(image, imageBytes, probeRounds, probeSeconds);
    // A kept overlay (--redirect-keep) is not left next to the bench image.
    await rm(redirectPath(image), { force: true });
    fs?.unmount();
    await rm(work, { recursive: true, force: true });
  }
  const table =
    report(samples, rounds, depths) + (placement === null ? '' : placementReport(placement));
  process.stdout.write(table);
  await mkdir(out, { recursive: true });
  // Compact: every window's histogram is in the samples (pretty-printed they are ~2 MB a run).
  await writeJsonCompact(join(out, fs === null ? 'backup.json' : 'backup-xfs.json'), {
    fs:
      fs !== null
        ? 'xfs (reflink=1) on a direct-I/O loop device'
        : values.dir !== undefined
          ? `the file system at ${values.dir}`
          : 'the repository disk',
    method: values.method ?? 'auto',
    date: new Date().toISOString(),
    rounds,
    runtimeSec,
    rampSec,
    speed,
    journalBytes: journalBytes ?? null,
    hotMiB: hotMiB ?? null,
    pauseSlices,
    sliceSettle,
    placement,
    samples,
  });
}

/** One fio window of the placement probe. */
interface FioWindow {
  iops: number;
  p50Us: number;
  p99Us: number;
  p999Us: number;
}

/** The placement probe's windows: per round, the image's and the overlay's data area's. */
interface Placement {
  seconds: number;
  rounds: { image: FioWindow; overlay: FioWindow }[];
}

/**
 * fio alone, 4k randwrite at QD32 (libaio, O_DIRECT) for `seconds` over [offset, offset +
 * bytes) of `file`: what the disk gives a writer there with no back end in the way.
 */
function fioRandwrite(file: string, offset: number, bytes: number, seconds: number): FioWindow {
  const json = execFileSync(
    'fio',
    [
      '--name=probe',
      `--filename=${file}`,
      `--offset=${offset}`,
      `--size=${bytes}`,
      '--ioengine=libaio',
      '--direct=1',
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=32',
      '--time_based',
      `--runtime=${seconds}`,
      '--output-format=json',
    ],
    { encoding: 'utf8', maxBuffer: 16 * MiB },
  );
  const w = (JSON.parse(json) as { jobs: { write: Record<string, unknown> }[] }).jobs[0].write;
  const pct = (w.clat_ns as { percentile: Record<string, number> }).percentile;
  return {
    iops: w.iops as number,
    p50Us: pct['50.000000'] / 1000,
    p99Us: pct['99.000000'] / 1000,
    p999Us: pct['99.900000'] / 1000,
  };
}

/**
 * Where the kept overlay's blocks are, as the disk sees them: fio alone over the image and
 * over the overlay's data area (the same bytes a redirected guest write lands on), `rounds`
 * interleaved windows. Why: a virtual disk need not take writes equally fast everywhere (on
 * this machine two files made the same way minutes apart took 4k random writes at rates that
 * differed by up to 1.5×; reads did not differ), and a redirect backup moves the guest's
 * writes from the image's blocks to the overlay's. Run with no daemon left and the overlay
 * merged: fio's bytes land in the bench image, whose contents do not matter, and in a data
 * area whose bitmap is clear. Null when fio or the overlay is missing.
 */
function probePlacement(
  image: string,
  imageBytes: number,
  rounds: number,
  seconds: number,
): Placement | null {
  const overlay = redirectPath(image);
  if (!existsSync(overlay)) return null;
  try {
    execFileSync('fio', ['--version'], { stdio: 'ignore' });
  } catch {
    process.stderr.write('placement probe skipped: no fio (apt-get install fio)\n');
    return null;
  }
  const header = Buffer.alloc(4096);
  const fd = openSync(overlay, 'r');
  try {
    readSync(fd, header, 0, header.length, 0);
  } finally {
    closeSync(fd);
  }
  const { dataOffset } = decodeRedirectHeader(header, overlay);
  const out: Placement = { seconds, rounds: [] };
  for (let r = 0; r < rounds; r++) {
    const pair = {
      image: fioRandwrite(image, 0, imageBytes, seconds),
      overlay: fioRandwrite(overlay, dataOffset, imageBytes, seconds),
    };
    process.stderr.write(
      `placement probe ${r + 1}/${rounds}: image ${Math.round(pair.image.iops)} IOPS p50 ${pair.image.p50Us.toFixed(0)} µs, overlay ${Math.round(pair.overlay.iops)} IOPS p50 ${pair.overlay.p50Us.toFixed(0)} µs\n`,
    );
    out.rounds.push(pair);
  }
  return out;
}

/** The placement probe as a table: per round, the overlay's figures over the image's. */
function placementReport(p: Placement): string {
  const cell = (pick: (w: FioWindow) => number) =>
    fmtRange(p.rounds.map((r) => pick(r.overlay) / pick(r.image)));
  const rows = [
    [
      'overlay / image',
      cell((w) => w.iops),
      cell((w) => w.p50Us),
      cell((w) => w.p99Us),
      cell((w) => w.p999Us),
    ],
  ];
  return `\nThe disk alone where the kept overlay's blocks are (fio, 4k randwrite QD32 O_DIRECT, ${p.rounds.length} interleaved rounds of ${p.seconds} s over the image and over the overlay's data area; median (min..max) of the per-round ratios):\n\n${markdownTable(['', 'IOPS', 'p50', 'p99', 'p99.9'], rows)}\n`;
}

/**
 * A fresh XFS (reflink=1) under `work`/xfs, on a loop device with direct I/O (so O_DIRECT
 * writes reach the disk as on the host file system, not the loop's page cache) over a file
 * next to it (room for the image, its clone and two targets; at least 1 GiB); `unmount` takes
 * it all down.
 */
async function mountXfs(
  work: string,
  imageMiB: number,
): Promise<{ mountpoint: string; unmount: () => void }> {
  const backing = join(work, 'xfs.img');
  const { writeFile } = await import('node:fs/promises');
  await writeFile(backing, '');
  await truncate(backing, Math.max(1024, 4 * imageMiB + 256) * MiB);
  const loop = execFileSync('losetup', ['--find', '--show', '--direct-io=on', backing], {
    encoding: 'utf8',
  }).trim();
  const mountpoint = join(work, 'xfs');
  try {
    execFileSync('mkfs.xfs', ['-q', '-f', '-m', 'reflink=1', loop]);
    await mkdir(mountpoint, { recursive: true });
    execFileSync('mount', [loop, mountpoint]);
  } catch (err) {
    execFileSync('losetup', ['-d', loop]);
    throw err;
  }
  return {
    mountpoint,
    unmount: () => {
      execFileSync('umount', [mountpoint]);
      execFileSync('losetup', ['-d', loop]);
    },
  };
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
