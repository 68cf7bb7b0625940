/** `vhost-rt blk`: one virtio-blk device on one vhost-user socket. */
import { BlkDeviceHost } from '../devices/blk/host.js';
import { unlockMemory } from '../rt/index.js';
import { VhostUserServer } from '../vhost-user/server.js';
import type { BlkCommand } from './args.js';
import { stderrLogger } from './log.js';

function formatStats(stats: Record<string, number>): string {
  return Object.entries(stats)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
}

export async function runBlk(cmd: BlkCommand): Promise<void> {
  const log = stderrLogger('vhost-rt[blk]', cmd.quiet);
  // mlockall is process-wide and V8 aborts when a thread ends with memory locked: unlock on the way out.
  if (cmd.rt.mlock) process.once('exit', unlockMemory);
  const device = await BlkDeviceHost.start(cmd.blk, cmd.rt, log);
  let server: VhostUserServer;
  try {
    server = new VhostUserServer(cmd.socketPath, device, log);
  } catch (err) {
    await device.shutdown();
    throw err;
  }
  const t = device.thread;
  const e = device.engineInfo;
  log(
    'info',
    `ready: socket ${cmd.socketPath}, image ${cmd.blk.image} (${e.sizeBytes} bytes, ${e.engine}, ` +
      `${e.direct ? 'O_DIRECT' : 'buffered'}), ${cmd.blk.queues} queue(s), worker tid ${t.tid} ` +
      `policy ${t.policy} priority ${t.priority} cpus ${t.cpus.join(',')}`,
  );
  process.on('SIGUSR1', () => log('info', `stats: ${formatStats(device.stats.snapshot())}`));
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log('info', `${signal}: completing in-flight requests`);
      void server
        .close()
        .then(() => device.shutdown())
        .then(() => {
          log('info', `stats: ${formatStats(device.stats.snapshot())}`);
          log('info', `served ${server.connections} front end(s); exiting`);
          resolve();
        });
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}
