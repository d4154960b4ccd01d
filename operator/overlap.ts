/**
 * Foreign-overlap detection, pure: NetworkPolicies are unions, so a NetworkPolicy we did not write that has
 * egress rules and selects an agent pod widens that agent's egress beyond its AgentPolicy. The reconciler
 * reports such NetworkPolicies in the status of every policy that selects the pod.
 */
import { LABEL_MANAGED_BY, MANAGED_BY } from '../lib/api/constants.ts';
import type { AgentEntitlement } from '../lib/api/types.generated.ts';
import type { KubeObject } from '../lib/kube/client.ts';
import { objectKey } from '../lib/kube/informer.ts';
import { compileSelector } from './compiler/selectors.ts';
import type { NetworkPolicy, PodInput } from './compiler/types.ts';

/**
 * Foreign NetworkPolicies with egress rules that select pods a policy also selects, by policy key
 * (namespace/name) → NetworkPolicy keys. `entitlements` are the desired ones (they name each pod's policies).
 */
export function foreignOverlaps(
  entitlements: readonly AgentEntitlement[],
  networkPolicies: readonly (KubeObject & NetworkPolicy)[],
  pods: readonly (KubeObject & PodInput)[],
): Map<string, string[]> {
  const result = new Map<string, string[]>();
  const selectedBy = new Map<string, string[]>(); // pod key → policy keys
  for (const ae of entitlements) {
    selectedBy.set(
      `${ae.metadata.namespace ?? ''}/${ae.spec.podName}`,
      (ae.spec.policies ?? []).map((p) => `${ae.metadata.namespace ?? ''}/${p}`),
    );
  }
  for (const np of networkPolicies) {
    if (np.metadata.labels?.[LABEL_MANAGED_BY] === MANAGED_BY) continue;
    const hasEgress = np.spec.policyTypes.includes('Egress') && (np.spec.egress?.length ?? 0) > 0;
    if (!hasEgress) continue;
    for (const pod of pods) {
      if (
        pod.metadata.namespace !== np.metadata.namespace ||
        !compileSelector(np.spec.podSelector)(pod.metadata.labels ?? {})
      )
        continue;
      for (const policyKey of selectedBy.get(objectKey(pod)) ?? []) {
        const list = result.get(policyKey) ?? [];
        const name = objectKey(np);
        if (!list.includes(name)) list.push(name);
        result.set(policyKey, list);
      }
    }
  }
  return result;
}
