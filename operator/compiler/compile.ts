/**
 * The policy compiler: AgentPolicies × Pods × Namespaces × Services → per-pod AgentEntitlements, NetworkPolicies
 * (and CiliumNetworkPolicies) and a per-policy report. Pure and deterministic: no I/O, no clock (the caller passes
 * `now`), every list sorted, so the same cluster state in any order gives byte-identical output.
 */
import type {
  AgentEntitlement,
  AgentPolicy,
  EntitlementEgressRule,
  LabelSelector,
  PortRange,
} from '../../lib/api/types.generated.ts';
import type { OwnerReference } from '../../lib/api/meta.ts';
import {
  API_VERSION,
  LABEL_AGENT,
  LABEL_INJECT,
  LABEL_MANAGED_BY,
  MANAGED_BY,
  TOKEN_TTL_DEFAULT_SECONDS,
} from '../../lib/api/constants.ts';
import { canonicalJSON, compareStrings, sha256Revision } from './canonical.ts';
import { hostCidr, metadataExcept, parseCidr } from './ip.ts';
import {
  BASELINE_NAME,
  LABEL_POLICY,
  LABEL_POLICY_NAMESPACE,
  calleeIngressName,
  labelValue,
  policyObjectName,
} from './names.ts';
import { LabelIndex, andLabels, compileSelector, type Labels } from './selectors.ts';
import { compileServiceTarget } from './services.ts';
import type {
  CiliumEgressRule,
  CiliumNetworkPolicy,
  CompileInput,
  CompileOptions,
  CompileOutput,
  DnsTarget,
  NetworkPolicy,
  NetworkPolicyEgressRule,
  NetworkPolicyIngressRule,
  NetworkPolicyPeer,
  NetworkPolicyPort,
  OperatorEndpoint,
  Pod,
  PolicyReport,
  Problem,
  Service,
  SkippedPod,
} from './types.ts';

export const DEFAULT_TRUST_DOMAIN = 'cluster.local';
export const DEFAULT_CLUSTER_DOMAIN = 'cluster.local';
export const DEFAULT_DNS: DnsTarget = { kind: 'pods', namespace: 'kube-system', podLabels: { 'k8s-app': 'kube-dns' } };
export const DEFAULT_OPERATOR: OperatorEndpoint = {
  namespace: 'agentfence-system',
  podLabels: { 'app.kubernetes.io/name': 'agentfence', 'app.kubernetes.io/component': 'operator' },
  port: 8443,
};
const NAMESPACE_NAME_LABEL = 'kubernetes.io/metadata.name';
const INJECT = { [LABEL_INJECT]: 'true' };

/**
 * Under provider kubernetes a hosts rule can only be opened as "public addresses on these ports": private,
 * shared (CGNAT) and link-local ranges stay closed, so the coarse rule never reaches cluster or metadata addresses.
 */
const PUBLIC_V4_EXCEPT = ['10.0.0.0/8', '100.64.0.0/10', '169.254.0.0/16', '172.16.0.0/12', '192.168.0.0/16'];
const PUBLIC_V6_EXCEPT = ['fc00::/7', 'fe80::/10'];

/** A pod as the compiler sees it, after the fields it needs have been read once. */
export interface PodView {
  namespace: string;
  name: string;
  uid: string;
  labels: Labels;
  /** Host CIDRs (/32, /128) of the pod's IPs; empty before the pod is scheduled. */
  ips: string[];
  pod: Pod;
}

/** One policy's contribution to each pod it selects. */
interface PolicyGrant {
  name: string;
  tokenTTLSeconds?: number;
  expiresAt?: string;
  egress: EntitlementEgressRule[];
}

/** A port range with its protocol defaulted, as the CRD default would have written it. */
export type NormalPort = PortRange & { protocol: 'TCP' | 'UDP' | 'SCTP' };

/** Ports with protocols defaulted, single-port ranges collapsed, duplicates dropped, sorted. */
export function normalizePorts(ports: readonly PortRange[]): NormalPort[] {
  const seen = new Map<string, NormalPort>();
  for (const p of ports) {
    const port: NormalPort = {
      port: p.port,
      ...(p.endPort !== undefined && p.endPort !== p.port ? { endPort: p.endPort } : {}),
      protocol: p.protocol ?? 'TCP',
    };
    seen.set(canonicalJSON(port), port);
  }
  return [...seen.values()].sort(comparePorts);
}

