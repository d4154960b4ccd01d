/**
 * Entitlement delivery at fleet scale, against the real API server with the assembled controller: the leader's
 * compiled entitlements reach connected sidecars from memory, before (and regardless of) the AgentEntitlement
 * writes, and the writes touch only what changed.
 *  - an edit of a policy selecting 10 of 160 pods writes those 10 entitlements and no other (resourceVersions);
 *  - every stream client only ever receives its own pod's entitlement, and the streamed snapshot is the object
 *    the API server ends up holding (same revision, same spec);
 *  - a narrowing whose write the API server refuses still reaches the sidecar at once; the record keeps the old
 *    object until the write succeeds, then carries exactly the revision the sidecar holds, and the sidecar's
 *    acknowledgement is recorded as in sync.
 * The stream clients are the sidecar's own client (sidecar/entitlements.ts); their tokens are minted with the
 * controller's signing keys (the exchange is covered in identity.test.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentEntitlement } from '../../lib/api/types.generated.ts';
import { clientFromKubeconfig, resourcePath, type KubeClient, type KubeObject } from '../../lib/kube/client.ts';
import { RESOURCES } from '../../lib/kube/resources.ts';
import { silentLogger } from '../../lib/log.ts';
import { startLocalController, type LocalController } from '../../localcluster/controller.ts';
import { TokenIssuer } from '../../operator/identity/issuer.ts';
import { controllerEntitlements } from '../../sidecar/entitlements.ts';
import { cluster, createNamespace, eventually, run, runOrThrow } from '../support/cluster.ts';

type AE = KubeObject & AgentEntitlement;

let client: KubeClient;
let controller: LocalController;
/** Every write the controller sends: method and path (its client is the real one, observed). */
const controllerWrites: string[] = [];
let issuer: TokenIssuer;
const stops: (() => void)[] = [];

interface StreamClient {
  pod: string;
  snapshots: AgentEntitlement[];
  acked: string[];
  latest(): AgentEntitlement | undefined;
}

/** The sidecar's stream client for one pod, recording every snapshot and acknowledging each (as the sidecar does). */
async function streamClient(ns: string, pod: { name: string; uid: string }): Promise<StreamClient> {
  const { token } = await issuer.issue({
    namespace: ns,
    agent: 'fleet',
    podName: pod.name,
    podUID: pod.uid,
    serviceAccountName: 'default',
    revision: '',
    audience: controller.issuerUrl,
    ttlSeconds: 600,
  });
  const out: StreamClient = {
    pod: pod.name,
    snapshots: [],
    acked: [],
    latest: () => out.snapshots.at(-1),
  };
  const source = controllerEntitlements({
    controllerUrl: controller.issuerUrl,
    caPem: controller.caPem,
    token: () => token,
    logger: silentLogger,
    onSnapshot: (ae) => {
      out.snapshots.push(ae);
      void source.ack(ae.spec.revision).then(() => out.acked.push(ae.spec.revision));
    },
    onHeartbeat: () => undefined,
  });
  await source.start();
  stops.push(() => source.stop());
  return out;
}

const policy = (ns: string, name: string, agent: string, hosts: string[]): string =>
  JSON.stringify({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name, namespace: ns },
    spec: {
      agentSelector: { matchLabels: { 'agentfence.io/agent': agent } },
      egress: [{ name: 'web', to: { hosts }, ports: [{ port: 443 }] }],
    },
  });

const podList = (ns: string, names: { name: string; agent: string }[]): string =>
  JSON.stringify({
    apiVersion: 'v1',
    kind: 'List',
    items: names.map(({ name, agent }) => ({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace: ns, labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': agent } },
      spec: { containers: [{ name: 'app', image: 'registry.example/agent:1' }] },
    })),
  });

async function entitlements(ns: string): Promise<Map<string, AE>> {
  const list = await client.list<AE>(resourcePath(RESOURCES.agentEntitlements, { namespace: ns }));
  return new Map(list.items.map((ae) => [ae.metadata.name ?? '', ae]));
}

async function pods(ns: string): Promise<{ name: string; uid: string }[]> {
  const list = await client.list<KubeObject>(resourcePath(RESOURCES.pods, { namespace: ns }));
  return list.items.map((p) => ({ name: p.metadata.name ?? '', uid: p.metadata.uid ?? '' }));
}

async function policyObservedGeneration(ns: string, name: string): Promise<{ generation: number; observed: number }> {
  const p = JSON.parse(await runOrThrow(['get', 'agentpolicy', name, '-n', ns, '-o', 'json'])) as {
    metadata: { generation: number };
    status?: { observedGeneration?: number };
  };
  return { generation: p.metadata.generation, observed: p.status?.observedGeneration ?? 0 };
}

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  const system = await createNamespace('af-fleet-system');
  const observed = await clientFromKubeconfig(cluster().kubeconfigPath);
  const send = observed.request.bind(observed);
  observed.request = (method, path, init) => {
    if (method !== 'GET') controllerWrites.push(`${method} ${path.split('?')[0] ?? ''}`);
    return send(method, path, init);
  };
  stops.push(() => observed.close());
  controller = await startLocalController({ client: observed, namespace: system, reconciler: {} });
  await eventually(() => (controller.operator.keys.ready() ? true : undefined), 'signing keys');
  issuer = new TokenIssuer({
    issuer: controller.issuerUrl,
    trustDomain: 'cluster.local',
    keys: () => controller.operator.keys.keys(),
  });
});

