/**
 * Adversarial variants of the revision (issue 11): edits that change nothing a pod is granted must not move its
 * revision (needless writes and sidecar reloads), and every edit that changes what is granted — including only the
 * expiry — must move it. Written against the compiler directly; the property test covers random edit chains.
 */
import { describe, expect, it } from 'vitest';
import type { AgentEntitlement, AgentPolicy, EgressRule } from '../../lib/api/types.generated.ts';
import { compile } from '../../operator/compiler/compile.ts';
import { NOW, agentPod, namespace, policy } from '../support/compiler-fixtures.ts';

const RULES: EgressRule[] = [
  {
    name: 'orders',
    to: { hosts: ['orders.example.com', 'api.example.com', '*.shop.example.net'] },
    ports: [{ port: 8443 }, { port: 443 }, { port: 80 }],
    http: [
      {
        methods: ['POST', 'GET'],
        paths: [
          { type: 'PathPrefix', value: '/v2/' },
          { type: 'Exact', value: '/health' },
        ],
      },
    ],
    audience: 'orders-api',
  },
  { name: 'ranges', to: { cidrs: ['203.0.113.0/24', '198.51.100.7/32'] }, ports: [{ port: 5432 }] },
];

function entitlement(policies: AgentPolicy[]): AgentEntitlement {
  const out = compile(
    {
      policies,
      pods: [agentPod('team-a', 'p', 'alpha', { ip: '10.0.0.1' })],
      namespaces: [namespace('team-a')],
      services: [],
    },
    { now: NOW },
  );
  const ae = out.entitlements.find((e) => e.metadata.name === 'p');
  if (!ae) throw new Error('no entitlement');
  return ae;
}

const withRules = (rules: EgressRule[], extra: Record<string, unknown> = {}): AgentPolicy =>
  policy('team-a', 'agent-egress', { agent: 'alpha', egress: rules, ...extra });

describe('revision: what must not move it, and what must', () => {
  const base = entitlement([withRules(RULES)]);

  it('does not change when rules, hosts, ports or CIDRs are listed in another order', () => {
    const [orders, ranges] = RULES.map((r) => structuredClone(r)) as [EgressRule, EgressRule];
    orders.to.hosts = [...(orders.to.hosts ?? [])].reverse();
    orders.ports = [...orders.ports].reverse();
    ranges.to.cidrs = [...(ranges.to.cidrs ?? [])].reverse();
    const reordered = entitlement([withRules([ranges, orders])]);
    expect(reordered.spec.revision).toBe(base.spec.revision);
  });

  it('does not change when HTTP methods or paths are listed in another order', () => {
    const orders = structuredClone(RULES[0]) as EgressRule;
    const match = orders.http?.[0];
    if (!match) throw new Error('fixture');
    match.methods = [...(match.methods ?? [])].reverse();
    match.paths = [...(match.paths ?? [])].reverse();
    expect(entitlement([withRules([orders, RULES[1] as EgressRule])]).spec.revision).toBe(base.spec.revision);
  });

  it('does not change when only the policy’s own bookkeeping changes (labels, annotations, resourceVersion)', () => {
    const p = withRules(RULES);
    p.metadata = { ...p.metadata, labels: { team: 'x' }, annotations: { note: 'y' }, resourceVersion: '999' };
    expect(entitlement([p]).spec.revision).toBe(base.spec.revision);
  });

  it('changes when only expiresAt changes (the grant now ends at another time)', () => {
    const soon = entitlement([withRules(RULES, { expiresAt: '2026-06-01T13:00:00Z' })]);
    const later = entitlement([withRules(RULES, { expiresAt: '2026-06-01T14:00:00Z' })]);
    expect(soon.spec.expiresAt).toBe('2026-06-01T13:00:00Z');
    expect(soon.spec.revision).not.toBe(base.spec.revision);
    expect(later.spec.revision).not.toBe(soon.spec.revision);
    // Once past, the policy grants nothing: the same revision as no policy at all, and no egress.
    const past = entitlement([withRules(RULES, { expiresAt: '2026-06-01T11:59:59Z' })]);
    expect(past.spec.egress).toEqual([]);
    expect(past.spec.revision).not.toBe(base.spec.revision);
  });

  it('changes when one method, one path or one host is removed', () => {
    const variants: ((r: EgressRule) => void)[] = [
      (r) => r.http?.[0]?.methods?.pop(),
      (r) => r.http?.[0]?.paths?.pop(),
      (r) => r.to.hosts?.pop(),
      (r) => r.ports.pop(),
      (r) => delete r.audience,
    ];
    for (const [i, change] of variants.entries()) {
      const orders = structuredClone(RULES[0]) as EgressRule;
      change(orders);
      expect(entitlement([withRules([orders, RULES[1] as EgressRule])]).spec.revision, `variant ${i}`).not.toBe(
        base.spec.revision,
      );
    }
  });
});
