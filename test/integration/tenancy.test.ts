/**
 * Tenancy on the real API server: a policy in one namespace cannot open, write or read anything in another.
 * Cross-namespace grants need the callee namespace's consent (its own ingress rule); until then the caller's
 * policy is Degraded with reason CalleeHasNotConsented and nothing is written on the callee side; status never
 * lists other namespaces' pods; objects an older version wrote across namespaces are pruned.
 */
import type { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLocalController } from '../../localcluster/controller.ts';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { type RunningOperator } from '../../operator/runtime.ts';
import { calleeIngressName, preGateObjectName } from '../../operator/compiler/names.ts';
import { cluster, createNamespace, eventually, run, runOrThrow } from '../support/cluster.ts';
import { allowed, type EvalPod, type EvalPolicy, type EvalWorld } from '../support/netpol-eval.ts';

let client: KubeClient;
let operator: RunningOperator;
let victim: string;
let attacker: string;
let caller: string;
let registry: Registry;

interface Condition {
  type: string;
  status: string;
  reason: string;
  message: string;
}

const pod = (ns: string, name: string, agent: string): string =>
  JSON.stringify({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: ns, labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': agent } },
    spec: { containers: [{ name: 'app', image: 'registry.example/agent:1' }] },
  });

const agentPolicy = (ns: string, name: string, spec: Record<string, unknown>): string =>
  JSON.stringify({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name, namespace: ns },
    spec: { agentSelector: { matchLabels: { 'agentfence.io/agent': name } }, ...spec },
  });

async function netpols(ns: string): Promise<{ name: string; labels: Record<string, string> }[]> {
  const list = JSON.parse(await runOrThrow(['get', 'networkpolicies', '-n', ns, '-o', 'json'])) as {
    items: { metadata: { name: string; labels?: Record<string, string> } }[];
  };
  return list.items.map((i) => ({ name: i.metadata.name, labels: i.metadata.labels ?? {} }));
}

async function degraded(ns: string, name: string): Promise<Condition | undefined> {
  const res = await run(['get', 'agentpolicy', name, '-n', ns, '-o', 'json']);
  if (res.code !== 0) return undefined;
  const status = (JSON.parse(res.stdout) as { status?: { conditions?: Condition[] } }).status;
  return status?.conditions?.find((c) => c.type === 'Degraded');
}

/** Pods, namespaces and NetworkPolicies of these namespaces as the API server stores them. */
async function liveWorld(namespaces: string[]): Promise<EvalWorld> {
  const world: EvalWorld = { namespaces: {}, pods: [], policies: [] };
  for (const ns of namespaces) {
    const nsObj = JSON.parse(await runOrThrow(['get', 'namespace', ns, '-o', 'json'])) as {
      metadata: { labels?: Record<string, string> };
    };
    world.namespaces[ns] = nsObj.metadata.labels ?? {};
    const pods = JSON.parse(await runOrThrow(['get', 'pods', '-n', ns, '-o', 'json'])) as {
      items: { metadata: { name: string; labels?: Record<string, string> } }[];
    };
    for (const p of pods.items)
      world.pods.push({ namespace: ns, name: p.metadata.name, labels: p.metadata.labels ?? {} });
    const nps = JSON.parse(await runOrThrow(['get', 'networkpolicies', '-n', ns, '-o', 'json'])) as {
      items: EvalPolicy[];
    };
    world.policies.push(...nps.items);
  }
  return world;
}

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  const system = await createNamespace('af-ten-system');
  victim = await createNamespace('tenant-a');
  attacker = await createNamespace('tenant-x');
  caller = await createNamespace('team-c');
  const started = await startLocalController({
    client,
    namespace: system,
  });
  operator = started.operator;
  registry = started.registry;
  await runOrThrow(['apply', '-f', '-'], pod(victim, 'planner-0', 'planner'));
  await runOrThrow(['apply', '-f', '-'], pod(attacker, 'x-0', 'x'));
  await runOrThrow(['apply', '-f', '-'], pod(caller, 'orchestrator-0', 'orchestrator'));
});

afterAll(async () => {
  await operator.stop();
  client.close();
});