afterAll(async () => {
  for (const stop of stops) stop();
  await controller.operator.stop();
  client.close();
});

describe('fleet delivery', () => {
  it('an edit of a policy selecting 10 of 160 pods writes only their 10 entitlements; each client gets only its own', async () => {
    const ns = await createNamespace('fleet-write');
    const groups = 16;
    const perGroup = 10;
    for (let g = 0; g < groups; g++)
      await runOrThrow(['apply', '-f', '-'], policy(ns, `p-${g}`, `group-${g}`, [`g${g}.example`]));
    const names = Array.from({ length: groups * perGroup }, (_, i) => ({
      name: `agent-${i}`,
      agent: `group-${Math.floor(i / perGroup)}`,
    }));
    await runOrThrow(['apply', '-f', '-'], podList(ns, names));
    const before = await eventually(
      async () => {
        const all = await entitlements(ns);
        return all.size === groups * perGroup ? all : undefined;
      },
      '160 entitlements',
      60_000,
    );
    // One stream client for a pod of the edited group and one for a pod of another group.
    const podsByName = new Map((await pods(ns)).map((p) => [p.name, p]));
    const edited = await streamClient(ns, podsByName.get('agent-30') ?? { name: '', uid: '' });
    const other = await streamClient(ns, podsByName.get('agent-100') ?? { name: '', uid: '' });
    await eventually(() => (edited.latest() && other.latest() ? true : undefined), 'first snapshots');

    // Edit group 3 (agent-30 … agent-39), then wait until its status reports the reconcile of this generation.
    const writesBefore = controllerWrites.length;
    await runOrThrow(['apply', '-f', '-'], policy(ns, 'p-3', 'group-3', ['g3.example', 'more.example']));
    await eventually(async () => {
      const { generation, observed } = await policyObservedGeneration(ns, 'p-3');
      return generation === 2 && observed === 2 ? true : undefined;
    }, 'the edit reconciled');
    const after = await entitlements(ns);
    const moved = [...after.values()]
      .filter((ae) => ae.spec.revision !== before.get(ae.metadata.name ?? '')?.spec.revision)
      .map((ae) => ae.metadata.name)
      .sort();
    expect(moved).toEqual(Array.from({ length: 10 }, (_, i) => `agent-${30 + i}`).sort());
    // Not even a no-op request for the others: the controller sent exactly one entitlement write per changed pod
    // (a server-side apply of identical content does not move resourceVersion, so requests are counted too).
    const entitlementWrites = controllerWrites
      .slice(writesBefore)
      .filter((w) => w.includes('/agententitlements/') && !w.endsWith('/status'))
      .map((w) => w.split('/').at(-1))
      .sort();
    expect(entitlementWrites).toEqual(moved);
    // Unaffected objects were not written at all: their resourceVersions did not move. (Acknowledgements write
    // status, which moves resourceVersion too; only the two streamed pods acknowledge, and agent-100's ack of its
    // first snapshot may land at any time, so it is left out.)
    const rewritten = [...after.values()]
      .filter((ae) => !moved.includes(ae.metadata.name) && ae.metadata.name !== 'agent-100')
      .filter((ae) => ae.metadata.resourceVersion !== before.get(ae.metadata.name ?? '')?.metadata.resourceVersion)
      .map((ae) => ae.metadata.name);
    expect(rewritten).toEqual([]);

    // The streamed snapshot is the recorded object: same revision, same spec.
    const record = after.get('agent-30');
    await eventually(() => (edited.latest()?.spec.revision === record?.spec.revision ? true : undefined), 'streamed');
    expect(edited.latest()?.spec).toEqual(record?.spec);
    expect(other.latest()?.spec).toEqual(after.get('agent-100')?.spec);
    expect(other.snapshots).toHaveLength(1); // an unaffected pod gets nothing new
    // Each client only ever saw its own pod.
    expect(new Set(edited.snapshots.map((s) => `${s.metadata.namespace}/${s.spec.podName}/${s.spec.podUID}`))).toEqual(
      new Set([`${ns}/agent-30/${podsByName.get('agent-30')?.uid}`]),
    );
    expect(new Set(other.snapshots.map((s) => s.spec.podName))).toEqual(new Set(['agent-100']));
  });

  it('a narrowing whose write the API server refuses reaches the sidecar at once; the record follows when it can', async () => {
    const ns = await createNamespace('fleet-refused');
    await runOrThrow(['apply', '-f', '-'], policy(ns, 'web', 'victim', ['a.example', 'b.example']));
    await runOrThrow(['apply', '-f', '-'], podList(ns, [{ name: 'victim-0', agent: 'victim' }]));
    const wide = await eventually(async () => (await entitlements(ns)).get('victim-0'), 'the wide entitlement');
    const [victim] = await pods(ns);
    if (!victim) throw new Error('no pod');
    const sidecar = await streamClient(ns, victim);
    await eventually(() => {
      if (sidecar.latest()?.spec.revision === wide.spec.revision) return true;
      throw new Error(`holds ${JSON.stringify(sidecar.latest()?.spec)}, record ${JSON.stringify(wide.spec)}`);
    }, 'the wide snapshot');

    // The API server refuses every write of this pod's entitlement that drops b.example.
    const vap = `af-fleet-refuse-${ns}`;
    await runOrThrow(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'List',
        items: [
          {
            apiVersion: 'admissionregistration.k8s.io/v1',
            kind: 'ValidatingAdmissionPolicy',
            metadata: { name: vap },
            spec: {
              failurePolicy: 'Fail',
              matchConstraints: {
                resourceRules: [
                  {
                    apiGroups: ['agentfence.io'],
                    apiVersions: ['*'],
                    operations: ['CREATE', 'UPDATE'],
                    resources: ['agententitlements'],
                  },
                ],
              },
              validations: [
                {
                  expression:
                    "object.metadata.name != 'victim-0' || object.spec.egress.exists(r, has(r.hosts) && r.hosts.exists(h, h == 'b.example'))",
                  message: 'refused by the test',
                },
              ],
            },
          },
          {
            apiVersion: 'admissionregistration.k8s.io/v1',
            kind: 'ValidatingAdmissionPolicyBinding',
            metadata: { name: vap },
            spec: {
              policyName: vap,
              validationActions: ['Deny'],
              matchResources: { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': ns } } },
            },
          },
        ],
      }),
    );
    // Admission policies take effect asynchronously: wait until a narrowing write is refused.
    const narrowed = { ...wide.spec, egress: (wide.spec.egress ?? []).map((r) => ({ ...r, hosts: ['a.example'] })) };
    await eventually(async () => {
      const res = await run(
        ['apply', '--server-side', '--force-conflicts', '--dry-run=server', '--field-manager=probe', '-f', '-'],
        JSON.stringify({ ...wide, metadata: { name: 'victim-0', namespace: ns }, spec: narrowed }),
      );
      if (res.code !== 0 && res.stderr.includes('refused by the test')) return true;
      throw new Error(`not refused yet: ${res.code} ${res.stderr}`);
    }, 'the admission policy in force');
    try {
      await runOrThrow(['apply', '-f', '-'], policy(ns, 'web', 'victim', ['a.example']));
      // The sidecar holds the narrowed entitlement although the API server refused to record it.
      const got = await eventually(() => {
        const latest = sidecar.latest();
        return latest && latest.spec.revision !== wide.spec.revision ? latest : undefined;
      }, 'the narrowed snapshot');
      expect((got.spec.egress ?? []).flatMap((r) => r.hosts ?? [])).toEqual(['a.example']);
      // The refused write is reported (an Event on the object's owner, the pod) and the record is unchanged.
      await eventually(async () => {
        const events = await client.list<
          KubeObject & { reason?: string; note?: string; regarding?: { name?: string } }
        >(`/apis/events.k8s.io/v1/namespaces/${ns}/events`);
        return events.items.some(
          (e) =>
            e.reason === 'ApplyFailed' && e.regarding?.name === 'victim-0' && e.note?.includes('refused by the test'),
        )
          ? true
          : undefined;
      }, 'the refused write reported');
      expect((await entitlements(ns)).get('victim-0')?.spec.revision).toBe(wide.spec.revision);
      // A heartbeat or a reconnect does not bring the wide entitlement back.
      expect(sidecar.snapshots.at(-1)?.spec.revision).toBe(got.spec.revision);
    } finally {
      await runOrThrow(['delete', 'validatingadmissionpolicybinding,validatingadmissionpolicy', vap]);
    }
    // The write goes through on a later reconcile: the record carries exactly what the sidecar holds, and the
    // sidecar's acknowledgement (sent before the object existed) is recorded as in sync.
    const recorded = await eventually(
      async () => {
        const ae = (await entitlements(ns)).get('victim-0');
        if (!ae) return undefined;
        return ae.spec.revision === sidecar.latest()?.spec.revision &&
          ae.status?.enforcedRevision === ae.spec.revision &&
          ae.status.inSync === true
          ? ae
          : undefined;
      },
      'the record caught up and the ack recorded in sync',
      120_000,
    );
    expect(recorded.spec).toEqual(sidecar.latest()?.spec);
    expect(recorded.status?.enforcedRevision).toBe(recorded.spec.revision);
    expect(sidecar.snapshots.map((s) => s.spec.revision)).toEqual([wide.spec.revision, recorded.spec.revision]);
  }, 180_000);
});
