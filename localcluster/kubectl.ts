import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { packageRoot } from '../lib/paths.ts';
import { sleep } from '../lib/sleep.ts';

export interface KubectlTarget {
  binaries: { kubectl: string };
  kubeconfigPath: string;
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs kubectl against the target; never throws on a non-zero exit (callers assert on it). */
export function kubectl(target: KubectlTarget, args: string[], input?: string): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(target.binaries.kubectl, [`--kubeconfig=${target.kubeconfigPath}`, ...args], {
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    if (child.stdin) {
      // kubectl may exit (an error, a command that reads no input) before taking it all: that is its answer, not ours.
      child.stdin.on('error', () => undefined);
      child.stdin.end(input);
    }
  });
}

export async function kubectlOrThrow(target: KubectlTarget, args: string[], input?: string): Promise<string> {
  const result = await kubectl(target, args, input);
  if (result.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed: ${result.stderr.trim()}`);
  return result.stdout;
}

/** Applies crds/ server-side and waits until both kinds are served. */
export async function installCRDs(target: KubectlTarget): Promise<void> {
  const dir = join(packageRoot(), 'crds');
  await kubectlOrThrow(target, ['apply', '--server-side', '--field-manager=agentfence-install', '-f', dir]);
  // A CRD that was just created may have no status yet, and `kubectl wait` then fails at once ("accessor error")
  // instead of waiting: retry until it waits properly.
  const deadline = Date.now() + 30_000;
  for (;;) {
    const result = await kubectl(target, [
      'wait',
      '--for=condition=Established',
      '--timeout=30s',
      'crd/agentpolicies.agentfence.io',
      'crd/agententitlements.agentfence.io',
    ]);
    if (result.code === 0) return;
    if (Date.now() > deadline) throw new Error(`the CRDs did not become Established: ${result.stderr.trim()}`);
    await sleep(200);
  }
}
