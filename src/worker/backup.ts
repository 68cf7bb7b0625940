/**
 * Live backups of one blk device, driven from the main thread (issue 12):
 * `blockdev-backup` prepares the target and the shared journal, starts the
 * copier thread (src/worker/backup-copier.ts), has the device pass its
 * start instant (a typed device command, answered once the writes in flight
 * at that instant completed), then lets the copier run. The copier's events
 * become BACKUP_PROGRESS (at most one a second), BACKUP_COMPLETED and
 * BACKUP_FAILED (with the reason); `backup-cancel` stops it. `snapshot`
 * clones the image with FICLONE (reflink, XFS / btrfs) at an instant where
 * no write is in flight, or falls back to a full backup.
 *
 * Two ways to keep the start instant's contents (`method`):
 * - `clone`: at the instant (writes held, none in flight) the image is
 *   cloned with FICLONE next to itself (IMAGE.vhost-rt-backup-clone), the
 *   writes go on, and the copier reads the clone; the clone is deleted when
 *   the backup ends. Guest writes never wait for the backup: the file
 *   system gives an overwritten block a new extent, with no read of the old
 *   one. Only where the image's file system can clone (XFS, btrfs).
 * - `journal`: copy-before-write into the shared journal (src/devices/blk/backup.ts):
 *   a write's first touch of a block waits for a read of the old block.
 * - `redirect`: redirect-on-write (src/devices/blk/redirect.ts): from the
 *   instant on, the guest's writes go to an overlay next to the image
 *   (IMAGE.vhost-rt-redirect) and the copier reads the untouched image; no
 *   guest write waits for a read. After the backup the device merges the
 *   overlay back at the idle I/O class (BACKUP_MERGED when done); a new backup,
 *   snapshot or resize is refused until then. Local images only. Opt-in: the
 *   merge doubles the write traffic of what the guest wrote meanwhile.
 * `auto` (the default) tries the clone and falls back to the journal,
 * saying why in the reply (`method-reason`).
 */
import { constants, copyFile, open, rm, stat, truncate } from 'node:fs/promises';
import type {
  BackupStarted,
  MergeControlResult,
  RedirectBackupRequest,
} from '../devices/blk/device.js';
import { VhostRtError } from '../errors.js';
import {
  BACKUP_CHUNK_BYTES,
  BackupShare,
  DEFAULT_COPY_MAX_CHUNK,
  DEFAULT_JOURNAL_BYTES,
  MAX_COPY_MAX_CHUNK,
  MAX_JOURNAL_BYTES,
  MIN_COPY_MAX_CHUNK,
  MIN_JOURNAL_BYTES,
} from '../io/backup-share.js';
import { checkNbdUri, looksLikeNbdUri } from '../io/index.js';
import { redirectPath, redirectPrefilled } from '../io/redirect-file.js';
import { BACKUP } from '../locking/layout.js';
import type { Logger } from '../log.js';
import { native } from '../native.js';
import { WorkerHost } from '../thread/index.js';
import type { BackupCopierCommand, BackupCopierEvent, BackupCopierInit } from './backup-copier.js';
import type { DeviceHost } from './device-host.js';

/** A backup refused or failed: `code` says why (ERR_BACKUP_RUNNING, ERR_BACKUP_TARGET, ...). */
export class BackupError extends VhostRtError {}

/**
 * Most extents an image may have for `method: auto` to clone it. FICLONE holds the guest's
 * writes for a time that grows with them (bench/results/backup-yield.md: up to 3.8 s on a
 * fragmented 1 GiB image); past this, `auto` journals instead. From bench/clone-hold.sh on
 * this project's machine: 15–40 µs per extent (2432 extents 43–57 ms, 9598 140–319 ms,
 * 24763 0.4–1.1 s), so 4000 extents aim at a hold of about 0.1 s.
 */
export const AUTO_CLONE_MAX_EXTENTS = 4000;

/** Most `yield-ms` a backup accepts (ms). */
export const YIELD_MAX_MS = 1000;

/** Arguments of `blockdev-backup`, checked. */
export interface BackupRequest {
  /** A raw file path, or an NBD URI (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH). */
  target: string;
  sync: 'full' | 'incremental';
  /** Bytes per second to the target; 0: no limit. */
  speed: number;
  /** Journal bytes (whole 4 KiB blocks); default {@link DEFAULT_JOURNAL_BYTES}. */
  journalBytes?: number;
  /** The copier's CPU class: 'idle' (SCHED_IDLE, default) or 'batch' (SCHED_BATCH). */
  priority?: 'idle' | 'batch';
  /** How the start instant's contents are kept (see the module comment); default 'auto'. */
  method?: 'auto' | 'clone' | 'journal' | 'redirect';
  /**
   * The disk pass reads only after the guest has been quiet this long (ms; 0, the default:
   * off); see BackupCopierInit.yieldMs.
   */
  yieldMs?: number;
  /**
   * Journal read-around (default false): from a chunk's second write on, the rest of the
   * chunk is saved in the same read (see src/devices/blk/backup.ts readAround).
   */
  readAround?: boolean;
  /** The copier's largest read or write (bytes); default DEFAULT_COPY_MAX_CHUNK. */
  maxChunk?: number;
  /** Method redirect: keep the merged overlay for the next backup (default false). */
  keepOverlay?: boolean;
  /**
   * Method redirect: write the overlay's whole data area once (a random pattern, at `speed`)
   * before the start instant, unless a kept overlay was prefilled already; implies
   * keepOverlay (default false). See src/io/redirect-file.ts PREFILLED.
   */
  prefillOverlay?: boolean;
  /**
   * Method redirect: the pace of the merge after the backup (bytes/s; 0: unpaced); default
   * `speed`, at most {@link MAX_DEFAULT_MERGE_SPEED}.
   */
  mergeSpeed?: number;
  /**
   * Method redirect: the merge goes at `speed` instead of `mergeSpeed` (the faster of the two;
   * unpaced if either is 0) once the guest has started no request for this long (ms; 0:
   * never); default {@link DEFAULT_MERGE_QUIET_MS}.
   */
  mergeQuietMs?: number;
}