export function comparePorts(a: PortRange, b: PortRange): number {
  return (
    compareStrings(a.protocol ?? 'TCP', b.protocol ?? 'TCP') ||
    a.port - b.port ||
    (a.endPort ?? a.port) - (b.endPort ?? b.port)
  );
}

function toNetworkPolicyPorts(ports: readonly PortRange[]): NetworkPolicyPort[] {
  return normalizePorts(ports).map((p) => ({
    protocol: p.protocol,
    port: p.port,
    ...(p.endPort !== undefined ? { endPort: p.endPort } : {}),
  }));
}

export function parseTTLSeconds(ttl: string | undefined): number | undefined {
  const match = ttl === undefined ? null : /^([1-9][0-9]{0,3})(s|m)$/.exec(ttl);
  if (!match) return undefined;
  return Number(match[1]) * (match[2] === 'm' ? 60 : 1);
}

function formatTTL(seconds: number): string {
  return seconds % 60 === 0 ? `${seconds / 60}m` : `${seconds}s`;
}

function sortedUnique(values: Iterable<string>): string[] {
  return [...new Set(values)].sort(compareStrings);
}

function byNamespaceAndName(a: { metadata: { namespace?: string; name?: string } }, b: typeof a): number {
  return (
    compareStrings(a.metadata.namespace ?? '', b.metadata.namespace ?? '') ||
    compareStrings(a.metadata.name ?? '', b.metadata.name ?? '')
  );
}

function namespaceSelectorFor(namespace: string): LabelSelector {
  return { matchLabels: { [NAMESPACE_NAME_LABEL]: namespace } };
}

function ipBlockPeers(cidrs: readonly string[]): NetworkPolicyPeer[] {
  return cidrs.map((cidr) => {
    const except = metadataExcept(cidr);
    return { ipBlock: except.length > 0 ? { cidr, except } : { cidr } };
  });
}

function policyOwner(policy: AgentPolicy): OwnerReference[] | undefined {
  const uid = policy.metadata.uid;
  if (!uid) return undefined; // rendered from files: there is no object to own it yet
  return [
    {
      apiVersion: API_VERSION,
      kind: 'AgentPolicy',
      name: policy.metadata.name ?? '',
      uid,
      controller: true,
      blockOwnerDeletion: true,
    },
  ];
}

function podView(pod: Pod): PodView {
  const ips = pod.status?.podIPs?.map((p) => p.ip) ?? (pod.status?.podIP ? [pod.status.podIP] : []);
  return {
    namespace: pod.metadata.namespace ?? 'default',
    name: pod.metadata.name ?? '',
    uid: pod.metadata.uid ?? '',
    labels: pod.metadata.labels ?? {},
    ips: sortedUnique(ips.map(hostCidr).filter((c): c is string => c !== undefined)),
    pod,
  };
}

/** The cluster state, indexed once per compile. */
export class ClusterIndex {
  readonly pods = new Map<string, LabelIndex<PodView>>();
  readonly agents = new Map<string, LabelIndex<PodView>>();
  readonly services = new Map<string, Service>();
  readonly namespaceLabels = new Map<string, Labels>();
  readonly skipped: SkippedPod[] = [];

  constructor(input: CompileInput) {
    for (const ns of input.namespaces) {
      const name = ns.metadata.name ?? '';
      this.namespaceLabels.set(name, { ...ns.metadata.labels, [NAMESPACE_NAME_LABEL]: name });
    }
    for (const pod of [...input.pods].sort(byNamespaceAndName)) {
      const view = podView(pod);
      this.knowNamespace(view.namespace);
      const agent = view.labels[LABEL_INJECT] === 'true';
      if (pod.metadata.deletionTimestamp) {
        // A terminating pod keeps no grants and serves no traffic worth opening.
        if (agent) this.skipped.push({ namespace: view.namespace, name: view.name, reason: 'Terminating' });
        continue;
      }
      this.indexFor(this.pods, view.namespace).add(view);
      if (agent) this.indexFor(this.agents, view.namespace).add(view);
    }
    for (const svc of input.services) {
      const ns = svc.metadata.namespace ?? 'default';
      this.services.set(`${ns}/${svc.metadata.name ?? ''}`, svc);
    }
    for (const p of input.policies) this.knowNamespace(p.metadata.namespace ?? 'default');
  }

