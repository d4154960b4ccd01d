/**
 * The policy compiler: AgentPolicies × Pods × Namespaces × Services → per-pod AgentEntitlements, NetworkPolicies
 * (and CiliumNetworkPolicies) and a per-policy report. Pure and deterministic: no I/O, no clock (the caller passes
 * `now`), every list sorted, so the same cluster state in any order gives byte-identical output.
 */
import type { AgentEntitlement, EntitlementIngressRule } from '../../lib/api/types.generated.ts';
import { baselinePolicy } from './baseline.ts';
import { byNamespaceAndName, compareStrings } from './canonical.ts';
import { ClusterIndex, type IndexedPod } from './cluster-index.ts';
import { EgressDigests, entitlementFor, type PolicyGrant } from './entitlement.ts';
import { compilePolicy } from './policy.ts';
import type {
  CiliumNetworkPolicy,
  CompileInput,
  CompileOptions,
  CompileOutput,
  DnsTarget,
  NetworkPolicy,
  OperatorEndpoint,
  PolicyReport,
} from './types.ts';
import { CONTROLLER } from '../defaults.ts';

export const DEFAULT_TRUST_DOMAIN = 'cluster.local';
export const DEFAULT_CLUSTER_DOMAIN = 'cluster.local';
export const DEFAULT_DNS: DnsTarget = { kind: 'pods', namespace: 'kube-system', podLabels: { 'k8s-app': 'kube-dns' } };
/** Where the chart's controller runs by default (operator/defaults.ts): what the baseline lets agents reach. */
export const DEFAULT_OPERATOR: OperatorEndpoint = {
  namespace: CONTROLLER.namespace,
  podLabels: { ...CONTROLLER.podLabels },
  port: CONTROLLER.port,
};

export function compile(input: CompileInput, compileOptions: CompileOptions): CompileOutput {
  const options: Required<CompileOptions> = {
    trustDomain: DEFAULT_TRUST_DOMAIN,
    clusterDomain: DEFAULT_CLUSTER_DOMAIN,
    dns: DEFAULT_DNS,
    operator: DEFAULT_OPERATOR,
    networkProvider: 'kubernetes',
    ...compileOptions,
  };
  const index = new ClusterIndex(input);
  const grantsByPod = new Map<IndexedPod, PolicyGrant[]>();
  const calleeGrantsByPod = new Map<IndexedPod, EntitlementIngressRule[]>();
  const networkPolicies: NetworkPolicy[] = [];
  const ciliumNetworkPolicies: CiliumNetworkPolicy[] = [];
  const reports: PolicyReport[] = [];
  let nextExpiry: number | undefined;

  for (const policy of [...input.policies].sort(byNamespaceAndName)) {
    const result = compilePolicy(policy, index, options);
    const expiry = policy.spec.expiresAt === undefined ? NaN : Date.parse(policy.spec.expiresAt);
    if (expiry > options.now.getTime() && (nextExpiry === undefined || expiry < nextExpiry)) nextExpiry = expiry;
    for (const pod of result.selected) {
      const grants = grantsByPod.get(pod);
      if (grants) grants.push(result.grant);
      else grantsByPod.set(pod, [result.grant]);
    }
    for (const { pod, rule } of result.calleeGrants) {
      const list = calleeGrantsByPod.get(pod);
      if (list) list.push(rule);
      else calleeGrantsByPod.set(pod, [rule]);
    }
    networkPolicies.push(...result.networkPolicies);
    if (result.cilium) ciliumNetworkPolicies.push(result.cilium);
    reports.push(result.report);
  }

  const entitlements: AgentEntitlement[] = [];
  const egressDigests = new EgressDigests();
  for (const ns of [...index.agents.keys()].sort(compareStrings)) {
    const agents = index.agents.get(ns)?.all ?? [];
    if (agents.length > 0) networkPolicies.push(baselinePolicy(ns, options));
    for (const pod of agents)
      entitlements.push(
        entitlementFor(pod, grantsByPod.get(pod) ?? [], options, egressDigests, calleeGrantsByPod.get(pod) ?? []),
      );
  }

  return {
    entitlements,
    networkPolicies: networkPolicies.sort(byNamespaceAndName),
    ciliumNetworkPolicies: ciliumNetworkPolicies.sort(byNamespaceAndName),
    reports,
    skippedPods: index.skipped,
    ...(nextExpiry !== undefined ? { nextExpiry: new Date(nextExpiry).toISOString() } : {}),
  };
}
