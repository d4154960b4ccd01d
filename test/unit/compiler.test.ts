/** The policy compiler as a pure function: entitlements, NetworkPolicies, reports. */
import { describe, expect, it } from 'vitest';
import { agentEntitlementSpec } from '../../lib/api/schema.ts';
import { validateSchema } from '../../lib/api/validate.ts';
import { compile } from '../../operator/compiler/index.ts';
import { preGateObjectName } from '../../operator/compiler/names.ts';
import type { CompileInput, CompileOptions, NetworkPolicy } from '../../operator/compiler/types.ts';
import { NOW, agentPod, backendPod, namespace, policy, service, shuffled } from '../support/compiler-fixtures.ts';

const options: CompileOptions = { now: NOW };
const empty: CompileInput = { policies: [], pods: [], namespaces: [], services: [] };

function np(out: ReturnType<typeof compile>, ns: string, name: string): NetworkPolicy {
  const found = out.networkPolicies.find((p) => p.metadata.namespace === ns && p.metadata.name === name);
  if (!found)
    throw new Error(
      `no NetworkPolicy ${ns}/${name} in ${out.networkPolicies.map((p) => `${p.metadata.namespace}/${p.metadata.name}`).join(', ')}`,
    );
  return found;
}

function entitlement(out: ReturnType<typeof compile>, ns: string, name: string) {
  const found = out.entitlements.find((e) => e.metadata.namespace === ns && e.metadata.name === name);
  if (!found) throw new Error(`no entitlement ${ns}/${name}`);
  return found;
}

function report(out: ReturnType<typeof compile>, ns: string, name: string) {
  const found = out.reports.find((r) => r.namespace === ns && r.name === name);
  if (!found) throw new Error(`no report ${ns}/${name}`);
  return found;
}

describe('entitlements', () => {
  it('unions the grants of every policy that selects a pod, in (policy, rule) order, with the shortest tokenTTL', () => {
    const out = compile(
      {
        ...empty,
        pods: [agentPod('a', 'bot-1', 'bot', { serviceAccountName: 'bot-sa' })],
        policies: [
          policy('a', 'zeta', {
            agent: 'bot',
            tokenTTL: '10m',
            egress: [{ name: 'llm', to: { hosts: ['api.openai.com'] }, ports: [{ port: 443 }] }],
          }),
          policy('a', 'alpha', {
            agent: 'bot',
            tokenTTL: '90s',
            egress: [
              { name: 'z-net', to: { cidrs: ['10.40.0.0/16'] }, ports: [{ port: 443, protocol: 'TCP' }] },
              { name: 'a-net', to: { cidrs: ['10.50.0.0/16'] }, ports: [{ port: 8443 }] },
            ],
          }),
        ],
      },
      options,
    );
    const ae = entitlement(out, 'a', 'bot-1');
    expect(ae.spec.policies).toEqual(['alpha', 'zeta']);
    expect(ae.spec.egress?.map((r) => `${r.policy}/${r.rule}`)).toEqual(['alpha/a-net', 'alpha/z-net', 'zeta/llm']);
    expect(ae.spec.egress?.[0]).toEqual({
      policy: 'alpha',
      rule: 'a-net',
      mode: 'Enforce',
      cidrs: ['10.50.0.0/16'],
      ports: [{ port: 8443, protocol: 'TCP' }],
    });
    expect(ae.spec.tokenTTL).toBe('90s');
    expect(ae.spec.agent).toBe('bot');
    expect(ae.spec.serviceAccountName).toBe('bot-sa');
    expect(ae.spec.spiffeID).toBe('spiffe://cluster.local/ns/a/agent/bot');
    expect(ae.spec.revision).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(ae.metadata.labels).toEqual({ 'app.kubernetes.io/managed-by': 'agentfence' });
    expect(ae.metadata.ownerReferences).toEqual([
      { apiVersion: 'v1', kind: 'Pod', name: 'bot-1', uid: 'uid-a-bot-1', controller: true },
    ]);
  });

  it('gives a pod no policy selects an entitlement with no egress and the default TTL', () => {
    const out = compile(
      {
        ...empty,
        pods: [agentPod('a', 'lonely', undefined, { serviceAccountName: 'lonely-sa' })],
        policies: [policy('a', 'other', {})],
      },
      { ...options, trustDomain: 'prod.example' },
    );
    const ae = entitlement(out, 'a', 'lonely');
    expect(ae.spec.egress).toEqual([]);
    expect(ae.spec.policies).toEqual([]);
    expect(ae.spec.tokenTTL).toBe('5m');
    // The agent name falls back to the service account.
    expect(ae.spec.spiffeID).toBe('spiffe://prod.example/ns/a/agent/lonely-sa');
    expect(report(out, 'a', 'other').problems.map((p) => p.reason)).toEqual(['NoAgentsSelected']);
  });

  it('ignores pods without the inject label and skips terminating agent pods, reporting them', () => {
    const out = compile(
      {
        ...empty,
        pods: [
          backendPod('a', 'web', { 'agentfence.io/agent': 'bot' }, []),
          agentPod('a', 'dying', 'bot', { terminating: true }),
          agentPod('a', 'alive', 'bot'),
        ],
        policies: [policy('a', 'bot', {})],
      },
      options,
    );
    expect(out.entitlements.map((e) => e.metadata.name)).toEqual(['alive']);
    expect(out.skippedPods).toEqual([{ namespace: 'a', name: 'dying', reason: 'Terminating' }]);
    expect(report(out, 'a', 'bot').selectedPods).toBe(1);
  });

  it('changes the revision when the grants change and keeps it when they do not', () => {
    const pods = [agentPod('a', 'p', 'bot', { ip: '10.0.0.1' })];
    const base = policy('a', 'bot', { egress: [{ name: 'r', to: { cidrs: ['10.0.0.0/8'] }, ports: [{ port: 443 }] }] });
    const wider = policy('a', 'bot', {
      egress: [{ name: 'r', to: { cidrs: ['10.0.0.0/8'] }, ports: [{ port: 443 }, { port: 80 }] }],
    });
    const r1 = entitlement(compile({ ...empty, pods, policies: [base] }, options), 'a', 'p').spec.revision;
    const r2 = entitlement(compile({ ...empty, pods, policies: [structuredClone(base)] }, options), 'a', 'p').spec
      .revision;
    const r3 = entitlement(compile({ ...empty, pods, policies: [wider] }, options), 'a', 'p').spec.revision;
    expect(r2).toBe(r1);
    expect(r3).not.toBe(r1);
  });
});

