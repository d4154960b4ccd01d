/**
 * Revocation with same-named policies in several namespaces, on the real API server with the real controller and
 * real sidecars: a semantic change to one namespace's `agent-egress` changes the revision of exactly the pods it
 * selects, reaches their sidecars (the revoked call is refused), and writes nothing anywhere else — every other
 * AgentEntitlement, AgentPolicy and NetworkPolicy keeps its resourceVersion, and the other sidecars keep enforcing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { startLocalController, type LocalController } from '../../localcluster/controller.ts';
import { cluster, createNamespace, eventually, runOrThrow } from '../support/cluster.ts';
import { TEST_INJECTOR } from '../support/identity-server.ts';
import { createInjectedPod, startTestSidecar, startUpstream, type TestSidecar } from '../support/agents.ts';

let client: KubeClient;
let controller: LocalController;
let upstream: Awaited<ReturnType<typeof startUpstream>>;
const namespaces: string[] = [];
const sidecars = new Map<string, TestSidecar>();

function policy(ns: string, withOrders: boolean): string {
  return JSON.stringify({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name: 'agent-egress', namespace: ns },
    spec: {
      agentSelector: { matchLabels: { 'agentfence.io/agent': 'worker' } },
      egress: [
        ...(withOrders
          ? [
              {
                name: 'orders',
                to: { cidrs: ['127.0.0.1/32'] },
                ports: [{ port: upstream.port }],
                http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/v1/orders/' }] }],
              },
            ]
          : []),
        { name: 'docs', to: { hosts: ['docs.example.org'] }, ports: [{ port: 443 }] },
      ],
    },
  });
}

interface Versions {
  [key: string]: string;
}

/** resourceVersion of every AgentEntitlement, AgentPolicy and NetworkPolicy in the namespaces. */
async function versions(nss: string[]): Promise<Versions> {
  const out: Versions = {};
  for (const ns of nss) {
    const list = JSON.parse(await runOrThrow(['get', 'ae,ap,netpol', '-n', ns, '-o', 'json'])) as {
      items: { kind: string; metadata: { name: string; resourceVersion: string } }[];
    };
    for (const o of list.items) out[`${ns}/${o.kind}/${o.metadata.name}`] = o.metadata.resourceVersion;
  }
  return out;
}

async function entitlement(ns: string, pod: string): Promise<{ revision: string; inSync?: boolean }> {
  const ae = JSON.parse(await runOrThrow(['get', 'ae', pod, '-n', ns, '-o', 'json'])) as {
    spec: { revision: string };
    status?: { inSync?: boolean };
  };
  return { revision: ae.spec.revision, ...(ae.status?.inSync !== undefined ? { inSync: ae.status.inSync } : {}) };
}

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  upstream = await startUpstream();
  const system = await createNamespace('af-rev-system');
  controller = await startLocalController({
    client,
    namespace: system,
    heartbeatMs: 500,
    injector: () => TEST_INJECTOR,
  });
  for (const prefix of ['team-a', 'team-b', 'team-c']) {
    const ns = await createNamespace(prefix);
    namespaces.push(ns);
    await runOrThrow(['apply', '-f', '-'], policy(ns, true));
    const withSidecar = await createInjectedPod(ns, 'worker-0', 'worker');
    await createInjectedPod(ns, 'worker-1', 'worker'); // no sidecar: its entitlement is still the operator's
    sidecars.set(
      ns,
      await startTestSidecar({
        ns,
        pod: withSidecar,
        controllerUrl: controller.issuerUrl,
        caPem: controller.caPem,
        maxStalenessMs: 30_000,
      }),
    );
  }
  for (const [ns, sc] of sidecars)
    await eventually(async () => ((await sc.ready()) ? true : undefined), `${ns} ready`, 30_000);
});

afterAll(async () => {
  for (const sc of sidecars.values()) await sc.stop();
  await controller.operator.stop();
  upstream.close();
  client.close();
});

describe('same-named policies in several namespaces', () => {
  it('a revocation in one namespace reaches exactly its pods and sidecars, and writes nothing elsewhere', async () => {
    const [a = '', b = '', c = ''] = namespaces;
    for (const ns of namespaces) {
      const res = await (sidecars.get(ns) as TestSidecar).get(`${upstream.url}/v1/orders/1`);
      expect(res.status, `${ns} allowed before`).toBe(200);
    }
    // Let acknowledgements and status settle, so the only writes left are the ones the edit causes.
    await eventually(async () => {
      for (const ns of namespaces) if ((await entitlement(ns, 'worker-0')).inSync !== true) return undefined;
      const ap = JSON.parse(await runOrThrow(['get', 'ap', 'agent-egress', '-n', c, '-o', 'json'])) as {
        status?: { agents?: { inSync?: number } };
      };
      return ap.status?.agents?.inSync === 1 ? true : undefined;
    }, 'all in sync');
    await new Promise((r) => setTimeout(r, 1500));
    const others = await versions([a, c]);
    const before = { w0: await entitlement(b, 'worker-0'), w1: await entitlement(b, 'worker-1') };

    await runOrThrow(['apply', '-f', '-'], policy(b, false)); // team-b loses its orders rule
    const started = Date.now();
    await eventually(
      async () =>
        (await (sidecars.get(b) as TestSidecar).get(`${upstream.url}/v1/orders/1`)).status === 403 ? true : undefined,
      'team-b sidecar enforces the revocation',
      15_000,
    );
    console.log(
      `revocation in one of three same-named policies enforced at its sidecar after ${Date.now() - started} ms`,
    );
    expect((await entitlement(b, 'worker-0')).revision).not.toBe(before.w0.revision);
    expect((await entitlement(b, 'worker-1')).revision).not.toBe(before.w1.revision);
    await eventually(
      async () => ((await entitlement(b, 'worker-0')).inSync === true ? true : undefined),
      'team-b in sync',
    );

    // Nothing else moved: give a wrongly triggered write time to happen, then compare every resourceVersion.
    await new Promise((r) => setTimeout(r, 2000));
    expect(await versions([a, c])).toEqual(others);
    for (const ns of [a, c]) {
      const res = await (sidecars.get(ns) as TestSidecar).get(`${upstream.url}/v1/orders/2`);
      expect(res.status, `${ns} still allowed`).toBe(200);
    }
  });

  it('every semantic change reaches the sidecar: restoring the rule re-grants it, a port change moves it', async () => {
    const b = namespaces[1] ?? '';
    const sc = sidecars.get(b) as TestSidecar;
    await runOrThrow(['apply', '-f', '-'], policy(b, true));
    await eventually(
      async () => ((await sc.get(`${upstream.url}/v1/orders/3`)).status === 200 ? true : undefined),
      're-granted',
    );
    const revision = (await entitlement(b, 'worker-0')).revision;
    // Another namespace's same-named policy changes: team-b's revision does not.
    const a = namespaces[0] ?? '';
    await runOrThrow(['apply', '-f', '-'], policy(a, false));
    await eventually(
      async () =>
        (await (sidecars.get(a) as TestSidecar).get(`${upstream.url}/v1/orders/4`)).status === 403 ? true : undefined,
      'team-a revoked',
    );
    expect((await entitlement(b, 'worker-0')).revision).toBe(revision);
    expect((await sc.get(`${upstream.url}/v1/orders/5`)).status).toBe(200);
  });
});
