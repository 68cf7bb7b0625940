/**
 * End to end with a stock QEMU (TCG): the guest's 16550 UART is served by
 * `vhost-rt serial` through `-chardev socket,...,path=SOCK -serial chardev:s0`.
 * The harness keeps ttyS0 on stdio for its own start/exit markers, so the
 * UART under test is a second one, the guest's ttyS1 (extraArgs come after
 * the harness's `-serial stdio`). The guest writes 10,000 numbered lines as
 * fast as it can; the log file must hold all of them, in order, none
 * duplicated. Then a line typed into the input socket through
 * `vhost-rt attach` must reach a program reading ttyS1 in the guest.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, type Daemon, startDaemon } from '../support/daemon.js';
import { ensureGuestImage, runGuest } from '../support/qemu.js';
import { waitFor } from '../support/wait.js';

const LINES = 10_000;

let dir: string;
let daemon: Daemon;

beforeAll(async () => {
  ensureGuestImage();
  dir = mkdtempSync(join(tmpdir(), 'vhost-rt-serial-e2e-'));
  daemon = await startDaemon([
    'serial',
    '--socket-path',
    join(dir, 'uart.sock'),
    '--log',
    join(dir, 'uart.log'),
    '--input',
    join(dir, 'uart.in'),
  ]);
}, 60_000);

afterAll(async () => {
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Raw mode (no \n -> \r\n, no echo), 10,000 lines in one awk, then one line of input. */
const SCRIPT = `
exec 3<>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo
t0=$(now_ns)
awk 'BEGIN { for (i = 0; i < ${LINES}; i++) printf "line %05d\\n", i }' >&3
t1=$(now_ns)
echo "SERIAL_WRITE_NS=$((t1 - t0))"
echo READY_FOR_INPUT >&3
line=$(timeout 60 head -n 1 <&3)
echo "GUEST_GOT=[$line]"
`;

/** Types `text` into the input socket with the real `vhost-rt attach` command. */
function attachAndType(text: string): Promise<number | null> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI, 'attach', join(dir, 'uart.in')], {
      stdio: ['pipe', 'ignore', 'inherit'],
    });
    p.stdin.end(text);
    p.on('exit', (code) => resolve(code));
  });
}

/** Waits for READY_FOR_INPUT in the log, then types one line. */
async function typeWhenReady(): Promise<number | null> {
  const logPath = join(dir, 'uart.log');
  await waitFor(
    () => existsSync(logPath) && readFileSync(logPath, 'latin1').includes('READY_FOR_INPUT\n'),
    'READY_FOR_INPUT in the guest log',
    110_000,
  );
  return attachAndType('ping from the host\n');
}

describe('guest UART through vhost-rt serial', () => {
  it('logs 10,000 lines in order without loss or duplicates, and delivers typed input', async () => {
    const sock = join(dir, 'uart.sock');
    const typed = typeWhenReady();
    typed.catch(() => {}); // handled: awaited (and its error reported) after the guest's run
    const result = await runGuest({
      script: SCRIPT,
      timeoutMs: 120_000,
      extraArgs: ['-chardev', `socket,id=s0,path=${sock}`, '-serial', 'chardev:s0'],
    });
    expect(await typed).toBe(0);
    expect(result.exitCode).toBe(0);
    expect(result.output).toContain('GUEST_GOT=[ping from the host]');
    const log = readFileSync(join(dir, 'uart.log'), 'latin1');
    const lines = log.split('\n').filter((l) => l.startsWith('line '));
    expect(lines.length).toBe(LINES);
    lines.forEach((l, i) => {
      if (l !== `line ${String(i).padStart(5, '0')}`) expect(l).toBe(`line ${i}`);
    });
    const ns = Number(/SERIAL_WRITE_NS=(\d+)/.exec(result.output)?.[1] ?? 0);
    console.log(`guest wrote ${LINES} lines (${log.length} bytes) in ${(ns / 1e6).toFixed(0)} ms`);
  }, 150_000);
});
