/**
 * The life of a daemon command: announce readiness (and write --pidfile), print counters on
 * SIGUSR1, answer the control socket (--control-socket), and on SIGINT/SIGTERM
 * (or the control socket's `quit`) stop accepting, complete in-flight work,
 * print the counters and return.
 */
import { type ControlledDevice, type DeviceChanges, QmpServer } from '../control/index.js';
import { type MetricsAddress, MetricsServer } from '../control/metrics.js';
import { readyStatus, reportFrontends, SdNotifier } from '../control/sd-notify.js';
import type { Logger } from '../log.js';
import { reopenLogFiles } from '../logger/index.js';
import type { ThreadRtState } from '../rt/index.js';
import { closeUnmatchedInherited } from '../sockets/activation.js';
import type { SocketPermissions } from '../sockets/listen.js';
import { onWorkerFailure } from '../thread/index.js';
import type { VhostUserDevice } from '../vhost-user/device-backend.js';
import { VhostUserServer } from '../vhost-user/server.js';
import { removePidfile, writePidfile } from './pidfile.js';

/** A started daemon command as {@link serveUntilSignal} drives it: ready lines, counters, close. */
export interface RunningService {
  /** Lines logged once everything listens; the first contains "ready". */
  readyLines(): string[];
  /** One line of counters. */
  statsLine(): string;
  /** Stops accepting, completes in-flight requests and releases everything. */
  close(): Promise<void>;
  /** The devices/ports the control socket reports, in order (device-add/del change it in place). */
  controlled?: readonly ControlledDevice[];
  /** `device-add` / `device-del` on the control socket; absent: not supported. */
  changes?: DeviceChanges;
  /**
   * SIGHUP's part that is the service's own (blk: re-read every image's
   * size); `emit` sends a control-socket event (BLOCK_RESIZED).
   */
  hangup?(emit: (name: string, data: Record<string, unknown>) => void): Promise<void>;
}

/** Where the control socket listens (`--control-socket`), and its permissions. */
export interface ControlSocketOptions {
  /** undefined: no control socket. */
  path: string | undefined;
  permissions?: SocketPermissions;
  /** `--pidfile`: written once ready, removed on exit; undefined: none. */
  pidfile?: string;
  /** `--metrics`: where /metrics is served (main thread, read on scrape); undefined: nowhere. */
  metrics?: MetricsAddress;
}

/** Opens the control socket; if it cannot be opened, closes `service` and rethrows. */
async function openControl(
  service: RunningService,
  control: ControlSocketOptions,
  log: Logger,
  onQuit: () => void,
): Promise<QmpServer | null> {
  if (control.path === undefined) return null;
  try {
    return await QmpServer.open({
      path: control.path,
      permissions: control.permissions,
      devices: service.controlled ?? [],
      changes: service.changes,
      log,
      onQuit,
    });
  } catch (err) {
    await service.close();
    throw err;
  }
}

/**
 * Opens `--metrics` (logging where it serves); if it cannot be opened,
 * closes the control socket and `service`, and rethrows.
 */
async function openMetrics(
  service: RunningService,
  control: ControlSocketOptions,
  log: Logger,
  qmp: QmpServer | null,
): Promise<MetricsServer | null> {
  if (control.metrics === undefined) return null;
  try {
    const m = await MetricsServer.open({
      address: control.metrics,
      permissions: control.permissions,
      devices: service.controlled ?? [],
      log,
    });
    log('info', `metrics: serving ${m.url}`);
    return m;
  } catch (err) {
    await qmp?.close();
    await service.close();
    throw err;
  }
}

/** Formats counters as `name=value` pairs. */
export function formatStats(stats: Record<string, number>): string {
  return Object.entries(stats)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
}

/**
 * SIGHUP: reopens every log file (logrotate) on the logger threads and runs
 * the service's own part (blk: re-read image sizes); the daemon goes on.
 */
async function hangup(service: RunningService, log: Logger, qmp: QmpServer | null): Promise<void> {
  log('info', 'SIGHUP: reopening log files and re-reading image sizes');
  const [files, own] = await Promise.allSettled([
    reopenLogFiles(),
    service.hangup?.((name, data) => qmp?.emit(name, data)),
  ]);
  if (files.status === 'rejected')
    log('warn', `SIGHUP: reopening log files failed: ${(files.reason as Error).message}`);
  if (own.status === 'rejected') log('warn', `SIGHUP: ${(own.reason as Error).message}`);
  log(
    'info',
    `SIGHUP: done (${files.status === 'fulfilled' ? files.value : 0} log file(s) reopened)`,
  );
}

