/** Names fixed by the architecture brief; every component imports them from here. */
export const GROUP = 'agentfence.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;

export const AGENT_POLICY = { kind: 'AgentPolicy', plural: 'agentpolicies', singular: 'agentpolicy' } as const;
export const AGENT_ENTITLEMENT = {
  kind: 'AgentEntitlement',
  plural: 'agententitlements',
  singular: 'agententitlement',
} as const;

export const LABEL_INJECT = 'agentfence.io/inject';
export const LABEL_AGENT = 'agentfence.io/agent';
/**
 * Set to "true" by the webhook on every pod it injects with inbound gates (ports or not). NetworkPolicies that
 * still open the app ports of pods injected before gates existed select pods *without* it, so those ports are
 * never opened on a gated pod (lib/inbound/gates.ts).
 */
export const LABEL_INBOUND_GATED = 'agentfence.io/inbound-gated';
/** A ConfigMap a policy rule may name as its upstream caBundle carries this label set to "true" (opt-in). */
export const LABEL_CA_BUNDLE = 'agentfence.io/ca-bundle';
/** A Secret a policy rule's credentials may name carries this label set to "true" (opt-in): the controller watches only those. */
export const LABEL_CREDENTIAL = 'agentfence.io/credential';
export const LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by';
export const MANAGED_BY = 'agentfence';

/** Bounds shared by the CRD schema and the code that checks or produces the same values. */
export const TOKEN_TTL_MIN_SECONDS = 60;
export const TOKEN_TTL_MAX_SECONDS = 900;
export const TOKEN_TTL_DEFAULT_SECONDS = 300;

/** Written by the webhook on every pod it injects: what was injected (version, config hash). */
export const ANNOTATION_INJECTED = 'agentfence.io/injected';
/** Audience of the projected service-account token the sidecar exchanges for its identity. */
export const OPERATOR_AUDIENCE = 'agentfence.io/operator';
