/**
 * Starts the local control plane once for the integration project (the same code `agentfence local-cluster`
 * runs), installs the CRDs, and hands the tests a kubeconfig and the binary paths.
 *
 * Test files run in other processes, so the one fault they cannot inject themselves, restarting the shared
 * kube-apiserver, is served here on a loopback port behind a random path (restartApiServer() in
 * test/support/cluster.ts). Files run one at a time, and a restart resolves only once the server is ready again.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
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
let control: Server | undefined;

/** POST <path>?downtimeMs=N restarts the API server; 204 once it is ready again, 500 with the error otherwise. */
async function serveControl(running: ControlPlane): Promise<string> {
  const path = `/${randomBytes(16).toString('hex')}/restart-apiserver`;
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    if (req.method !== 'POST' || url.pathname !== path) {
      res.writeHead(404).end();
      return;
    }
    const downtimeMs = Number(url.searchParams.get('downtimeMs') ?? '0');
    if (!Number.isInteger(downtimeMs) || downtimeMs < 0 || downtimeMs > 60_000) {
      res.writeHead(400).end('downtimeMs must be an integer between 0 and 60000');
      return;
    }
    running.restartApiServer({ downtimeMs }).then(
      () => res.writeHead(204).end(),
      (err: unknown) => res.writeHead(500).end(err instanceof Error ? err.message : String(err)),
    );
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  control = server;
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}${path}`;
}

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
    restartApiServerUrl: await serveControl(plane),
  });
}

export async function teardown(): Promise<void> {
  control?.close();
  await plane?.stop();
}