/**
 * The default pace of a redirect backup's merge while the guest does I/O, at most (bytes/s):
 * the backup's `speed` when lower. The merge copies the guest's scattered writes back, one
 * copy in flight, and the guest's tail pays for its rate: on this machine's disk, 4k
 * randwrite p99.9 while merging was 6.9x idle at QD1 and 2.7x at QD32 at 32 MiB/s, 1.7-2.3x
 * and 1.7x at 8 MiB/s, 1.2-1.3x at QD1 at 4 MiB/s (bench/results/backup-redirect.md, session
 * 3). The price, a long merge under steady writes (~8 min for 2 GiB) during which no other
 * backup, snapshot or resize of the device starts, is what {@link DEFAULT_MERGE_QUIET_MS}
 * takes back whenever the guest pauses.
 */
export const MAX_DEFAULT_MERGE_SPEED = 4 * 1024 * 1024;

/**
 * The default `merge-quiet-ms`: a guest that has started no request for a second moves the
 * merge to the backup's `speed` (unpaced when 0) until its next request. Why a second and not
 * less: a guest doing periodic I/O finds a merge copy in the disk's queue each time it comes
 * back from a pause the merge used, so a shorter wait would trade the tail of guests with
 * sub-second periods for merge time; 0 keeps the merge at `merge-speed`.
 */
export const DEFAULT_MERGE_QUIET_MS = 1000;

/** Most `merge-quiet-ms` a backup accepts (ms). */
export const MERGE_QUIET_MAX_MS = 60_000;

/**
 * The pace of a redirect backup's merge while the guest is quiet (bytes/s; 0: unpaced): the
 * backup's `speed`, the rate the user gave background I/O, but never slower than the busy
 * pace `mergeSpeed` (a quiet guest must not slow the merge down), and unpaced if either is.
 */
export function quietMergePace(mergeSpeed: number, speed: number): number {
  return mergeSpeed === 0 || speed === 0 ? 0 : Math.max(mergeSpeed, speed);
}

/** Sends a control-socket event (the device's index and socket are added by the caller). */
export type BackupEmit = (name: string, data: Record<string, unknown>) => void;

/** A backup as `query-backups` reports it. */
export interface BackupStatus {
  status: 'running' | 'completed' | 'failed' | 'cancelled';
  /** How the start instant's contents are kept: a reflink clone, the journal, or an overlay. */
  method: 'clone' | 'journal' | 'redirect';
  target: string;
  sync: 'full' | 'incremental';
  /** Why an incremental was done as a full one ('' when it was not). */
  'sync-reason': string;
  /** The disk pass's pace (bytes/s, 0: unpaced), as started or changed by backup-set-speed. */
  speed: number;
  'total-bytes': number;
  'copied-bytes': number;
  /** 4 KiB blocks saved into the journal before guest writes overwrote them. */
  journaled: number;
  /** Journal reads (one per run of adjacent blocks a held request needed saved). */
  'journal-reads': number;
  /** Guest requests that waited for a free journal entry (the THROTTLE policy). */
  'journal-full-waits': number;
  'journal-entries': number;
  'journal-high-water': number;
  /** Times a guest request waiting on a full journal raised the copier out of SCHED_IDLE. */
  'copier-boosts': number;
  /** The quiet time the disk pass waits for before a read (0: it does not wait). */
  'yield-ms': number;
  /** Whether a chunk's second write saves the rest of the chunk (journal backups). */
  'read-around': boolean;
  /** The copier's largest read or write (bytes). */
  'max-chunk': number;
  /** Disk-pass reads that waited for the guest to go quiet. */
  'copier-yields': number;
  /** Disk-pass reads made after the longest wait although the guest was still busy. */
  'copier-forced-reads': number;
  /**
   * The disk pass is paused (backup-pause); once the backup has ended, a redirect backup's
   * merge is (false when no merge runs).
   */
  paused: boolean;
  'started-ms': number;
  'finished-ms'?: number;
  /**
   * Redirect backups, once ended: the overlay merging back ('running'), merged ('done'), or
   * left for the next open of the image because the device closed first ('left').
   */
  merge?: 'running' | 'done' | 'left';
  /** Redirect backups: the merge's pace while the guest does I/O (bytes/s; 0: unpaced). */
  'merge-speed'?: number;
  /** Redirect backups: the guest's quiet time after which the merge goes at `speed` (0: never). */
  'merge-quiet-ms'?: number;
  /** Redirect backups: bytes the merge copied at `speed` because the guest was quiet. */
  'merge-quiet-bytes'?: number;
  /** Redirect backups: the overlay was merged back into the image (BACKUP_MERGED). */
  'merged-ms'?: number;
  /**
   * Redirect backups: bytes merged back into the image (while merging: so far, made durable;
   * it moves once per pass over the overlay's bitmap).
   */
  'merged-bytes'?: number;
  /** Redirect backups, while merging: bytes the merge has written into the image, copy by copy. */
  'merge-copied-bytes'?: number;
  /** Redirect backups, while merging: bytes whose contents are still in the overlay. */
  'merge-remaining-bytes'?: number;
  error?: string;
  code?: string;
}

/**
 * A `prefill-overlay` backup whose overlay is being prefilled: blockdev-backup has answered
 * (`prefilling: true`), the start instant comes after the pass (BACKUP_STARTED).
 */
export interface PrefillStatus {
  status: 'prefilling';
  method: 'redirect';
  target: string;
  'total-bytes': number;
  /** Bytes of the overlay's data area written so far. */
  'prefill-bytes': number;
  'started-ms': number;
}

/** A backup between its command and its start instant: no other may start meanwhile. */
interface Starting {
  req: BackupRequest;
  /** The reply went out before the instant (a prefill pass); the rest runs on its own. */
  prefill: boolean;
  totalBytes: number;
  startedMs: number;
  /** Once created: backup-cancel sets its CANCEL, which stops a prefill pass. */
  share: BackupShare | null;
  /** Settles once the start reached its instant or failed (events sent). */
  done: Promise<void>;
}

