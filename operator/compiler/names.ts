/** Names and labels of the objects the compiler writes; the reconciler prunes by these labels. */
import { createHash } from 'node:crypto';
import { boundedName } from './canonical.ts';

export const LABEL_POLICY = 'agentfence.io/policy';
/** On callee-side ingress policies that live outside the AgentPolicy's namespace (no ownerReference possible). */
export const LABEL_POLICY_NAMESPACE = 'agentfence.io/policy-namespace';
export const BASELINE_NAME = 'agentfence-baseline';

/** The NetworkPolicy (and CiliumNetworkPolicy) that opens what one AgentPolicy grants, in its namespace. */
export function policyObjectName(policy: string): string {
  return boundedName(`agentfence-${policy}`);
}

/**
 * The callee-side ingress for one `agents` egress rule (or one Service of a `services` rule whose backends are
 * agent pods), in the callee's namespace. The hash of the caller's
 * namespace, policy and rule keeps names of different callers apart even when the readable part is cut.
 */
export function calleeIngressName(
  policyNamespace: string,
  policy: string,
  rule: string,
  service?: string,
  preGate = false,
): string {
  // The hash input for agents rules is unchanged by the optional Service, so those names stay stable.
  const key = `${policyNamespace}/${policy}/${rule}${service === undefined ? '' : `/${service}`}${preGate ? '#pre-gate' : ''}`;
  const hash = createHash('sha256').update(key).digest('hex').slice(0, 8);
  return `${boundedName(`agentfence-${policy}-${rule}${preGate ? '-pre-gate' : ''}`, 253 - 9)}-${hash}`;
}

/**
 * The NetworkPolicy that opens the app ports of a policy's pods injected before gates existed, selecting only
 * them (operator/compiler/inbound.ts preGateSelector). Hashed like the callee names, so no policy's own name
 * can collide with it.
 */
export function preGateObjectName(policyNamespace: string, policy: string): string {
  const hash = createHash('sha256').update(`${policyNamespace}/${policy}#pre-gate`).digest('hex').slice(0, 8);
  return `${boundedName(`agentfence-${policy}-pre-gate`, 253 - 9)}-${hash}`;
}

/** Label values are at most 63 characters; longer policy names keep a prefix and a hash. */
export function labelValue(value: string): string {
  return boundedName(value, 63);
}