  private knowNamespace(name: string): void {
    // The API server labels every namespace with its name; a namespace we were not given still has that label.
    if (!this.namespaceLabels.has(name)) this.namespaceLabels.set(name, { [NAMESPACE_NAME_LABEL]: name });
  }

  private indexFor(map: Map<string, LabelIndex<PodView>>, ns: string): LabelIndex<PodView> {
    let index = map.get(ns);
    if (!index) map.set(ns, (index = new LabelIndex<PodView>()));
    return index;
  }

  /** Namespaces a peer's namespaceSelector picks: absent = the policy's own, empty = all. */
  selectNamespaces(own: string, selector: LabelSelector | undefined): string[] {
    if (!selector) return [own];
    const matches = compileSelector(selector);
    return [...this.namespaceLabels]
      .filter(([, labels]) => matches(labels))
      .map(([name]) => name)
      .sort(compareStrings);
  }
}

function agentPeerSelectors(peer: {
  agentSelector: LabelSelector;
  namespaceSelector?: LabelSelector;
}): NetworkPolicyPeer {
  // namespaceSelector and podSelector in ONE peer element: both must hold (two elements would mean either).
  return {
    ...(peer.namespaceSelector ? { namespaceSelector: peer.namespaceSelector } : {}),
    podSelector: andLabels(peer.agentSelector, INJECT),
  };
}

interface PolicyResult {
  grant: PolicyGrant;
  selected: PodView[];
  networkPolicies: NetworkPolicy[];
  cilium?: CiliumNetworkPolicy;
  report: PolicyReport;
}

