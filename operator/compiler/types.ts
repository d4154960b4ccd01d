/**
 * The compiler's input and output shapes: plain JSON objects as the API server serves them (timestamps are
 * strings), reduced to the fields the compiler reads or writes.
 */
import type { CredentialSecretInput } from './credentials.ts';
import type { ObjectMeta } from '../../lib/api/meta.ts';
import type { Container, ContainerPort as CorePort, Pod, PodSpec, PodStatus } from '../../lib/kube/pod.ts';
import type { AgentEntitlement, AgentPolicy, LabelSelector } from '../../lib/api/types.generated.ts';

/** A container port as the compiler reads it: a number is required to resolve a Service's named targetPort. */
export type ContainerPort = Pick<CorePort, 'name' | 'protocol'> & Required<Pick<CorePort, 'containerPort'>>;
type ContainerInput = Pick<Container, 'name'> & { ports?: ContainerPort[] };

/**
 * The compiler's narrow view of the one Pod type (lib/kube/pod.ts): identity, labels, service account, ports
 * and IPs. The spec may be absent in a manifest given to `render`.
 */
export interface PodInput extends Pick<Pod, 'apiVersion' | 'kind' | 'metadata'> {
  spec?: Pick<PodSpec, 'serviceAccountName'> & { containers?: ContainerInput[]; initContainers?: ContainerInput[] };
  status?: Pick<PodStatus, 'podIP' | 'podIPs'>;
}

export interface ServicePort {
  name?: string;
  port: number;
  targetPort?: number | string;
  protocol?: 'TCP' | 'UDP' | 'SCTP';
}

export interface Service {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  spec?: {
    type?: 'ClusterIP' | 'NodePort' | 'LoadBalancer' | 'ExternalName';
    selector?: Record<string, string>;
    clusterIP?: string;
    clusterIPs?: string[];
    externalName?: string;
    ports?: ServicePort[];
  };
}

export interface Namespace {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
}

export interface NetworkPolicyPort {
  protocol: 'TCP' | 'UDP' | 'SCTP';
  port?: number;
  endPort?: number;
}

export interface NetworkPolicyPeer {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
  ipBlock?: { cidr: string; except?: string[] };
}

export interface NetworkPolicyEgressRule {
  to?: NetworkPolicyPeer[];
  ports?: NetworkPolicyPort[];
}

export interface NetworkPolicyIngressRule {
  from?: NetworkPolicyPeer[];
  ports?: NetworkPolicyPort[];
}

export interface NetworkPolicy {
  apiVersion: 'networking.k8s.io/v1';
  kind: 'NetworkPolicy';
  metadata: ObjectMeta & { name: string; namespace: string };
  spec: {
    podSelector: LabelSelector;
    policyTypes: ('Ingress' | 'Egress')[];
    ingress?: NetworkPolicyIngressRule[];
    egress?: NetworkPolicyEgressRule[];
  };
}

export interface CiliumPortRule {
  ports: { port: string; endPort?: number; protocol: 'TCP' | 'UDP' | 'SCTP' | 'ANY' }[];
  rules?: { dns: { matchPattern?: string; matchName?: string }[] };
}

export interface CiliumEgressRule {
  toEndpoints?: { matchLabels: Record<string, string> }[];
  toCIDR?: string[];
  toFQDNs?: ({ matchName: string } | { matchPattern: string })[];
  toPorts?: CiliumPortRule[];
}

export interface CiliumNetworkPolicy {
  apiVersion: 'cilium.io/v2';
  kind: 'CiliumNetworkPolicy';
  metadata: ObjectMeta & { name: string; namespace: string };
  spec: { endpointSelector: LabelSelector; egress: CiliumEgressRule[] };
}

/** Where agent pods resolve names: cluster DNS pods by label, or fixed addresses (NodeLocal DNSCache). */
export type DnsTarget =
  | { kind: 'pods'; namespace: string; podLabels: Record<string, string>; port?: number }
  | { kind: 'addresses'; addresses: string[]; port?: number };

