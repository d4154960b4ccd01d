/**
 * Adversarial variants of revocation (issue 11) with the real controller and real sidecars: an edit of only
 * `expiresAt` (into the past: revoked at the sidecar), an edit that only reorders (no write at all), and a namespace
 * deleted and created again under the same name with a same-named, narrower policy — the caches keyed by
 * namespace and name must not carry the old grants over, neither to the new pod nor to the old pod's sidecar.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { startLocalController, type LocalController } from '../../localcluster/controller.ts';
import { cluster, createNamespace, eventually, run, runOrThrow } from '../support/cluster.ts';
import { TEST_INJECTOR } from '../support/identity-server.ts';
import { createInjectedPod, startTestSidecar, startUpstream, type TestSidecar } from '../support/agents.ts';

let client: KubeClient;
let controller: LocalController;
let upstream: Awaited<ReturnType<typeof startUpstream>>;
const ns = `rev-reuse-${randomBytes(3).toString('hex')}`;
const sidecars: TestSidecar[] = [];

function policy(options: { orders: boolean; methods?: string[]; expiresAt?: string }): string {
  return JSON.stringify({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name: 'agent-egress', namespace: ns },
    spec: {
      agentSelector: { matchLabels: { 'agentfence.io/agent': 'worker' } },
      ...(options.expiresAt ? { expiresAt: options.expiresAt } : {}),
      egress: [
        ...(options.orders
          ? [
              {
                name: 'orders',
                to: { cidrs: ['127.0.0.1/32'] },
                ports: [{ port: upstream.port }],
                http: [
                  {
                    methods: options.methods ?? ['GET', 'HEAD'],
                    paths: [
                      { type: 'PathPrefix', value: '/v1/orders/' },
                      { type: 'Exact', value: '/v1/health' },
                    ],
                  },
                ],
              },
            ]
          : []),
        { name: 'docs', to: { hosts: ['docs.example.org'] }, ports: [{ port: 443 }] },
      ],
    },
  });
}

async function entitlement(pod: string): Promise<{ revision: string; podUID: string; resourceVersion: string }> {
  const ae = JSON.parse(await runOrThrow(['get', 'ae', pod, '-n', ns, '-o', 'json'])) as {
    metadata: { resourceVersion: string };
    spec: { revision: string; podUID: string };
  };
  return { revision: ae.spec.revision, podUID: ae.spec.podUID, resourceVersion: ae.metadata.resourceVersion };
}

async function sidecarFor(podName: string): Promise<TestSidecar> {
  const pod = await createInjectedPod(ns, podName, 'worker');
  const sc = await startTestSidecar({
    ns,
    pod,
    controllerUrl: controller.issuerUrl,
    caPem: controller.caPem,
    maxStalenessMs: 30_000,
  });
  sidecars.push(sc);
  await eventually(async () => ((await sc.ready()) ? true : undefined), `${podName} ready`, 30_000);
  return sc;
}

const orders = async (sc: TestSidecar, path = '/v1/orders/1'): Promise<number> =>
  (await sc.get(`${upstream.url}${path}`)).status;

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  upstream = await startUpstream();
  const system = await createNamespace('af-rev-reuse-system');
  controller = await startLocalController({
    client,
    namespace: system,
    heartbeatMs: 500,
    injector: () => TEST_INJECTOR,
  });
  await runOrThrow(['create', 'namespace', ns]);
  await runOrThrow(['apply', '-f', '-'], policy({ orders: true }));
});

afterAll(async () => {
  for (const sc of sidecars) await sc.stop();
  await controller.operator.stop();
  upstream.close();
  client.close();
});

describe('revocation: variants', () => {
  let first: TestSidecar;

  it('an edit that only reorders methods and paths writes nothing (same revision, same resourceVersion)', async () => {
    first = await sidecarFor('worker-0');
    await eventually(async () => ((await orders(first)) === 200 ? true : undefined), 'granted');
    const before = await entitlement('worker-0');
    await runOrThrow(['apply', '-f', '-'], policy({ orders: true, methods: ['HEAD', 'GET'] }));
    // A wrongly triggered write would land within this time (the reconciler reacts in milliseconds).
    await new Promise((r) => setTimeout(r, 2000));
    expect(await entitlement('worker-0')).toEqual(before);
  });

  it('an edit of only expiresAt moves the revision; into the past, it revokes at the sidecar', async () => {
    const before = await entitlement('worker-0');
    const future = new Date(Date.now() + 3_600_000).toISOString().replace(/\.\d+Z$/, 'Z');
    await runOrThrow(['apply', '-f', '-'], policy({ orders: true, expiresAt: future }));
    await eventually(
      async () => ((await entitlement('worker-0')).revision !== before.revision ? true : undefined),
      'revision moved',
    );
    expect(await orders(first)).toBe(200);
    const past = new Date(Date.now() - 60_000).toISOString().replace(/\.\d+Z$/, 'Z');
    await runOrThrow(['apply', '-f', '-'], policy({ orders: true, expiresAt: past }));
    await eventually(async () => ((await orders(first)) === 403 ? true : undefined), 'expired grant revoked');
    await runOrThrow(['apply', '-f', '-'], policy({ orders: true }));
    await eventually(async () => ((await orders(first)) === 200 ? true : undefined), 're-granted');
  });

  it('a namespace deleted and created again with the same name and a narrower same-named policy grants only the new', async () => {
    const old = await entitlement('worker-0');
    await runOrThrow(['delete', 'namespace', ns, '--wait=false']);
    await eventually(
      async () => ((await run(['get', 'namespace', ns])).code !== 0 ? true : undefined),
      'namespace gone',
      90_000,
    );
    // The old pod's sidecar is still running (as a node would keep it briefly): its pod is gone, it is revoked.
    await eventually(async () => ((await orders(first)) === 403 ? true : undefined), 'old sidecar revoked');

    await runOrThrow(['create', 'namespace', ns]);
    await runOrThrow(['apply', '-f', '-'], policy({ orders: false }));
    const second = await sidecarFor('worker-0');
    const now = await entitlement('worker-0');
    expect(now.podUID).not.toBe(old.podUID);
    expect(now.revision).not.toBe(old.revision);
    expect(await orders(second)).toBe(403);
    // Neither sidecar gets the old grant back, and the old one does not get the new pod's.
    await new Promise((r) => setTimeout(r, 1500));
    expect(await orders(first)).toBe(403);
    expect(await orders(second)).toBe(403);
  }, 120_000);
});