function compilePolicy(policy: AgentPolicy, index: ClusterIndex, options: Required<CompileOptions>): PolicyResult {
  const namespace = policy.metadata.namespace ?? 'default';
  const name = policy.metadata.name ?? '';
  const spec = policy.spec;
  const mode = spec.mode ?? 'Enforce';
  const problems: Problem[] = [];
  const owner = policyOwner(policy);
  const labels = { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_POLICY]: labelValue(name) };
  const podSelector = andLabels(spec.agentSelector, INJECT);
  const expired = spec.expiresAt !== undefined && Date.parse(spec.expiresAt) <= options.now.getTime();

  const egress: EntitlementEgressRule[] = [];
  const npEgress: NetworkPolicyEgressRule[] = [];
  const npIngress: NetworkPolicyIngressRule[] = [];
  const ciliumEgress: CiliumEgressRule[] = [];
  const calleePolicies: NetworkPolicy[] = [];

  const selected = expired ? [] : (index.agents.get(namespace)?.select(spec.agentSelector) ?? []);
  if (expired) {
    problems.push({ reason: 'Expired', message: `the policy expired at ${spec.expiresAt ?? ''}; it grants nothing` });
  } else if (selected.length === 0) {
    problems.push({
      reason: 'NoAgentsSelected',
      message: 'no running agent pod in the namespace matches agentSelector',
    });
  }

  const calleeIngress = (
    calleeNamespace: string,
    ruleName: string,
    calleeSelector: LabelSelector,
    ports: NetworkPolicyPort[],
    serviceName?: string,
  ): NetworkPolicy => {
    // Cross-namespace ownerReferences are invalid (the garbage collector treats the owner as absent and
    // deletes the object): outside the policy's namespace the labels are what ties the object to its policy.
    const sameNamespace = calleeNamespace === namespace;
    return {
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: {
        name: calleeIngressName(namespace, name, ruleName, serviceName),
        namespace: calleeNamespace,
        labels: sameNamespace ? labels : { ...labels, [LABEL_POLICY_NAMESPACE]: namespace },
        ...(sameNamespace && owner ? { ownerReferences: owner } : {}),
      },
      spec: {
        podSelector: calleeSelector,
        policyTypes: ['Ingress'],
        ingress: [
          {
            from: [{ ...(sameNamespace ? {} : { namespaceSelector: namespaceSelectorFor(namespace) }), podSelector }],
            ports,
          },
        ],
      },
    };
  };

  const addEgress = (to: NetworkPolicyPeer[], ports: NetworkPolicyPort[]): void => {
    // An egress rule with no peers would mean "every destination": never emit one.
    if (to.length > 0 && ports.length > 0) npEgress.push({ to, ports });
  };

  for (const rule of expired ? [] : [...(spec.egress ?? [])].sort((a, b) => compareStrings(a.name, b.name))) {
    let ports = normalizePorts(rule.ports);
    const npPorts = toNetworkPolicyPorts(rule.ports);
    const hosts: string[] = [];
    const cidrs: string[] = [];
    const fqdns: string[] = [];
    const problem = (reason: Problem['reason'], message: string): void =>
      void problems.push({ reason, rule: rule.name, message });

    if (rule.to.hosts) {
      hosts.push(...rule.to.hosts);
      fqdns.push(...rule.to.hosts);
    } else if (rule.to.cidrs) {
      for (const cidr of rule.to.cidrs) {
        if (parseCidr(cidr)) cidrs.push(cidr);
        else problem('InvalidCIDR', `'${cidr}' is not a CIDR; it is ignored`);
      }
      addEgress(ipBlockPeers(sortedUnique(cidrs)), npPorts);
    } else if (rule.to.services) {
      for (const ref of rule.to.services) {
        const target = compileServiceTarget(ref, namespace, rule.ports, index, options.clusterDomain);
        hosts.push(...target.hosts);
        cidrs.push(...target.cidrs);
        fqdns.push(...target.fqdns);
        for (const p of target.problems) problem(p.reason, p.message);
        for (const peer of target.peers) addEgress([peer.peer], peer.ports);
        if (target.agentBackends) {
          // The Service's pods are agents behind their own baseline: open their side too, on the target ports.
          const targetPorts = target.peers.flatMap((p) => p.ports);
          calleePolicies.push(
            calleeIngress(
              ref.namespace ?? namespace,
              rule.name,
              andLabels({ matchLabels: target.selector }, INJECT),
              toNetworkPolicyPorts(targetPorts.map((p) => ({ port: p.port ?? 0, protocol: p.protocol }))),
              ref.name,
            ),
          );
        }
        if (target.extraPorts.length > 0) ports = normalizePorts([...ports, ...target.extraPorts]);
      }
    } else if (rule.to.agents) {
      const peer = rule.to.agents;
      const calleeMatch = compileSelector(peer.agentSelector);
      const byNamespace = new Map<string, PodView[]>();
      for (const ns of index.selectNamespaces(namespace, peer.namespaceSelector)) {
        const callees = index.agents.get(ns)?.select(peer.agentSelector, calleeMatch) ?? [];
        if (callees.length > 0) byNamespace.set(ns, callees);
        for (const callee of callees) {
          if (callee.ips.length === 0) problem('PodWithoutIP', `agent pod ${ns}/${callee.name} has no IP yet`);
          cidrs.push(...callee.ips);
        }
      }
      addEgress([agentPeerSelectors(peer)], npPorts);
      // Both ends must allow: the callee's baseline refuses all ingress, so open it from exactly these callers.
      for (const calleeNamespace of byNamespace.keys()) {
        calleePolicies.push(calleeIngress(calleeNamespace, rule.name, andLabels(peer.agentSelector, INJECT), npPorts));
      }
    }

    if (fqdns.length > 0) {
      const names = sortedUnique(fqdns);
      if (options.networkProvider === 'cilium') {
        ciliumEgress.push({
          toFQDNs: names.map((h) => (h.startsWith('*') ? { matchPattern: h } : { matchName: h })),
          toPorts: [
            {
              ports: npPorts.map((p) => ({
                port: String(p.port),
                ...(p.endPort !== undefined ? { endPort: p.endPort } : {}),
                protocol: p.protocol,
              })),
            },
          ],
        });
      } else {
        addEgress(
          [
            { ipBlock: { cidr: '0.0.0.0/0', except: [...PUBLIC_V4_EXCEPT] } },
            { ipBlock: { cidr: '::/0', except: [...PUBLIC_V6_EXCEPT] } },
          ],
          npPorts,
        );
        problem(
          'FQDNNotEnforcedAtL3',
          `NetworkPolicy cannot express host names (${names.join(', ')}): the sidecar enforces them; at L3 this rule opens public addresses on its ports`,
        );
      }
    }

    egress.push({
      policy: name,
      rule: rule.name,
      mode,
      ...(hosts.length > 0 ? { hosts: sortedUnique(hosts) } : {}),
      ...(cidrs.length > 0 ? { cidrs: sortedUnique(cidrs) } : {}),
      ports,
      ...(rule.http ? { http: rule.http } : {}),
      ...(rule.mcp ? { mcp: rule.mcp } : {}),
      ...(rule.audience !== undefined ? { audience: rule.audience } : {}),
      ...(spec.expiresAt !== undefined ? { expiresAt: spec.expiresAt } : {}),
    });
  }

  for (const rule of expired ? [] : [...(spec.ingress ?? [])].sort((a, b) => compareStrings(a.name, b.name))) {
    const from = rule.from;
    const peers: NetworkPolicyPeer[] = from.agents
      ? [agentPeerSelectors(from.agents)]
      : from.pods
        ? [
            {
              ...(from.pods.namespaceSelector ? { namespaceSelector: from.pods.namespaceSelector } : {}),
              podSelector: from.pods.podSelector,
            },
          ]
        : ipBlockPeers(sortedUnique((from.cidrs ?? []).filter((c) => parseCidr(c) !== undefined)));
    if (peers.length > 0) npIngress.push({ from: peers, ports: toNetworkPolicyPorts(rule.ports) });
  }

  const metadata = { name: policyObjectName(name), namespace, labels, ...(owner ? { ownerReferences: owner } : {}) };
  const own: NetworkPolicy = {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata,
    spec: {
      podSelector,
      // Always both types, explicitly: an omitted Egress type would leave egress unisolated.
      policyTypes: ['Ingress', 'Egress'],
      ...(npIngress.length > 0 ? { ingress: npIngress } : {}),
      ...(npEgress.length > 0 ? { egress: npEgress } : {}),
    },
  };
  const networkPolicies = [own, ...calleePolicies];
  const cilium: CiliumNetworkPolicy | undefined =
    ciliumEgress.length > 0
      ? {
          apiVersion: 'cilium.io/v2',
          kind: 'CiliumNetworkPolicy',
          metadata,
          spec: { endpointSelector: podSelector, egress: [ciliumDnsRule(options.dns), ...ciliumEgress] },
        }
      : undefined;

  const ttl = parseTTLSeconds(spec.tokenTTL);
  return {
    grant: {
      name,
      egress,
      ...(ttl !== undefined ? { tokenTTLSeconds: ttl } : {}),
      ...(spec.expiresAt !== undefined ? { expiresAt: spec.expiresAt } : {}),
    },
    selected,
    networkPolicies,
    ...(cilium ? { cilium } : {}),
    report: {
      namespace,
      name,
      selectedPods: selected.length,
      networkPolicies: [
        ...networkPolicies.map((np) => ({
          kind: 'NetworkPolicy' as const,
          namespace: np.metadata.namespace,
          name: np.metadata.name,
        })),
        ...(cilium ? [{ kind: 'CiliumNetworkPolicy' as const, namespace, name: cilium.metadata.name }] : []),
      ],
      problems: dedupeProblems(problems),
    },
  };
}

