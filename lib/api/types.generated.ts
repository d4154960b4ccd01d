// Generated from lib/api/schema.ts by `npm run gen:crds`. Do not edit.
import type { ObjectMeta } from './meta.ts';

/** What a set of agents may reach. Allow-only: several policies selecting a pod are unioned. */
export interface AgentPolicySpec {
  /** Selects the agent pods in this namespace that this policy grants to. */
  agentSelector: LabelSelector;
  /** Enforce: the sidecar denies what no rule allows. Audit: the sidecar forwards and logs "would deny". NetworkPolicies are enforced in both modes. */
  mode?: 'Enforce' | 'Audit';
  /** Lifetime of the agents' identity tokens, 1m to 15m (default 5m). The shortest of all matching policies wins. */
  tokenTTL?: string;
  /** When set, the grants of this policy end at this moment (RFC 3339). */
  expiresAt?: string;
  /** Outbound grants. */
  egress?: EgressRule[];
  /** Inbound grants (the baseline refuses all ingress to agent pods). A grant from another namespace needs one of these here: both sides consent. */
  ingress?: IngressRule[];
}

/** A Kubernetes label selector (metav1.LabelSelector). */
export interface LabelSelector {
  /** Labels that must all be present with these values. */
  matchLabels?: Record<string, string>;
  /** Requirements that must all hold. */
  matchExpressions?: LabelSelectorRequirement[];
}

export interface LabelSelectorRequirement {
  /** The label key the selector applies to. */
  key: string;
  /** How key relates to values. */
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';
  /** Values for In and NotIn; must be empty for Exists and DoesNotExist. */
  values?: string[];
}

export interface EgressRule {
  /** Rule name, unique within the list; appears in status, audit lines and metrics. */
  name: string;
  /** Where the agent may go: exactly one of hosts, services, agents or cidrs. */
  to: EgressTarget;
  /** Destination ports (the Service port for services). */
  ports: PortRange[];
  /** HTTP profile: the sidecar also checks method and path, for plain HTTP and for HTTPS (CONNECT), which it then inspects with the pod CA (see tls). */
  http?: HTTPRule[];
  /** Model Context Protocol profile: only these tools may be called (JSON-RPC tools/call over HTTP). */
  mcp?: MCPProfile;
  /** The audience of the agent token the sidecar presents to this destination (its `aud` claim). */
  audience?: string;
  /** HTTPS (CONNECT) to this destination. Inspect: the sidecar terminates TLS with the pod CA and judges every request inside (the default wherever an http or mcp profile needs it; set on a rule without a profile it audits each request). Passthrough: a blind tunnel, for clients that pin certificates; not allowed with an http or mcp profile. */
  tls?: 'Inspect' | 'Passthrough';
  /** Upstream trust for inspected HTTPS to this destination: the CA certificates (PEM) in a ConfigMap of the policy’s namespace replace the public roots. Verification is never off. */
  caBundle?: CABundleRef;
  /** A credential the sidecar adds to every request this rule allows (plain HTTP, or HTTPS, which it then inspects), replacing whatever the agent sent in that header. The agent never holds the value. The Secret must be in the policy’s namespace and carry the label agentfence.io/credential: "true". */
  credentials?: Credentials;
}

/** Where the agent may go: exactly one of hosts, services, agents or cidrs. */
export interface EgressTarget {
  /** DNS names. Enforced by the sidecar; NetworkPolicy cannot express them (see the Degraded condition). */
  hosts?: string[];
  /** Kubernetes Services, resolved to their pods and target ports for the NetworkPolicy. */
  services?: ServiceReference[];
  /** Other agent pods (pods that carry agentfence.io/inject: "true"). */
  agents?: AgentPeer;
  /** IP ranges. Link-local and metadata addresses are always excluded. */
  cidrs?: string[];
}

export interface ServiceReference {
  /** Service name. */
  name: string;
  /** Service namespace; defaults to the policy’s namespace. */
  namespace?: string;
}

/** Other agent pods (pods that carry agentfence.io/inject: "true"). */
export interface AgentPeer {
  /** Selects the agent pods, by their labels (usually agentfence.io/agent). */
  agentSelector: LabelSelector;
  /** Selects the namespaces to look in. Absent: the policy’s own namespace. Empty: every namespace. */
  namespaceSelector?: LabelSelector;
}

