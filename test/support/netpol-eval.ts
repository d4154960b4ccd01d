/**
 * A second, independent implementation of Kubernetes NetworkPolicy semantics, written from the Kubernetes
 * documentation (concepts/services-networking/network-policies and the networking.k8s.io/v1 API reference), to
 * check what the compiler writes. It shares no code with operator/compiler (not even the label selector): a bug
 * there cannot hide itself here.
 *
 * The rules it implements:
 * - A pod is isolated for ingress (egress) when at least one NetworkPolicy in its namespace selects it and has
 *   Ingress (Egress) in its policyTypes. policyTypes defaults to ["Ingress"], plus "Egress" when the policy has
 *   an egress section.
 * - Policies are additive: a connection is allowed at one end when the end is not isolated in that direction, or
 *   when any rule of any policy that selects it allows it. A connection between pods needs both ends to allow it.
 * - A rule matches when one of its peers matches (an empty or absent `from`/`to` matches everything) and one of
 *   its ports matches (an empty or absent `ports` matches every port).
 * - A peer with only podSelector selects pods of the policy's namespace; with only namespaceSelector, every pod of
 *   the selected namespaces; with both (one element), pods matching podSelector inside the selected namespaces;
 *   an ipBlock matches addresses inside `cidr` and outside every `except`.
 * - A port is a number or a container port name (resolved on the destination pod), `endPort` makes a range,
 *   protocol defaults to TCP.
 * - A label selector: every matchLabels pair and every matchExpressions requirement (In, NotIn, Exists,
 *   DoesNotExist) must hold; an empty selector matches everything.
 */

export interface EvalSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: string; values?: string[] }[];
}

export interface EvalPeer {
  podSelector?: EvalSelector;
  namespaceSelector?: EvalSelector;
  ipBlock?: { cidr: string; except?: string[] };
}

export interface EvalPort {
  port?: number | string;
  endPort?: number;
  protocol?: string;
}

export interface EvalPolicy {
  metadata: { namespace?: string; name?: string };
  spec: {
    podSelector: EvalSelector;
    policyTypes?: string[];
    ingress?: { from?: EvalPeer[]; ports?: EvalPort[] }[];
    egress?: { to?: EvalPeer[]; ports?: EvalPort[] }[];
  };
}

export interface EvalPod {
  namespace: string;
  name: string;
  labels: Record<string, string>;
  ip?: string;
  /** Container ports, for named ports. */
  ports?: { name?: string; containerPort: number; protocol?: string }[];
}

export interface EvalWorld {
  namespaces: Record<string, Record<string, string>>; // name → labels (kubernetes.io/metadata.name is added)
  pods: EvalPod[];
  policies: EvalPolicy[];
}

/** A destination: a pod, or an address outside the cluster. */
export type EvalTarget = { pod: EvalPod } | { ip: string };

export function selectorMatches(selector: EvalSelector | undefined, labels: Record<string, string>): boolean {
  if (!selector) return true;
  for (const [key, value] of Object.entries(selector.matchLabels ?? {})) if (labels[key] !== value) return false;
  for (const req of selector.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, req.key);
    const values = req.values ?? [];
    switch (req.operator) {
      case 'In':
        if (!has || !values.includes(labels[req.key] ?? '')) return false;
        break;
      case 'NotIn':
        if (has && values.includes(labels[req.key] ?? '')) return false;
        break;
      case 'Exists':
        if (!has) return false;
        break;
      case 'DoesNotExist':
        if (has) return false;
        break;
      default:
        throw new Error(`unknown selector operator ${req.operator}`);
    }
  }
  return true;
}

/** IPv4 only, which is what the fixtures use; anything else is an error, not a silent mismatch. */
function ipv4(address: string): number {
  const parts = address.split('.');
  if (parts.length !== 4) throw new Error(`netpol-eval handles IPv4 only, got ${address}`);
  return parts.reduce((acc, p) => {
    const n = Number(p);
    if (!Number.isInteger(n) || n < 0 || n > 255) throw new Error(`bad IPv4 address ${address}`);
    return acc * 256 + n;
  }, 0);
}