/** Where a device's backups come from. */
export interface BackupSource {
  host: DeviceHost;
  /** The image path or NBD URI. */
  image: string;
  /** The device's engine name ('nbd' for NBD images). */
  engine: string;
  /** The disk's size now. */
  sizeBytes(): number;
}

type Copier = WorkerHost<
  BackupCopierInit,
  { chunks: number },
  BackupCopierCommand,
  BackupCopierEvent
>;

interface Job {
  status: BackupStatus;
  share: BackupShare;
  copier: Copier;
  emit: BackupEmit;
  chunks: number;
  lastProgress: number;
  done: Promise<void>;
  finish: () => void;
  /** The reflink clone the copier reads (method clone), deleted at the end; null: none. */
  clone: string | null;
  /** Method redirect: the device merges its overlay back after the end (BACKUP_MERGED). */
  redirect: boolean;
}

/** The backups of one blk device: at most one at a time, and the last one finished. */
export class DeviceBackups {
  private current: Job | null = null;
  private starting: Starting | null = null;
  private last: BackupStatus | null = null;
  /** A redirect backup ended and its overlay is merging back into the image (null: none). */
  private merge: Job | null = null;

  constructor(
    private readonly source: BackupSource,
    private readonly log: Logger,
  ) {}

  /**
   * Why the image may not be resized now (null: it may): a backup runs, or a redirect
   * backup's overlay is merging back (it covers the disk as it was). Asked before the
   * image file is truncated, so a refused resize leaves the file alone.
   */
  resizeRefusal(): BackupError | null {
    const busy = this.busy();
    if (busy !== null) return busy;
    if (this.merge !== null)
      return new BackupError(
        'ERR_BACKUP_MERGING',
        "the last redirect backup's writes are being merged back into the image",
      );
    return null;
  }

  /** Why no backup may start now (null: one may): one runs, or one is on its way to its instant. */
  private busy(): BackupError | null {
    if (this.current !== null)
      return new BackupError('ERR_BACKUP_RUNNING', 'a backup of this device is running');
    if (this.starting?.prefill === true)
      return new BackupError(
        'ERR_BACKUP_RUNNING',
        'a backup of this device is prefilling its overlay (query-backups shows how far; backup-cancel stops it)',
      );
    if (this.starting !== null)
      return new BackupError('ERR_BACKUP_RUNNING', 'a backup of this device is starting');
    return null;
  }

  /**
   * The running (or prefilling) backup and the last finished one, newest first. A redirect
   * backup's merge in progress is asked (the device answers) how far it is.
   */
  async query(): Promise<(BackupStatus | PrefillStatus)[]> {
    const merge = this.merge;
    // A device that went away answers nothing: its status stays as last seen.
    const r = merge === null ? null : await this.controlMerge({}).catch(() => null);
    if (merge !== null && r?.merging === true) {
      const s = merge.status;
      s['merged-bytes'] = r.mergedBytes;
      s['merge-copied-bytes'] = r.copiedBytes;
      s['merge-remaining-bytes'] = r.remainingBytes;
    }
    const out: (BackupStatus | PrefillStatus)[] = [];
    const st = this.starting;
    if (st?.prefill === true) {
      const kib = st.share === null ? 0 : Atomics.load(st.share.i32, BACKUP.PREFILL_KIB);
      out.push({
        status: 'prefilling',
        method: 'redirect',
        target: st.req.target,
        'total-bytes': st.totalBytes,
        'prefill-bytes': Math.min(kib * 1024, st.totalBytes),
        'started-ms': st.startedMs,
      });
    }
    if (this.current !== null) out.push(this.refresh(this.current));
    if (this.last !== null) out.push(this.last);
    return out;
  }

  /**
   * Starts a backup; resolves once its start instant passed (the reply), events follow. A
   * `prefill-overlay` backup whose overlay has no pass yet answers once its copier has the
   * target open, with `prefilling: true`; its instant follows the pass (BACKUP_STARTED, or
   * BACKUP_FAILED / BACKUP_CANCELLED). Every backup sends BACKUP_STARTED at its instant.
   */
  async start(req: BackupRequest, emit: BackupEmit): Promise<Record<string, unknown>> {
    const busy = this.busy();
    if (busy !== null) throw busy;
    const starting: Starting = {
      req,
      prefill: false,
      share: null,
      done: Promise.resolve(),
      totalBytes: this.source.sizeBytes(),
      startedMs: Date.now(),
    };
    this.starting = starting;
    try {
      const reply = await this.begin(req, emit, starting);
      if (!starting.prefill) emit('BACKUP_STARTED', reply);
      return reply;
    } finally {
      // A prefill's start goes on after the reply, and lets go itself.
      if (!starting.prefill) this.starting = null;
    }
  }

  private async begin(
    req: BackupRequest,
    emit: BackupEmit,
    starting: Starting,
  ): Promise<Record<string, unknown>> {
    const journalBytes = checkJournal(req.journalBytes ?? DEFAULT_JOURNAL_BYTES);
    checkMaxChunk(req.maxChunk ?? DEFAULT_COPY_MAX_CHUNK);
    const size = this.source.sizeBytes();
    const nbd = looksLikeNbdUri(req.target);
    if (nbd) checkNbdUri(req.target);
    else await prepareFile(req.target, size, req.sync);
    const method = req.method ?? 'auto';
    for (const [given, name] of [
      [req.keepOverlay, 'keep-overlay'],
      [req.prefillOverlay, 'prefill-overlay'],
      [req.mergeSpeed !== undefined, 'merge-speed'],
      [req.mergeQuietMs !== undefined, 'merge-quiet-ms'],
    ] as const)
      if (given === true && method !== 'redirect')
        throw new BackupError(
          'ERR_BACKUP_METHOD',
          `Parameter '${name}' needs method redirect, not ${method}`,
        );
    if (method === 'redirect') return this.startRedirect(req, size, nbd, emit, starting);
    let cloneRefused = '';
    // `auto` does not clone an image so fragmented that the clone would hold the writes long.
    if (method === 'auto') cloneRefused = await this.cloneTooSlow();
    if (method !== 'journal' && cloneRefused === '') {
      const r = await this.startFromClone(req, size, nbd, emit);
      if (typeof r !== 'string') return r;
      if (method === 'clone') throw new BackupError('ERR_BACKUP_CLONE', r);
      cloneRefused = r;
    }
    const { share, copier, started } = await this.startOnDevice(req, size, nbd, journalBytes, {
      readAround: req.readAround === true,
    });
    return this.run(
      this.newJob(req, share, copier, emit, started, size, null),
      started,
      started.heldUs,
      cloneRefused === '' ? {} : { 'method-reason': cloneRefused },
    );
  }