export interface PortRange {
  /** The port, or the first port of a range. */
  port: number;
  /** The last port of a range (inclusive). */
  endPort?: number;
  /** Transport protocol. */
  protocol?: 'TCP' | 'UDP' | 'SCTP';
}

/** One allowed request shape. Absent methods: any method. Absent paths: any path. */
export interface HTTPRule {
  /** Allowed methods. */
  methods?: ('GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE' | 'OPTIONS' | 'CONNECT' | 'TRACE')[];
  /** Allowed paths. */
  paths?: HTTPPathMatch[];
}

export interface HTTPPathMatch {
  /** How value is matched. */
  type?: 'Exact' | 'PathPrefix';
  /** The path, starting with '/'. Matched after normalization (dot segments, '//', %2F). */
  value: string;
}

/** Model Context Protocol profile: only these tools may be called (JSON-RPC tools/call over HTTP). */
export interface MCPProfile {
  /** The MCP endpoint path; default '/mcp'. */
  path?: string;
  /** Tools that may be called. */
  tools: string[];
}

/** Upstream trust for inspected HTTPS to this destination: the CA certificates (PEM) in a ConfigMap of the policy’s namespace replace the public roots. Verification is never off. */
export interface CABundleRef {
  /** The ConfigMap name. */
  configMap: string;
  /** The key holding the PEM bundle; default 'ca.crt'. */
  key?: string;
}

/** A credential the sidecar adds to every request this rule allows (plain HTTP, or HTTPS, which it then inspects), replacing whatever the agent sent in that header. The agent never holds the value. The Secret must be in the policy’s namespace and carry the label agentfence.io/credential: "true". */
export interface Credentials {
  /** The Secret and key holding the value. */
  secretRef: CredentialSecretRef;
  /** The request header that carries the credential, like Authorization or x-api-key. */
  header: string;
  /** How the header value is written; '{value}' is replaced by the credential. Default '{value}'. */
  format?: string;
}

/** The Secret and key holding the value. */
export interface CredentialSecretRef {
  /** The Secret name (in the policy’s namespace). */
  name: string;
  /** The key in the Secret’s data. */
  key: string;
}

/** Who may connect to the selected agents. For agents of other namespaces this is also consent: their egress grants to agents (or to Services of agents) here open nothing until a rule here admits their namespace and agents (from.agents). */
export interface IngressRule {
  /** Rule name, unique within the list; appears in status, audit lines and metrics. */
  name: string;
  /** Who may connect: exactly one of agents, users, pods or cidrs. Agents and users prove who they are with a token the sidecar verifies; pods and cidrs are admitted by source address. */
  from: IngressSource;
  /** Ports on the agent pod (the app’s container ports). Callers reach them through the sidecar’s inbound gate. */
  ports: PortRange[];
  /** HTTP profile at the inbound gate: the methods and paths callers of this rule may use. */
  http?: HTTPRule[];
  /** Largest request body accepted (bytes); larger ones are refused with 413 before the app sees them. */
  maxBodyBytes?: number;
  /** At most this many requests per caller identity in each window; beyond it 429 with Retry-After. */
  rateLimit?: RateLimit;
  /** Headers your app reads as an identity (such as x-user-id): stripped from every request into the pod, whatever the caller, before it reaches the app. agentfence-caller, agentfence-user, agentfence-user-issuer and agentfence-identity always are. */
  identityHeaders?: string[];
}

/** Who may connect: exactly one of agents, users, pods or cidrs. Agents and users prove who they are with a token the sidecar verifies; pods and cidrs are admitted by source address. */
export interface IngressSource {
  /** Other agent pods (pods that carry agentfence.io/inject: "true"). */
  agents?: AgentPeer;
  /** People and client apps, by an OIDC bearer token (Authorization: Bearer) verified against the issuer’s JWKS. */
  users?: UserSource;
  /** Ordinary (non-agent) pods, such as a web front end. */
  pods?: PodPeer;
  /** Source IP ranges. */
  cidrs?: string[];
}

/** People and client apps, by an OIDC bearer token (Authorization: Bearer) verified against the issuer’s JWKS. */
export interface UserSource {
  /** The OIDC issuer URL (the token's iss), https. */
  issuer: string;
  /** Where the issuer publishes its keys; default <issuer>/.well-known/jwks.json. */
  jwksUri?: string;
  /** The token must name at least one of these audiences. */
  audiences: string[];
  /** Claims the token must carry (all of them). */
  claims?: RequiredClaim[];
}

