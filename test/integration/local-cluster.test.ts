/**
 * `agentfence local-cluster` as a user runs it: starts within a minute (binaries cached), writes the kubeconfig
 * where asked, serves the CRDs, and on SIGTERM leaves no process, no temporary directory and no kubeconfig.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cluster } from '../support/cluster.ts';
import { kubectl } from '../../localcluster/kubectl.ts';

const cli = new URL('../../bin/agentfence.mjs', import.meta.url).pathname;

/** Direct children of a pid, from /proc (the control-plane processes are children of the CLI). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

function descendantsOf(pid: number): number[] {
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    for (const c of childrenOf(queue.shift() ?? -1)) {
      out.push(c);
      queue.push(c);
    }
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('agentfence local-cluster', () => {
  it('starts in under a minute, serves the CRDs, and SIGTERM removes every process and file', async () => {
    const work = await mkdtemp(join(tmpdir(), 'agentfence-lc-test-'));
    const kubeconfigPath = join(work, 'kubeconfig');
    const binDir = cluster().binaries.kubectl.replace(/\/kubectl$/, '');
    try {
      const started = Date.now();
      const child = spawn(process.execPath, [cli, 'local-cluster', '--kubeconfig', kubeconfigPath, '--no-build'], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, KUBEBUILDER_ASSETS: binDir }, // eslint-disable-line no-restricted-properties -- passes the test's environment on
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));

      while (!stdout.includes('Press Ctrl-C')) {
        if (child.exitCode !== null) throw new Error(`local-cluster exited early: ${stderr}`);
        if (Date.now() - started > 60_000) throw new Error(`not ready within 60 s: ${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(Date.now() - started).toBeLessThan(60_000);
      expect(stdout).toContain(`kubeconfig:  ${kubeconfigPath}`);
      expect(stdout).toMatch(/kubectl:\s+\/\S+\/kubectl/);
      expect(stdout).toMatch(/helm:\s+\/\S+\/helm/);
      const tempDir = /logs:\s+(\S+)\/logs/.exec(stdout)?.[1];
      expect(tempDir && existsSync(tempDir)).toBe(true);

      const crds = await kubectl({ binaries: cluster().binaries, kubeconfigPath }, ['get', 'crd', '-o', 'name']);
      expect(crds.stdout).toContain('agentpolicies.agentfence.io');
      const pids = childrenOf(child.pid ?? -1);
      expect(pids.length).toBeGreaterThanOrEqual(3); // etcd, kube-apiserver, kube-controller-manager

      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      for (const pid of pids) expect(alive(pid), `pid ${pid} still alive`).toBe(false);
      expect(existsSync(tempDir ?? '')).toBe(false);
      expect(existsSync(kubeconfigPath)).toBe(false);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });

  it('SIGKILL of the CLI leaves no etcd, kube-apiserver or kube-controller-manager behind', async () => {
    const binDir = cluster().binaries.kubectl.replace(/\/kubectl$/, '');
    const child = spawn(process.execPath, [cli, 'local-cluster', '--no-build'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, KUBEBUILDER_ASSETS: binDir }, // eslint-disable-line no-restricted-properties -- passes the test's environment on
    });
    let stdout = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    const deadline = Date.now() + 60_000;
    while (!stdout.includes('Press Ctrl-C')) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error('local-cluster did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
    // The whole tree: guards, their watchers, etcd, kube-apiserver, kube-controller-manager.
    const tree = descendantsOf(child.pid ?? -1);
    const names = tree.map((pid) => {
      try {
        return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      } catch {
        return '';
      }
    });
    expect(names).toEqual(expect.arrayContaining(['etcd', 'kube-apiserver', 'kube-controller']));
    child.kill('SIGKILL');
    const gone = Date.now() + 10_000;
    while (tree.some(alive) && Date.now() < gone) await new Promise((r) => setTimeout(r, 100));
    expect(tree.filter(alive), 'processes left after SIGKILL').toEqual([]);
  });

  it('refuses to overwrite an existing kubeconfig and exits non-zero with the reason', async () => {
    const work = await mkdtemp(join(tmpdir(), 'agentfence-lc-test-'));
    try {
      const existing = join(work, 'config');
      await import('node:fs/promises').then((fs) => fs.writeFile(existing, 'mine'));
      const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, [cli, 'local-cluster', '--kubeconfig', existing, '--no-build'], {
          env: { ...process.env, KUBEBUILDER_ASSETS: cluster().binaries.kubectl.replace(/\/kubectl$/, '') }, // eslint-disable-line no-restricted-properties -- passes the test's environment on
        });
        let stderr = '';
        child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
        child.once('exit', (code) => resolve({ code, stderr }));
      });
      expect(result.code).toBe(1);
      expect(result.stderr).toContain('already exists');
      expect(readFileSync(existing, 'utf8')).toBe('mine');
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });

  it('rejects an unknown flag by name', async () => {
    const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [cli, 'local-cluster', '--kubconfig', 'x']);
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      child.once('exit', (code) => resolve({ code, stderr }));
    });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("Unknown option '--kubconfig'");
  });
});
