/**
 * Consent across namespaces. A grant that reaches agents in another namespace (an `agents` target, or a Service
 * whose pods are agents) opens nothing there by itself: the callee side is opened only by the callee namespace's
 * own AgentPolicies, through `ingress` rules whose `from.agents` admit the caller (its namespace through
 * `namespaceSelector`, its agents through `agentSelector`) — in the spirit of Gateway API's ReferenceGrant.
 * The caller's policy therefore never writes into another namespace, and a second tenant's policy cannot change
 * anything in the first tenant's namespace.
 */
import type { AgentPolicy } from '../../lib/api/types.generated.ts';
import type { ClusterIndex, IndexedPod } from './cluster-index.ts';
import { compileSelector } from './selectors.ts';

function expired(policy: AgentPolicy, now: Date): boolean {
  return policy.spec.expiresAt !== undefined && Date.parse(policy.spec.expiresAt) <= now.getTime();
}

/**
 * The agent pods of `calleeNamespace` that the namespace's own policies open to `callers` (agents of
 * `callerNamespace`): those selected by a policy with an ingress rule admitting the caller's namespace and every
 * caller pod. Empty when the callee namespace has not consented.
 */
export function consentedCallees(
  index: ClusterIndex,
  callerNamespace: string,
  callers: readonly IndexedPod[],
  calleeNamespace: string,
  now: Date,
): Set<IndexedPod> {
  const opened = new Set<IndexedPod>();
  for (const policy of index.policiesIn(calleeNamespace)) {
    if (expired(policy, now)) continue;
    const admits = (policy.spec.ingress ?? []).some((rule) => {
      const from = rule.from.agents;
      if (!from) return false;
      if (!index.selectNamespaces(calleeNamespace, from.namespaceSelector).includes(callerNamespace)) return false;
      const matches = compileSelector(from.agentSelector);
      return callers.every((caller) => matches(caller.labels));
    });
    if (!admits) continue;
    for (const pod of index.agents.get(calleeNamespace)?.select(policy.spec.agentSelector) ?? []) opened.add(pod);
  }
  return opened;
}
