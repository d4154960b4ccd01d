/**
 * The Helm chart on a real node: `helm install` with the locally built image, the controller Deployment runs as
 * real pods (in-cluster config through the `kubernetes` Service address, leader election, self-managed serving
 * certificate), and the API server calls its webhook behind the chart's Service, so a labelled Deployment's
 * pods come out injected by the controller running in the cluster.
 *
 * Not covered here: sidecars reaching that controller. Its URL is the Service's DNS name, and this node has
 * no cluster DNS and no Service proxy (see the README); the fence suite runs the controller on the node's IP.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { packageRoot } from '../../lib/paths.ts';
import { createNamespace, eventually, realnode, run, runOrThrow, skipReason } from './support.ts';

const reason = skipReason();
let release: string;
let apps: string;

function helm(args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const info = realnode();
    if (!info.binaries.helm) {
      reject(new Error('helm is not built (hack/build-k8s-binaries.sh builds it)'));
      return;
    }
    const child = spawn(info.binaries.helm, [`--kubeconfig=${info.kubeconfigPath}`, ...args]);
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, out }));
  });
}

describe.skipIf(reason)('the chart on a real node', () => {
  beforeAll(async () => {
    const info = realnode();
    release = await createNamespace('af-chart');
    apps = await createNamespace('chart-apps');
    const [repository, tag] = info.image.split(/:(?=[^:]+$)/);
    const installed = await helm([
      'install',
      'agentfence',
      `${packageRoot()}/charts/agentfence`,
      '-n',
      release,
      `--set=image.repository=${repository ?? ''}`,
      `--set=image.tag=${tag ?? ''}`,
      '--set=image.pullPolicy=Never',
      // The suite's control plane already has the CRDs (installed server-side); the chart would refuse to adopt them.
      '--set=crds.install=false',
      '--wait',
      '--timeout=180s',
    ]);
    if (installed.code !== 0) throw new Error(`helm install failed:\n${installed.out}`);
  });

  afterAll(async () => {
    if (release) await helm(['uninstall', 'agentfence', '-n', release, '--wait', '--timeout=60s']);
    for (const ns of [apps, release]) if (ns) await run(['delete', 'namespace', ns, '--wait=false']);
  });

  it('runs the controller Deployment as real pods: all replicas Ready, one leader', async () => {
    const deployment = JSON.parse(
      await runOrThrow(['get', 'deployment', 'agentfence-controller', '-n', release, '-o', 'json']),
    ) as { spec: { replicas: number }; status: { readyReplicas?: number } };
    expect(deployment.spec.replicas).toBe(2);
    expect(deployment.status.readyReplicas).toBe(2);
    const leader = await eventually(async () => {
      const lease = JSON.parse(
        await runOrThrow(['get', 'lease', 'agentfence-controller', '-n', release, '-o', 'json']),
      ) as {
        spec?: { holderIdentity?: string };
      };
      return lease.spec?.holderIdentity;
    }, 'a leader in the Lease');
    const podNames = (
      await runOrThrow(['get', 'pods', '-n', release, '-o', 'jsonpath={.items[*].metadata.name}'])
    ).split(' ');
    expect(podNames).toContain(leader);
  });

  it('injects a labelled Deployment’s pods through the webhook behind the chart’s Service', async () => {
    await runOrThrow(['create', 'serviceaccount', 'helper', '-n', apps]);
    await runOrThrow(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'apps/v1',
        kind: 'Deployment',
        metadata: { name: 'helper', namespace: apps },
        spec: {
          replicas: 1,
          selector: { matchLabels: { app: 'helper' } },
          template: {
            metadata: { labels: { app: 'helper', 'agentfence.io/inject': 'true' } },
            spec: {
              serviceAccountName: 'helper',
              containers: [
                {
                  name: 'app',
                  image: realnode().image,
                  imagePullPolicy: 'Never',
                  command: ['node', '-e', 'setInterval(() => {}, 1e9)'],
                  securityContext: { runAsUser: 1000 },
                },
              ],
            },
          },
        },
      }),
    );
    const pod = await eventually(async () => {
      const list = JSON.parse(await runOrThrow(['get', 'pods', '-n', apps, '-l', 'app=helper', '-o', 'json'])) as {
        items: {
          metadata: { labels?: Record<string, string>; annotations?: Record<string, string> };
          spec: { initContainers?: { name: string; image: string; args?: string[] }[] };
        }[];
      };
      return list.items[0];
    }, 'the ReplicaSet creating an (injected) pod');
    const sidecar = pod.spec.initContainers?.find((c) => c.name === 'agentfence-sidecar');
    expect(sidecar?.image).toBe(realnode().image);
    expect(sidecar?.args).toContain(`--controller=https://agentfence-controller.${release}.svc`);
    expect(pod.metadata.labels?.['agentfence.io/agent']).toBe('helper');
    expect(pod.metadata.annotations?.['agentfence.io/injected']).toBeDefined();
    // The controller published its CA into the agent namespace for the sidecar (its leader task).
    await eventually(
      async () => ((await run(['get', 'configmap', 'agentfence-ca', '-n', apps])).code === 0 ? true : undefined),
      'the agentfence-ca ConfigMap in the agent namespace',
    );
  });
});

// Reported as skipped, with the reason in its name, only where the suite cannot run.
if (reason)
  describe('the chart on a real node (skipped)', () => it.skip(`skipped on this machine: ${reason}`, () => undefined));