describe('expiry', () => {
  const pods = [agentPod('a', 'p', 'bot')];
  const grant = (name: string, expiresAt?: string) =>
    policy('a', name, {
      agent: 'bot',
      ...(expiresAt ? { expiresAt } : {}),
      egress: [{ name: 'r', to: { cidrs: ['10.9.0.0/16'] }, ports: [{ port: 443 }] }],
    });

  it('drops expired policies, reports them, and still writes their NetworkPolicy with no rules', () => {
    const out = compile({ ...empty, pods, policies: [grant('old', '2026-06-01T12:00:00Z')] }, options);
    expect(entitlement(out, 'a', 'p').spec.egress).toEqual([]);
    expect(entitlement(out, 'a', 'p').spec.policies).toEqual([]);
    expect(report(out, 'a', 'old')).toMatchObject({ selectedPods: 0, problems: [{ reason: 'Expired' }] });
    expect(np(out, 'a', 'agentfence-old').spec).toEqual({
      podSelector: { matchLabels: { 'agentfence.io/agent': 'bot', 'agentfence.io/inject': 'true' } },
      policyTypes: ['Ingress', 'Egress'],
    });
    expect(out.nextExpiry).toBeUndefined();
  });

  it('sets expiresAt to the earliest future expiry and reports the next expiry for a requeue', () => {
    const out = compile(
      {
        ...empty,
        pods: [...pods, agentPod('b', 'q', 'bot')],
        policies: [
          grant('later', '2026-07-01T00:00:00Z'),
          grant('sooner', '2026-06-02T00:00:00Z'),
          grant('forever'),
          policy('b', 'x', { agent: 'bot', expiresAt: '2026-06-01T13:00:00Z' }),
        ],
      },
      options,
    );
    const ae = entitlement(out, 'a', 'p');
    expect(ae.spec.expiresAt).toBe('2026-06-02T00:00:00Z');
    expect(ae.spec.egress?.find((r) => r.policy === 'later')?.expiresAt).toBe('2026-07-01T00:00:00Z');
    expect(ae.spec.egress?.find((r) => r.policy === 'forever')?.expiresAt).toBeUndefined();
    expect(out.nextExpiry).toBe('2026-06-01T13:00:00.000Z');
  });
});

