/**
 * The inbound side of a compile: who may call an agent pod, as its sidecar's gate checks it (entitlement ingress
 * rules: verified agents with their live pods, verified users, source addresses), and the ports the
 * NetworkPolicies open for it — the gates in front of the app ports (lib/inbound/gates.ts), never the app
 * ports themselves. Pods injected before gates existed (decided per pod from their sidecar) still have their app
 * ports opened, by NetworkPolicies that select only them (preGateSelector).
 */
import type {
  AgentPeerAddress,
  AllowedCaller,
  EntitlementIngressRule,
  IngressRule,
  LabelSelector,
  PortRange,
} from '../../lib/api/types.generated.ts';
import { LABEL_AGENT, LABEL_INBOUND_GATED } from '../../lib/api/constants.ts';
import { gatesOfPod, injectedBeforeGates, isGatePort, type Gate } from '../../lib/inbound/gates.ts';
import { compareStrings, sortedUnique } from './canonical.ts';
import type { ClusterIndex, IndexedPod } from './cluster-index.ts';
import { normalizePorts, toNetworkPolicyPorts } from './ports.ts';
import { compileSelector } from './selectors.ts';
import { parseCidr } from '../../lib/ip.ts';
import type { NetworkPolicyPort } from './types.ts';

/** The agent name a pod's tokens carry (label, else service account). */
export function agentNameOf(pod: IndexedPod): string {
  return pod.labels[LABEL_AGENT] ?? pod.pod.spec?.serviceAccountName ?? 'default';
}

export function spiffeOf(pod: IndexedPod, trustDomain: string): string {
  return `spiffe://${trustDomain}/ns/${pod.namespace}/agent/${agentNameOf(pod)}`;
}

export function podGates(pod: IndexedPod): Gate[] {
  return gatesOfPod(pod.pod.spec);
}

const inRange = (port: number, r: PortRange): boolean =>
  (r.protocol ?? 'TCP') === 'TCP' && port >= r.port && port <= (r.endPort ?? r.port);

/**
 * Pods injected before gates existed (a sidecar without `--inbound`), judged per pod from what was injected —
 * never from "has no gates": a pod that declares no TCP port is gated and has nothing to open.
 */
export function preGatePods(pods: readonly IndexedPod[]): IndexedPod[] {
  return pods.filter((p) => injectedBeforeGates(p.pod.spec));
}

/**
 * Selects, among the pods `selector` selects, only those the webhook did not mark as gated: the pods whose app
 * ports a NetworkPolicy may still open (pre-gate pods). Gated pods carry LABEL_INBOUND_GATED and are never selected.
 */
export function preGateSelector(selector: LabelSelector): LabelSelector {
  return {
    ...selector,
    matchExpressions: [...(selector.matchExpressions ?? []), { key: LABEL_INBOUND_GATED, operator: 'DoesNotExist' }],
  };
}

const sortNpPorts = (ports: Iterable<NetworkPolicyPort>): NetworkPolicyPort[] =>
  [...ports].sort((a, b) => compareStrings(a.protocol, b.protocol) || (a.port ?? 0) - (b.port ?? 0));

/**
 * The NetworkPolicy ports that open `rulePorts` (app ports) on gated pods: the gates in front of them, and
 * non-TCP ports (which no gate serves). Pre-gate pods contribute nothing here: their app ports are opened only
 * by a NetworkPolicy that selects them alone (preGateSelector). Empty when there is nothing to open — callers
 * must then emit no rule at all (an empty `ports` list in a NetworkPolicy means every port).
 */
export function gatedPorts(pods: readonly IndexedPod[], rulePorts: readonly PortRange[]): NetworkPolicyPort[] {
  const out = new Map<string, NetworkPolicyPort>();
  const add = (p: NetworkPolicyPort): void => void out.set(`${p.protocol}/${p.port ?? 0}/${p.endPort ?? ''}`, p);
  for (const r of normalizePorts(rulePorts)) {
    if (r.protocol !== 'TCP') {
      add({ protocol: r.protocol, port: r.port, ...(r.endPort !== undefined ? { endPort: r.endPort } : {}) });
      continue;
    }
    for (const pod of pods)
      for (const g of podGates(pod)) if (inRange(g.port, r)) add({ protocol: 'TCP', port: g.gate });
  }
  return sortNpPorts(out.values());
}

/**
 * What a caller's egress opens towards these callees: their gates, plus the app ports when some callee is
 * pre-gate (dialled there directly). Egress only: the callee's own ingress decides which of its ports admit.
 */
export function calleeDialPorts(callees: readonly IndexedPod[], rulePorts: readonly PortRange[]): NetworkPolicyPort[] {
  const gated = gatedPorts(callees, rulePorts);
  if (preGatePods(callees).length === 0) return gated;
  const out = new Map<string, NetworkPolicyPort>();
  for (const p of [...gated, ...toNetworkPolicyPorts(rulePorts)])
    out.set(`${p.protocol}/${p.port ?? 0}/${p.endPort ?? ''}`, p);
  return sortNpPorts(out.values());
}

