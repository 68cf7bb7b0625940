/**
 * The life of a daemon command: announce readiness, print counters on
 * SIGUSR1, and on SIGINT/SIGTERM stop accepting, complete in-flight work,
 * print the counters and return.
 */
import type { Logger } from '../vhost-user/connection.js';

export interface RunningService {
  /** Lines logged once everything listens; the first contains "ready". */
  readyLines(): string[];
  /** One line of counters. */
  statsLine(): string;
  /** Stops accepting, completes in-flight requests and releases everything. */
  close(): Promise<void>;
}

/** Formats counters as `name=value` pairs. */
export function formatStats(stats: Record<string, number>): string {
  return Object.entries(stats)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
}

/** Runs `service` until SIGINT or SIGTERM. */
export async function serveUntilSignal(service: RunningService, log: Logger): Promise<void> {
  for (const line of service.readyLines()) log('info', line);
  const onUsr1 = () => log('info', `stats: ${service.statsLine()}`);
  process.on('SIGUSR1', onUsr1);
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log('info', `${signal}: completing in-flight requests`);
      void service.close().then(() => {
        log('info', `stats: ${service.statsLine()}`);
        resolve();
      });
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  process.off('SIGUSR1', onUsr1);
}