describe('services', () => {
  const caller = agentPod('agents', 'caller', 'bot');

  it('resolves named target ports per pod and gives pods that resolve differently their own peers', () => {
    const out = compile(
      {
        ...empty,
        pods: [
          caller,
          backendPod(
            'shop',
            'orders-v1-a',
            { app: 'orders', version: 'v1' },
            [{ name: 'http', containerPort: 8080 }],
            '10.2.0.1',
          ),
          backendPod(
            'shop',
            'orders-v1-b',
            { app: 'orders', version: 'v1' },
            [{ name: 'http', containerPort: 8080 }],
            '10.2.0.2',
          ),
          backendPod(
            'shop',
            'orders-v2',
            { app: 'orders', version: 'v2' },
            [{ name: 'http', containerPort: 9090 }],
            '10.2.0.3',
          ),
          backendPod('shop', 'unrelated', { app: 'billing' }, [{ name: 'http', containerPort: 7070 }]),
        ],
        services: [
          service('shop', 'orders', {
            selector: { app: 'orders' },
            clusterIP: '10.96.0.10',
            ports: [
              { name: 'web', port: 80, targetPort: 'http' },
              { name: 'metrics', port: 9100, targetPort: 9100 },
            ],
          }),
        ],
        policies: [
          policy('agents', 'bot', {
            egress: [
              { name: 'orders', to: { services: [{ name: 'orders', namespace: 'shop' }] }, ports: [{ port: 80 }] },
            ],
          }),
        ],
      },
      options,
    );
    const rule = entitlement(out, 'agents', 'caller').spec.egress?.[0];
    expect(rule?.hosts).toEqual(['orders.shop.svc', 'orders.shop.svc.cluster.local']);
    expect(rule?.cidrs).toEqual(['10.96.0.10/32']);
    expect(rule?.ports).toEqual([{ port: 80, protocol: 'TCP' }]);
    const shop = { matchLabels: { 'kubernetes.io/metadata.name': 'shop' } };
    expect(np(out, 'agents', 'agentfence-bot').spec.egress).toEqual([
      {
        to: [{ namespaceSelector: shop, podSelector: { matchLabels: { app: 'orders', version: 'v1' } } }],
        ports: [{ protocol: 'TCP', port: 8080 }],
      },
      {
        to: [{ namespaceSelector: shop, podSelector: { matchLabels: { app: 'orders', version: 'v2' } } }],
        ports: [{ protocol: 'TCP', port: 9090 }],
      },
    ]);
    expect(report(out, 'agents', 'bot').problems).toEqual([]);
  });

  it('uses one peer with the Service selector when every pod resolves alike, and reports pods missing the named port', () => {
    const out = compile(
      {
        ...empty,
        pods: [
          caller,
          backendPod('agents', 'db-0', { app: 'db' }, [{ name: 'pg', containerPort: 5432 }]),
          backendPod('agents', 'db-1', { app: 'db' }, []),
        ],
        services: [
          service('agents', 'db', {
            selector: { app: 'db' },
            clusterIP: 'fd00::10',
            ports: [{ port: 5432, targetPort: 'pg' }],
          }),
        ],
        policies: [
          policy('agents', 'bot', {
            egress: [{ name: 'db', to: { services: [{ name: 'db' }] }, ports: [{ port: 5432 }] }],
          }),
        ],
      },
      options,
    );
    expect(entitlement(out, 'agents', 'caller').spec.egress?.[0]?.cidrs).toEqual(['fd00::10/128']);
    expect(np(out, 'agents', 'agentfence-bot').spec.egress).toEqual([
      { to: [{ podSelector: { matchLabels: { app: 'db' } } }], ports: [{ protocol: 'TCP', port: 5432 }] },
    ]);
    expect(report(out, 'agents', 'bot').problems).toEqual([
      {
        reason: 'NamedPortUnresolved',
        rule: 'db',
        message: 'Service agents/db: named target ports not declared by db-1 (pg)',
      },
    ]);
  });

  it("names another namespace's pods behind a Service only in the controller log, never in status", () => {
    const out = compile(
      {
        ...empty,
        pods: [
          caller,
          backendPod('data', 'kafka-0', { app: 'kafka' }, [{ name: 'broker', containerPort: 9093 }], '10.3.0.7'),
          backendPod('data', 'kafka-1', { app: 'kafka' }, []),
        ],
        services: [
          service('data', 'kafka', {
            clusterIP: 'None',
            selector: { app: 'kafka' },
            ports: [{ port: 9092, targetPort: 'broker' }],
          }),
        ],
        policies: [
          policy('agents', 'bot', {
            egress: [
              { name: 'kafka', to: { services: [{ name: 'kafka', namespace: 'data' }] }, ports: [{ port: 9092 }] },
            ],
          }),
        ],
      },
      options,
    );
    const status = report(out, 'agents', 'bot').problems;
    expect(status.map((p) => p.reason)).toEqual(['NamedPortUnresolved']);
    expect(JSON.stringify(status)).not.toContain('kafka-1');
    expect(
      report(out, 'agents', 'bot')
        .foreign.map((p) => p.reason)
        .sort(),
    ).toEqual(['NamedPortUnresolved', 'PodWithoutIP']);
    expect(JSON.stringify(report(out, 'agents', 'bot').foreign)).toContain('kafka-1');
  });

  it('grants a headless Service by its pods: no cluster IP, the pod IPs and target ports for the sidecar', () => {
    const out = compile(
      {
        ...empty,
        pods: [
          caller,
          backendPod('agents', 'kafka-0', { app: 'kafka' }, [{ name: 'broker', containerPort: 9093 }], '10.3.0.7'),
          backendPod('agents', 'kafka-1', { app: 'kafka' }, [{ name: 'broker', containerPort: 9093 }]),
        ],
        services: [
          service('agents', 'kafka', {
            clusterIP: 'None',
            selector: { app: 'kafka' },
            ports: [{ port: 9092, targetPort: 'broker' }],
          }),
        ],
        policies: [
          policy('agents', 'bot', {
            egress: [{ name: 'kafka', to: { services: [{ name: 'kafka' }] }, ports: [{ port: 9092 }] }],
          }),
        ],
      },
      options,
    );
    const rule = entitlement(out, 'agents', 'caller').spec.egress?.[0];
    expect(rule?.cidrs).toEqual(['10.3.0.7/32']);
    expect(report(out, 'agents', 'bot').problems).toEqual([
      {
        reason: 'PodWithoutIP',
        rule: 'kafka',
        message: 'pod agents/kafka-1 behind headless Service agents/kafka has no IP yet',
      },
    ]);
    expect(rule?.ports).toEqual([
      { port: 9092, protocol: 'TCP' },
      { port: 9093, protocol: 'TCP' },
    ]);
    expect(np(out, 'agents', 'agentfence-bot').spec.egress).toEqual([
      { to: [{ podSelector: { matchLabels: { app: 'kafka' } } }], ports: [{ protocol: 'TCP', port: 9093 }] },
    ]);
  });

  it('reports selector-less, ExternalName, missing Services and unmatched ports, and never opens L3 for them', () => {
    const out = compile(
      {
        ...empty,
        pods: [caller],
        services: [
          service('agents', 'legacy', { clusterIP: '10.96.0.20', ports: [{ port: 443 }] }),
          service('agents', 'saas', {
            type: 'ExternalName',
            externalName: 'api.saas.example.com',
            ports: [{ port: 443 }],
          }),
          service('agents', 'web', { clusterIP: '10.96.0.30', selector: { app: 'web' }, ports: [{ port: 80 }] }),
        ],
        policies: [
          policy('agents', 'bot', {
            egress: [
              { name: 'legacy', to: { services: [{ name: 'legacy' }] }, ports: [{ port: 443 }] },
              { name: 'saas', to: { services: [{ name: 'saas' }] }, ports: [{ port: 443 }] },
              { name: 'ghost', to: { services: [{ name: 'ghost' }] }, ports: [{ port: 443 }] },
              { name: 'web', to: { services: [{ name: 'web' }] }, ports: [{ port: 8080 }] },
            ],
          }),
        ],
      },
      options,
    );
    const reasons = report(out, 'agents', 'bot').problems.map((p) => `${p.rule ?? ''}:${p.reason}`);
    expect(reasons).toEqual([
      'ghost:ServiceNotFound',
      'legacy:ServiceWithoutSelector',
      'saas:ExternalNameService',
      'saas:FQDNNotEnforcedAtL3',
      'web:ServicePortNotFound',
    ]);
    const byRule = Object.fromEntries((entitlement(out, 'agents', 'caller').spec.egress ?? []).map((r) => [r.rule, r]));
    expect(byRule.legacy?.cidrs).toEqual(['10.96.0.20/32']);
    expect(byRule.saas?.hosts).toEqual(['api.saas.example.com']);
    expect(byRule.ghost?.hosts).toBeUndefined();
    // Only the ExternalName's coarse public-address rule reaches the NetworkPolicy.
    const egress = np(out, 'agents', 'agentfence-bot').spec.egress ?? [];
    expect(egress).toHaveLength(1);
    expect(egress[0]?.to?.[0]?.ipBlock?.cidr).toBe('0.0.0.0/0');
  });
});

