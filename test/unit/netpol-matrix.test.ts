/**
 * The compiled NetworkPolicies, checked by an independent evaluator (test/support/netpol-eval.ts, written from
 * the Kubernetes documentation, sharing no code with the compiler) against the intended connectivity: agents
 * isolated, granted paths open, nothing else — across namespaces and tenants, with consent on the callee side.
 */
import { describe, expect, it } from 'vitest';
import { compile } from '../../operator/compiler/index.ts';
import { CONTROLLER } from '../../operator/defaults.ts';
import type { CompileInput, PodInput } from '../../operator/compiler/types.ts';
import { allowed, type EvalPod, type EvalTarget, type EvalWorld } from '../support/netpol-eval.ts';
import { NOW, backendPod, namespace, policy, service } from '../support/compiler-fixtures.ts';
import { inject } from '../../webhook/inject.ts';
import { TEST_INJECTOR } from '../support/identity-server.ts';

/** An agent pod as the webhook injects it: its app ports behind the sidecar's inbound gates (15006, …). */
const agentWithPorts = (
  ns: string,
  name: string,
  agent: string,
  ip: string,
  ports: number[] = [],
  options: { gates?: boolean } = {},
): PodInput => {
  const out = inject(
    {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace: ns, labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': agent } },
      spec: { containers: [{ name: 'agent', ports: ports.map((containerPort) => ({ containerPort })) }] },
    },
    TEST_INJECTOR,
    options, // gates: false renders the pod as a version before inbound gates did
  );
  if (!out.allowed) throw new Error(out.message);
  return {
    metadata: { ...out.pod.metadata, uid: `uid-${ns}-${name}` },
    spec: out.pod.spec as PodInput['spec'],
    status: { podIP: ip, podIPs: [{ ip }] },
  };
};
const agentsOf = (ns: string, agent: string) => ({
  namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': ns } },
  agentSelector: { matchLabels: { 'agentfence.io/agent': agent } },
});

const pods: PodInput[] = [
  agentWithPorts('team-a', 'orchestrator-0', 'orchestrator', '10.1.0.1', [9000]),
  agentWithPorts('team-a', 'support-0', 'support', '10.1.0.2'),
  backendPod('team-a', 'db-0', { app: 'db' }, [{ name: 'pg', containerPort: 5432 }], '10.1.0.3'),
  backendPod('team-a', 'web-0', { app: 'web' }, [{ containerPort: 8080 }], '10.1.0.4'),
  agentWithPorts('team-b', 'planner-0', 'planner', '10.2.0.1', [8443]),
  agentWithPorts('team-b', 'planner-1', 'planner', '10.2.0.2', [8443]),
  agentWithPorts('team-b', 'research-0', 'research', '10.2.0.3'),
  agentWithPorts('tenant-x', 'x-0', 'x', '10.3.0.1', [8443]),
  backendPod('kube-system', 'coredns-0', { 'k8s-app': 'kube-dns' }, [{ containerPort: 53 }], '10.9.0.10'),
  backendPod(
    CONTROLLER.namespace,
    'controller-0',
    { ...CONTROLLER.podLabels }, // as the chart deploys it: the baseline must open exactly this pod
    [{ containerPort: CONTROLLER.port }],
    '10.9.0.20',
  ),
];

const tenants = [
  policy('team-a', 'orchestrator', {
    egress: [
      { name: 'planner', to: { agents: agentsOf('team-b', 'planner') }, ports: [{ port: 8443 }] },
      { name: 'db', to: { services: [{ name: 'db' }] }, ports: [{ port: 5432 }] },
    ],
    ingress: [
      { name: 'web', from: { pods: { podSelector: { matchLabels: { app: 'web' } } } }, ports: [{ port: 9000 }] },
    ],
  }),
  policy('team-a', 'support', {
    egress: [
      {
        name: 'orchestrator',
        to: { agents: { agentSelector: { matchLabels: { 'agentfence.io/agent': 'orchestrator' } } } },
        ports: [{ port: 9000 }],
      },
    ],
  }),
  // team-b consents to team-a's orchestrator, and only to it.
  policy('team-b', 'planner', {
    ingress: [
      { name: 'from-orchestrator', from: { agents: agentsOf('team-a', 'orchestrator') }, ports: [{ port: 8443 }] },
    ],
  }),
  policy('team-b', 'research', {
    egress: [{ name: 'llm', to: { hosts: ['api.openai.com'] }, ports: [{ port: 443 }] }],
  }),
];
// A second tenant tries to open every agent of the cluster on every port.
const attacker = policy('tenant-x', 'x', {
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
    {
      name: 'planner-svc',
      to: { services: [{ name: 'planner', namespace: 'team-b' }] },
      ports: [{ port: 443 }],
    },
  ],
});