export function cidrContains(cidr: string, address: string): boolean {
  if (cidr.includes(':') || address.includes(':')) return false; // IPv6 ranges never contain IPv4 addresses
  const [base = '', bits = '32'] = cidr.split('/');
  const prefix = Number(bits);
  const size = 2 ** (32 - prefix);
  const start = Math.floor(ipv4(base) / size) * size;
  const a = ipv4(address);
  return a >= start && a < start + size;
}

function namespaceLabels(world: EvalWorld, ns: string): Record<string, string> {
  return { ...world.namespaces[ns], 'kubernetes.io/metadata.name': ns };
}

function peerMatches(world: EvalWorld, policyNamespace: string, peer: EvalPeer, target: EvalTarget): boolean {
  if (peer.ipBlock) {
    const ip = 'ip' in target ? target.ip : target.pod.ip;
    if (!ip) return false;
    return cidrContains(peer.ipBlock.cidr, ip) && !(peer.ipBlock.except ?? []).some((e) => cidrContains(e, ip));
  }
  if (!('pod' in target)) return false; // pod and namespace selectors select pods only
  const pod = target.pod;
  if (peer.namespaceSelector) {
    if (!selectorMatches(peer.namespaceSelector, namespaceLabels(world, pod.namespace))) return false;
  } else if (pod.namespace !== policyNamespace) return false;
  return peer.podSelector ? selectorMatches(peer.podSelector, pod.labels) : true;
}

function portMatches(rulePort: EvalPort, port: number, protocol: string, destination: EvalPod | undefined): boolean {
  if ((rulePort.protocol ?? 'TCP') !== protocol) return false;
  if (rulePort.port === undefined) return true;
  if (typeof rulePort.port === 'string') {
    const named = destination?.ports?.find((p) => p.name === rulePort.port && (p.protocol ?? 'TCP') === protocol);
    return named?.containerPort === port;
  }
  const end = rulePort.endPort ?? rulePort.port;
  return port >= rulePort.port && port <= end;
}

function types(policy: EvalPolicy): string[] {
  return policy.spec.policyTypes ?? ['Ingress', ...(policy.spec.egress ? ['Egress'] : [])];
}

function selecting(world: EvalWorld, pod: EvalPod, type: 'Ingress' | 'Egress'): EvalPolicy[] {
  return world.policies.filter(
    (p) =>
      (p.metadata.namespace ?? 'default') === pod.namespace &&
      types(p).includes(type) &&
      selectorMatches(p.spec.podSelector, pod.labels),
  );
}

/** Whether the source pod may open a connection to the target on port/protocol. */
export function allowed(world: EvalWorld, from: EvalPod, to: EvalTarget, port: number, protocol = 'TCP'): boolean {
  const destinationPod = 'pod' in to ? to.pod : undefined;
  const egressPolicies = selecting(world, from, 'Egress');
  const egressOk =
    egressPolicies.length === 0 ||
    egressPolicies.some((p) =>
      (p.spec.egress ?? []).some(
        (rule) =>
          (!rule.to || rule.to.length === 0 || rule.to.some((peer) => peerMatches(world, from.namespace, peer, to))) &&
          (!rule.ports ||
            rule.ports.length === 0 ||
            rule.ports.some((rp) => portMatches(rp, port, protocol, destinationPod))),
      ),
    );
  if (!egressOk || !destinationPod) return egressOk;
  const ingressPolicies = selecting(world, destinationPod, 'Ingress');
  return (
    ingressPolicies.length === 0 ||
    ingressPolicies.some((p) =>
      (p.spec.ingress ?? []).some(
        (rule) =>
          (!rule.from ||
            rule.from.length === 0 ||
            rule.from.some((peer) => peerMatches(world, destinationPod.namespace, peer, { pod: from }))) &&
          (!rule.ports ||
            rule.ports.length === 0 ||
            rule.ports.some((rp) => portMatches(rp, port, protocol, destinationPod))),
      ),
    )
  );
}
