/**
 * Adversarial variants of "one namespace opens another" on the real API server, beyond tenancy.test.ts: a grant
 * through a Service of the victim's agents, a CIDR grant covering the victim's pods, a namespace label forged to
 * match the victim's consent, and what the attacker's namespace gets to read back (status, Events).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLocalController } from '../../localcluster/controller.ts';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { type RunningOperator } from '../../operator/runtime.ts';
import { cluster, createNamespace, eventually, run, runOrThrow } from '../support/cluster.ts';
import { allowed, type EvalPolicy, type EvalWorld } from '../support/netpol-eval.ts';

let client: KubeClient;
let operator: RunningOperator;
let victim: string;
let attacker: string;

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
    spec: { containers: [{ name: 'app', image: 'registry.example/agent:1', ports: [{ containerPort: 8443 }] }] },
  });

const agentPolicy = (ns: string, name: string, spec: Record<string, unknown>): string =>
  JSON.stringify({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name, namespace: ns },
    spec: { agentSelector: { matchLabels: { 'agentfence.io/agent': name } }, ...spec },
  });

async function netpols(ns: string): Promise<EvalPolicy[]> {
  return (JSON.parse(await runOrThrow(['get', 'networkpolicies', '-n', ns, '-o', 'json'])) as { items: EvalPolicy[] })
    .items;
}

const names = async (ns: string): Promise<string[]> =>
  (await netpols(ns)).map((n) => (n as unknown as { metadata: { name: string } }).metadata.name).sort();

async function condition(ns: string, name: string, type: string): Promise<Condition | undefined> {
  const res = await run(['get', 'agentpolicy', name, '-n', ns, '-o', 'json']);
  if (res.code !== 0) return undefined;
  const status = (JSON.parse(res.stdout) as { status?: { conditions?: Condition[] } }).status;
  return status?.conditions?.find((c) => c.type === type);
}

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  const system = await createNamespace('af-atk-ten-system');
  victim = await createNamespace('atk-victim');
  attacker = await createNamespace('atk-attacker');
  const started = await startLocalController({
    client,
    namespace: system,
  });
  operator = started.operator;
  await runOrThrow(['apply', '-f', '-'], pod(victim, 'planner-0', 'planner'));
  await runOrThrow(['apply', '-f', '-'], pod(attacker, 'x-0', 'x'));
  // A Service of the victim's agents, as a team would expose its agent to its own callers.
  await runOrThrow(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'planner', namespace: victim },
      spec: { selector: { 'agentfence.io/agent': 'planner' }, ports: [{ port: 443, targetPort: 8443 }] },
    }),
  );
  await eventually(
    async () => ((await names(victim)).includes('agentfence-baseline') ? true : undefined),
    'baseline in the victim namespace',
  );
});

afterAll(async () => {
  await operator.stop();
  client.close();
});

describe('tenancy: variants', () => {
  it("a grant to the victim's agents through their Service opens nothing on the victim's side", async () => {
    await runOrThrow(
      ['apply', '-f', '-'],
      agentPolicy(attacker, 'x', {
        egress: [
          { name: 'via-service', to: { services: [{ name: 'planner', namespace: victim }] }, ports: [{ port: 443 }] },
        ],
      }),
    );
    const degraded = await eventually(async () => {
      const c = await condition(attacker, 'x', 'Degraded');
      return c?.status === 'True' ? c : undefined;
    }, 'the attacker policy Degraded');
    expect(degraded.reason).toBe('CalleeHasNotConsented');
    expect(await names(victim)).toEqual(['agentfence-baseline']);
  });

  it("a CIDR grant covering the victim's pods opens the caller's egress only: the victim's ingress stays closed", async () => {
    await runOrThrow(
      ['apply', '-f', '-'],
      agentPolicy(attacker, 'x', {
        egress: [{ name: 'everything-internal', to: { cidrs: ['10.0.0.0/8'] }, ports: [{ port: 1, endPort: 65535 }] }],
      }),
    );
    await eventually(async () => {
      const np = (await netpols(attacker)).find(
        (n) => (n as unknown as { metadata: { name: string } }).metadata.name === 'agentfence-x',
      );
      return JSON.stringify(np?.spec.egress ?? []).includes('10.0.0.0/8') ? true : undefined;
    }, "the attacker's egress written");
    expect(await names(victim)).toEqual(['agentfence-baseline']);
    // Evaluated independently, with addresses inside that range: the attacker may send, the victim does not accept.
    const world: EvalWorld = {
      namespaces: {
        [victim]: { 'kubernetes.io/metadata.name': victim },
        [attacker]: { 'kubernetes.io/metadata.name': attacker },
      },
      pods: [
        {
          namespace: victim,
          name: 'planner-0',
          labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': 'planner' },
          ip: '10.244.1.5',
        },
        {
          namespace: attacker,
          name: 'x-0',
          labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': 'x' },
          ip: '10.244.2.5',
        },
      ],
      policies: [...(await netpols(victim)), ...(await netpols(attacker))],
    };
    const [planner, x] = world.pods as [EvalWorld['pods'][number], EvalWorld['pods'][number]];
    expect(allowed(world, x, { ip: '10.1.2.3' }, 5432)).toBe(true); // what the rule grants: a non-pod address
    for (const port of [443, 8443]) expect(allowed(world, x, { pod: planner }, port)).toBe(false);
  });

  it("cannot forge the namespace-name label the victim's consent should use; a free-form label it can", async () => {
    // The API server keeps kubernetes.io/metadata.name equal to the name: it is the label consent can rely on.
    await run(['label', 'namespace', attacker, '--overwrite', `kubernetes.io/metadata.name=${victim}`]);
    const labels = JSON.parse(
      await runOrThrow(['get', 'namespace', attacker, '-o', 'jsonpath={.metadata.labels}']),
    ) as Record<string, string>;
    expect(labels['kubernetes.io/metadata.name']).toBe(attacker);

    // A consent by a free-form label admits whoever can set that label on a namespace (documented in the README).
    await runOrThrow(['label', 'namespace', attacker, 'trust=partners']);
    await runOrThrow(
      ['apply', '-f', '-'],
      agentPolicy(victim, 'planner', {
        ingress: [
          {
            name: 'from-partners',
            from: {
              agents: {
                namespaceSelector: { matchLabels: { trust: 'partners' } },
                agentSelector: { matchExpressions: [{ key: 'agentfence.io/agent', operator: 'Exists' }] },
              },
            },
            ports: [{ port: 8443 }],
          },
        ],
      }),
    );
    await runOrThrow(
      ['apply', '-f', '-'],
      agentPolicy(attacker, 'x', {
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
    await eventually(async () => {
      const c = await condition(attacker, 'x', 'Degraded');
      return c?.status === 'False' ? c : undefined;
    }, 'consent through the forged free-form label');
    // The same consent by the namespace-name label does not admit the attacker.
    await runOrThrow(
      ['apply', '-f', '-'],
      agentPolicy(victim, 'planner', {
        ingress: [
          {
            name: 'from-partners',
            from: {
              agents: {
                namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'partners-ns' } },
                agentSelector: { matchExpressions: [{ key: 'agentfence.io/agent', operator: 'Exists' }] },
              },
            },
            ports: [{ port: 8443 }],
          },
        ],
      }),
    );
    const refused = await eventually(async () => {
      const c = await condition(attacker, 'x', 'Degraded');
      return c?.status === 'True' ? c : undefined;
    }, 'consent gone');
    expect(refused.reason).toBe('CalleeHasNotConsented');
  });

  it("nothing the attacker reads back (status, Events) names the victim's pods or other namespaces", async () => {
    const policyJson = await runOrThrow(['get', 'agentpolicy', 'x', '-n', attacker, '-o', 'json']);
    expect(policyJson).not.toContain('planner-0');
    const events = await runOrThrow(['get', 'events', '-n', attacker, '-o', 'json']);
    expect(events).not.toContain('planner-0');
    expect(events).not.toContain('af-atk-ten-system');
    // Nor does the victim's namespace get Events that name the attacker.
    expect(await runOrThrow(['get', 'events', '-n', victim, '-o', 'json'])).not.toContain(attacker);
  });
});
