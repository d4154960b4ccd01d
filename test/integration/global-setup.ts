/**
 * Starts the local control plane once for the integration project (the same code `agentfence local-cluster`
 * runs), installs the CRDs, and hands the tests a kubeconfig and the binary paths.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { resolveBinaries } from '../../localcluster/binaries.ts';
import { startControlPlane, type ControlPlane } from '../../localcluster/controlplane.ts';
import { installCRDs } from '../../localcluster/kubectl.ts';
import { createLogger } from '../../lib/log.ts';
import type { ClusterInfo } from '../support/cluster.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    cluster: ClusterInfo;
  }
}

let plane: ControlPlane | undefined;

export async function setup(project: TestProject): Promise<void> {
  /* eslint-disable no-restricted-properties -- the test harness entrypoint reads its environment here */
  const binaries = await resolveBinaries({
    cacheDir: process.env.AGENTFENCE_CACHE ?? join(homedir(), '.cache', 'agentfence'),
    build: process.env.AGENTFENCE_NO_BUILD !== '1',
    ...(process.env.KUBEBUILDER_ASSETS ? { assetsDir: process.env.KUBEBUILDER_ASSETS } : {}),
  });
  /* eslint-enable no-restricted-properties */
  plane = await startControlPlane({
    binaries,
    logger: createLogger({ level: 'warn', fields: { component: 'test-harness' } }),
  });
  await installCRDs(plane);
  project.provide('cluster', {
    server: plane.server,
    caPem: plane.caPem,
    admin: plane.admin,
    kubeconfigPath: plane.kubeconfigPath,
    serviceAccountIssuer: plane.serviceAccountIssuer,
    binaries: plane.binaries,
  });
}

export async function teardown(): Promise<void> {
  await plane?.stop();
}