describe('services backed by agent pods', () => {
  const mcpPod = (ns: string) => ({
    ...agentPod(ns, 'mcp-0', 'mcp', { ip: '10.9.0.1' }),
    spec: { containers: [{ name: 'mcp', ports: [{ name: 'mcp', containerPort: 8082 }] }] },
  });
  const mcpService = (ns: string) =>
    service(ns, 'mcp', {
      selector: { 'agentfence.io/agent': 'mcp' },
      clusterIP: '10.96.1.1',
      ports: [{ port: 80, targetPort: 'mcp' }],
    });

  it('also opens the callee side, on the target ports, when the Service is in the policy namespace', () => {
    const out = compile(
      {
        ...empty,
        pods: [agentPod('a', 'caller', 'caller'), mcpPod('a')],
        services: [mcpService('a')],
        policies: [
          policy('a', 'caller', {
            egress: [{ name: 'mcp', to: { services: [{ name: 'mcp' }] }, ports: [{ port: 80 }] }],
          }),
        ],
      },
      options,
    );
    // The fixture's mcp pod carries no gated sidecar (pre-gate): its app port is opened on pre-gate pods only.
    const callee = out.networkPolicies.find((p) => p.metadata.name.startsWith('agentfence-caller-mcp-'));
    expect(callee?.metadata.name).toMatch(/^agentfence-caller-mcp-pre-gate-[0-9a-f]{8}$/);
    expect(callee?.metadata.ownerReferences?.[0]?.name).toBe('caller');
    expect(callee?.spec).toEqual({
      podSelector: {
        matchLabels: { 'agentfence.io/agent': 'mcp', 'agentfence.io/inject': 'true' },
        matchExpressions: [{ key: 'agentfence.io/inbound-gated', operator: 'DoesNotExist' }],
      },
      policyTypes: ['Ingress'],
      ingress: [
        {
          from: [{ podSelector: { matchLabels: { 'agentfence.io/agent': 'caller', 'agentfence.io/inject': 'true' } } }],
          ports: [{ protocol: 'TCP', port: 8082 }],
        },
      ],
    });
  });

  it('a Service of agents in another namespace is granted only once that namespace consents, and never written to', () => {
    const grant = policy('a', 'caller', {
      egress: [{ name: 'mcp', to: { services: [{ name: 'mcp', namespace: 'tools' }] }, ports: [{ port: 80 }] }],
    });
    const base: CompileInput = {
      ...empty,
      pods: [agentPod('a', 'caller', 'caller'), mcpPod('tools')],
      services: [mcpService('tools')],
      policies: [grant],
    };
    const before = compile(base, options);
    expect(entitlement(before, 'a', 'caller').spec.egress?.[0]).toMatchObject({ rule: 'mcp' });
    expect(entitlement(before, 'a', 'caller').spec.egress?.[0]?.hosts).toBeUndefined();
    expect(entitlement(before, 'a', 'caller').spec.egress?.[0]?.cidrs).toBeUndefined();
    expect(np(before, 'a', 'agentfence-caller').spec.egress).toBeUndefined();
    expect(before.networkPolicies.filter((p) => p.metadata.namespace === 'tools').map((p) => p.metadata.name)).toEqual([
      'agentfence-baseline',
    ]);
    const problems = report(before, 'a', 'caller').problems;
    expect(problems.map((p) => `${p.rule ?? ''}:${p.reason}`)).toEqual(['mcp:CalleeHasNotConsented']);
    expect(problems[0]?.message).toMatch(/^namespace tools has not consented/);

    // The callee namespace admits agents of namespace a named caller: its own policy opens its side.
    const consent = policy('tools', 'mcp', {
      ingress: [
        {
          name: 'from-a',
          from: {
            agents: {
              namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'a' } },
              agentSelector: { matchLabels: { 'agentfence.io/agent': 'caller' } },
            },
          },
          ports: [{ port: 8082 }],
        },
      ],
    });
    const after = compile({ ...base, policies: [grant, consent] }, options);
    expect(entitlement(after, 'a', 'caller').spec.egress?.[0]?.hosts).toContain('mcp.tools.svc');
    expect(report(after, 'a', 'caller').problems).toEqual([]);
    expect(after.networkPolicies.filter((p) => p.metadata.namespace === 'tools').map((p) => p.metadata.name)).toEqual([
      'agentfence-baseline',
      'agentfence-mcp',
      preGateObjectName('tools', 'mcp'), // the fixture pod is pre-gate: its own policy opens its app port
    ]);
    expect(
      after.networkPolicies.every((p) => p.metadata.labels?.['agentfence.io/policy-namespace'] === undefined),
    ).toBe(true);
  });
});