/** A claim the user token must carry: a string claim equal to value, or an array claim (such as groups) containing it. */
export interface RequiredClaim {
  /** The claim name, such as groups or email_verified. */
  name: string;
  /** The value the claim must equal or, for an array claim, contain. */
  value: string;
}

/** Ordinary (non-agent) pods, such as a web front end. */
export interface PodPeer {
  /** Selects the pods. Empty: every pod. */
  podSelector: LabelSelector;
  /** Selects namespaces. Absent: the policy’s own namespace. Empty: every namespace. */
  namespaceSelector?: LabelSelector;
}

/** At most this many requests per caller identity in each window; beyond it 429 with Retry-After. */
export interface RateLimit {
  /** Requests allowed per window. */
  requests: number;
  /** The window: whole seconds, minutes or hours, like '1s', '1m', '1h'. */
  per: string;
}

export interface AgentPolicyStatus {
  /** The spec generation last reconciled. */
  observedGeneration?: number;
  /** Standard conditions. */
  conditions?: Condition[];
  agents?: AgentCounts;
  /** Objects written for this policy. */
  networkPolicies?: ManagedObjectRef[];
}

export interface Condition {
  /** Condition type: Accepted, NetworkPolicyProgrammed, AgentsInSync, Degraded, Ready. */
  type: string;
  /** Condition status. */
  status: 'True' | 'False' | 'Unknown';
  /** CamelCase reason, stable and documented. */
  reason: string;
  /** Human-readable detail. */
  message?: string;
  /** The generation this condition describes. */
  observedGeneration?: number;
  /** When status last changed. */
  lastTransitionTime: string;
}

export interface AgentCounts {
  /** Agent pods this policy selects. */
  selected?: number;
  /** Of those, sidecars enforcing the current revision. */
  inSync?: number;
}

export interface ManagedObjectRef {
  /** Kind. */
  kind: string;
  /** Name. */
  name: string;
}

/** The compiled entitlements of one agent pod. Written by the operator; do not edit. */
export interface AgentEntitlementSpec {
  /** The pod. */
  podName: string;
  /** The pod uid (a recreated pod with the same name gets a new entitlement). */
  podUID: string;
  /** The agent name (label agentfence.io/agent). */
  agent: string;
  /** The pod’s service account. */
  serviceAccountName?: string;
  /** The identity the pod’s tokens carry as sub. */
  spiffeID: string;
  /** sha256 of the compiled rules; the sidecar reports the revision it enforces. */
  revision: string;
  /** Identity token lifetime (the shortest of the matching policies). */
  tokenTTL?: string;
  /** The next moment a grant ends. */
  expiresAt?: string;
  /** AgentPolicies that select this pod. */
  policies?: string[];
  /** Outbound grants, sorted. */
  egress?: EntitlementEgressRule[];
  /** Inbound grants checked by the sidecar’s gate, sorted. */
  ingress?: EntitlementIngressRule[];
}

/** One compiled grant. Exactly what the sidecar checks: hosts and/or cidrs, ports, and the L7 profile. */
export interface EntitlementEgressRule {
  /** The AgentPolicy this grant comes from. */
  policy: string;
  /** The rule name in that policy. */
  rule: string;
  /** The mode of that policy. */
  mode: 'Enforce' | 'Audit';
  /** Host patterns (from hosts, and the DNS names of services). */
  hosts?: string[];
  /** Addresses (from cidrs, service cluster IPs and agent pod IPs). */
  cidrs?: string[];
  /** Ports. */
  ports: PortRange[];
  /** HTTP profile: the sidecar also checks method and path, for plain HTTP and for HTTPS (CONNECT), which it then inspects with the pod CA (see tls). */
  http?: HTTPRule[];
  /** Model Context Protocol profile: only these tools may be called (JSON-RPC tools/call over HTTP). */
  mcp?: MCPProfile;
  /** The audience of the agent token the sidecar presents to this destination (its `aud` claim). */
  audience?: string;
  /** Agent addresses this rule reaches, and the identity each expects. */
  peers?: AgentPeerAddress[];
  /** When this grant ends. */
  expiresAt?: string;
  /** HTTPS (CONNECT) to this destination. Inspect: the sidecar terminates TLS with the pod CA and judges every request inside (the default wherever an http or mcp profile needs it; set on a rule without a profile it audits each request). Passthrough: a blind tunnel, for clients that pin certificates; not allowed with an http or mcp profile. */
  tls?: 'Inspect' | 'Passthrough';
  /** PEM CA certificates trusted for this destination’s upstream TLS instead of the public roots (resolved from the policy’s ConfigMap; empty when it could not be read: nothing verifies). */
  caBundle?: string;
  /** Where the credential for this grant comes from. Never the value: that travels only in the authenticated entitlement stream, to this pod. */
  credentials?: EntitlementCredentials;
}

