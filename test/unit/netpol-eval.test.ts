/**
 * The independent NetworkPolicy evaluator (test/support/netpol-eval.ts) on its own, against the cases the
 * Kubernetes documentation spells out. It checks the compiler in netpol-matrix.test.ts, so it must be right first.
 */
import { describe, expect, it } from 'vitest';
import {
  allowed,
  cidrContains,
  selectorMatches,
  type EvalPod,
  type EvalPolicy,
  type EvalWorld,
} from '../support/netpol-eval.ts';

const pod = (
  namespace: string,
  name: string,
  labels: Record<string, string>,
  ip: string,
  ports?: EvalPod['ports'],
): EvalPod => ({
  namespace,
  name,
  labels,
  ip,
  ...(ports ? { ports } : {}),
});
const web = pod('prod', 'web', { app: 'web' }, '10.0.0.1', [{ name: 'http', containerPort: 8080 }]);
const db = pod('prod', 'db', { app: 'db' }, '10.0.0.2', [{ name: 'pg', containerPort: 5432 }]);
const other = pod('dev', 'tool', { app: 'web' }, '10.0.1.1');
const np = (namespace: string, spec: EvalPolicy['spec']): EvalPolicy => ({ metadata: { namespace, name: 'p' }, spec });
const world = (policies: EvalPolicy[]): EvalWorld => ({
  namespaces: { prod: { env: 'prod' }, dev: { env: 'dev' } },
  pods: [web, db, other],
  policies,
});

describe('label selectors', () => {
  it('implements matchLabels and every matchExpressions operator; empty matches all', () => {
    expect(selectorMatches({}, { a: '1' })).toBe(true);
    expect(selectorMatches({ matchLabels: { a: '1' } }, { a: '1', b: '2' })).toBe(true);
    expect(selectorMatches({ matchLabels: { a: '1' } }, { a: '2' })).toBe(false);
    expect(selectorMatches({ matchExpressions: [{ key: 'a', operator: 'In', values: ['1', '2'] }] }, { a: '2' })).toBe(
      true,
    );
    expect(selectorMatches({ matchExpressions: [{ key: 'a', operator: 'In', values: ['1'] }] }, {})).toBe(false);
    expect(selectorMatches({ matchExpressions: [{ key: 'a', operator: 'NotIn', values: ['1'] }] }, {})).toBe(true);
    expect(selectorMatches({ matchExpressions: [{ key: 'a', operator: 'NotIn', values: ['1'] }] }, { a: '1' })).toBe(
      false,
    );
    expect(selectorMatches({ matchExpressions: [{ key: 'a', operator: 'Exists' }] }, { a: '' })).toBe(true);
    expect(selectorMatches({ matchExpressions: [{ key: 'a', operator: 'DoesNotExist' }] }, { a: '' })).toBe(false);
  });
  it('contains addresses in CIDRs', () => {
    expect(cidrContains('10.0.0.0/8', '10.200.1.1')).toBe(true);
    expect(cidrContains('10.0.0.0/24', '10.0.1.1')).toBe(false);
    expect(cidrContains('0.0.0.0/0', '1.2.3.4')).toBe(true);
    expect(cidrContains('10.0.0.1/32', '10.0.0.1')).toBe(true);
    expect(cidrContains('::/0', '10.0.0.1')).toBe(false);
  });
});