describe('agents rules', () => {
  const orchestrator = (ns = 'team-b') =>
    policy('team-a', 'orchestrator', {
      egress: [
        {
          name: 'planner',
          to: {
            agents: {
              namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': ns } },
              agentSelector: { matchLabels: { 'agentfence.io/agent': 'planner' } },
            },
          },
          ports: [{ port: 8443 }],
        },
      ],
    });
  const plannerConsents = (agent = 'orchestrator', from = 'team-a') =>
    policy('team-b', 'planner', {
      ingress: [
        {
          name: 'from-orchestrator',
          from: {
            agents: {
              namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': from } },
              agentSelector: { matchLabels: { 'agentfence.io/agent': agent } },
            },
          },
          ports: [{ port: 8443 }],
        },
      ],
    });
  const teams: CompileInput = {
    ...empty,
    namespaces: [namespace('team-a'), namespace('team-b', { team: 'b' })],
    pods: [
      agentPod('team-a', 'orchestrator-0', 'orchestrator', { ip: '10.5.0.1' }),
      agentPod('team-b', 'planner-0', 'planner', { ip: '10.6.0.1' }),
      agentPod('team-b', 'planner-1', 'planner', { ip: null }),
    ],
  };
  const planner = { matchLabels: { 'agentfence.io/agent': 'planner', 'agentfence.io/inject': 'true' } };

  it('across namespaces, opens nothing until the callee namespace consents: Degraded CalleeHasNotConsented, nothing written there', () => {
    for (const policies of [
      [orchestrator()],
      [orchestrator(), plannerConsents('someone-else')], // admits other agents
      [orchestrator(), plannerConsents('orchestrator', 'team-c')], // admits another namespace
      [
        orchestrator(),
        { ...plannerConsents(), spec: { ...plannerConsents().spec, expiresAt: '2026-01-01T00:00:00Z' } },
      ],
    ]) {
      const out = compile({ ...teams, policies }, options);
      expect(entitlement(out, 'team-a', 'orchestrator-0').spec.egress?.[0]?.cidrs).toBeUndefined();
      expect(np(out, 'team-a', 'agentfence-orchestrator').spec.egress).toBeUndefined();
      const written = out.networkPolicies.filter((p) => p.metadata.namespace === 'team-b').map((p) => p.metadata.name);
      const own = ['agentfence-baseline', 'agentfence-planner', preGateObjectName('team-b', 'planner')];
      expect(written.filter((n) => !own.includes(n))).toEqual([]);
      const problems = report(out, 'team-a', 'orchestrator').problems;
      expect(problems.map((p) => `${p.rule ?? ''}:${p.reason}`)).toEqual(['planner:CalleeHasNotConsented']);
      expect(problems[0]?.message).toMatch(
        /^namespace team-b has not consented \(an AgentPolicy there with an ingress rule/,
      );
      expect(report(out, 'team-a', 'orchestrator').networkPolicies.map((r) => r.namespace)).toEqual(['team-a']);
    }
  });

  it('once the callee namespace admits the caller, the caller egress and entitlement open, the callee side is its own', () => {
    const out = compile({ ...teams, policies: [orchestrator(), plannerConsents()] }, options);
    expect(entitlement(out, 'team-a', 'orchestrator-0').spec.egress?.[0]?.cidrs).toEqual(['10.6.0.1/32']);
    expect(np(out, 'team-a', 'agentfence-orchestrator').spec.egress).toEqual([
      {
        to: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'team-b' } }, podSelector: planner }],
        ports: [{ protocol: 'TCP', port: 8443 }],
      },
    ]);
    // In team-b only team-b's objects: its baseline and its own policy, which admits the caller.
    // (The fixture's planner pods are pre-gate: their own policy's pre-gate object opens the app port to them.)
    const plannerPreGate = preGateObjectName('team-b', 'planner');
    expect(out.networkPolicies.filter((p) => p.metadata.namespace === 'team-b').map((p) => p.metadata.name)).toEqual([
      'agentfence-baseline',
      'agentfence-planner',
      plannerPreGate,
    ]);
    expect(np(out, 'team-b', plannerPreGate).metadata.ownerReferences?.[0]?.name).toBe('planner');
    expect(np(out, 'team-b', 'agentfence-planner').spec.ingress).toBeUndefined();
    expect(np(out, 'team-b', plannerPreGate).spec.ingress).toEqual([
      {
        from: [
          {
            namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'team-a' } },
            podSelector: { matchLabels: { 'agentfence.io/agent': 'orchestrator', 'agentfence.io/inject': 'true' } },
          },
        ],
        ports: [{ protocol: 'TCP', port: 8443 }],
      },
    ]);
    // The callee without an IP is another tenant's pod: logged by the controller, not in this policy's status.
    expect(report(out, 'team-a', 'orchestrator').problems).toEqual([]);
    expect(report(out, 'team-a', 'orchestrator').foreign).toEqual([
      { reason: 'PodWithoutIP', rule: 'planner', message: 'agent pod team-b/planner-1 has no IP yet' },
    ]);
  });

  it('a policy selecting every namespace writes nothing outside its own and names no other namespace in status', () => {
    const attacker = policy('tenant-attacker', 'x', {
      egress: [
        {
          name: 'everyone',
          to: {
            agents: {
              namespaceSelector: {},
              agentSelector: { matchLabels: { 'agentfence.io/agent': 'worker' } },
            },
          },
          ports: [{ port: 1, endPort: 65535 }],
        },
      ],
    });
    const victims = Array.from({ length: 5 }, (_, i) =>
      agentPod(`tenant-${i}`, `agent-${i}`, 'worker', { ip: i % 2 ? null : `10.8.0.${i + 1}` }),
    );
    const out = compile(
      { ...empty, pods: [agentPod('tenant-attacker', 'x-0', 'x'), ...victims], policies: [attacker] },
      options,
    );
    for (const p of out.networkPolicies.filter((np) => np.metadata.namespace !== 'tenant-attacker'))
      expect(p.metadata.name).toBe('agentfence-baseline');
    expect(entitlement(out, 'tenant-attacker', 'x-0').spec.egress?.[0]?.cidrs).toBeUndefined();
    const status = JSON.stringify(report(out, 'tenant-attacker', 'x').problems);
    expect(status).toContain('CalleeHasNotConsented');
    expect(status).not.toMatch(/tenant-[0-9]|agent-[0-9]/);
    expect(
      report(out, 'tenant-attacker', 'x')
        .foreign.map((p) => p.message)
        .join(),
    ).toContain('tenant-3');
  });

  it('caps a rule at the CRD bound of 256 addresses and reports it instead of producing an invalid entitlement', () => {
    const callees = Array.from({ length: 300 }, (_, i) =>
      agentPod('a', `y-${String(i).padStart(3, '0')}`, 'y', { ip: `10.7.${Math.floor(i / 200)}.${(i % 200) + 1}` }),
    );
    const out = compile(
      {
        ...empty,
        pods: [agentPod('a', 'x', 'x'), ...callees],
        policies: [
          policy('a', 'x', {
            egress: [
              {
                name: 'ys',
                to: { agents: { agentSelector: { matchLabels: { 'agentfence.io/agent': 'y' } } } },
                ports: [{ port: 80 }],
              },
            ],
          }),
        ],
      },
      options,
    );
    expect(entitlement(out, 'a', 'x').spec.egress?.[0]?.cidrs).toHaveLength(256);
    expect(report(out, 'a', 'x').problems.map((p) => p.reason)).toEqual(['TooManyAddresses']);
  });

  it('owns the callee-side ingress by the AgentPolicy when caller and callee share the namespace', () => {
    const out = compile(
      {
        ...empty,
        pods: [agentPod('a', 'x', 'x'), agentPod('a', 'y', 'y')],
        policies: [
          policy('a', 'x', {
            egress: [
              {
                name: 'to-y',
                to: { agents: { agentSelector: { matchLabels: { 'agentfence.io/agent': 'y' } } } },
                ports: [{ port: 80 }],
              },
            ],
          }),
        ],
      },
      options,
    );
    const callee = out.networkPolicies.find((p) => p.metadata.name.startsWith('agentfence-x-to-y-'));
    expect(callee?.metadata.ownerReferences).toEqual([
      {
        apiVersion: 'agentfence.io/v1alpha1',
        kind: 'AgentPolicy',
        name: 'x',
        uid: 'uid-policy-a-x',
        controller: true,
        blockOwnerDeletion: true,
      },
    ]);
    expect(callee?.spec.ingress?.[0]?.from).toEqual([
      { podSelector: { matchLabels: { 'agentfence.io/agent': 'x', 'agentfence.io/inject': 'true' } } },
    ]);
  });

  it('turns ingress rules into the policy’s own ingress, with pods, agents and CIDR sources', () => {
    const out = compile(
      {
        ...empty,
        pods: [agentPod('a', 'x', 'x')],
        policies: [
          policy('a', 'x', {
            ingress: [
              {
                name: 'web',
                from: { pods: { podSelector: { matchLabels: { app: 'web' } } } },
                ports: [{ port: 8000 }],
              },
              { name: 'lan', from: { cidrs: ['0.0.0.0/0'] }, ports: [{ port: 9000, endPort: 9010 }] },
            ],
          }),
        ],
      },
      options,
    );
    // The fixture pod is pre-gate (no gated sidecar): the rules open its app ports, on pre-gate pods only.
    expect(np(out, 'a', 'agentfence-x').spec.ingress).toBeUndefined();
    expect(np(out, 'a', preGateObjectName('a', 'x')).spec.ingress).toEqual([
      {
        from: [{ ipBlock: { cidr: '0.0.0.0/0', except: ['169.254.0.0/16'] } }],
        ports: [{ protocol: 'TCP', port: 9000, endPort: 9010 }],
      },
      { from: [{ podSelector: { matchLabels: { app: 'web' } } }], ports: [{ protocol: 'TCP', port: 8000 }] },
    ]);
  });
});