/** An address of agent pods (a pod IP, or the cluster IP of a Service backed by agents): requests to it carry a token for spiffeID. */
export interface AgentPeerAddress {
  /** The address (/32 or /128). */
  cidr: string;
  /** The callee agent’s identity: the audience of the token presented to it. */
  spiffeID: string;
  /** For a pod address: the callee sidecar’s inbound port in front of each app port. */
  gates?: GatePort[];
}

export interface GatePort {
  /** The app’s port. */
  port: number;
  /** The sidecar port in front of it. */
  gate: number;
}

/** Where the credential for this grant comes from. Never the value: that travels only in the authenticated entitlement stream, to this pod. */
export interface EntitlementCredentials {
  /** The Secret (in this namespace). */
  secret: string;
  /** The key in it. */
  key: string;
  /** The header the sidecar sets. */
  header: string;
  /** The header value, with '{value}' standing for the credential. */
  format: string;
  /** Which version of the Secret the grant was compiled against (a hash of its uid and resourceVersion); '' when it could not be read (requests are refused: credential_unavailable). */
  version: string;
}

/** One compiled inbound grant, checked by the sidecar’s gate: who (verified agents, verified users, or source addresses), on which app ports, with which profile and limits. */
export interface EntitlementIngressRule {
  /** The AgentPolicy this grant comes from. */
  policy: string;
  /** The rule name in that policy. */
  rule: string;
  /** The mode of that policy. */
  mode: 'Enforce' | 'Audit';
  /** App ports. */
  ports: PortRange[];
  /** Caller agents: the SPIFFE ID and the uids of the live pods that may present it. */
  agents?: AllowedCaller[];
  /** People and client apps, by an OIDC bearer token (Authorization: Bearer) verified against the issuer’s JWKS. */
  users?: UserSource;
  /** Source addresses admitted without a token (from pods and cidrs). */
  cidrs?: string[];
  /** HTTP profile at the inbound gate: the methods and paths callers of this rule may use. */
  http?: HTTPRule[];
  /** Largest request body accepted (bytes); larger ones are refused with 413 before the app sees them. */
  maxBodyBytes?: number;
  /** At most this many requests per caller identity in each window; beyond it 429 with Retry-After. */
  rateLimit?: RateLimit;
  /** Headers your app reads as an identity (such as x-user-id): stripped from every request into the pod, whatever the caller, before it reaches the app. agentfence-caller, agentfence-user, agentfence-user-issuer and agentfence-identity always are. */
  identityHeaders?: string[];
  /** When this grant ends. */
  expiresAt?: string;
}

export interface AllowedCaller {
  /** The caller’s identity. */
  spiffeID: string;
  /** Live pods of that agent (a deleted pod’s token is refused). */
  pods: string[];
}

export interface AgentEntitlementStatus {
  /** The spec generation last reported on. */
  observedGeneration?: number;
  /** The revision the sidecar last reported enforcing. */
  enforcedRevision?: string;
  /** The sidecar enforces spec.revision. */
  inSync?: boolean;
  /** Standard conditions. */
  conditions?: Condition[];
}

export interface AgentPolicy {
  apiVersion: 'agentfence.io/v1alpha1';
  kind: 'AgentPolicy';
  metadata: ObjectMeta;
  spec: AgentPolicySpec;
  status?: AgentPolicyStatus;
}

export interface AgentEntitlement {
  apiVersion: 'agentfence.io/v1alpha1';
  kind: 'AgentEntitlement';
  metadata: ObjectMeta;
  spec: AgentEntitlementSpec;
  status?: AgentEntitlementStatus;
}