  /**
   * The journal and redirect methods' start: the share, the copier reading the image,
   * then the device's start instant (`device`: its method-specific arguments). Whatever
   * started is stopped again when a later step fails.
   */
  private async startOnDevice(
    req: BackupRequest,
    size: number,
    nbd: boolean,
    journalBytes: number,
    device: {
      readAround?: boolean;
      redirect?: RedirectBackupRequest;
    },
  ): Promise<{ share: BackupShare; copier: Copier; started: BackupStarted }> {
    const { share, copier } = await this.openCopier(req, size, nbd, journalBytes);
    return { share, copier, started: await this.startDevice(req, share, copier, device) };
  }

  /** The share and a copier with the target open (ERR_BACKUP_TARGET when it cannot be). */
  private async openCopier(
    req: BackupRequest,
    size: number,
    nbd: boolean,
    journalBytes: number,
  ): Promise<{ share: BackupShare; copier: Copier }> {
    const share = BackupShare.create(size, journalBytes);
    try {
      return { share, copier: await this.startCopier(req, share, size, nbd, this.source.image) };
    } catch (err) {
      share.release();
      throw new BackupError(
        'ERR_BACKUP_TARGET',
        `opening the target failed: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }

  /** The device's start instant; the copier and share go again when it fails. */
  private async startDevice(
    req: BackupRequest,
    share: BackupShare,
    copier: Copier,
    device: { readAround?: boolean; redirect?: RedirectBackupRequest },
  ): Promise<BackupStarted> {
    try {
      const started = (await this.source.host.command({
        type: 'backup-start',
        share: share.init,
        sync: req.sync,
        ...device,
      })) as BackupStarted;
      return started;
    } catch (err) {
      await copier.shutdown();
      share.release();
      throw err;
    }
  }

  /**
   * The redirect method: the device creates the overlay and redirects writes from
   * the instant on; the copier reads the image itself, with nothing journaled.
   */
  private async startRedirect(
    req: BackupRequest,
    size: number,
    nbd: boolean,
    emit: BackupEmit,
    starting: Starting,
  ): Promise<Record<string, unknown>> {
    if (this.source.engine === 'nbd' || this.source.engine === 'null')
      throw new BackupError(
        'ERR_BACKUP_METHOD',
        `method redirect needs a local image file; this device uses the ${this.source.engine} engine`,
      );
    const redirect: RedirectBackupRequest = {
      image: this.source.image,
      keep: req.keepOverlay === true || req.prefillOverlay === true,
      prefillBytesPerSecond: req.prefillOverlay === true ? req.speed : undefined,
    };
    // A pass over the whole disk at `speed` (minutes) before the instant: no reply waits for it.
    const prefill =
      req.prefillOverlay === true &&
      !(await redirectPrefilled(redirectPath(this.source.image), size));
    // The journal is not used: the smallest one the share takes.
    const { share, copier } = await this.openCopier(req, size, nbd, MIN_JOURNAL_BYTES);
    starting.share = share;
    const toInstant = async (): Promise<Record<string, unknown>> => {
      const started = await this.startDevice(req, share, copier, { redirect });
      const job = this.newJob(req, share, copier, emit, started, size, null);
      job.status.method = 'redirect';
      job.status['merge-speed'] =
        req.mergeSpeed ??
        (req.speed > 0 ? Math.min(req.speed, MAX_DEFAULT_MERGE_SPEED) : MAX_DEFAULT_MERGE_SPEED);
      job.status['merge-quiet-ms'] = req.mergeQuietMs ?? DEFAULT_MERGE_QUIET_MS;
      job.redirect = true;
      return this.run(job, started, started.heldUs, {});
    };
    if (!prefill) return toInstant();
    starting.prefill = true;
    starting.done = toInstant().then(
      (reply) => {
        this.starting = null;
        emit('BACKUP_STARTED', reply);
      },
      (err: unknown) => {
        this.starting = null;
        this.prefillFailed(starting, Atomics.load(share.i32, BACKUP.CANCEL) !== 0, err, emit);
      },
    );
    return { method: 'redirect', prefilling: true, 'total-bytes': size };
  }

  /** A prefill-overlay start that ended before its instant: the last backup, and its event. */
  private prefillFailed(
    starting: Starting,
    cancelled: boolean,
    err: unknown,
    emit: BackupEmit,
  ): void {
    const { req, totalBytes } = starting;
    const code = cancelled
      ? 'ERR_BACKUP_CANCELLED'
      : ((err as { code?: string }).code ?? 'ERR_BACKUP_FAILED');
    const reason = cancelled
      ? 'cancelled while the overlay was being prefilled'
      : `prefilling the overlay failed: ${(err as Error).message}`;
    const status: BackupStatus['status'] = cancelled ? 'cancelled' : 'failed';
    this.log('warn', `backup to ${req.target} ${status}: ${reason}`);
    this.last = {
      ...zeroCounters(req, 0),
      status,
      method: 'redirect',
      target: req.target,
      sync: req.sync,
      'sync-reason': '',
      speed: req.speed,
      'total-bytes': totalBytes,
      'started-ms': starting.startedMs,
      'finished-ms': Date.now(),
      error: reason,
      code,
    };
    emit(cancelled ? 'BACKUP_CANCELLED' : 'BACKUP_FAILED', {
      target: req.target,
      method: 'redirect',
      'copied-bytes': 0,
      'total-bytes': totalBytes,
      code,
      reason,
    });
  }

  /**
   * Why `auto` should not clone the image ('' when it may): FICLONE's time grows with the
   * image's extent count, and the guest's writes are held all that time. Unknown (no FIEMAP,
   * not a file, NBD): '' — the clone itself then decides.
   */
  private async cloneTooSlow(): Promise<string> {
    if (this.source.engine === 'nbd') return '';
    let extents: number;
    try {
      const f = await open(this.source.image, 'r');
      try {
        extents = await extentCount(f.fd);
      } finally {
        await f.close();
      }
    } catch {
      return '';
    }
    if (extents <= AUTO_CLONE_MAX_EXTENTS) return '';
    return `the image has ${extents} extents, more than auto clones (${AUTO_CLONE_MAX_EXTENTS}): the clone would hold the writes too long`;
  }

  /**
   * The clone method: holds the writes at the start instant, clones the
   * image, lets them go, then starts a copier that reads the clone. Returns
   * the reply, or why the image could not be cloned (nothing started then).
   */
  private async startFromClone(
    req: BackupRequest,
    size: number,
    nbd: boolean,
    emit: BackupEmit,
  ): Promise<Record<string, unknown> | string> {
    if (this.source.engine === 'nbd') return 'NBD images have no reflink';
    const st = await stat(this.source.image);
    if (!st.isFile()) return 'the image is not a regular file';
    const host = this.source.host;
    const clone = `${this.source.image}.vhost-rt-backup-clone`;
    // One a crashed daemon left behind; removed before the hold, which should stay short.
    await rm(clone, { force: true });
    // The journal is never used: the smallest one.
    const share = BackupShare.create(size, MIN_JOURNAL_BYTES);
    let started: BackupStarted;
    try {
      started = (await host.command({
        type: 'backup-start',
        share: share.init,
        sync: req.sync,
        clone: true,
      })) as BackupStarted;
    } catch (err) {
      share.release();
      throw err;
    }
    const t0 = performance.now();
    const refused = await this.cloneThenRelease(clone);
    const heldUs = started.heldUs + Math.round((performance.now() - t0) * 1000);
    const giveUp = async () => {
      await host.command({ type: 'backup-end', ok: false });
      share.release();
      await rm(clone, { force: true });
    };
    if (refused !== null) {
      await giveUp();
      return `FICLONE refused (${refused})`;
    }
    let copier: Copier;
    try {
      copier = await this.startCopier(req, share, size, nbd, clone);
    } catch (err) {
      await giveUp();
      throw new BackupError(
        'ERR_BACKUP_TARGET',
        `opening the target failed: ${(err as Error).message}`,
        { cause: err },
      );
    }
    return this.run(this.newJob(req, share, copier, emit, started, size, clone), started, heldUs);
  }

  /** Makes `job` current, lets its copier run and gives the reply to the start. */
  private async run(
    job: Job,
    started: BackupStarted,
    heldUs: number,
    extra: Record<string, unknown> = {},
  ): Promise<Record<string, unknown>> {
    this.current = job;
    await job.copier.request({ op: 'run' });
    return {
      method: job.status.method,
      ...extra,
      sync: started.sync,
      ...(started.reason === '' ? {} : { 'sync-reason': started.reason }),
      'total-bytes': job.status['total-bytes'],
      generation: started.generation,
      'start-held-us': heldUs,
    };
  }

  private async startCopier(
    req: BackupRequest,
    share: BackupShare,
    size: number,
    nbd: boolean,
    image: string,
  ): Promise<Copier> {
    let job: Job | null = null;
    const copier: Copier = new WorkerHost(
      'worker/backup-copier.js',
      {
        share: share.init,
        image,
        imageEngine: this.source.engine === 'nbd' ? 'nbd' : 'sync',
        target: req.target,
        targetEngine: nbd ? 'nbd' : 'linux-aio',
        diskBytes: size,
        speed: req.speed,
        policy: req.priority ?? 'idle',
        yieldMs: req.yieldMs ?? 0,
        maxChunk: req.maxChunk ?? DEFAULT_COPY_MAX_CHUNK,
      },
      {
        name: 'backup',
        log: this.log,
        onEvent: (e) => {
          job ??= this.current;
          if (job !== null) this.onEvent(job, e);
        },
      },
    );
    try {
      await copier.ready;
    } catch (err) {
      await copier.terminate();
      throw err;
    }
    return copier;
  }

  private newJob(
    req: BackupRequest,
    share: BackupShare,
    copier: Copier,
    emit: BackupEmit,
    started: BackupStarted,
    size: number,
    clone: string | null,
  ): Job {
    let finish: () => void = () => {};
    const done = new Promise<void>((resolve) => {
      finish = resolve;
    });
    const chunkBytes = share.chunkBytes;
    return {
      share,
      copier,
      emit,
      chunks: started.chunks,
      lastProgress: 0,
      done,
      finish,
      clone,
      redirect: false,
      status: {
        status: 'running',
        method: clone === null ? 'journal' : 'clone',
        target: req.target,
        sync: started.sync,
        'sync-reason': started.reason,
        speed: req.speed,
        'total-bytes': started.sync === 'full' ? size : Math.min(started.chunks * chunkBytes, size),
        ...zeroCounters(req, share.entries),
        'started-ms': Date.now(),
      },
    };
  }

  /** The shared counters into the status (read only when asked or at an event). */
  private refresh(job: Job): BackupStatus {
    const i32 = job.share.i32;
    const st = job.status;
    // Counters single writers publish with Atomics.store; each is read alone, none orders another.
    st['copied-bytes'] = Math.min(
      Atomics.load(i32, BACKUP.COPIED) * job.share.chunkBytes,
      st['total-bytes'],
    );
    st.journaled = Atomics.load(i32, BACKUP.JOURNALED);
    st['journal-reads'] = Atomics.load(i32, BACKUP.JOURNAL_READS);
    st['journal-full-waits'] = Atomics.load(i32, BACKUP.FULL_WAITS);
    st['journal-high-water'] = Atomics.load(i32, BACKUP.HIGH_WATER);
    st['copier-boosts'] = Atomics.load(i32, BACKUP.BOOSTS);
    st['copier-yields'] = Atomics.load(i32, BACKUP.YIELDS);
    st['copier-forced-reads'] = Atomics.load(i32, BACKUP.FORCED_READS);
    return { ...st };
  }

  private onEvent(job: Job, e: BackupCopierEvent): void {
    if (e.type === 'progress') {
      const now = Date.now();
      if (now - job.lastProgress < 1000) return;
      job.lastProgress = now;
      const s = this.refresh(job);
      job.emit('BACKUP_PROGRESS', {
        'copied-bytes': s['copied-bytes'],
        'total-bytes': s['total-bytes'],
        journaled: s.journaled,
      });
      return;
    }
    void this.end(job, e);
  }

  /** The copier finished (or failed): the device lets go, then the event. */
  private async end(
    job: Job,
    e: BackupCopierEvent & { type: 'completed' | 'failed' },
  ): Promise<void> {
    const ok = e.type === 'completed';
    let generation = 0;
    try {
      // A redirect backup's merge: at merge-speed while the guest does I/O, at the backup's
      // own speed while it is quiet (never slower than merge-speed: 0 is unpaced for both).
      const busyPace = job.status['merge-speed'] ?? 0;
      generation = (await this.source.host.command({
        type: 'backup-end',
        ok,
        mergeSpeed: busyPace,
        mergeQuietMs: job.status['merge-quiet-ms'],
        mergeQuietSpeed: quietMergePace(busyPace, job.status.speed),
      })) as number;
    } catch (err) {
      this.log(
        'warn',
        `backup: the device did not take the end of its backup: ${(err as Error).message}`,
      );
    }
    await job.copier.shutdown();
    if (job.clone !== null)
      await rm(job.clone, { force: true }).catch((err: unknown) =>
        this.log('warn', `backup: removing ${job.clone} failed: ${(err as Error).message}`),
      );
    const s = this.refresh(job);
    job.share.release();
    s['finished-ms'] = Date.now();
    const data: Record<string, unknown> = {
      target: s.target,
      method: s.method,
      sync: s.sync,
      'copied-bytes': s['copied-bytes'],
      'total-bytes': s['total-bytes'],
      journaled: s.journaled,
      'journal-reads': s['journal-reads'],
      'journal-full-waits': s['journal-full-waits'],
      'copier-boosts': s['copier-boosts'],
      'copier-yields': s['copier-yields'],
      'copier-forced-reads': s['copier-forced-reads'],
    };
    if (ok) {
      s.status = 'completed';
      job.emit('BACKUP_COMPLETED', { ...data, generation });
    } else {
      s.status = e.code === 'ERR_BACKUP_CANCELLED' ? 'cancelled' : 'failed';
      s.error = e.reason;
      s.code = e.code;
      this.log('warn', `backup to ${s.target} ${s.status}: ${e.reason}`);
      job.emit(s.status === 'cancelled' ? 'BACKUP_CANCELLED' : 'BACKUP_FAILED', {
        ...data,
        code: e.code,
        reason: e.reason,
      });
    }
    s.paused = false;
    this.last = s;
    this.current = null;
    job.finish();
    if (job.redirect) {
      s.merge = 'running';
      // The merge's commands change what query-backups shows of it: the last status.
      job.status = s;
      this.merge = job;
      void this.awaitMerge(job, s).finally(() => {
        this.merge = null;
        s.paused = false;
      });
    }
  }

  /** A redirect backup ended: BACKUP_MERGED once its overlay is back in the image. */
  private async awaitMerge(job: Job, s: BackupStatus): Promise<void> {
    const t0 = Date.now();
    try {
      const r = (await this.source.host.command({ type: 'redirect-merged' })) as {
        merged: boolean;
        bytes: number;
        remainingBytes: number;
        quietBytes: number;
        copiedBytes: number;
      };
      s['merged-bytes'] = r.bytes;
      s['merge-copied-bytes'] = r.copiedBytes;
      s['merge-remaining-bytes'] = r.remainingBytes;
      s['merge-quiet-bytes'] = r.quietBytes;
      s.merge = r.merged ? 'done' : 'left';
      if (r.merged) s['merged-ms'] = Date.now();
      job.emit('BACKUP_MERGED', {
        target: s.target,
        merged: r.merged,
        'merged-bytes': r.bytes,
        'remaining-bytes': r.remainingBytes,
        'merge-quiet-bytes': r.quietBytes,
        'merge-copied-bytes': r.copiedBytes,
        'merge-ms': Date.now() - t0,
      });
    } catch (err) {
      // The device went away: its overlay is merged when the image is opened next.
      this.log(
        'warn',
        `backup: the redirect overlay's merge was not seen to end: ${(err as Error).message}`,
      );
    }
  }