describe('cidrs', () => {
  it('excludes link-local and metadata ranges from every granted range that contains them', () => {
    const out = compile(
      {
        ...empty,
        pods: [agentPod('a', 'x', 'x')],
        policies: [
          policy('a', 'x', {
            egress: [
              {
                name: 'all',
                to: { cidrs: ['0.0.0.0/0', '::/0', '10.0.0.0/8', '2001:db8::/32', 'fd00::/8'] },
                ports: [{ port: 443 }],
              },
            ],
          }),
        ],
      },
      options,
    );
    expect(np(out, 'a', 'agentfence-x').spec.egress?.[0]?.to).toEqual([
      { ipBlock: { cidr: '0.0.0.0/0', except: ['169.254.0.0/16'] } },
      { ipBlock: { cidr: '10.0.0.0/8' } },
      { ipBlock: { cidr: '2001:db8::/32' } },
      { ipBlock: { cidr: '::/0', except: ['fe80::/10', 'fd00:ec2::254/128'] } },
      { ipBlock: { cidr: 'fd00::/8', except: ['fd00:ec2::254/128'] } },
    ]);
  });
});

describe('hosts', () => {
  const input: CompileInput = {
    ...empty,
    pods: [agentPod('a', 'x', 'x')],
    policies: [
      policy('a', 'x', {
        egress: [
          { name: 'llm', to: { hosts: ['api.openai.com'] }, ports: [{ port: 443 }] },
          { name: 'docs', to: { hosts: ['*.docs.example.org', '**.cdn.example.org'] }, ports: [{ port: 80 }] },
        ],
      }),
    ],
  };

  it('reports FQDNNotEnforcedAtL3 under provider kubernetes and opens only public addresses on the ports', () => {
    const out = compile(input, options);
    expect(report(out, 'a', 'x').problems.map((p) => `${p.rule ?? ''}:${p.reason}`)).toEqual([
      'docs:FQDNNotEnforcedAtL3',
      'llm:FQDNNotEnforcedAtL3',
    ]);
    const egress = np(out, 'a', 'agentfence-x').spec.egress ?? [];
    expect(egress[0]?.to?.[0]?.ipBlock?.except).toContain('10.0.0.0/8');
    expect(egress[0]?.to?.[0]?.ipBlock?.except).toContain('169.254.0.0/16');
    expect(egress[0]?.to?.[1]?.ipBlock?.except).toContain('fe80::/10');
    expect(out.ciliumNetworkPolicies).toEqual([]);
    expect(entitlement(out, 'a', 'x').spec.egress?.find((r) => r.rule === 'docs')?.hosts).toEqual([
      '**.cdn.example.org',
      '*.docs.example.org',
    ]);
  });

  it('emits a CiliumNetworkPolicy with toFQDNs and the DNS proxy rule under provider cilium, and no coarse L3 rule', () => {
    const out = compile(input, { ...options, networkProvider: 'cilium' });
    expect(report(out, 'a', 'x').problems).toEqual([]);
    expect(np(out, 'a', 'agentfence-x').spec.egress).toBeUndefined();
    expect(out.ciliumNetworkPolicies).toHaveLength(1);
    const cnp = out.ciliumNetworkPolicies[0];
    expect(cnp?.metadata).toMatchObject({
      name: 'agentfence-x',
      namespace: 'a',
      labels: { 'agentfence.io/policy': 'x' },
    });
    expect(cnp?.spec).toEqual({
      endpointSelector: { matchLabels: { 'agentfence.io/agent': 'x', 'agentfence.io/inject': 'true' } },
      egress: [
        {
          toEndpoints: [{ matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'kube-system', 'k8s-app': 'kube-dns' } }],
          toPorts: [{ ports: [{ port: '53', protocol: 'ANY' }], rules: { dns: [{ matchPattern: '*' }] } }],
        },
        {
          toFQDNs: [{ matchPattern: '**.cdn.example.org' }, { matchPattern: '*.docs.example.org' }],
          toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }],
        },
        { toFQDNs: [{ matchName: 'api.openai.com' }], toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }] },
      ],
    });
    expect(report(out, 'a', 'x').networkPolicies).toContainEqual({
      kind: 'CiliumNetworkPolicy',
      namespace: 'a',
      name: 'agentfence-x',
    });
  });
});