function dedupeProblems(problems: Problem[]): Problem[] {
  const unique = new Map(problems.map((p) => [canonicalJSON(p), p]));
  return [...unique.values()].sort(
    (a, b) =>
      compareStrings(a.rule ?? '', b.rule ?? '') ||
      compareStrings(a.reason, b.reason) ||
      compareStrings(a.message, b.message),
  );
}

/** Cilium's toFQDNs only learns addresses from DNS answers its proxy saw: DNS must go through the proxy. */
function ciliumDnsRule(dns: DnsTarget): CiliumEgressRule {
  const toPorts = [
    { ports: [{ port: String(dns.port ?? 53), protocol: 'ANY' as const }], rules: { dns: [{ matchPattern: '*' }] } },
  ];
  if (dns.kind === 'addresses') return { toCIDR: sortedUnique(dns.addresses.map((a) => hostCidr(a) ?? a)), toPorts };
  return {
    toEndpoints: [{ matchLabels: { 'k8s:io.kubernetes.pod.namespace': dns.namespace, ...dns.podLabels } }],
    toPorts,
  };
}

function baselinePolicy(namespace: string, options: Required<CompileOptions>): NetworkPolicy {
  const dns = options.dns;
  const dnsPort = dns.port ?? 53;
  const dnsPeers: NetworkPolicyPeer[] =
    dns.kind === 'pods'
      ? [{ namespaceSelector: namespaceSelectorFor(dns.namespace), podSelector: { matchLabels: dns.podLabels } }]
      : sortedUnique(dns.addresses.map((a) => hostCidr(a) ?? a)).map((cidr) => ({ ipBlock: { cidr } }));
  return {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: BASELINE_NAME, namespace, labels: { [LABEL_MANAGED_BY]: MANAGED_BY } },
    spec: {
      podSelector: { matchLabels: INJECT },
      policyTypes: ['Ingress', 'Egress'],
      egress: [
        {
          to: dnsPeers,
          ports: [
            { protocol: 'TCP', port: dnsPort },
            { protocol: 'UDP', port: dnsPort },
          ],
        },
        {
          to: [
            {
              namespaceSelector: namespaceSelectorFor(options.operator.namespace),
              podSelector: { matchLabels: options.operator.podLabels },
            },
          ],
          ports: [{ protocol: 'TCP', port: options.operator.port }],
        },
      ],
    },
  };
}