  /**
   * The running backup, for a command that changes it (`what` it would do, for the error);
   * throws {@link notRunning} when there is none.
   */
  private running(what: string): Job {
    if (this.current === null) throw this.notRunning(what);
    return this.current;
  }

  /**
   * ERR_BACKUP_NOT_RUNNING for a command that would `what` with nothing to change, naming
   * why: none started, its overlay still prefilling, or (asked of a merge) the merge ended.
   */
  private notRunning(what: string): BackupError {
    const why =
      this.starting?.prefill === true
        ? ' (its overlay is being prefilled: the disk pass starts after that)'
        : '';
    return new BackupError(
      'ERR_BACKUP_NOT_RUNNING',
      `no backup of this device is running to ${what}${why}`,
    );
  }

  /**
   * `backup-pause` (`paused` true) and `backup-resume` (false): the running backup's disk pass
   * stops before its next read, or goes on. Only the disk pass: the journal is still drained
   * (a guest write may wait for a free entry), so a paused backup never holds the guest, and
   * a redirect backup's guest writes still go to its overlay. Why an operator pauses: a
   * latency-critical stretch of the guest's work, during which the backup's reads should
   * not share the disk; the backup stays exact and resumes where it stopped. After a redirect
   * backup, its overlay's merge is what pauses (setMergePaused). Returns whether the state
   * changed (pausing a paused backup is not an error); BACKUP_PAUSED or BACKUP_RESUMED is sent
   * when it did. Refused (ERR_BACKUP_NOT_RUNNING) with no running backup and no merge,
   * including a backup still prefilling its overlay.
   */
  async setPaused(paused: boolean): Promise<boolean> {
    const merge = this.current === null ? this.merge : null;
    if (merge !== null) return this.setMergePaused(merge, paused);
    const job = this.running(paused ? 'pause' : 'resume');
    if (job.status.paused === paused) return false;
    job.status.paused = paused;
    // The main thread is PAUSED's only writer; the notify wakes a copier waiting on the journal.
    Atomics.store(job.share.i32, BACKUP.PAUSED, paused ? 1 : 0);
    Atomics.notify(job.share.i32, BACKUP.READY_HEAD);
    const st = this.refresh(job);
    job.emit(paused ? 'BACKUP_PAUSED' : 'BACKUP_RESUMED', {
      target: st.target,
      phase: 'copy',
      'copied-bytes': st['copied-bytes'],
      'total-bytes': st['total-bytes'],
    });
    return true;
  }