describe('mode', () => {
  it('Audit changes only the entitlement rule mode, never the NetworkPolicies', () => {
    const spec = {
      egress: [
        { name: 'net', to: { cidrs: ['10.0.0.0/8'] }, ports: [{ port: 443 }] },
        { name: 'llm', to: { hosts: ['api.openai.com'] }, ports: [{ port: 443 }] },
      ],
    };
    const input = (mode: 'Audit' | 'Enforce'): CompileInput => ({
      ...empty,
      pods: [agentPod('a', 'x', 'x', { ip: '10.0.0.9' })],
      policies: [policy('a', 'x', { ...spec, mode })],
    });
    const audit = compile(input('Audit'), { ...options, networkProvider: 'cilium' });
    const enforce = compile(input('Enforce'), { ...options, networkProvider: 'cilium' });
    expect(JSON.stringify(audit.networkPolicies)).toBe(JSON.stringify(enforce.networkPolicies));
    expect(JSON.stringify(audit.ciliumNetworkPolicies)).toBe(JSON.stringify(enforce.ciliumNetworkPolicies));
    expect(entitlement(audit, 'a', 'x').spec.egress?.map((r) => r.mode)).toEqual(['Audit', 'Audit']);
    expect(entitlement(enforce, 'a', 'x').spec.egress?.map((r) => r.mode)).toEqual(['Enforce', 'Enforce']);
  });
});

describe('baseline', () => {
  const input: CompileInput = {
    ...empty,
    pods: [agentPod('a', 'x', 'x'), agentPod('b', 'y', 'y'), backendPod('c', 'web', {}, [])],
  };

  it('writes one per namespace with agent pods: both types, DNS on UDP and TCP 53 and the operator, no ingress', () => {
    const out = compile(input, options);
    expect(out.networkPolicies.map((p) => `${p.metadata.namespace}/${p.metadata.name}`)).toEqual([
      'a/agentfence-baseline',
      'b/agentfence-baseline',
    ]);
    const baseline = np(out, 'a', 'agentfence-baseline');
    expect(baseline.metadata.labels).toEqual({ 'app.kubernetes.io/managed-by': 'agentfence' });
    expect(baseline.metadata.ownerReferences).toBeUndefined();
    expect(baseline.spec).toEqual({
      podSelector: { matchLabels: { 'agentfence.io/inject': 'true' } },
      policyTypes: ['Ingress', 'Egress'],
      egress: [
        {
          to: [
            {
              namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'kube-system' } },
              podSelector: { matchLabels: { 'k8s-app': 'kube-dns' } },
            },
          ],
          ports: [
            { protocol: 'TCP', port: 53 },
            { protocol: 'UDP', port: 53 },
          ],
        },
        {
          to: [
            {
              namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'agentfence-system' } },
              podSelector: {
                matchLabels: { 'app.kubernetes.io/component': 'controller', 'app.kubernetes.io/name': 'agentfence' },
              },
            },
          ],
          ports: [{ protocol: 'TCP', port: 8443 }],
        },
      ],
    });
  });

  it('targets NodeLocal DNS addresses, custom DNS pods and ports, and a custom operator endpoint', () => {
    const nodeLocal = compile(input, { ...options, dns: { kind: 'addresses', addresses: ['169.254.20.10'] } });
    expect(np(nodeLocal, 'a', 'agentfence-baseline').spec.egress?.[0]?.to).toEqual([
      { ipBlock: { cidr: '169.254.20.10/32' } },
    ]);
    const openshift = compile(input, {
      ...options,
      dns: {
        kind: 'pods',
        namespace: 'openshift-dns',
        podLabels: { 'dns.operator.openshift.io/daemonset-dns': 'default' },
        port: 5353,
      },
      operator: { namespace: 'fence', podLabels: { app: 'fence' }, port: 9443 },
    });
    const egress = np(openshift, 'a', 'agentfence-baseline').spec.egress;
    expect(egress?.[0]).toEqual({
      to: [
        {
          namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'openshift-dns' } },
          podSelector: { matchLabels: { 'dns.operator.openshift.io/daemonset-dns': 'default' } },
        },
      ],
      ports: [
        { protocol: 'TCP', port: 5353 },
        { protocol: 'UDP', port: 5353 },
      ],
    });
    expect(egress?.[1]?.ports).toEqual([{ protocol: 'TCP', port: 9443 }]);
  });
});

