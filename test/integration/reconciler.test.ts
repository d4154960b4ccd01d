/**
 * The policy reconciler against the real API server (with kube-controller-manager for garbage collection):
 * policies become NetworkPolicies and per-pod AgentEntitlements, follow edits, go with deletion; hand edits are
 * reverted; the baseline is protected and recreated; status tracks every generation.
 */
import { startLocalController } from '../../localcluster/controller.ts';
import type { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { type RunningOperator } from '../../operator/runtime.ts';
import { cluster, createNamespace, eventually, run, runOrThrow } from '../support/cluster.ts';

let client: KubeClient;
let operator: RunningOperator;
let ns: string;
let registry: Registry;

async function reconciles(): Promise<number> {
  const metric = await registry.getSingleMetric('controller_runtime_reconcile_total')?.get();
  return (metric?.values ?? [])
    .filter((v) => v.labels.controller === 'agentpolicy')
    .reduce((sum, v) => sum + v.value, 0);
}

interface Obj {
  metadata: {
    name: string;
    uid?: string;
    generation?: number;
    finalizers?: string[];
    deletionTimestamp?: string;
    ownerReferences?: { kind: string; name: string }[];
  };
  spec: Record<string, unknown>;
  status?: Record<string, unknown>;
}

async function get(kind: string, name: string): Promise<Obj | undefined> {
  const res = await run(['get', kind, name, '-n', ns, '-o', 'json']);
  return res.code === 0 ? (JSON.parse(res.stdout) as Obj) : undefined;
}

const policy = (name: string, agent: string, egress: unknown[]): string =>
  JSON.stringify({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name, namespace: ns },
    spec: { agentSelector: { matchLabels: { 'agentfence.io/agent': agent } }, egress },
  });

const pod = (name: string, agent: string): string =>
  JSON.stringify({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: ns, labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': agent } },
    spec: { containers: [{ name: 'app', image: 'registry.example/agent:1' }] },
  });

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  const system = await createNamespace('af-rec-system');
  ns = await createNamespace('rec');
  const started = await startLocalController({
    client,
    namespace: system,
    // The reconciler shares the runtime's AgentEntitlement cache.
    reconciler: { operator: { namespace: system, podLabels: { app: 'agentfence' }, port: 8443 } },
  });
  operator = started.operator;
  registry = started.registry;
});

afterAll(async () => {
  await operator.stop();
  client.close();
});

