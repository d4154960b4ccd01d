import { describe, expect, it } from 'vitest';
import { LABEL_MANAGED_BY, MANAGED_BY } from '../../lib/api/constants.ts';
import type { AgentEntitlement } from '../../lib/api/types.generated.ts';
import type { KubeObject } from '../../lib/kube/client.ts';
import type { NetworkPolicy, PodInput } from '../../operator/compiler/types.ts';
import { isSubset, newerCopy, owningPolicy, policyRef, upToDate } from '../../operator/managed.ts';
import { foreignOverlaps } from '../../operator/overlap.ts';
import { acknowledgedRevisions } from '../../operator/policy-status.ts';

function entitlement(
  ns: string,
  pod: string,
  policies: string[],
  status?: AgentEntitlement['status'],
  revision = 'r1',
): AgentEntitlement {
  return {
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentEntitlement',
    metadata: { namespace: ns, name: pod },
    spec: { podName: pod, podUID: `uid-${pod}`, agent: 'a', spiffeID: 'spiffe://x/a', revision, policies },
    ...(status ? { status } : {}),
  };
}

function netpol(
  ns: string,
  name: string,
  labels: Record<string, string>,
  opts: { egress: boolean; managed?: boolean },
): KubeObject & NetworkPolicy {
  return {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: {
      namespace: ns,
      name,
      ...(opts.managed ? { labels: { [LABEL_MANAGED_BY]: MANAGED_BY } } : {}),
    },
    spec: {
      podSelector: { matchLabels: labels },
      policyTypes: ['Egress'],
      ...(opts.egress ? { egress: [{}] } : {}),
    },
  };
}

function pod(ns: string, name: string, labels: Record<string, string>): KubeObject & PodInput {
  return { apiVersion: 'v1', kind: 'Pod', metadata: { namespace: ns, name, labels } };
}

describe('isSubset / upToDate', () => {
  it('ignores fields only the server has, but not changed or missing ones', () => {
    expect(isSubset({ a: 1, b: { c: [1, 2] } }, { a: 1, b: { c: [1, 2], d: 3 }, e: 4 })).toBe(true);
    expect(isSubset({ a: 1 }, { a: 2 })).toBe(false);
    expect(isSubset({ a: [1, 2] }, { a: [1, 2, 3] })).toBe(false);
    expect(isSubset({ a: {} }, { a: [] })).toBe(false);
    expect(isSubset({ a: 1 }, undefined)).toBe(false);
  });

  it('compares only owned fields: status and server metadata do not count, labels do', () => {
    const desired: KubeObject = { apiVersion: 'v1', kind: 'X', metadata: { name: 'n', labels: { l: '1' } } };
    const current: KubeObject = {
      metadata: { name: 'n', uid: 'u', resourceVersion: '7', labels: { l: '1' } },
      status: { anything: true },
    };
    expect(upToDate(desired, current)).toBe(true);
    expect(upToDate(desired, undefined)).toBe(false);
    expect(upToDate(desired, { metadata: { name: 'n', labels: { l: '2' } } })).toBe(false);
  });
});

describe('newerCopy', () => {
  const at = (rv: string | undefined, tag: string): KubeObject => ({
    metadata: { name: 'x', ...(rv === undefined ? {} : { resourceVersion: rv }), labels: { tag } },
  });
  it('prefers our own write until the cache has seen it or something newer', () => {
    expect(newerCopy(at('9', 'cache'), at('10', 'ours'))?.metadata.labels?.tag).toBe('ours');
    expect(newerCopy(at('10', 'cache'), at('10', 'ours'))?.metadata.labels?.tag).toBe('cache');
    // Someone changed it after our write (a hand edit): the cache wins, so the edit is reverted.
    expect(newerCopy(at('11', 'cache'), at('10', 'ours'))?.metadata.labels?.tag).toBe('cache');
    // Numeric, not lexical, order.
    expect(newerCopy(at('9', 'cache'), at('100', 'ours'))?.metadata.labels?.tag).toBe('ours');
  });
  it('gives no answer (write) when the cache has no copy or the versions are not comparable', () => {
    expect(newerCopy(undefined, at('10', 'ours'))).toBeUndefined();
    expect(newerCopy(at('abc', 'cache'), at('10', 'ours'))).toBeUndefined();
    expect(newerCopy(at(undefined, 'cache'), at('10', 'ours'))).toBeUndefined();
    expect(newerCopy(at('7', 'cache'), undefined)?.metadata.labels?.tag).toBe('cache');
  });
});

describe('owningPolicy / policyRef', () => {
  it('prefers the AgentPolicy owner, then the policy labels', () => {
    const owned: KubeObject = {
      metadata: {
        namespace: 'ns',
        name: 'o',
        ownerReferences: [{ apiVersion: 'agentfence.io/v1alpha1', kind: 'AgentPolicy', name: 'p', uid: 'u' }],
      },
    };
    expect(owningPolicy(owned)).toBe('ns/p');
    expect(policyRef(owned)).toEqual({
      apiVersion: 'agentfence.io/v1alpha1',
      kind: 'AgentPolicy',
      name: 'p',
      namespace: 'ns',
    });
    const labelled: KubeObject = {
      metadata: {
        namespace: 'ns',
        name: 'o',
        labels: { 'agentfence.io/policy': 'q', 'agentfence.io/policy-namespace': 'other' },
      },
    };
    expect(owningPolicy(labelled)).toBe('other/q');
    expect(owningPolicy({ metadata: { namespace: 'ns', name: 'o' } })).toBeUndefined();
  });
});

describe('foreignOverlaps', () => {
  const aes = [entitlement('ns', 'agent-1', ['p1', 'p2']), entitlement('other', 'agent-2', ['p3'])];
  const pods = [
    pod('ns', 'agent-1', { app: 'a' }),
    pod('other', 'agent-2', { app: 'a' }),
    pod('ns', 'plain', { app: 'b' }),
  ];

  it('names foreign egress NetworkPolicies for every policy selecting a matched pod, in its namespace only', () => {
    const result = foreignOverlaps(aes, [netpol('ns', 'wide', { app: 'a' }, { egress: true })], pods);
    expect(Object.fromEntries(result)).toEqual({ 'ns/p1': ['ns/wide'], 'ns/p2': ['ns/wide'] });
  });

  it('skips our own NetworkPolicies, ones without egress rules, and pods no policy selects', () => {
    const result = foreignOverlaps(
      aes,
      [
        netpol('ns', 'ours', { app: 'a' }, { egress: true, managed: true }),
        netpol('ns', 'deny', { app: 'a' }, { egress: false }),
        netpol('ns', 'plain', { app: 'b' }, { egress: true }),
      ],
      pods,
    );
    expect(result.size).toBe(0);
  });
});

describe('acknowledgedRevisions', () => {
  it('counts only sidecars in sync with the current revision, per policy', () => {
    const counts = acknowledgedRevisions([
      entitlement('ns', 'a', ['p1', 'p2'], { inSync: true, enforcedRevision: 'r1' }),
      entitlement('ns', 'b', ['p1'], { inSync: true, enforcedRevision: 'r0' }),
      entitlement('ns', 'c', ['p1'], { inSync: false, enforcedRevision: 'r1' }),
      entitlement('ns', 'd', ['p1'], { inSync: true, enforcedRevision: 'r1' }),
    ]);
    expect(Object.fromEntries(counts)).toEqual({ 'ns/p1': 2, 'ns/p2': 1 });
  });
});
