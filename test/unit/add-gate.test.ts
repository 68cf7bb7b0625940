/** The add gate: what a stopping daemon does with `device-add` (src/worker/add-gate.ts). */
import { describe, expect, it } from 'vitest';
import { AddGate, DaemonStoppingError } from '../../src/worker/add-gate.js';

describe('AddGate', () => {
  it('admits additions while open, without undoing them', async () => {
    const gate = new AddGate('device');
    let undone = 0;
    gate.check();
    await gate.admit(async () => {
      undone++;
    });
    expect(undone).toBe(0);
  });

  it('refuses an addition once closed, naming what and why', () => {
    const gate = new AddGate('port');
    gate.close();
    let caught: unknown;
    try {
      gate.check();
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(DaemonStoppingError);
    expect(caught).toMatchObject({
      code: 'ERR_DAEMON_STOPPING',
      message: 'the daemon is stopping: no port is added',
    });
  });

  it('undoes an addition that was starting when it closed, then refuses it', async () => {
    const gate = new AddGate('device');
    gate.check();
    gate.close();
    const order: string[] = [];
    await expect(
      gate.admit(async () => {
        await Promise.resolve();
        order.push('undone');
      }),
    ).rejects.toMatchObject({ code: 'ERR_DAEMON_STOPPING' });
    expect(order).toEqual(['undone']);
  });
});
