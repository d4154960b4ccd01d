/**
 * A `services` target, resolved: the Service's DNS names and cluster IPs for the sidecar, and for the
 * NetworkPolicy its pod selector with *target* ports (a NetworkPolicy sees the pod port after the Service's DNAT).
 * Named target ports are resolved per selected pod; pods that resolve differently get peers of their own.
 */
import type { LabelSelector, PortRange, ServiceReference } from '../../lib/api/types.generated.ts';
import { canonicalJSON, compareStrings } from './canonical.ts';
import type { ClusterIndex, IndexedPod } from './cluster-index.ts';
import { compileSelector } from './selectors.ts';
import { LABEL_INJECT } from '../../lib/api/constants.ts';
import { injectedBeforeGates, isGatePort } from '../../lib/inbound/gates.ts';
import type { NetworkPolicyPeer, NetworkPolicyPort, ProblemReason, ServicePort } from './types.ts';

export interface ServiceTarget {
  hosts: string[];
  cidrs: string[];
  /** Names only DNS-aware enforcement can use (ExternalName services). */
  fqdns: string[];
  peers: { peer: NetworkPolicyPeer; ports: NetworkPolicyPort[] }[];
  /** Some selected pods are agent pods: their baseline refuses ingress, so the callee side must be opened. */
  agentBackends: boolean;
  /** The Service's pod selector (when it has one). */
  selector: Record<string, string>;
  /** Ports the sidecar must also allow: a headless Service is reached on its pods' target ports. */
  extraPorts: PortRange[];
  problems: { reason: ProblemReason; message: string }[];
}

function portMatches(rulePorts: readonly PortRange[], port: ServicePort): boolean {
  const protocol = port.protocol ?? 'TCP';
  return rulePorts.some(
    (r) => (r.protocol ?? 'TCP') === protocol && port.port >= r.port && port.port <= (r.endPort ?? r.port),
  );
}

/** The pod port a Service port lands on for this pod, or undefined when a named port is not declared. */
function targetPortFor(port: ServicePort, pod: IndexedPod): number | undefined {
  const target = port.targetPort ?? port.port;
  if (typeof target === 'number') return target;
  if (/^\d+$/.test(target)) return Number(target);
  const protocol = port.protocol ?? 'TCP';
  for (const c of [...(pod.pod.spec?.containers ?? []), ...(pod.pod.spec?.initContainers ?? [])]) {
    for (const p of c.ports ?? []) if (p.name === target && (p.protocol ?? 'TCP') === protocol) return p.containerPort;
  }
  return undefined;
}

function sortPorts(ports: NetworkPolicyPort[]): NetworkPolicyPort[] {
  const unique = new Map(ports.map((p) => [canonicalJSON(p), p]));
  return [...unique.values()].sort((a, b) => compareStrings(a.protocol, b.protocol) || (a.port ?? 0) - (b.port ?? 0));
}

