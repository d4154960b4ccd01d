/** Helpers for integration tests: the shared control plane, a namespace per test, kubectl, and polling. */
import { randomBytes } from 'node:crypto';
import { inject } from 'vitest';
import type { Binaries } from '../../localcluster/binaries.ts';
import { kubectl, kubectlOrThrow, type CommandResult } from '../../localcluster/kubectl.ts';

export interface ClusterInfo {
  server: string;
  caPem: string;
  admin: { certPem: string; keyPem: string };
  kubeconfigPath: string;
  serviceAccountIssuer: string;
  binaries: Binaries;
  /** Served by the global setup: POST restarts the shared kube-apiserver (use restartApiServer()). */
  restartApiServerUrl: string;
}

export function cluster(): ClusterInfo {
  return inject('cluster');
}

export function run(args: string[], input?: string): Promise<CommandResult> {
  return kubectl(cluster(), args, input);
}

export function runOrThrow(args: string[], input?: string): Promise<string> {
  return kubectlOrThrow(cluster(), args, input);
}

/**
 * Restarts the shared kube-apiserver (same flags, port and certificates), down for `downtimeMs`; resolves once it
 * is ready again, so the next test file finds a healthy server.
 */
export async function restartApiServer(downtimeMs: number): Promise<void> {
  const res = await fetch(`${cluster().restartApiServerUrl}?downtimeMs=${downtimeMs}`, { method: 'POST' });
  if (res.status !== 204) throw new Error(`restarting kube-apiserver: HTTP ${res.status} ${await res.text()}`);
}

/** Creates a uniquely named namespace (never waits for deletion: tests do not share namespaces). */
export async function createNamespace(prefix: string): Promise<string> {
  const name = `${prefix}-${randomBytes(3).toString('hex')}`;
  await runOrThrow(['create', 'namespace', name]);
  return name;
}

export { eventually } from './eventually.ts';
