/**
 * AgentPolicy status as a pure function of what the reconcile found: the compiler's report, what the apply
 * step managed to write, how many sidecars acknowledged the current revision, and foreign NetworkPolicies that
 * widen the agents' egress. Conditions follow metav1.Condition rules (lastTransitionTime moves only on a flip),
 * so an unchanged world produces an identical status and no write.
 */
import type { AgentEntitlement, AgentPolicy, AgentPolicyStatus } from '../lib/api/types.generated.ts';
import { setCondition, type Condition } from '../lib/kube/conditions.ts';
import type { PolicyReport } from './compiler/types.ts';

export const CONDITION = {
  Accepted: 'Accepted',
  NetworkPolicyProgrammed: 'NetworkPolicyProgrammed',
  AgentsInSync: 'AgentsInSync',
  Degraded: 'Degraded',
  Ready: 'Ready',
} as const;

export interface PolicyObservation {
  report: PolicyReport | undefined;
  /** Sidecars of selected pods whose acknowledged revision equals their entitlement's revision. */
  inSync: number;
  /** Apply or delete failures for this policy's objects, as messages. */
  applyErrors: string[];
  /** Foreign NetworkPolicies (namespace/name) that select this policy's agents and allow egress. */
  foreignOverlaps: string[];
  expired: boolean;
}

export function policyStatus(policy: AgentPolicy, observed: PolicyObservation, now: Date): AgentPolicyStatus {
  const generation = policy.metadata.generation ?? 0;
  const selected = observed.report?.selectedPods ?? 0;
  const problems = observed.report?.problems ?? [];
  let conditions: Condition[] = (policy.status?.conditions ?? []).map((c) => ({ ...c, message: c.message ?? '' }));
  const set = (type: string, status: 'True' | 'False' | 'Unknown', reason: string, message: string): void => {
    conditions = setCondition(conditions, { type, status, reason, message, observedGeneration: generation }, now);
  };

  set(CONDITION.Accepted, 'True', 'Accepted', 'the policy compiled');

  if (observed.applyErrors.length > 0) {
    set(CONDITION.NetworkPolicyProgrammed, 'False', 'ApplyFailed', truncate(observed.applyErrors.join('; ')));
  } else {
    const count = observed.report?.networkPolicies.length ?? 0;
    set(
      CONDITION.NetworkPolicyProgrammed,
      'True',
      'Programmed',
      `${count} network ${count === 1 ? 'policy' : 'policies'} written`,
    );
  }

  if (observed.expired) set(CONDITION.AgentsInSync, 'True', 'Expired', 'the policy has expired and grants nothing');
  else if (selected === 0) set(CONDITION.AgentsInSync, 'True', 'NoAgentsSelected', 'no agent pods match agentSelector');
  else if (observed.inSync >= selected)
    set(CONDITION.AgentsInSync, 'True', 'AllInSync', `${selected}/${selected} sidecars enforce the current revision`);
  else
    set(
      CONDITION.AgentsInSync,
      'False',
      'AgentsPending',
      `${observed.inSync}/${selected} sidecars enforce the current revision`,
    );

  const degraded: { reason: string; message: string }[] = [];
  if (observed.foreignOverlaps.length > 0) {
    degraded.push({
      reason: 'ForeignPolicyOverlap',
      message: `NetworkPolicies not managed by Agentfence also select these agents and allow egress: ${observed.foreignOverlaps.join(', ')}`,
    });
  }
  for (const p of problems) {
    if (p.reason === 'Expired' || p.reason === 'NoAgentsSelected') continue;
    degraded.push({ reason: p.reason, message: p.rule ? `rule ${p.rule}: ${p.message}` : p.message });
  }
  if (degraded.length > 0) {
    // A grant that opens nothing because the other side has not agreed is the reason to show first.
    // ... and then a credential that cannot be sent: that rule's requests are all refused.
    const first =
      degraded.find((d) => d.reason === 'CalleeHasNotConsented') ??
      degraded.find((d) => d.reason === 'CredentialUnavailable') ??
      degraded[0];
    set(CONDITION.Degraded, 'True', first?.reason ?? 'Degraded', truncate(degraded.map((d) => d.message).join('; ')));
  } else set(CONDITION.Degraded, 'False', 'AsExpected', 'everything this policy grants is enforced at every layer');

  const programmed = observed.applyErrors.length === 0;
  const inSync = observed.expired || selected === 0 || observed.inSync >= selected;
  if (!programmed) set(CONDITION.Ready, 'False', 'ApplyFailed', 'network policies could not be written');
  else if (!inSync) set(CONDITION.Ready, 'False', 'AgentsPending', `${observed.inSync}/${selected} sidecars in sync`);
  else set(CONDITION.Ready, 'True', 'Ready', 'programmed and enforced by every selected sidecar');

  const order: string[] = Object.values(CONDITION);
  conditions.sort((a, b) => order.indexOf(a.type) - order.indexOf(b.type));
  return {
    observedGeneration: generation,
    conditions,
    agents: { selected, inSync: Math.min(observed.inSync, selected) },
    networkPolicies: (observed.report?.networkPolicies ?? [])
      .filter((n) => n.namespace === policy.metadata.namespace)
      .map((n) => ({ kind: n.kind, name: n.name }))
      .slice(0, 16),
  };
}

function truncate(message: string, max = 4000): string {
  return message.length <= max ? message : `${message.slice(0, max - 1)}…`;
}

/**
 * Acknowledged revisions, per policy key (namespace/name): how many sidecars of pods the policy selects enforce
 * their entitlement's current revision.
 */
export function acknowledgedRevisions(entitlements: readonly AgentEntitlement[]): Map<string, number> {
  const inSync = new Map<string, number>();
  for (const ae of entitlements) {
    if (ae.status?.inSync !== true || ae.status.enforcedRevision !== ae.spec.revision) continue;
    for (const p of ae.spec.policies ?? []) {
      const k = `${ae.metadata.namespace ?? ''}/${p}`;
      inSync.set(k, (inSync.get(k) ?? 0) + 1);
    }
  }
  return inSync;
}