describe('tenancy', () => {
  it("a second tenant's policy cannot change anything in the first tenant's namespace, nor read it in status", async () => {
    await eventually(
      async () => ((await netpols(victim)).some((n) => n.name === 'agentfence-baseline') ? true : undefined),
      'baseline in the victim namespace',
    );
    await runOrThrow(
      ['apply', '-f', '-'],
      agentPolicy(attacker, 'x', {
        egress: [
          {
            name: 'everyone',
            to: {
              agents: {
                namespaceSelector: {},
                agentSelector: { matchExpressions: [{ key: 'agentfence.io/agent', operator: 'Exists' }] },
              },
            },
            ports: [{ port: 1, endPort: 65535 }],
          },
        ],
      }),
    );
    const condition = await eventually(async () => {
      const c = await degraded(attacker, 'x');
      return c?.status === 'True' ? c : undefined;
    }, 'the attacker policy Degraded');
    expect(condition.reason).toBe('CalleeHasNotConsented');
    // Status names no namespace it did not name itself, and no pod of another namespace (they have no IP yet).
    expect(condition.message).not.toContain(victim);
    expect(condition.message).not.toContain(caller);
    expect(condition.message).not.toContain('planner-0');
    // The details go to the controller's metric (and log) instead.
    const foreign = await eventually(async () => {
      const metric = await registry.getSingleMetric('agentfence_policy_foreign_problems')?.get();
      const v = metric?.values.find((x) => x.labels.reason === 'CalleeHasNotConsented')?.value ?? 0;
      return v > 0 ? v : undefined;
    }, 'foreign problems counted');
    expect(foreign).toBeGreaterThan(0);
    const before = await netpols(victim);
    expect(before.map((n) => n.name)).toEqual(['agentfence-baseline']);

    // What an older version wrote for this very rule (an ingress NetworkPolicy in the victim namespace) is pruned.
    const leftover = calleeIngressName(attacker, 'x', 'everyone');
    await runOrThrow(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'networking.k8s.io/v1',
        kind: 'NetworkPolicy',
        metadata: {
          name: leftover,
          namespace: victim,
          labels: {
            'app.kubernetes.io/managed-by': 'agentfence',
            'agentfence.io/policy': 'x',
            'agentfence.io/policy-namespace': attacker,
          },
        },
        spec: {
          podSelector: { matchLabels: { 'agentfence.io/inject': 'true' } },
          policyTypes: ['Ingress'],
          ingress: [{ from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': attacker } } }] }],
        },
      }),
    );
    await eventually(
      async () => ((await netpols(victim)).some((n) => n.name === leftover) ? undefined : true),
      'leftover cross-namespace NetworkPolicy pruned',
    );
    expect(await netpols(victim)).toEqual(before);
    expect((await netpols(victim)).map((n) => n.name)).toEqual(['agentfence-baseline']);
  });

  it('opens the callee side only once the callee namespace consents, by its own policy', async () => {
    await runOrThrow(
      ['apply', '-f', '-'],
      agentPolicy(caller, 'orchestrator', {
        egress: [
          {
            name: 'planner',
            to: {
              agents: {
                namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': victim } },
                agentSelector: { matchLabels: { 'agentfence.io/agent': 'planner' } },
              },
            },
            ports: [{ port: 8443 }],
          },
        ],
      }),
    );
    const refused = await eventually(async () => {
      const c = await degraded(caller, 'orchestrator');
      return c?.status === 'True' ? c : undefined;
    }, 'caller Degraded until consent');
    expect(refused.reason).toBe('CalleeHasNotConsented');
    expect(refused.message).toContain(`namespace ${victim} has not consented`);
    expect((await netpols(victim)).map((n) => n.name)).toEqual(['agentfence-baseline']);

    // The victim consents: an ingress rule admitting team-c's orchestrator.
    await runOrThrow(
      ['apply', '-f', '-'],
      agentPolicy(victim, 'planner', {
        ingress: [
          {
            name: 'from-orchestrator',
            from: {
              agents: {
                namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': caller } },
                agentSelector: { matchLabels: { 'agentfence.io/agent': 'orchestrator' } },
              },
            },
            ports: [{ port: 8443 }],
          },
        ],
      }),
    );
    await eventually(async () => {
      const c = await degraded(caller, 'orchestrator');
      return c?.status === 'False' ? c : undefined;
    }, 'caller no longer Degraded');
    const victimObjects = await netpols(victim);
    // planner-0 is created without the webhook (no sidecar): a pre-gate pod, whose app port its own policy opens
    // by a NetworkPolicy that selects pre-gate pods only (operator/compiler/inbound.ts preGateSelector).
    expect(victimObjects.map((n) => n.name).sort()).toEqual(
      ['agentfence-baseline', 'agentfence-planner', preGateObjectName(victim, 'planner')].sort(),
    );
    expect(victimObjects.every((n) => n.labels['agentfence.io/policy-namespace'] === undefined)).toBe(true);
    const egress = JSON.parse(
      await runOrThrow([
        'get',
        'networkpolicy',
        'agentfence-orchestrator',
        '-n',
        caller,
        '-o',
        'jsonpath={.spec.egress}',
      ]),
    ) as unknown;
    expect(JSON.stringify(egress)).toContain(victim);

    // What the API server now holds, read back and evaluated independently (test/support/netpol-eval.ts).
    const world = await liveWorld([victim, attacker, caller]);
    const podOf = (ns: string, name: string): EvalPod => {
      const found = world.pods.find((p) => p.namespace === ns && p.name === name);
      if (!found) throw new Error(`${ns}/${name} not found`);
      return found;
    };
    const planner = { pod: podOf(victim, 'planner-0') };
    expect(allowed(world, podOf(caller, 'orchestrator-0'), planner, 8443)).toBe(true);
    expect(allowed(world, podOf(caller, 'orchestrator-0'), planner, 8444)).toBe(false);
    for (const port of [1, 443, 8443, 65535]) expect(allowed(world, podOf(attacker, 'x-0'), planner, port)).toBe(false);
    expect(allowed(world, podOf(victim, 'planner-0'), { pod: podOf(attacker, 'x-0') }, 8443)).toBe(false);
  });
});