export function compileServiceTarget(
  ref: ServiceReference,
  policyNamespace: string,
  rulePorts: readonly PortRange[],
  index: ClusterIndex,
  clusterDomain: string,
): ServiceTarget {
  const namespace = ref.namespace ?? policyNamespace;
  const id = `${namespace}/${ref.name}`;
  const out: ServiceTarget = {
    hosts: [],
    cidrs: [],
    fqdns: [],
    peers: [],
    agentBackends: false,
    selector: {},
    extraPorts: [],
    problems: [],
  };
  const svc = index.services.get(id);
  if (!svc) {
    out.problems.push({
      reason: 'ServiceNotFound',
      message: `Service ${id} does not exist; nothing is granted for it`,
    });
    return out;
  }
  const spec = svc.spec ?? {};
  if (spec.type === 'ExternalName') {
    if (spec.externalName) {
      out.hosts.push(spec.externalName);
      out.fqdns.push(spec.externalName);
    }
    out.problems.push({
      reason: 'ExternalNameService',
      message: `Service ${id} is an ExternalName (${spec.externalName ?? ''}): granted as a host name, enforced like hosts`,
    });
    return out;
  }
  out.hosts.push(`${ref.name}.${namespace}.svc`, `${ref.name}.${namespace}.svc.${clusterDomain}`);
  const headless = spec.clusterIP === 'None';
  if (!headless) {
    for (const ip of spec.clusterIPs ?? (spec.clusterIP ? [spec.clusterIP] : [])) {
      const parsed = ip.includes(':') ? `${ip}/128` : `${ip}/32`;
      if (ip !== '' && ip !== 'None') out.cidrs.push(parsed);
    }
  }
  const servicePorts = (spec.ports ?? []).filter((p) => portMatches(rulePorts, p));
  if (servicePorts.length === 0) {
    out.problems.push({
      reason: 'ServicePortNotFound',
      message: `Service ${id} has no port matching the rule's ports`,
    });
    return out;
  }
  const selector = spec.selector ?? {};
  if (Object.keys(selector).length === 0) {
    out.problems.push({
      reason: 'ServiceWithoutSelector',
      message: `Service ${id} has no selector: its endpoints cannot be expressed as a NetworkPolicy peer, so L3 stays closed for it`,
    });
    return out;
  }
  const backends = index.pods.get(namespace)?.select({ matchLabels: selector }) ?? [];
  out.selector = selector;
  out.agentBackends = backends.some((p) => p.labels[LABEL_INJECT] === 'true');
  // Group the backends by the target ports they resolve to.
  const groups = new Map<string, { ports: NetworkPolicyPort[]; pods: IndexedPod[] }>();
  const unresolved: string[] = [];
  const bypass = new Set<string>();
  for (const pod of backends) {
    const ports: NetworkPolicyPort[] = [];
    for (const sp of servicePorts) {
      const port = targetPortFor(sp, pod);
      if (port === undefined) unresolved.push(`${pod.name} (${String(sp.targetPort)})`);
      else if (
        pod.labels[LABEL_INJECT] === 'true' &&
        (sp.protocol ?? 'TCP') === 'TCP' &&
        !isGatePort(port) &&
        !injectedBeforeGates(pod.pod.spec)
      ) {
        // A gated agent pod is reached on its gates only: any other TCP number (its app port behind a gate, or a
        // port it never declared, which no gate serves) is never opened at L3.
        bypass.add(`${sp.port}→${port}`);
      } else ports.push({ protocol: sp.protocol ?? 'TCP', port });
    }
    if (ports.length === 0) continue;
    const sorted = sortPorts(ports);
    const key = canonicalJSON(sorted);
    const group = groups.get(key);
    if (group) group.pods.push(pod);
    else groups.set(key, { ports: sorted, pods: [pod] });
  }
  if (bypass.size > 0) {
    out.problems.push({
      reason: 'ServiceBypassesGate',
      message: `Service ${id} targets its agent pods' app port by number (${[...bypass].sort(compareStrings).join(', ')}), which only the sidecar's inbound gate may reach: name the container port and set the Service's targetPort to that name`,
    });
  }
  if (unresolved.length > 0) {
    out.problems.push({
      reason: 'NamedPortUnresolved',
      message: `Service ${id}: named target ports not declared by ${unresolved.sort(compareStrings).join(', ')}`,
    });
  }
  const namespaceSelector: LabelSelector | undefined =
    namespace === policyNamespace ? undefined : { matchLabels: { 'kubernetes.io/metadata.name': namespace } };
  const peer = (podSelector: LabelSelector): NetworkPolicyPeer => ({
    ...(namespaceSelector ? { namespaceSelector } : {}),
    podSelector,
  });
  if (backends.length === 0) {
    // No pods yet: numeric target ports are known anyway; named ones wait for pods.
    const numeric = servicePorts.filter(
      (p) => typeof (p.targetPort ?? p.port) === 'number' || /^\d+$/.test(String(p.targetPort)),
    );
    const ports = sortPorts(
      numeric.map((p) => ({ protocol: p.protocol ?? 'TCP', port: Number(p.targetPort ?? p.port) })),
    );
    if (numeric.length < servicePorts.length) {
      out.problems.push({
        reason: 'NamedPortUnresolved',
        message: `Service ${id} selects no pods yet: its named target ports wait for them`,
      });
    }
    if (ports.length > 0) out.peers.push({ peer: peer({ matchLabels: selector }), ports });
  } else if (groups.size <= 1) {
    for (const group of groups.values()) out.peers.push({ peer: peer({ matchLabels: selector }), ports: group.ports });
  } else {
    out.peers.push(...splitPeers([...groups.values()], selector, peer, id, out.problems));
  }
  if (headless) {
    // DNS of a headless Service answers with pod IPs: the sidecar must allow those, on the pods' ports.
    for (const pod of backends) {
      if (pod.ips.length === 0) {
        out.problems.push({
          reason: 'PodWithoutIP',
          message: `pod ${namespace}/${pod.name} behind headless Service ${id} has no IP yet`,
        });
      }
      out.cidrs.push(...pod.ips);
    }
    for (const group of groups.values())
      out.extraPorts.push(...group.ports.map((p) => ({ port: p.port ?? 0, protocol: p.protocol })));
  }
  return out;
}

/**
 * Pods that resolve a named port differently (two versions of a Deployment, say) each get a peer narrowed by
 * the labels all pods of their group share. When those labels also match another group's pod, the narrowing
 * would be wrong: fall back to the Service selector (a wider grant) and say so.
 */
function commonLabels(pods: readonly IndexedPod[]): Record<string, string> {
  const [first, ...rest] = pods;
  const common: Record<string, string> = {};
  for (const [k, v] of Object.entries(first?.labels ?? {})) if (rest.every((p) => p.labels[k] === v)) common[k] = v;
  return common;
}

function splitPeers(
  groups: { ports: NetworkPolicyPort[]; pods: IndexedPod[] }[],
  selector: Record<string, string>,
  peer: (s: LabelSelector) => NetworkPolicyPeer,
  id: string,
  problems: ServiceTarget['problems'],
): ServiceTarget['peers'] {
  const result: ServiceTarget['peers'] = [];
  // Only labels that tell groups apart narrow a peer; labels every backend carries add nothing.
  const sharedByAll = commonLabels(groups.flatMap((g) => g.pods));
  for (const group of groups) {
    const distinguishing = Object.entries(commonLabels(group.pods)).filter(([k, v]) => sharedByAll[k] !== v);
    const narrowed = { ...Object.fromEntries(distinguishing), ...selector };
    const matches = compileSelector({ matchLabels: narrowed });
    const others = groups.filter((g) => g !== group).flatMap((g) => g.pods);
    if (others.some((p) => matches(p.labels))) {
      problems.push({
        reason: 'NamedPortAmbiguous',
        message: `Service ${id}: pods resolve named target ports differently and no labels tell them apart; every port is opened to every pod`,
      });
      result.push({ peer: peer({ matchLabels: selector }), ports: group.ports });
    } else {
      result.push({
        peer: peer({
          matchLabels: Object.fromEntries(Object.entries(narrowed).sort(([a], [b]) => compareStrings(a, b))),
        }),
        ports: group.ports,
      });
    }
  }
  return result.sort((a, b) => compareStrings(canonicalJSON(a), canonicalJSON(b)));
}