/** Callee pod addresses for a caller's egress rule: the identity each expects and its gate per app port. */
export function peerAddresses(
  callees: readonly IndexedPod[],
  rulePorts: readonly PortRange[],
  trustDomain: string,
): AgentPeerAddress[] {
  const peers: AgentPeerAddress[] = [];
  for (const callee of callees) {
    const gates = podGates(callee).filter((g) => rulePorts.some((r) => inRange(g.port, r)));
    for (const cidr of callee.ips) {
      peers.push({
        cidr,
        spiffeID: spiffeOf(callee, trustDomain),
        ...(gates.length > 0 ? { gates: gates.map((g) => ({ port: g.port, gate: g.gate })) } : {}),
      });
    }
  }
  return peers.sort((a, b) => compareStrings(a.cidr, b.cidr));
}

/** Callers grouped by identity, with the uids of their live pods (sorted). */
export function allowedCallers(pods: readonly IndexedPod[], trustDomain: string): AllowedCaller[] {
  const byId = new Map<string, string[]>();
  for (const pod of pods) {
    const id = spiffeOf(pod, trustDomain);
    const list = byId.get(id);
    if (list) list.push(pod.uid);
    else byId.set(id, [pod.uid]);
  }
  return [...byId.entries()]
    .sort(([a], [b]) => compareStrings(a, b))
    .map(([spiffeID, uids]) => ({ spiffeID, pods: sortedUnique(uids) }));
}

/** One ingress rule of a policy, compiled for the gate. */
export function compileIngressRule(
  rule: IngressRule,
  policy: { name: string; namespace: string; mode: 'Enforce' | 'Audit'; expiresAt?: string },
  index: ClusterIndex,
  trustDomain: string,
  http: EntitlementIngressRule['http'],
): EntitlementIngressRule {
  const from = rule.from;
  const base: EntitlementIngressRule = {
    policy: policy.name,
    rule: rule.name,
    mode: policy.mode,
    ports: normalizePorts(rule.ports),
  };
  if (from.agents) {
    const matches = compileSelector(from.agents.agentSelector);
    const callers = index
      .selectNamespaces(policy.namespace, from.agents.namespaceSelector)
      .flatMap((ns) => index.agents.get(ns)?.select(from.agents?.agentSelector ?? {}, matches) ?? []);
    base.agents = allowedCallers(callers, trustDomain);
  } else if (from.users) {
    base.users = {
      issuer: from.users.issuer,
      audiences: sortedUnique(from.users.audiences),
      ...(from.users.jwksUri ? { jwksUri: from.users.jwksUri } : {}),
      ...(from.users.claims ? { claims: from.users.claims } : {}),
    };
  } else if (from.pods) {
    const ips = index
      .selectNamespaces(policy.namespace, from.pods.namespaceSelector)
      .flatMap((ns) => index.pods.get(ns)?.select(from.pods?.podSelector ?? {}) ?? [])
      .flatMap((p) => p.ips);
    base.cidrs = sortedUnique(ips);
  } else {
    base.cidrs = sortedUnique((from.cidrs ?? []).filter((c) => parseCidr(c) !== undefined));
  }
  return {
    ...base,
    ...(http ? { http } : {}),
    ...(rule.maxBodyBytes !== undefined ? { maxBodyBytes: rule.maxBodyBytes } : {}),
    ...(rule.rateLimit ? { rateLimit: rule.rateLimit } : {}),
    ...(rule.identityHeaders && rule.identityHeaders.length > 0
      ? { identityHeaders: sortedUnique(rule.identityHeaders.map((h) => h.toLowerCase())) }
      : {}),
    ...(policy.expiresAt !== undefined ? { expiresAt: policy.expiresAt } : {}),
  };
}

/**
 * Services in front of these agent pods that target a gated app port by number: their traffic would go around
 * the gate, and the NetworkPolicies do not open it. One message per Service, naming it and the fix.
 */
export function servicesBypassingGates(index: ClusterIndex, namespace: string, pods: readonly IndexedPod[]): string[] {
  const messages: string[] = [];
  for (const [id, svc] of index.services) {
    if (!id.startsWith(`${namespace}/`)) continue;
    const selector = svc.spec?.selector ?? {};
    if (Object.keys(selector).length === 0) continue;
    const matches = compileSelector({ matchLabels: selector });
    const behind = pods.filter((p) => matches(p.labels));
    const numbers = new Set<string>();
    for (const sp of svc.spec?.ports ?? []) {
      if ((sp.protocol ?? 'TCP') !== 'TCP') continue;
      const target = sp.targetPort ?? sp.port;
      const n = typeof target === 'number' ? target : /^\d+$/.test(target) ? Number(target) : undefined;
      // Gated pods are reached on their gates only: any other number goes around the gate (or to no gate at all).
      if (n !== undefined && !isGatePort(n) && behind.some((p) => !injectedBeforeGates(p.pod.spec)))
        numbers.add(`${sp.port}→${n}`);
    }
    if (numbers.size > 0) {
      messages.push(
        `Service ${id} targets the app port of agents this policy selects by number (${[...numbers].sort(compareStrings).join(', ')}): its callers never reach the sidecar's inbound gate and are refused at L3; name the container port and set the Service's targetPort to that name`,
      );
    }
  }
  return messages.sort(compareStrings);
}