function input(policies = [...tenants, attacker]): CompileInput {
  return {
    namespaces: ['team-a', 'team-b', 'tenant-x', 'kube-system', 'agentfence-system'].map((n) => namespace(n)),
    pods,
    services: [
      service('team-a', 'db', {
        selector: { app: 'db' },
        clusterIP: '10.96.0.3',
        ports: [{ port: 5432, targetPort: 'pg' }],
      }),
      service('team-b', 'planner', {
        selector: { 'agentfence.io/agent': 'planner' },
        clusterIP: '10.96.0.4',
        ports: [{ port: 443, targetPort: 8443 }],
      }),
    ],
    policies,
  };
}

function world(policies = [...tenants, attacker]): EvalWorld {
  const out = compile(input(policies), { now: NOW });
  return {
    namespaces: {},
    pods: pods.map((p): EvalPod => ({
      namespace: p.metadata.namespace ?? 'default',
      name: p.metadata.name ?? '',
      labels: p.metadata.labels ?? {},
      ip: p.status?.podIP ?? '',
      ports: [...(p.spec?.containers ?? []), ...(p.spec?.initContainers ?? [])].flatMap((c) => c.ports ?? []),
    })),
    policies: out.networkPolicies,
  };
}

const key = (p: EvalPod) => `${p.namespace}/${p.name}`;
const isAgent = (p: EvalPod) => p.labels['agentfence.io/inject'] === 'true';
const PORTS: [number, string][] = [
  [53, 'UDP'],
  [53, 'TCP'],
  [443, 'TCP'],
  [5432, 'TCP'],
  [8080, 'TCP'],
  [8443, 'TCP'],
  [9000, 'TCP'],
  [15006, 'TCP'],
];

/** Every allowed connection that starts or ends at an agent pod, as "src -> dst:port/proto". */
function matrix(w: EvalWorld): string[] {
  const open: string[] = [];
  for (const from of w.pods)
    for (const to of w.pods) {
      if (from === to || !(isAgent(from) || isAgent(to))) continue;
      for (const [port, proto] of PORTS)
        if (allowed(w, from, { pod: to }, port, proto)) open.push(`${key(from)} -> ${key(to)}:${port}/${proto}`);
    }
  return open.sort();
}

const infrastructure = (agent: string) => [
  `${agent} -> agentfence-system/controller-0:8443/TCP`,
  `${agent} -> kube-system/coredns-0:53/TCP`,
  `${agent} -> kube-system/coredns-0:53/UDP`,
];

describe('compiled NetworkPolicies, evaluated independently', () => {
  it('open exactly the granted paths: agents isolated, consent across namespaces, nothing else', () => {
    const intended = [
      ...[
        'team-a/orchestrator-0',
        'team-a/support-0',
        'team-b/planner-0',
        'team-b/planner-1',
        'team-b/research-0',
        'tenant-x/x-0',
      ].flatMap(infrastructure),
      'team-a/orchestrator-0 -> team-a/db-0:5432/TCP',
      // Agents are reached on their sidecar's inbound gate (15006, in front of app port 8443 / 9000); the app
      // ports themselves stay closed at L3.
      'team-a/orchestrator-0 -> team-b/planner-0:15006/TCP',
      'team-a/orchestrator-0 -> team-b/planner-1:15006/TCP',
      'team-a/support-0 -> team-a/orchestrator-0:15006/TCP',
      'team-a/web-0 -> team-a/orchestrator-0:15006/TCP',
    ].sort();
    expect(matrix(world())).toEqual(intended);
  });

  it('a hosts rule opens public addresses only; metadata and private addresses stay closed', () => {
    const w = world();
    const research = w.pods.find((p) => p.name === 'research-0');
    if (!research) throw new Error('fixture');
    const to = (ip: string): EvalTarget => ({ ip });
    expect(allowed(w, research, to('1.1.1.1'), 443)).toBe(true);
    expect(allowed(w, research, to('1.1.1.1'), 80)).toBe(false);
    for (const ip of ['169.254.169.254', '10.200.0.1', '172.16.0.1', '192.168.1.1', '100.64.0.1'])
      expect(allowed(w, research, to(ip), 443), ip).toBe(false);
    const orchestrator = w.pods.find((p) => p.name === 'orchestrator-0');
    if (!orchestrator) throw new Error('fixture');
    expect(allowed(w, orchestrator, to('1.1.1.1'), 443)).toBe(false);
  });

  it("a second tenant's policy changes nothing in the first tenant's namespaces", () => {
    const without = compile(input(tenants), { now: NOW });
    const withAttacker = compile(input(), { now: NOW });
    const outside = (o: typeof without) =>
      JSON.stringify(o.networkPolicies.filter((p) => p.metadata.namespace !== 'tenant-x'));
    expect(outside(withAttacker)).toBe(outside(without));
    const others = (m: string[]) => m.filter((c) => !c.includes('tenant-x/'));
    expect(others(matrix(world()))).toEqual(others(matrix(world(tenants))));
  });

  it('without consent, the cross-namespace grant opens nothing (and the evaluator sees it)', () => {
    const open = matrix(world(tenants.filter((p) => p.metadata.name !== 'planner')));
    expect(open.filter((c) => c.includes('-> team-b/planner'))).toEqual([]);
  });
});

