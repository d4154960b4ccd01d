/** One pod's AgentEntitlement: the union of the grants of every policy that selects it. */
import type { AgentEntitlement, EntitlementEgressRule, EntitlementIngressRule } from '../../lib/api/types.generated.ts';
import {
  API_VERSION,
  LABEL_AGENT,
  LABEL_MANAGED_BY,
  MANAGED_BY,
  TOKEN_TTL_DEFAULT_SECONDS,
} from '../../lib/api/constants.ts';
import { compareStrings, sha256Revision } from './canonical.ts';
import type { IndexedPod } from './cluster-index.ts';
import { formatDurationSeconds } from '../../lib/api/duration.ts';
import type { CompileOptions } from './types.ts';

/** One policy's contribution to each pod it selects. */
export interface PolicyGrant {
  name: string;
  tokenTTLSeconds?: number;
  expiresAt?: string;
  egress: EntitlementEgressRule[];
  ingress: EntitlementIngressRule[];
}

export function entitlementFor(
  pod: IndexedPod,
  grants: PolicyGrant[],
  options: Required<CompileOptions>,
  egressDigests: EgressDigests,
  calleeGrants: readonly EntitlementIngressRule[] = [],
): AgentEntitlement {
  const agent = pod.labels[LABEL_AGENT] ?? pod.pod.spec?.serviceAccountName ?? 'default';
  const serviceAccountName = pod.pod.spec?.serviceAccountName ?? 'default';
  // Policies are visited in name order and each grant's rules are sorted, so this is already (policy, rule) order.
  const egress = grants.flatMap((g) => g.egress);
  const ingress = [...grants.flatMap((g) => g.ingress), ...calleeGrants].sort(
    (a, b) => compareStrings(a.policy, b.policy) || compareStrings(a.rule, b.rule),
  );
  const ttl =
    grants.length > 0
      ? Math.min(...grants.map((g) => g.tokenTTLSeconds ?? TOKEN_TTL_DEFAULT_SECONDS))
      : TOKEN_TTL_DEFAULT_SECONDS;
  const expiries = grants.map((g) => g.expiresAt).filter((e): e is string => e !== undefined);
  const expiresAt = expiries.sort((a, b) => Date.parse(a) - Date.parse(b))[0];
  const spec: Omit<AgentEntitlement['spec'], 'revision'> = {
    podName: pod.name,
    podUID: pod.uid,
    agent,
    serviceAccountName,
    spiffeID: `spiffe://${options.trustDomain}/ns/${pod.namespace}/agent/${agent}`,
    tokenTTL: formatDurationSeconds(ttl),
    ...(expiresAt !== undefined ? { expiresAt } : {}),
    policies: grants.map((g) => g.name),
    egress,
    ...(ingress.length > 0 ? { ingress } : {}),
  };
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
    spec: { ...spec, revision: entitlementRevision(spec, egressDigests.of(grants, egress)) },
  };
}

/**
 * The revision of an entitlement: a content hash of its canonical spec — every field but the revision itself,
 * the rules entering through their own digest. A pure function of exactly what the pod is granted, never of a
 * cache keyed by policy names (which let same-named policies in two namespaces share a revision and hid a
 * revocation from the sidecar). `egressDigest` may be passed when already known; it must be egressDigest(egress).
 */
export function entitlementRevision(
  spec: Omit<AgentEntitlement['spec'], 'revision'> & { revision?: string },
  digest: string = egressDigest(spec.egress ?? []),
): string {
  return sha256Revision({ ...spec, revision: undefined, egress: digest }); // canonicalJSON drops undefined
}

export function egressDigest(egress: readonly EntitlementEgressRule[]): string {
  return sha256Revision(egress);
}

/**
 * Egress digests for one compile, memoized by the identity of the grant objects (one per compiled policy, so
 * namespace, name and uid included) — many pods share a set of selecting policies, and their rules are the
 * concatenation of those grants, so the digest is computed once per distinct set.
 */
export class EgressDigests {
  readonly #ids = new WeakMap<PolicyGrant, number>();
  readonly #digests = new Map<string, string>();
  #nextId = 0;

  of(grants: readonly PolicyGrant[], egress: readonly EntitlementEgressRule[]): string {
    const key = grants.map((g) => this.#id(g)).join(',');
    let digest = this.#digests.get(key);
    if (digest === undefined) this.#digests.set(key, (digest = egressDigest(egress)));
    return digest;
  }

  #id(grant: PolicyGrant): number {
    let id = this.#ids.get(grant);
    if (id === undefined) this.#ids.set(grant, (id = this.#nextId++));
    return id;
  }
}