describe('determinism', () => {
  const input: CompileInput = {
    namespaces: [namespace('a'), namespace('b', { team: 'b' })],
    pods: [
      agentPod('a', 'x-1', 'x', { ip: '10.0.0.1' }),
      agentPod('a', 'x-2', 'x', { ip: '10.0.0.2' }),
      agentPod('b', 'y-1', 'y', { ip: '10.0.1.1' }),
      backendPod('a', 'db-0', { app: 'db' }, [{ name: 'pg', containerPort: 5432 }], '10.0.2.1'),
    ],
    services: [
      service('a', 'db', {
        selector: { app: 'db' },
        clusterIP: '10.96.0.5',
        ports: [{ port: 5432, targetPort: 'pg' }],
      }),
    ],
    policies: [
      policy('a', 'x', {
        egress: [
          { name: 'db', to: { services: [{ name: 'db' }] }, ports: [{ port: 5432 }] },
          {
            name: 'y',
            to: { agents: { namespaceSelector: {}, agentSelector: { matchLabels: { 'agentfence.io/agent': 'y' } } } },
            ports: [{ port: 80 }, { port: 443 }],
          },
          { name: 'web', to: { hosts: ['b.example.com', 'a.example.com'] }, ports: [{ port: 443 }] },
        ],
      }),
      policy('a', 'x-extra', {
        agent: 'x',
        egress: [{ name: 'net', to: { cidrs: ['10.8.0.0/16', '10.7.0.0/16'] }, ports: [{ port: 22 }] }],
      }),
      policy('b', 'y', {
        ingress: [
          {
            name: 'from-x',
            from: { agents: { namespaceSelector: {}, agentSelector: { matchLabels: { 'agentfence.io/agent': 'x' } } } },
            ports: [{ port: 80 }],
          },
        ],
      }),
    ],
  };

  it('gives byte-identical output, revisions and names for any input order', () => {
    const reference = JSON.stringify(compile(input, { ...options, networkProvider: 'cilium' }));
    for (let seed = 1; seed <= 10; seed++) {
      const shuffledInput: CompileInput = {
        namespaces: shuffled(input.namespaces, seed),
        pods: shuffled(input.pods, seed + 100),
        services: shuffled(input.services, seed + 200),
        policies: shuffled(input.policies, seed + 300).map((p) => ({
          ...p,
          spec: { ...p.spec, egress: shuffled(p.spec.egress ?? [], seed) },
        })),
      };
      expect(JSON.stringify(compile(shuffledInput, { ...options, networkProvider: 'cilium' }))).toBe(reference);
    }
  });

  it('never mutates its input', () => {
    const before = JSON.stringify(input);
    compile(input, { ...options, networkProvider: 'cilium' });
    expect(JSON.stringify(input)).toBe(before);
  });

  it('writes entitlements that satisfy the AgentEntitlement schema', () => {
    const out = compile(input, options);
    expect(out.entitlements.length).toBe(3);
    for (const ae of out.entitlements) expect(validateSchema(agentEntitlementSpec, ae.spec, 'spec')).toEqual([]);
  });

  it('keeps names stable and bounded', () => {
    const out = compile(input, options);
    const names = out.networkPolicies.map((p) => `${p.metadata.namespace}/${p.metadata.name}`);
    expect(names).toEqual([
      'a/agentfence-baseline',
      'a/agentfence-x',
      'a/agentfence-x-extra',
      'b/agentfence-baseline',
      'b/agentfence-y',
      'b/agentfence-y-pre-gate-7682f8a4',
    ]);
    const long = 'p'.repeat(253);
    const longOut = compile(
      { ...empty, pods: [agentPod('a', 'x', 'x')], policies: [policy('a', long, { agent: 'x' })] },
      options,
    );
    const longNp = longOut.networkPolicies.find((p) => p.metadata.name !== 'agentfence-baseline');
    expect(longNp?.metadata.name.length).toBeLessThanOrEqual(253);
    expect(longNp?.metadata.labels?.['agentfence.io/policy']?.length).toBeLessThanOrEqual(63);
    expect(
      compile({ ...empty, pods: [agentPod('a', 'x', 'x')], policies: [policy('a', long, { agent: 'x' })] }, options),
    ).toEqual(longOut);
  });
});
