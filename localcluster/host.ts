/**
 * What a real node changes on the host, read and undone: iptables chains, ipsets, mounts, cgroups, sysctls,
 * fixed paths. A snapshot taken before the node starts is the reference for teardown and for the test that
 * proves nothing is left: whatever appeared since is removed, whatever was there is left alone.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, readlinkSync, rmdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

export interface HostCommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a host tool; never throws on a non-zero exit (teardown goes on whatever one step says). */
export function host(command: string, args: string[], timeoutMs = 30_000): Promise<HostCommandResult> {
  return new Promise((resolve) => {
    execFile(command, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr: stderr || (err && code === -1 ? err.message : '') });
    });
  });
}

export async function hostOrThrow(command: string, args: string[]): Promise<string> {
  const result = await host(command, args);
  if (result.code !== 0) throw new Error(`${command} ${args.join(' ')} failed: ${result.stderr.trim()}`);
  return result.stdout;
}

export type IpFamily = 'iptables' | 'ip6tables';
const FAMILIES: IpFamily[] = ['iptables', 'ip6tables'];

/** table → chain names, from `iptables-save`. */
export type ChainSet = Record<string, string[]>;

export async function iptablesChains(family: IpFamily): Promise<ChainSet> {
  const out = await host(`${family}-save`, []);
  const chains: ChainSet = {};
  let table = '';
  for (const line of out.stdout.split('\n')) {
    if (line.startsWith('*')) {
      table = line.slice(1);
      chains[table] = [];
    } else if (line.startsWith(':') && table) {
      chains[table]?.push(line.slice(1).split(' ')[0] ?? '');
    }
  }
  return chains;
}

/** Every `iptables-save` rule line, per family: the strongest "nothing changed" check there is. */
export async function iptablesRules(family: IpFamily): Promise<string[]> {
  const out = await host(`${family}-save`, []);
  return out.stdout
    .split('\n')
    .filter((l) => l.startsWith('-A ') || l.startsWith(':') || l.startsWith('*'))
    .map((l) => (l.startsWith(':') ? l.replace(/ \[\d+:\d+\]$/, '') : l))
    .sort();
}

export async function ipsets(): Promise<string[]> {
  const out = await host('ipset', ['list', '-n']);
  return out.stdout.split('\n').filter(Boolean).sort();
}

/** Mount points (unescaped) from /proc/self/mountinfo. */
export function mountPoints(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) =>
      (line.split(' ')[4] ?? '').replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))),
    );
}

export function linkExists(name: string): boolean {
  return existsSync(join('/sys/class/net', name));
}

/** Processes whose executable is one of these paths (our own binaries: never matched by name). */
export function processesRunning(binaries: string[]): { pid: number; exe: string }[] {
  const wanted = new Set(binaries);
  const found: { pid: number; exe: string }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const exe = readlinkSync(`/proc/${entry}/exe`);
      if (wanted.has(exe)) found.push({ pid: Number(entry), exe });
    } catch {
      // Gone, or a kernel thread.
    }
  }
  return found;
}

/** The cgroup v1 hierarchies (and the v2 unified one) that hold a directory of this name. */
export function cgroupDirs(name: string): string[] {
  const root = '/sys/fs/cgroup';
  let hierarchies: string[];
  try {
    hierarchies = [root, ...readdirSync(root).map((e) => join(root, e))];
  } catch {
    return [];
  }
  const dirs = hierarchies
    .map((h) => join(h, name))
    .filter((dir) => {
      try {
        return statSync(dir).isDirectory();
      } catch {
        return false;
      }
    });
  return [...new Set(dirs)].sort();
}

/** PIDs in a cgroup subtree. */
export function cgroupProcs(dir: string): number[] {
  const pids: number[] = [];
  const walk = (d: string): void => {
    try {
      for (const line of readFileSync(join(d, 'cgroup.procs'), 'utf8').split('\n')) if (line) pids.push(Number(line));
      for (const entry of readdirSync(d, { withFileTypes: true })) if (entry.isDirectory()) walk(join(d, entry.name));
    } catch {
      // Removed meanwhile.
    }
  };
  walk(dir);
  return [...new Set(pids)];
}

/** Removes an (empty of processes) cgroup subtree, deepest first; cgroup directories only go with rmdir. */
export function removeCgroupTree(dir: string): void {
  let entries: string[];
  try {
    entries = readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  } catch {
    return;
  }
  for (const entry of entries) removeCgroupTree(join(dir, entry));
  try {
    rmdirSync(dir);
  } catch {
    // Still busy (a process not yet reaped); the caller checks.
  }
}

/**
 * Sysctls the kubelet sets at start (it "fixes" kernel defaults) and those kube-proxy may set (connection
 * tracking limits and timeouts, route_localnet; the node's kube-proxy configuration asks it to leave them, and
 * teardown restores them whatever it did). Forwarding is only ever enabled on the node's own bridge, which goes
 * with it; the global switch is here so a test would see it change.
 */
