/**
 * A real libvirt for end-to-end tests, without systemd: `virtlogd -d` and
 * `libvirtd -d` started by the test and stopped afterwards (Debian's
 * libvirt-daemon-system, libvirt-clients). libvirtd gets its own config file,
 * pid files and a private socket directory, so `virsh -c
 * qemu:///system?socket=...` reaches this instance only; the QEMU driver's
 * state, log and domain directories are the system ones (compiled into a
 * privileged libvirtd), and every domain a test defines is undefined again.
 * QEMU runs as libvirt-qemu: files it opens must be reachable by that user.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { guestImageDir, newcArchive } from './qemu.js';
import { waitFor } from './wait.js';

/** What a virsh run printed. */
export interface VirshResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Why libvirt cannot be used here (a missing binary), or null when it can. */
export function libvirtMissing(): string | null {
  for (const bin of ['libvirtd', 'virtlogd', 'virsh']) {
    if (spawnSync('sh', ['-c', `command -v ${bin}`]).status !== 0)
      return `${bin} not found (apt-get install libvirt-daemon-system libvirt-clients; scripts/setup.sh installs them)`;
  }
  return null;
}

/** Whether process `pid` still exists. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function readPid(path: string): number | null {
  try {
    const pid = Number(readFileSync(path, 'utf8').trim());
    return pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/** A running libvirtd (and the virtlogd it logs QEMU's output through). */
export class Libvirt {
  /** The URI virsh uses to reach this libvirtd. */
  readonly uri: string;
  private readonly pids: string[] = [];
  private readonly defined = new Set<string>();

  private constructor(readonly dir: string) {
    this.uri = `qemu:///system?socket=${join(dir, 'run', 'libvirt-sock')}`;
  }

  /**
   * Starts virtlogd (unless one already serves /run/libvirt/virtlogd-sock)
   * and libvirtd under `dir`, and resolves once virsh gets an answer (the
   * first start probes QEMU's capabilities: several seconds).
   */
  static async start(dir: string, timeoutMs = 60_000): Promise<Libvirt> {
    const lv = new Libvirt(dir);
    mkdirSync(join(dir, 'run'), { recursive: true });
    const log = (name: string) => `log_outputs = "3:file:${join(dir, `${name}.log`)}"\n`;
    writeFileSync(join(dir, 'virtlogd.conf'), log('virtlogd'));
    writeFileSync(
      join(dir, 'libvirtd.conf'),
      `unix_sock_dir = "${join(dir, 'run')}"\nunix_sock_rw_perms = "0700"\n` +
        `auth_unix_rw = "none"\nauth_unix_ro = "none"\n${log('libvirtd')}`,
    );
    try {
      if (!existsSync('/run/libvirt/virtlogd-sock') || !lv.virtlogdListening()) {
        lv.daemon('virtlogd', ['-d', '-f', join(dir, 'virtlogd.conf')]);
      }
      lv.daemon('libvirtd', ['-d', '-f', join(dir, 'libvirtd.conf')]);
      await waitFor(
        async () => (await lv.virsh(['version'], 20_000)).code === 0,
        () => `libvirtd to answer on ${lv.uri} (log: ${lv.logTail()})`,
        timeoutMs,
      );
    } catch (err) {
      await lv.stop();
      throw err;
    }
    return lv;
  }

  /** Whether a virtlogd already listens (a stale socket file is not one). */
  private virtlogdListening(): boolean {
    return spawnSync('sh', ['-c', 'pgrep -x virtlogd >/dev/null']).status === 0;
  }

  /** Runs `name -d ... -p PIDFILE`; the pid file is how {@link stop} finds it. */
  private daemon(name: string, args: string[]): void {
    const pidfile = join(this.dir, `${name}.pid`);
    const r = spawnSync(name, [...args, '-p', pidfile], { encoding: 'utf8', timeout: 30_000 });
    if (r.status !== 0) throw new Error(`${name} -d failed (${r.status}): ${r.stderr}`);
    this.pids.push(pidfile);
  }

  /** The last lines of libvirtd's log, for failure messages. */
  logTail(): string {
    try {
      return readFileSync(join(this.dir, 'libvirtd.log'), 'utf8').split('\n').slice(-8).join('\n');
    } catch {
      return '(no log)';
    }
  }