/**
 * Runs `service` until SIGINT or SIGTERM (or `quit` on the control socket,
 * which takes the same stop path and gets DRAIN_COMPLETE before the exit).
 * SIGHUP reopens log files and re-reads image sizes; SIGUSR1 logs the counters.
 */
export async function serveUntilSignal(
  service: RunningService,
  log: Logger,
  control: ControlSocketOptions = { path: undefined },
): Promise<void> {
  let stop: (signal: string) => void = () => {};
  const systemd = SdNotifier.fromEnv(process.env, log);
  const qmp = await openControl(service, control, log, () => stop('quit (control socket)'));
  const metrics = await openMetrics(service, control, log, qmp);
  try {
    if (control.pidfile !== undefined) writePidfile(control.pidfile);
  } catch (err) {
    await metrics?.close();
    await qmp?.close();
    await service.close();
    throw err;
  }
  const onUsr1 = () => log('info', `stats: ${service.statsLine()}`);
  process.on('SIGUSR1', onUsr1);
  const onHup = () => void hangup(service, log, qmp);
  process.on('SIGHUP', onHup);
  let unwatch: () => void = () => {};
  const stopped = new Promise<void>((resolve) => {
    let stopping = false;
    stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      systemd.stopping(`${signal}: completing in-flight requests`);
      log('info', `${signal}: completing in-flight requests`);
      void service.close().then(async () => {
        log('info', `stats: ${service.statsLine()}`);
        qmp?.emit('DRAIN_COMPLETE', {});
        await qmp?.close();
        await metrics?.close();
        resolve();
      });
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
    unwatch = onWorkerFailure((err) => {
      log(
        'error',
        `${err.message}: stopping (exit status 1) so that a supervisor can restart the daemon`,
      );
      process.exitCode = 1;
      stop('worker failure');
    });
  });
  // Announced only now that the signal handlers are in place: a supervisor that signals the
  // daemon the moment it reads "ready" gets a drained stop, never the default (killed) one.
  for (const line of service.readyLines()) log('info', line);
  for (const s of closeUnmatchedInherited())
    log('warn', `inherited socket ${s} matches no socket of this daemon: closed`);
  systemd.ready(readyStatus(service.controlled ?? [], service.readyLines().length));
  reportFrontends(systemd, service.controlled ?? []);
  await stopped;
  unwatch();
  process.off('SIGUSR1', onUsr1);
  process.off('SIGHUP', onHup);
  if (control.pidfile !== undefined) removePidfile(control.pidfile);
}

/** "worker tid N policy P priority N cpus L", as every ready line reports a worker thread. */
export function describeWorker(t: ThreadRtState): string {
  return `worker tid ${t.tid} policy ${t.policy} priority ${t.priority} cpus ${t.cpus.join(',')}`;
}

/** The vhost-user sockets of one daemon, opened together and closed together. */
export class ServerSet {
  private constructor(readonly servers: VhostUserServer[]) {}

  /**
   * Listens on every socket; if one cannot be opened, closes those already
   * open, runs `release` (the devices' shutdown) and rethrows.
   */
  static async listen(
    entries: readonly { path: string; device: VhostUserDevice }[],
    log: Logger,
    release: () => Promise<void>,
    permissions: SocketPermissions = {},
  ): Promise<ServerSet> {
    const servers: VhostUserServer[] = [];
    try {
      for (const e of entries)
        servers.push(new VhostUserServer(e.path, e.device, log, permissions));
    } catch (err) {
      await Promise.all(servers.map((s) => s.close()));
      await release();
      throw err;
    }
    return new ServerSet(servers);
  }

  /** Closes every socket (completing in-flight requests) and logs how many front ends were served. */
  async close(log: Logger): Promise<void> {
    await Promise.all(this.servers.map((s) => s.close()));
    const served = this.servers.reduce((n, s) => n + s.connections, 0);
    log('info', `served ${served} front end(s); exiting`);
  }
}