describe('policy reconciler', () => {
  it('compiles a policy into a NetworkPolicy, a baseline and per-pod entitlements, and follows edits', async () => {
    await runOrThrow(['apply', '-f', '-'], pod('planner-0', 'planner'));
    await runOrThrow(['apply', '-f', '-'], pod('coder-0', 'coder'));
    await runOrThrow(
      ['apply', '-f', '-'],
      policy('planner', 'planner', [{ name: 'mirror', to: { cidrs: ['10.40.0.0/16'] }, ports: [{ port: 443 }] }]),
    );

    const np = await eventually(() => get('networkpolicy', 'agentfence-planner'), 'per-policy NetworkPolicy');
    expect(np.metadata.ownerReferences?.[0]).toMatchObject({ kind: 'AgentPolicy', name: 'planner' });
    expect(JSON.stringify(np.spec)).toContain('10.40.0.0/16');
    const baseline = await eventually(() => get('networkpolicy', 'agentfence-baseline'), 'baseline');
    // No finalizer: a controller that is gone must never hold a namespace's deletion.
    expect(baseline.metadata.finalizers ?? []).toEqual([]);
    expect(baseline.spec.policyTypes).toEqual(['Ingress', 'Egress']);

    const ae = await eventually(() => get('agententitlement', 'planner-0'), 'entitlement of planner-0');
    expect(ae.metadata.ownerReferences?.[0]).toMatchObject({ kind: 'Pod', name: 'planner-0' });
    expect(JSON.stringify(ae.spec)).toContain('10.40.0.0/16');
    // coder-0 is selected by no policy: an entitlement with nothing in it.
    const coder = await eventually(() => get('agententitlement', 'coder-0'), 'entitlement of coder-0');
    expect(coder.spec.egress ?? []).toEqual([]);

    const status = await eventually(async () => {
      const p = await get('agentpolicy', 'planner');
      return p?.status?.observedGeneration === 1 ? p.status : undefined;
    }, 'status for generation 1');
    expect(status.agents).toMatchObject({ selected: 1 });

    // Edit: the NetworkPolicy and the entitlement follow; status tracks generation 2.
    await runOrThrow(
      ['apply', '-f', '-'],
      policy('planner', 'planner', [{ name: 'mirror', to: { cidrs: ['10.50.0.0/16'] }, ports: [{ port: 443 }] }]),
    );
    await eventually(
      async () =>
        JSON.stringify((await get('networkpolicy', 'agentfence-planner'))?.spec).includes('10.50.0.0/16')
          ? true
          : undefined,
      'NetworkPolicy follows the edit',
    );
    await eventually(
      async () =>
        JSON.stringify((await get('agententitlement', 'planner-0'))?.spec).includes('10.50.0.0/16') ? true : undefined,
      'entitlement follows the edit',
    );
    await eventually(
      async () => ((await get('agentpolicy', 'planner'))?.status?.observedGeneration === 2 ? true : undefined),
      'status generation 2',
    );
  });

  it('reverts a hand edit of a generated NetworkPolicy', async () => {
    await runOrThrow([
      'patch',
      'networkpolicy',
      'agentfence-planner',
      '-n',
      ns,
      '--type=json',
      '-p',
      '[{"op":"replace","path":"/spec/egress","value":[{}]}]',
    ]);
    await eventually(
      async () =>
        JSON.stringify((await get('networkpolicy', 'agentfence-planner'))?.spec).includes('10.50.0.0/16')
          ? true
          : undefined,
      'hand edit reverted',
    );
  });

  it('recreates the baseline when it is deleted, and removes the finalizer earlier versions set', async () => {
    const before = await eventually(() => get('networkpolicy', 'agentfence-baseline'), 'baseline');
    await runOrThrow(['delete', 'networkpolicy', 'agentfence-baseline', '-n', ns]);
    await eventually(async () => {
      const b = await get('networkpolicy', 'agentfence-baseline');
      return b && b.metadata.uid !== before.metadata.uid ? true : undefined;
    }, 'baseline recreated');
    // An upgrade from a version that protected the baseline with a finalizer: the controller takes it off.
    await runOrThrow([
      'patch',
      'networkpolicy',
      'agentfence-baseline',
      '-n',
      ns,
      '--type=merge',
      '-p',
      '{"metadata":{"finalizers":["agentfence.io/protect-baseline"]}}',
    ]);
    await eventually(async () => {
      const b = await get('networkpolicy', 'agentfence-baseline');
      return b && (b.metadata.finalizers ?? []).length === 0 ? true : undefined;
    }, 'legacy finalizer removed');
  });

  it('narrows a pod relabelled out of a policy', async () => {
    await runOrThrow(['label', 'pod', 'planner-0', '-n', ns, 'agentfence.io/agent=other', '--overwrite']);
    await eventually(async () => {
      const ae = await get('agententitlement', 'planner-0');
      return ae && ((ae.spec.egress as unknown[] | undefined) ?? []).length === 0 ? true : undefined;
    }, 'entitlement narrowed to nothing');
  });

  it('reports hostnames as not enforceable at L3, and foreign NetworkPolicies that widen egress', async () => {
    await runOrThrow(['apply', '-f', '-'], pod('writer-0', 'writer'));
    await runOrThrow(
      ['apply', '-f', '-'],
      policy('writer', 'writer', [{ name: 'llm', to: { hosts: ['api.example.com'] }, ports: [{ port: 443 }] }]),
    );
    const degraded = await eventually(async () => {
      const c = (
        (await get('agentpolicy', 'writer'))?.status?.conditions as
          { type: string; status: string; reason: string }[] | undefined
      )?.find((x) => x.type === 'Degraded');
      return c?.status === 'True' ? c : undefined;
    }, 'Degraded condition');
    expect(degraded.reason).toBe('FQDNNotEnforcedAtL3');

    // Someone else's policy that opens all egress for every pod in the namespace: reported, never touched.
    await runOrThrow(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'networking.k8s.io/v1',
        kind: 'NetworkPolicy',
        metadata: { name: 'allow-all-egress', namespace: ns },
        spec: { podSelector: {}, policyTypes: ['Egress'], egress: [{}] },
      }),
    );
    const message = await eventually(async () => {
      const c = (
        (await get('agentpolicy', 'writer'))?.status?.conditions as { type: string; message: string }[] | undefined
      )?.find((x) => x.type === 'Degraded');
      return c?.message.includes(`${ns}/allow-all-egress`) ? c.message : undefined;
    }, 'ForeignPolicyOverlap reported');
    expect(message).toContain('not managed by Agentfence');
    expect((await get('networkpolicy', 'allow-all-egress'))?.spec.egress).toEqual([{}]);
    await runOrThrow(['delete', 'networkpolicy', 'allow-all-egress', '-n', ns]);
  });

  it('drops a grant at expiresAt without any other change', async () => {
    await runOrThrow(['apply', '-f', '-'], pod('temp-0', 'temp'));
    const expiresAt = new Date(Date.now() + 4000).toISOString().replace(/\.\d{3}Z$/, 'Z');
    await runOrThrow(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'agentfence.io/v1alpha1',
        kind: 'AgentPolicy',
        metadata: { name: 'temp', namespace: ns },
        spec: {
          agentSelector: { matchLabels: { 'agentfence.io/agent': 'temp' } },
          expiresAt,
          egress: [{ name: 'mirror', to: { cidrs: ['10.60.0.0/16'] }, ports: [{ port: 443 }] }],
        },
      }),
    );
    await eventually(
      async () =>
        JSON.stringify((await get('agententitlement', 'temp-0'))?.spec).includes('10.60.0.0/16') ? true : undefined,
      'grant present',
    );
    const gone = await eventually(
      async () => {
        const ae = await get('agententitlement', 'temp-0');
        return ae && !JSON.stringify(ae.spec).includes('10.60.0.0/16') ? Date.now() : undefined;
      },
      'grant dropped at expiry',
      20_000,
    );
    expect(gone).toBeGreaterThanOrEqual(Date.parse(expiresAt));
    expect(gone - Date.parse(expiresAt)).toBeLessThan(3000);
  });

  it('removes what a deleted policy granted (garbage collection of owned objects)', async () => {
    await runOrThrow(['delete', 'agentpolicy', 'planner', '-n', ns]);
    await eventually(
      async () => ((await get('networkpolicy', 'agentfence-planner')) ? undefined : true),
      'per-policy NetworkPolicy gone',
      30_000,
    );
  });

  it('writes nothing when a reconcile finds nothing to change', async () => {
    const rv = async (kind: string, name: string): Promise<string> =>
      ((await get(kind, name)) as unknown as { metadata: { resourceVersion: string } }).metadata.resourceVersion;
    const before = {
      baseline: await rv('networkpolicy', 'agentfence-baseline'),
      coder: await rv('agententitlement', 'coder-0'),
    };
    const count = await reconciles();
    // An unrelated Service triggers a full reconcile...
    await runOrThrow(['create', 'service', 'clusterip', 'unrelated', '-n', ns, '--tcp=80:80']);
    await eventually(async () => ((await reconciles()) > count ? true : undefined), 'a reconcile ran');
    await new Promise((r) => setTimeout(r, 300));
    // ...which wrote nothing.
    expect(await rv('networkpolicy', 'agentfence-baseline')).toBe(before.baseline);
    expect(await rv('agententitlement', 'coder-0')).toBe(before.coder);
  });
});