describe('a selection mixing gated, port-less and pre-gate pods', () => {
  // One policy selects three `front` pods: one gated (8080 behind 15006), one that declares no port (gated, with
  // nothing to open), one injected before gates existed (its app port 8080 stays open, to it alone).
  const mixedPods: PodInput[] = [
    agentWithPorts('mixed', 'gated-0', 'front', '10.5.0.1', [8080]),
    agentWithPorts('mixed', 'portless-0', 'front', '10.5.0.2'),
    agentWithPorts('mixed', 'pregate-0', 'front', '10.5.0.3', [8080], { gates: false }),
    agentWithPorts('mixed', 'caller-0', 'caller', '10.5.0.4'),
    backendPod('elsewhere', 'anyone-0', { app: 'anyone' }, [], '10.6.0.1'),
  ];
  const policies = [
    policy('mixed', 'front', {
      ingress: [
        {
          name: 'people',
          from: { users: { issuer: 'https://idp.example', audiences: ['front'] } },
          ports: [{ port: 8080 }],
        },
      ],
    }),
    policy('mixed', 'caller', {
      egress: [
        {
          name: 'front',
          to: { agents: { agentSelector: { matchLabels: { 'agentfence.io/agent': 'front' } } } },
          ports: [{ port: 8080 }],
        },
      ],
    }),
  ];
  const out = compile(
    { namespaces: ['mixed', 'elsewhere'].map((n) => namespace(n)), pods: mixedPods, services: [], policies },
    { now: NOW },
  );
  const w: EvalWorld = {
    namespaces: {},
    pods: mixedPods.map((p): EvalPod => ({
      namespace: p.metadata.namespace ?? 'default',
      name: p.metadata.name ?? '',
      labels: p.metadata.labels ?? {},
      ip: p.status?.podIP ?? '',
      ports: [...(p.spec?.containers ?? []), ...(p.spec?.initContainers ?? [])].flatMap((c) => c.ports ?? []),
    })),
    policies: out.networkPolicies,
  };
  const pod = (name: string): EvalPod => {
    const found = w.pods.find((p) => p.name === name);
    if (!found) throw new Error(name);
    return found;
  };
  const reach = (from: string, to: string, port: number): boolean => allowed(w, pod(from), { pod: pod(to) }, port);

  it("keeps the gated pod's app port closed to anyone and to agent callers; only its gate opens", () => {
    for (const from of ['anyone-0', 'caller-0']) {
      expect(reach(from, 'gated-0', 15006), `${from} -> gate`).toBe(true);
      expect(reach(from, 'gated-0', 8080), `${from} -> gated app port`).toBe(false);
    }
  });

  it('opens no app port on the pod that declares no port', () => {
    // The gate range (15006–15017) is the sidecar's alone (refused to apps at injection); the policy's rules open
    // the selection's gates there, and on this pod no gate listens. Every other port stays closed.
    for (const from of ['anyone-0', 'caller-0'])
      for (const port of [8080, 1, 9090, 15001, 15020, 65535])
        expect(reach(from, 'portless-0', port), `${from}:${port}`).toBe(false);
  });

  it("opens the pre-gate pod's app port to it alone, for the callers its rules name", () => {
    expect(reach('anyone-0', 'pregate-0', 8080)).toBe(true);
    expect(reach('caller-0', 'pregate-0', 8080)).toBe(true);
    expect(reach('anyone-0', 'pregate-0', 9090)).toBe(false);
    // The policies that open app ports select pre-gate pods only: no gated pod matches their selector.
    const gatedPods = w.pods.filter((p) => p.labels['agentfence.io/inbound-gated'] === 'true').map((p) => p.name);
    expect(gatedPods.sort()).toEqual(['caller-0', 'gated-0', 'portless-0']);
  });
});