export const NODE_SYSCTLS = [
  'vm/overcommit_memory',
  'vm/panic_on_oom',
  'kernel/panic',
  'kernel/panic_on_oops',
  'kernel/keys/root_maxkeys',
  'kernel/keys/root_maxbytes',
  'net/ipv4/ip_forward',
  'net/ipv4/conf/all/route_localnet',
  'net/netfilter/nf_conntrack_max',
  'net/netfilter/nf_conntrack_tcp_timeout_established',
  'net/netfilter/nf_conntrack_tcp_timeout_close_wait',
  'net/netfilter/nf_conntrack_tcp_be_liberal',
  'net/netfilter/nf_conntrack_udp_timeout',
  'net/netfilter/nf_conntrack_udp_timeout_stream',
];

/** Values of the sysctls that exist here (nf_conntrack's appear only once its module is loaded). */
export function readSysctls(names: string[]): Record<string, string> {
  return Object.fromEntries(
    names.filter((n) => existsSync(`/proc/sys/${n}`)).map((n) => [n, readFileSync(`/proc/sys/${n}`, 'utf8').trim()]),
  );
}

/**
 * Connection-tracking entries (`conntrack -L`, IPv4) whose original source or destination lies in one of these
 * CIDRs (a.b.c.0/24 prefixes only): what kube-proxy's NAT and the pods' traffic leave in the kernel, each as
 * the protocol and the original and reply tuples (timers and counters left out, so a listing is comparable).
 */
export async function conntrackEntries(cidrs: string[]): Promise<string[]> {
  const prefixes = cidrs.map((c) => {
    const [net, bits] = c.split('/');
    if (bits !== '24' || !net?.endsWith('.0')) throw new Error(`conntrackEntries: ${c} is not a /24`);
    return net.slice(0, -1);
  });
  const out = await host('conntrack', ['-L', '-f', 'ipv4']);
  return out.stdout
    .split('\n')
    .filter((line) =>
      [...line.matchAll(/\b(?:src|dst)=(\S+)/g)].some((m) => prefixes.some((p) => (m[1] ?? '').startsWith(p))),
    )
    .map((line) =>
      line
        .split(/\s+/)
        .filter((f) => /^(?:tcp|udp|icmp|unknown|src=|dst=|sport=|dport=)/.test(f))
        .join(' '),
    )
    .sort();
}

/** Deletes every conntrack entry from or to these CIDRs (stale NAT would outlive the node otherwise). */
export async function removeConntrackEntries(cidrs: string[]): Promise<void> {
  for (const cidr of cidrs) {
    for (const side of ['--orig-src', '--orig-dst', '--reply-src', '--reply-dst']) {
      // Exit code 1 means "no entry matched": nothing to do.
      await host('conntrack', ['-D', '-f', 'ipv4', side, cidr]);
    }
  }
}

/** Paths a kubelet, containerd or the CNI plugins write to by default (ours are redirected; these are checked). */
export const FIXED_PATHS = [
  '/var/lib/kubelet',
  '/var/lib/containerd',
  '/var/lib/cni',
  '/var/log/pods',
  '/var/log/containers',
  '/run/containerd',
  '/var/run/netns',
  '/etc/cni',
  '/opt/cni',
  '/etc/kubernetes',
  '/usr/libexec/kubernetes',
];

export interface HostSnapshot {
  chains: Record<IpFamily, ChainSet>;
  ipsets: string[];
  existing: string[];
  sysctls: Record<string, string>;
  cgroups: string[];
}

export async function snapshotHost(): Promise<HostSnapshot> {
  return {
    chains: { iptables: await iptablesChains('iptables'), ip6tables: await iptablesChains('ip6tables') },
    ipsets: await ipsets(),
    existing: FIXED_PATHS.filter((p) => existsSync(p)),
    sysctls: readSysctls(NODE_SYSCTLS),
    cgroups: cgroupDirs('kubepods'),
  };
}

/**
 * Removes every iptables chain that was not in the snapshot, after deleting the rules of the other chains
 * that jump to it (kube-router hooks INPUT/FORWARD/OUTPUT, the kubelet adds canary chains).
 */
export async function removeNewChains(before: Record<IpFamily, ChainSet>): Promise<void> {
  for (const family of FAMILIES) {
    const now = await iptablesChains(family);
    for (const [table, chains] of Object.entries(now)) {
      const old = new Set(before[family][table] ?? []);
      const added = chains.filter((c) => !old.has(c));
      if (added.length === 0) continue;
      const ours = new Set(added);
      for (const chain of chains.filter((c) => old.has(c))) {
        const listing = await host(family, ['-w', '5', '-t', table, '-L', chain, '-n', '--line-numbers']);
        const numbers = listing.stdout
          .split('\n')
          .map((l) => l.trim().split(/\s+/))
          .filter((cols) => /^\d+$/.test(cols[0] ?? '') && ours.has(cols[1] ?? ''))
          .map((cols) => Number(cols[0]))
          .sort((a, b) => b - a);
        for (const n of numbers) await host(family, ['-w', '5', '-t', table, '-D', chain, String(n)]);
      }
      for (const chain of added) await host(family, ['-w', '5', '-t', table, '-F', chain]);
      for (const chain of added) await host(family, ['-w', '5', '-t', table, '-X', chain]);
    }
  }
}

export async function removeNewIpsets(before: string[]): Promise<void> {
  const old = new Set(before);
  const added = (await ipsets()).filter((s) => !old.has(s));
  // Lists (set:list) reference other sets: flush everything first, then destroy.
  for (const set of added) await host('ipset', ['flush', set]);
  for (const set of added) await host('ipset', ['destroy', set]);
}