  /**
   * A redirect backup's merge (`merge`, ended) is paused or resumed: the copy in flight ends
   * and no other starts until resumed (WriteRedirect.setMergePaused); the guest's requests go
   * on as before. `paused` in the backup's status shows it, and BACKUP_PAUSED / BACKUP_RESUMED
   * say `phase: merge` with how far the merge is. A merge that ends as it is asked is
   * refused as no merge at all would be.
   */
  private async setMergePaused(merge: Job, paused: boolean): Promise<boolean> {
    const s = merge.status;
    if (s.paused === paused) return false;
    // Set before the device answers: a second pause meanwhile is then a no-op, not a second event.
    s.paused = paused;
    let r: MergeControlResult;
    try {
      r = await this.controlMerge({ paused });
    } catch (err) {
      s.paused = !paused;
      throw err;
    }
    if (!r.merging) {
      s.paused = false;
      throw this.notRunning(paused ? 'pause' : 'resume');
    }
    merge.emit(paused ? 'BACKUP_PAUSED' : 'BACKUP_RESUMED', {
      target: s.target,
      phase: 'merge',
      'merged-bytes': r.mergedBytes,
      'merge-copied-bytes': r.copiedBytes,
      'remaining-bytes': r.remainingBytes,
    });
    return true;
  }