export type NetworkProvider = 'kubernetes' | 'cilium';

export interface OperatorEndpoint {
  namespace: string;
  podLabels: Record<string, string>;
  port: number;
}

export interface CompileOptions {
  /** The moment grants are judged against (expired policies contribute nothing). */
  now: Date;
  trustDomain?: string;
  /** The cluster's DNS domain for Service host names (default cluster.local). */
  clusterDomain?: string;
  dns?: DnsTarget;
  operator?: OperatorEndpoint;
  networkProvider?: NetworkProvider;
}

/** A ConfigMap holding upstream CA certificates for a rule's caBundle (labelled agentfence.io/ca-bundle=true). */
export interface ConfigMapInput {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  data?: Record<string, string>;
}

export interface CompileInput {
  policies: readonly AgentPolicy[];
  pods: readonly PodInput[];
  namespaces: readonly Namespace[];
  services: readonly Service[];
  /** CA-bundle ConfigMaps (only those labelled agentfence.io/ca-bundle=true are read). */
  configMaps?: readonly ConfigMapInput[];
  /** Credential Secrets (only those labelled agentfence.io/credential=true are read): metadata and keys, no values. */
  credentialSecrets?: readonly CredentialSecretInput[];
  /** `namespace/name` of Secrets that policies name and that exist without the agentfence.io/credential label. */
  unlabelledCredentialSecrets?: readonly string[];
}

/** Stable, documented reasons; the reconciler turns them into status conditions. */
export type ProblemReason =
  | 'FQDNNotEnforcedAtL3'
  | 'Expired'
  | 'NoAgentsSelected'
  | 'ServiceNotFound'
  | 'ServiceWithoutSelector'
  | 'ExternalNameService'
  | 'ServicePortNotFound'
  | 'NamedPortUnresolved'
  | 'NamedPortAmbiguous'
  | 'PodWithoutIP'
  | 'InvalidCIDR'
  | 'TooManyAddresses'
  | 'CalleeHasNotConsented'
  | 'CABundleNotFound'
  | 'CABundleInvalid'
  | 'ServiceSpansAgents'
  | 'ServiceBypassesGate'
  | 'CredentialUnavailable';

export interface Problem {
  reason: ProblemReason;
  /** The rule the problem is about, when it is about one. */
  rule?: string;
  message: string;
}

export interface PolicyReport {
  namespace: string;
  name: string;
  /** Agent pods this policy selects (0 when expired). */
  selectedPods: number;
  /** Names of the NetworkPolicies and CiliumNetworkPolicies written for this policy, in all namespaces. */
  networkPolicies: { kind: 'NetworkPolicy' | 'CiliumNetworkPolicy'; namespace: string; name: string }[];
  problems: Problem[];
  /**
   * Problems about objects in other namespaces (a callee pod without an IP, a namespace that has not consented
   * and that the policy did not name). Status is readable by whoever may read the policy, who may not see those
   * namespaces: the controller logs these and counts them in metrics, never writes them into status.
   */
  foreign: Problem[];
}

export interface SkippedPod {
  namespace: string;
  name: string;
  reason: 'Terminating';
}

/**
 * The compiled objects. They share substructure (one policy's grants appear in every pod it selects; http and
 * mcp profiles are the input policy's objects), which keeps 10,000-pod compiles fast: treat them as read-only
 * and structuredClone before mutating.
 */
export interface CompileOutput {
  entitlements: AgentEntitlement[];
  networkPolicies: NetworkPolicy[];
  ciliumNetworkPolicies: CiliumNetworkPolicy[];
  reports: PolicyReport[];
  skippedPods: SkippedPod[];
  /** The next moment a grant expires (RFC 3339): the reconciler requeues exactly then. */
  nextExpiry?: string;
}