describe('NetworkPolicy semantics', () => {
  it('allows everything when no policy selects a pod', () => {
    expect(allowed(world([]), web, { pod: db }, 5432)).toBe(true);
  });
  it('default deny ingress isolates the selected pods for ingress only', () => {
    const w = world([np('prod', { podSelector: {}, policyTypes: ['Ingress'] })]);
    expect(allowed(w, web, { pod: db }, 5432)).toBe(false);
    expect(allowed(w, db, { ip: '8.8.8.8' }, 53, 'UDP')).toBe(true); // egress not isolated
    expect(allowed(w, other, { pod: web }, 8080)).toBe(false);
  });
  it('defaults policyTypes to Ingress, plus Egress when there is an egress section', () => {
    const ingressOnly = world([np('prod', { podSelector: { matchLabels: { app: 'web' } } })]);
    expect(allowed(ingressOnly, web, { ip: '1.1.1.1' }, 443)).toBe(true);
    expect(allowed(ingressOnly, db, { pod: web }, 8080)).toBe(false);
    const withEgress = world([np('prod', { podSelector: { matchLabels: { app: 'web' } }, egress: [] })]);
    expect(allowed(withEgress, web, { ip: '1.1.1.1' }, 443)).toBe(false);
  });
  it('needs both ends: egress at the source and ingress at the destination', () => {
    const egressOpen = np('prod', {
      podSelector: { matchLabels: { app: 'web' } },
      policyTypes: ['Egress'],
      egress: [{ to: [{ podSelector: { matchLabels: { app: 'db' } } }], ports: [{ port: 5432 }] }],
    });
    const ingressClosed = np('prod', { podSelector: { matchLabels: { app: 'db' } }, policyTypes: ['Ingress'] });
    expect(allowed(world([egressOpen]), web, { pod: db }, 5432)).toBe(true);
    expect(allowed(world([egressOpen, ingressClosed]), web, { pod: db }, 5432)).toBe(false);
    expect(allowed(world([egressOpen]), web, { pod: db }, 5433)).toBe(false);
  });
  it('a podSelector-only peer means the policy namespace; namespaceSelector and podSelector in one element mean both', () => {
    const sameNs = world([
      np('prod', {
        podSelector: { matchLabels: { app: 'db' } },
        ingress: [{ from: [{ podSelector: { matchLabels: { app: 'web' } } }] }],
      }),
    ]);
    expect(allowed(sameNs, web, { pod: db }, 5432)).toBe(true);
    expect(allowed(sameNs, other, { pod: db }, 5432)).toBe(false); // same labels, other namespace
    const and = world([
      np('prod', {
        podSelector: { matchLabels: { app: 'db' } },
        ingress: [
          {
            from: [
              { namespaceSelector: { matchLabels: { env: 'dev' } }, podSelector: { matchLabels: { app: 'web' } } },
            ],
          },
        ],
      }),
    ]);
    expect(allowed(and, other, { pod: db }, 5432)).toBe(true);
    expect(allowed(and, web, { pod: db }, 5432)).toBe(false);
    const or = world([
      np('prod', {
        podSelector: { matchLabels: { app: 'db' } },
        ingress: [
          {
            from: [
              { namespaceSelector: { matchLabels: { env: 'dev' } } },
              { podSelector: { matchLabels: { app: 'web' } } },
            ],
          },
        ],
      }),
    ]);
    expect(allowed(or, other, { pod: db }, 5432)).toBe(true);
    expect(allowed(or, web, { pod: db }, 5432)).toBe(true);
  });
  it('ipBlock with except; named ports; port ranges; protocols', () => {
    const w = world([
      np('prod', {
        podSelector: { matchLabels: { app: 'web' } },
        policyTypes: ['Egress'],
        egress: [
          {
            to: [{ ipBlock: { cidr: '0.0.0.0/0', except: ['10.0.0.0/8', '169.254.0.0/16'] } }],
            ports: [{ port: 443 }],
          },
          { to: [{ podSelector: { matchLabels: { app: 'db' } } }], ports: [{ port: 'pg' }] },
          { to: [{ ipBlock: { cidr: '192.0.2.0/24' } }], ports: [{ port: 8000, endPort: 8100, protocol: 'UDP' }] },
        ],
      }),
    ]);
    expect(allowed(w, web, { ip: '1.2.3.4' }, 443)).toBe(true);
    expect(allowed(w, web, { ip: '169.254.169.254' }, 443)).toBe(false);
    expect(allowed(w, web, { pod: db }, 443)).toBe(false); // db's IP is in the except
    expect(allowed(w, web, { pod: db }, 5432)).toBe(true); // named port resolved on the destination
    expect(allowed(w, web, { ip: '192.0.2.9' }, 8050, 'UDP')).toBe(true);
    expect(allowed(w, web, { ip: '192.0.2.9' }, 8050, 'TCP')).toBe(false);
    expect(allowed(w, web, { ip: '192.0.2.9' }, 8101, 'UDP')).toBe(false);
  });
  it('an empty rule allows everything in its direction; policies are unions', () => {
    const w = world([
      np('prod', { podSelector: {}, policyTypes: ['Ingress'] }),
      np('prod', { podSelector: { matchLabels: { app: 'db' } }, ingress: [{}] }),
    ]);
    expect(allowed(w, other, { pod: db }, 1)).toBe(true);
    expect(allowed(w, other, { pod: web }, 8080)).toBe(false);
  });
});