  /** Sends `redirect-merge-set` to the device. */
  private async controlMerge(set: {
    paused?: boolean;
    mergeSpeed?: number;
    mergeQuietSpeed?: number;
  }): Promise<MergeControlResult> {
    return (await this.source.host.command({
      type: 'redirect-merge-set',
      ...set,
    })) as MergeControlResult;
  }

  /**
   * `backup-set-speed`: the running backup's disk pass goes at `speed` bytes/s (0: unpaced)
   * from its next write, without credit for the time it went slower; a redirect backup's
   * quiet merge pace follows (quietMergePace). The copier reads it from the share (a seqlock:
   * SPEED_SEQ odd while HI/LO are stored), woken through READY_HEAD when it waits for its
   * pace. Once a redirect backup has ended, its merge is what runs: `speed` becomes its
   * `merge-speed` (the pace while the guest does I/O; the quiet pace follows), from its next
   * copy. Answers which of the two it set. Refused (ERR_BACKUP_NOT_RUNNING) as setPaused is,
   * and for a speed that is not a safe non-negative integer (ERR_BACKUP_ARGS).
   */
  async setSpeed(speed: number): Promise<{ speed: number } | { 'merge-speed': number }> {
    if (!Number.isSafeInteger(speed) || speed < 0)
      throw new BackupError('ERR_BACKUP_ARGS', `speed must be an integer >= 0, not ${speed}`);
    const merge = this.current === null ? this.merge : null;
    if (merge !== null) {
      const s = merge.status;
      const r = await this.controlMerge({
        mergeSpeed: speed,
        mergeQuietSpeed: quietMergePace(speed, s.speed),
      });
      if (!r.merging) throw this.notRunning('set its speed');
      s['merge-speed'] = speed;
      return { 'merge-speed': speed };
    }
    const job = this.running('set its speed');
    job.status.speed = speed;
    const i32 = job.share.i32;
    // The main thread is the only writer of SPEED_*: the odd SEQ tells the copier a store is
    // under way, so it never takes HI of one speed with LO of another.
    const seq = Atomics.load(i32, BACKUP.SPEED_SEQ);
    Atomics.store(i32, BACKUP.SPEED_SEQ, seq + 1);
    Atomics.store(i32, BACKUP.SPEED_HI, Math.floor(speed / 2 ** 32));
    Atomics.store(i32, BACKUP.SPEED_LO, speed % 2 ** 32);
    Atomics.store(i32, BACKUP.SPEED_SEQ, seq + 2);
    Atomics.notify(i32, BACKUP.READY_HEAD);
    return { speed };
  }

