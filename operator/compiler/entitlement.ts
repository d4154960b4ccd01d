/** One pod's AgentEntitlement: the union of the grants of every policy that selects it. */
import type { AgentEntitlement, EntitlementEgressRule } from '../../lib/api/types.generated.ts';
import {
  API_VERSION,
  LABEL_AGENT,
  LABEL_MANAGED_BY,
  MANAGED_BY,
  TOKEN_TTL_DEFAULT_SECONDS,
} from '../../lib/api/constants.ts';
import { sha256Revision } from './canonical.ts';
import type { PodView } from './cluster-index.ts';
import { formatDurationSeconds } from '../../lib/api/duration.ts';
import type { CompileOptions } from './types.ts';

/** One policy's contribution to each pod it selects. */
export interface PolicyGrant {
  name: string;
  tokenTTLSeconds?: number;
  expiresAt?: string;
  egress: EntitlementEgressRule[];
}

export function entitlementFor(
  pod: PodView,
  grants: PolicyGrant[],
  options: Required<CompileOptions>,
  revisions: Map<string, string>,
): AgentEntitlement {
  const agent = pod.labels[LABEL_AGENT] ?? pod.pod.spec?.serviceAccountName ?? 'default';
  const serviceAccountName = pod.pod.spec?.serviceAccountName ?? 'default';
  // Policies are visited in name order and each grant's rules are sorted, so this is already (policy, rule) order.
  const egress = grants.flatMap((g) => g.egress);
  const key = grants.map((g) => g.name).join('\0');
  let revision = revisions.get(key);
  if (revision === undefined) revisions.set(key, (revision = sha256Revision(egress)));
  const ttl =
    grants.length > 0
      ? Math.min(...grants.map((g) => g.tokenTTLSeconds ?? TOKEN_TTL_DEFAULT_SECONDS))
      : TOKEN_TTL_DEFAULT_SECONDS;
  const expiries = grants.map((g) => g.expiresAt).filter((e): e is string => e !== undefined);
  const expiresAt = expiries.sort((a, b) => Date.parse(a) - Date.parse(b))[0];
  return {
    apiVersion: API_VERSION,
    kind: 'AgentEntitlement',
    metadata: {
      name: pod.name,
      namespace: pod.namespace,
      labels: { [LABEL_MANAGED_BY]: MANAGED_BY },
      // Owned by the pod, so it goes with the pod. Pods synthesized from files (render) have no uid: no owner.
      ...(pod.uid
        ? { ownerReferences: [{ apiVersion: 'v1', kind: 'Pod', name: pod.name, uid: pod.uid, controller: true }] }
        : {}),
    },
    spec: {
      podName: pod.name,
      podUID: pod.uid,
      agent,
      serviceAccountName,
      spiffeID: `spiffe://${options.trustDomain}/ns/${pod.namespace}/agent/${agent}`,
      revision,
      tokenTTL: formatDurationSeconds(ttl),
      ...(expiresAt !== undefined ? { expiresAt } : {}),
      policies: grants.map((g) => g.name),
      egress,
    },
  };
}
