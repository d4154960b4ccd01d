/**
 * Starts the local control plane with a real node once for the real-node suite (the same code
 * `agentfence local-cluster --node` runs), builds the project image and imports it into the node's containerd.
 * On a machine that cannot run a node (not root, not Linux, packages missing) it prints why and provides the
 * reason, and every test is reported as skipped: never a silent pass.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { resolveBinaries, resolveNodeBinDir } from '../../localcluster/binaries.ts';
import { startControlPlane, type ControlPlane } from '../../localcluster/controlplane.ts';
import { installCRDs } from '../../localcluster/kubectl.ts';
import { NODE_NETWORK, nodeBinariesIn, startNode, type LocalNode } from '../../localcluster/node.ts';
import { createLogger } from '../../lib/log.ts';
import { buildProjectImage } from '../../localcluster/image.ts';
import { machineSkipReason, type RealNodeInfo } from './support.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    realnode: RealNodeInfo | { skip: string };
  }
}

let plane: ControlPlane | undefined;
let node: LocalNode | undefined;

/** The project image as the suite's pods and the webhook name it. */
export const IMAGE = 'localhost/agentfence/agentfence:realnode';

export async function setup(project: TestProject): Promise<void> {
  /* eslint-disable no-restricted-properties -- the test harness entrypoint reads its environment here */
  const config = {
    cacheDir: process.env.AGENTFENCE_CACHE ?? join(homedir(), '.cache', 'agentfence'),
    build: process.env.AGENTFENCE_NO_BUILD !== '1',
  };
  /* eslint-enable no-restricted-properties */
  const reason = await machineSkipReason(config);
  if (reason) {
    process.stderr.write(`\nrealnode: every real-node test is SKIPPED on this machine: ${reason}\n\n`);
    project.provide('realnode', { skip: reason });
    return;
  }
  const binaries = await resolveBinaries(config);
  const nodeBinaries = nodeBinariesIn(await resolveNodeBinDir(config));
  const logger = createLogger({ level: 'warn', fields: { component: 'realnode-harness' } });
  const startedAt = Date.now();
  try {
    plane = await startControlPlane({ binaries, logger, node: NODE_NETWORK });
    await installCRDs(plane);
    node = await startNode({ plane, binaries: nodeBinaries, logger });
    const nodeReadyMs = Date.now() - startedAt;
    const imageStartedAt = Date.now();
    await buildProjectImage(node, IMAGE);
    process.stderr.write(
      `realnode: control plane + node ready in ${(nodeReadyMs / 1000).toFixed(1)} s, image built and imported in ${((Date.now() - imageStartedAt) / 1000).toFixed(1)} s\n`,
    );
  } catch (err) {
    await teardown();
    throw err;
  }
  project.provide('realnode', {
    server: plane.server,
    caPem: plane.caPem,
    admin: plane.admin,
    kubeconfigPath: plane.kubeconfigPath,
    serviceAccountIssuer: plane.serviceAccountIssuer,
    binaries: plane.binaries,
    nodeName: node.name,
    nodeIp: node.ip,
    image: IMAGE,
  });
}

export async function teardown(): Promise<void> {
  await node?.stop();
  node = undefined;
  await plane?.stop();
  plane = undefined;
}