  /** Runs `virsh -c URI ARGS`; killed after `timeoutMs`. */
  virsh(args: string[], timeoutMs = 60_000): Promise<VirshResult> {
    return new Promise((resolve) => {
      const proc: ChildProcess = spawn('virsh', ['-c', this.uri, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      proc.stdout?.on('data', (d) => {
        stdout += d;
      });
      proc.stderr?.on('data', (d) => {
        stderr += d;
      });
      const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
      proc.on('exit', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      });
    });
  }

  /** `virsh define` of `xml`; the domain is undefined again by {@link undefine} or {@link stop}. */
  async define(name: string, xml: string): Promise<void> {
    const file = join(this.dir, `${name}.xml`);
    writeFileSync(file, xml);
    const r = await this.virsh(['define', file]);
    if (r.code !== 0) throw new Error(`virsh define ${name}: ${r.stderr}`);
    this.defined.add(name);
  }

  /** The domain's state as `virsh domstate` prints it ('running', 'shut off', ...). */
  async state(name: string): Promise<string> {
    return (await this.virsh(['domstate', name])).stdout.trim();
  }

  /** Destroys (if running) and undefines `name`. */
  async undefine(name: string): Promise<void> {
    if ((await this.state(name)) !== 'shut off') await this.virsh(['destroy', name]);
    await this.virsh(['undefine', name]);
    this.defined.delete(name);
  }

  /** Undefines the test's domains, then stops libvirtd and virtlogd and waits for them to exit. */
  async stop(): Promise<void> {
    for (const name of [...this.defined]) await this.undefine(name);
    for (const pidfile of this.pids.reverse()) {
      const pid = readPid(pidfile);
      if (pid === null) continue;
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        continue;
      }
      await waitFor(() => !alive(pid), `pid ${pid} (${pidfile}) to exit`, 30_000);
    }
  }
}

/**
 * The guest's kernel and an initramfs whose /run.sh is `script`, copied into
 * `dir` (which QEMU, running as libvirt-qemu, can read).
 */
export function guestBootFiles(dir: string, script: string): { kernel: string; initrd: string } {
  const src = guestImageDir();
  const vmlinux = join(src, 'vmlinux');
  const kernelSrc =
    existsSync(vmlinux) && statSync(vmlinux).size > 0 ? vmlinux : join(src, 'vmlinuz');
  const kernel = join(dir, 'kernel');
  copyFileSync(kernelSrc, kernel);
  const base = readFileSync(join(src, 'initramfs.cpio.gz'));
  const run = newcArchive([{ name: 'run.sh', mode: 0o100755, data: Buffer.from(script) }]);
  // The kernel skips zero padding between concatenated archives at 4-byte boundaries.
  const pad = Buffer.alloc((4 - (base.length % 4)) % 4);
  const initrd = join(dir, 'initrd');
  writeFileSync(initrd, Buffer.concat([base, pad, gzipSync(run)]));
  return { kernel, initrd };
}

/** What {@link domainXml} builds: a TCG guest booting a kernel directly. */
export interface DomainSpec {
  name: string;
  kernel: string;
  initrd: string;
  memMb?: number;
  /** `<disk type='vhostuser'>` on this vhost-rt blk socket; `reconnect`: seconds, or absent for none. */
  disk?: { socket: string; reconnect?: number };
  /** `<interface type='vhostuser'>` on this vhost-rt net port. */
  net?: { socket: string; mac: string };
  /** `<serial type='unix'>` connecting to this vhost-rt serial socket (the guest's ttyS0). */
  serial?: { socket: string };
}

/**
 * Domain XML as the README documents it: `type='qemu'` (TCG), shared memfd
 * RAM (vhost-user maps it), vhost-user disk / interface / serial. QEMU 7.2
 * under TCG crashes when a vhost-user virtio-net device unmasks MSI-X
 * vectors, so the NIC gets `vectors=0` through `<qemu:override>` (not needed
 * with KVM).
 */
export function domainXml(d: DomainSpec): string {
  const devices: string[] = [];
  if (d.disk !== undefined) {
    const reconnect =
      d.disk.reconnect === undefined
        ? `<reconnect enabled='no'/>`
        : `<reconnect enabled='yes' timeout='${d.disk.reconnect}'/>`;
    devices.push(`    <disk type='vhostuser' device='disk'>
      <driver name='qemu' type='raw'/>
      <source type='unix' path='${d.disk.socket}'>
        ${reconnect}
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>`);
  }
  if (d.net !== undefined) {
    devices.push(`    <interface type='vhostuser'>
      <alias name='ua-net0'/>
      <mac address='${d.net.mac}'/>
      <source type='unix' path='${d.net.socket}' mode='client'/>
      <model type='virtio'/>
    </interface>`);
  }
  if (d.serial !== undefined) {
    devices.push(`    <serial type='unix'>
      <source mode='connect' path='${d.serial.socket}'/>
      <target port='0'/>
    </serial>`);
  }
  const override =
    d.net === undefined
      ? ''
      : `  <qemu:override>
    <qemu:device alias='ua-net0'>
      <qemu:frontend><qemu:property name='vectors' type='unsigned' value='0'/></qemu:frontend>
    </qemu:device>
  </qemu:override>
`;
  const mem = d.memMb ?? 128;
  return `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>${d.name}</name>
  <memory unit='MiB'>${mem}</memory>
  <vcpu>1</vcpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>${d.kernel}</kernel>
    <initrd>${d.initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <cpu mode='maximum' check='none'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
${devices.join('\n')}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
${override}</domain>
`;
}
