/**
 * A blk daemon whose front end writes verified blocks without pause: the set-up the live
 * backup tests share (blk-backup, blk-backup-redirect), so each test says only what it does
 * to the backup while the guest-like load runs.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BlkDriver } from '../frontend/index.js';
import { BLOCK, WriteModel } from './backup-model.js';
import { type Daemon, startBlkDaemon } from './daemon.js';
import { QmpClient } from './qmp-client.js';

/** Where and how {@link writingDisk} sets up its disk. */
export interface WritingDiskOptions {
  /** Directory of the image, sockets and control socket. */
  dir: string;
  /** Names the image, sockets and control socket in `dir`. */
  name: string;
  /** Seeds the write model's block choice. */
  seed: number;
  /** The disk's size (bytes). */
  size: number;
  /** The image to open (an NBD URI, say); default a new zeroed file of `size` in `dir`. */
  image?: string;
  /** More arguments of `vhost-rt blk` (`--aio io_uring`, ...). */
  extra?: string[];
}

/** A running {@link writingDisk}. */
export interface WritingDisk {
  /** The image path or URI the daemon opened. */
  image: string;
  daemon: Daemon;
  /** A control-socket client. */
  c: QmpClient;
  driver: BlkDriver;
  /** The front end's write model: what it wrote and completed. */
  model: WriteModel;
  /** Ends the load and waits for its last write. */
  stopWrites(): Promise<void>;
  /** Also closes the front end and the client; the daemon runs on. */
  closeClients(): Promise<void>;
  /** Also stops the daemon (SIGTERM). */
  close(): Promise<void>;
}

/**
 * Starts `vhost-rt blk` (one queue, a control socket) on a disk and a front end whose write
 * model keeps 8 writes in flight until `stopWrites`.
 */
export async function writingDisk(o: WritingDiskOptions): Promise<WritingDisk> {
  const image = o.image ?? join(o.dir, `${o.name}.img`);
  if (o.image === undefined) writeFileSync(image, Buffer.alloc(o.size));
  const socket = join(o.dir, `${o.name}.sock`);
  const control = join(o.dir, `${o.name}.qmp`);
  const daemon = await startBlkDaemon(image, socket, control, o.extra);
  const c = await QmpClient.connect(control);
  const driver = await BlkDriver.create({ socketPath: socket });
  const model = new WriteModel(o.size / BLOCK, o.seed);
  let stop = false;
  const load = model.run(driver, 8, () => stop);
  const stopWrites = async () => {
    stop = true;
    await load;
  };
  let clientsClosed = false;
  const closeClients = async () => {
    await stopWrites();
    if (clientsClosed) return;
    clientsClosed = true;
    await driver.close();
    c.close();
  };
  const close = async () => {
    await closeClients();
    await daemon.stop();
  };
  return { image, daemon, c, driver, model, stopWrites, closeClients, close };
}
