/**
 * A daemon that has begun to stop adds no device, blk or net port: `device-add` is refused with
 * ERR_DAEMON_STOPPING, and a device whose worker was still starting when the stop began is
 * ended rather than added, so that no worker outlives the shutdown and keeps the daemon from
 * exiting (seen once in CI: a device-add accepted after "exiting" left the daemon running past
 * its SIGTERM).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Logger } from '../../src/log.js';
import { BlkDeviceSet, type BlkDeviceSpec } from '../../src/worker/blk-service.js';
import { NetSwitch } from '../../src/worker/net-service.js';
import { TEST_SWITCH_OPTIONS, testBlkSpec } from '../support/service-specs.js';

const MiB = 1024 * 1024;
let dir: string;
const log: Logger = () => {};

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-stopping-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function spec(name: string): BlkDeviceSpec {
  const image = join(dir, `${name}.img`);
  writeFileSync(image, Buffer.alloc(4 * MiB));
  return testBlkSpec(image, name);
}

describe('blk device-add while the daemon stops', () => {
  it('is refused once the stop began, naming why; the set shuts down', async () => {
    const set = await BlkDeviceSet.start([spec('first')], false, log);
    set.stopAdding();
    await expect(set.add(spec('late'))).rejects.toMatchObject({
      code: 'ERR_DAEMON_STOPPING',
      message: 'the daemon is stopping: no device is added',
    });
    expect(set.devices.length).toBe(1);
    await set.shutdown();
  });

  it('ends a device whose worker was starting when the stop began, instead of adding it', async () => {
    const set = await BlkDeviceSet.start([spec('base')], false, log);
    // The add is under way (its worker starting) when the stop begins, as a device-add
    // racing a SIGTERM is.
    const adding = set.add(spec('racing'));
    set.stopAdding();
    await expect(adding).rejects.toMatchObject({ code: 'ERR_DAEMON_STOPPING' });
    expect(set.devices.length).toBe(1);
    // The shutdown ends (only) the set's own device; the racing one's worker is gone already.
    await set.shutdown();
  });
});

/** A switch of one vhost-user port and one spare slot (`--spare-ports 1`). */
function startSwitch(): Promise<NetSwitch> {
  return NetSwitch.start(
    [{ kind: 'vhost-user', socketPath: join(dir, 'port0.sock'), mac: port(1).mac }],
    TEST_SWITCH_OPTIONS,
    log,
    1,
  );
}

function port(n: number) {
  return {
    kind: 'vhost-user' as const,
    socketPath: join(dir, `port${n}.sock`),
    mac: Uint8Array.of(0x52, 0x54, 0, 0, 0, n),
  };
}

describe('net device-add while the daemon stops', () => {
  it('is refused once the stop began, naming why; the switch shuts down', async () => {
    const sw = await startSwitch();
    sw.stopAdding();
    await expect(sw.add(1, port(2))).rejects.toMatchObject({
      code: 'ERR_DAEMON_STOPPING',
      message: 'the daemon is stopping: no port is added',
    });
    expect(sw.ports.length).toBe(1);
    await sw.shutdown();
  });

  it('ends a port whose worker was starting when the stop began, instead of adding it', async () => {
    const sw = await startSwitch();
    const adding = sw.add(1, port(2));
    sw.stopAdding();
    await expect(adding).rejects.toMatchObject({ code: 'ERR_DAEMON_STOPPING' });
    expect(sw.ports.length).toBe(1);
    await sw.shutdown();
  });
});