  /** `backup-cancel`: the copier stops at its next step; resolves once the backup ended (BACKUP_CANCELLED). */
  async cancel(): Promise<boolean> {
    const s = this.starting;
    if (this.current === null && s?.prefill === true && s.share !== null) {
      // Stops the pass between two writes (the device reads CANCEL); a start that reached its
      // instant meanwhile is a running backup, which the copier then cancels at once.
      Atomics.store(s.share.i32, BACKUP.CANCEL, 1);
      await s.done;
      // (Read again: TypeScript keeps the null it saw before the await.)
      const now = this.current as Job | null;
      if (now?.share === s.share) await now.done;
      return true;
    }
    const job = this.current;
    if (job === null) return false;
    // The main thread is CANCEL's only writer; the notify wakes a copier waiting on the journal.
    Atomics.store(job.share.i32, BACKUP.CANCEL, 1);
    Atomics.notify(job.share.i32, BACKUP.READY_HEAD);
    await job.done;
    return true;
  }

  /**
   * `blockdev-snapshot`: with no write in flight (new ones held), clones
   * the image to `target` with FICLONE (libuv's COPYFILE_FICLONE_FORCE is
   * the ioctl itself): instant on XFS / btrfs. Where the file system cannot,
   * falls back to a full backup to `target` (the reply says which).
   */
  async snapshot(target: string, emit: BackupEmit): Promise<Record<string, unknown>> {
    const busy = this.busy();
    if (busy !== null) throw busy;
    if (this.source.engine === 'nbd' || looksLikeNbdUri(target))
      return {
        ...(await this.start({ target, sync: 'full', speed: 0, method: 'journal' }, emit)),
        method: 'backup',
        reason: 'NBD images and targets have no reflink',
      };
    // From the hold to the release: how long the guest's writes waited for the clone.
    const t0 = performance.now();
    await this.source.host.command({ type: 'hold-writes' });
    const refused = await this.cloneThenRelease(target);
    if (refused === null)
      return { method: 'reflink', 'held-us': Math.round((performance.now() - t0) * 1000) };
    return {
      ...(await this.start({ target, sync: 'full', speed: 0, method: 'journal' }, emit)),
      method: 'backup',
      reason: `FICLONE refused (${refused})`,
    };
  }

  /**
   * With the device's writes held: clones the image to `to` with FICLONE
   * (libuv's COPYFILE_FICLONE_FORCE is the ioctl itself), then lets the
   * writes go whatever happened. Returns why it was refused, null when cloned.
   */
  private async cloneThenRelease(to: string): Promise<string | null> {
    try {
      await copyFile(this.source.image, to, constants.COPYFILE_FICLONE_FORCE);
      return null;
    } catch (err) {
      return (err as { code?: string }).code ?? (err as Error).message;
    } finally {
      await this.source.host.command({ type: 'release-writes' });
    }
  }

  /** Cancels a running backup and waits for its end (device-del, shutdown). */
  async close(): Promise<void> {
    await this.cancel();
  }
}

/** A backup's counters before it copied anything, with the settings `req` gave. */
function zeroCounters(
  req: BackupRequest,
  entries: number,
): Pick<
  BackupStatus,
  | 'copied-bytes'
  | 'journaled'
  | 'journal-reads'
  | 'journal-full-waits'
  | 'journal-entries'
  | 'journal-high-water'
  | 'copier-boosts'
  | 'yield-ms'
  | 'read-around'
  | 'max-chunk'
  | 'copier-yields'
  | 'copier-forced-reads'
  | 'paused'
> {
  return {
    'copied-bytes': 0,
    journaled: 0,
    'journal-reads': 0,
    'journal-full-waits': 0,
    'journal-entries': entries,
    'journal-high-water': 0,
    'copier-boosts': 0,
    'yield-ms': req.yieldMs ?? 0,
    'read-around': req.readAround === true,
    'max-chunk': req.maxChunk ?? DEFAULT_COPY_MAX_CHUNK,
    'copier-yields': 0,
    'copier-forced-reads': 0,
    paused: false,
  };
}

/** FIEMAP's extent count of the file under `fd`, off this thread (see native extentCountAsync). */
export function extentCount(fd: number): Promise<number> {
  return new Promise((resolve, reject) =>
    native.extentCountAsync(fd, (err, extents) => (err === null ? resolve(extents) : reject(err))),
  );
}

function checkMaxChunk(bytes: number): void {
  if (
    !Number.isSafeInteger(bytes) ||
    bytes < MIN_COPY_MAX_CHUNK ||
    bytes > MAX_COPY_MAX_CHUNK ||
    bytes % BACKUP_CHUNK_BYTES !== 0
  )
    throw new RangeError(
      `Parameter 'max-chunk' must be a multiple of ${BACKUP_CHUNK_BYTES} in ${MIN_COPY_MAX_CHUNK}..${MAX_COPY_MAX_CHUNK}, not ${bytes}`,
    );
}

function checkJournal(bytes: number): number {
  if (!Number.isSafeInteger(bytes) || bytes < MIN_JOURNAL_BYTES || bytes > MAX_JOURNAL_BYTES)
    throw new RangeError(
      `Parameter 'journal-size' must be in ${MIN_JOURNAL_BYTES}..${MAX_JOURNAL_BYTES}, not ${bytes}`,
    );
  return bytes;
}

/**
 * A raw target file: a full backup writes it whole (created, cut to the
 * disk's size); an incremental one updates a previous backup in place, which
 * must exist.
 */
async function prepareFile(
  path: string,
  size: number,
  sync: 'full' | 'incremental',
): Promise<void> {
  if (sync === 'incremental') {
    try {
      await stat(path);
    } catch (err) {
      throw new BackupError(
        'ERR_BACKUP_TARGET',
        `an incremental backup updates a previous one: ${path} (${(err as { code?: string }).code ?? 'missing'})`,
        { cause: err },
      );
    }
    await truncate(path, size);
    return;
  }
  try {
    const f = await open(path, 'w');
    await f.truncate(size);
    await f.close();
  } catch (err) {
    throw new BackupError(
      'ERR_BACKUP_TARGET',
      `cannot create ${path} (${(err as { code?: string }).code ?? 'error'})`,
      { cause: err },
    );
  }
}