function entitlementFor(
  pod: PodView,
  grants: PolicyGrant[],
  options: Required<CompileOptions>,
  revisions: Map<string, string>,
): AgentEntitlement {
  const agent = pod.labels[LABEL_AGENT] ?? pod.pod.spec?.serviceAccountName ?? 'default';
  const serviceAccountName = pod.pod.spec?.serviceAccountName ?? 'default';
  // Policies are visited in name order and each grant's rules are sorted, so this is already (policy, rule) order.
  const egress = grants.flatMap((g) => g.egress);
  const key = grants.map((g) => g.name).join('\0');
  let revision = revisions.get(key);
  if (revision === undefined) revisions.set(key, (revision = sha256Revision(egress)));
  const ttl =
    grants.length > 0
      ? Math.min(...grants.map((g) => g.tokenTTLSeconds ?? TOKEN_TTL_DEFAULT_SECONDS))
      : TOKEN_TTL_DEFAULT_SECONDS;
  const expiries = grants.map((g) => g.expiresAt).filter((e): e is string => e !== undefined);
  const expiresAt = expiries.sort((a, b) => Date.parse(a) - Date.parse(b))[0];
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
    spec: {
      podName: pod.name,
      podUID: pod.uid,
      agent,
      serviceAccountName,
      spiffeID: `spiffe://${options.trustDomain}/ns/${pod.namespace}/agent/${agent}`,
      revision,
      tokenTTL: formatTTL(ttl),
      ...(expiresAt !== undefined ? { expiresAt } : {}),
      policies: grants.map((g) => g.name),
      egress,
    },
  };
}

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
  const grantsByPod = new Map<PodView, PolicyGrant[]>();
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
    networkPolicies.push(...result.networkPolicies);
    if (result.cilium) ciliumNetworkPolicies.push(result.cilium);
    reports.push(result.report);
  }

  const entitlements: AgentEntitlement[] = [];
  const revisions = new Map<string, string>();
  for (const ns of [...index.agents.keys()].sort(compareStrings)) {
    const agents = index.agents.get(ns)?.all ?? [];
    if (agents.length > 0) networkPolicies.push(baselinePolicy(ns, options));
    for (const pod of agents) entitlements.push(entitlementFor(pod, grantsByPod.get(pod) ?? [], options, revisions));
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
