/**
 * One AgentPolicy compiled: its grant (the entitlement rules every selected pod gets), its NetworkPolicies
 * (its own, and callee-side ingress in callee namespaces), its CiliumNetworkPolicy, and its report.
 */
import type {
  AgentPeerAddress,
  AgentPolicy,
  EntitlementEgressRule,
  EntitlementIngressRule,
  HTTPRule,
  LabelSelector,
} from '../../lib/api/types.generated.ts';
import type { OwnerReference } from '../../lib/api/meta.ts';
import { API_VERSION, LABEL_CA_BUNDLE, LABEL_INJECT, LABEL_MANAGED_BY, MANAGED_BY } from '../../lib/api/constants.ts';
import { CA_BUNDLE_MAX_BYTES, agentEntitlementSpec } from '../../lib/api/schema.ts';
import { canonicalJSON, compareStrings, sortedUnique } from './canonical.ts';
import { ciliumDnsRule, namespaceSelectorFor } from './baseline.ts';
import { X509Certificate } from 'node:crypto';
import { NAMESPACE_NAME_LABEL, type ClusterIndex, type IndexedPod } from './cluster-index.ts';
import { consentedCallees } from './consent.ts';
import { resolveCredentials } from './credentials.ts';
import type { PolicyGrant } from './entitlement.ts';
import { metadataExcept, nonPublicRanges, parseCidr } from '../../lib/ip.ts';
import {
  LABEL_POLICY,
  LABEL_POLICY_NAMESPACE,
  calleeIngressName,
  labelValue,
  policyObjectName,
  preGateObjectName,
} from './names.ts';
import { isGatePort } from '../../lib/inbound/gates.ts';
import { normalizePorts, toNetworkPolicyPorts } from './ports.ts';
import { parseDurationSeconds } from '../../lib/api/duration.ts';
import { andLabels, compileSelector } from './selectors.ts';
import { compileServiceTarget } from './services.ts';
import {
  allowedCallers,
  compileIngressRule,
  calleeDialPorts,
  gatedPorts,
  peerAddresses,
  podGates,
  preGatePods,
  preGateSelector,
  servicesBypassingGates,
  spiffeOf,
} from './inbound.ts';
import type {
  CiliumEgressRule,
  CiliumNetworkPolicy,
  CompileOptions,
  NetworkPolicy,
  NetworkPolicyEgressRule,
  NetworkPolicyIngressRule,
  NetworkPolicyPeer,
  NetworkPolicyPort,
  PolicyReport,
  Problem,
} from './types.ts';

const INJECT = { [LABEL_INJECT]: 'true' };

/** The CRD's bound on addresses per entitlement rule: more and the API server refuses the whole entitlement. */
const MAX_RULE_CIDRS = agentEntitlementSpec.properties?.egress?.items?.properties?.cidrs?.maxItems ?? 256;

function boundedCidrs(
  cidrs: readonly string[],
  problem: (reason: Problem['reason'], message: string) => void,
): string[] {
  const unique = sortedUnique(cidrs);
  if (unique.length <= MAX_RULE_CIDRS) return unique;
  // Fail closed for the rest rather than have the API server refuse the pod's whole entitlement.
  problem(
    'TooManyAddresses',
    `${unique.length} addresses exceed the ${MAX_RULE_CIDRS} one rule can hold; only the first ${MAX_RULE_CIDRS} are granted`,
  );
  return unique.slice(0, MAX_RULE_CIDRS);
}

/**
 * Under provider kubernetes a hosts rule can only be opened as "public addresses on these ports": the internal
 * and never-granted ranges of lib/ip.ts stay closed, so the coarse rule never reaches cluster or metadata addresses.
 */
const PUBLIC_V4_EXCEPT = nonPublicRanges(4);
const PUBLIC_V6_EXCEPT = nonPublicRanges(6);

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

export interface PolicyResult {
  grant: PolicyGrant;
  /** Inbound grants this policy gives to agent pods it does not select (same-namespace callees of its egress). */
  calleeGrants: { pod: IndexedPod; rule: EntitlementIngressRule }[];
  selected: IndexedPod[];
  networkPolicies: NetworkPolicy[];
  cilium?: CiliumNetworkPolicy;
  report: PolicyReport;
}

export function compilePolicy(
  policy: AgentPolicy,
  index: ClusterIndex,
  options: Required<CompileOptions>,
): PolicyResult {
  const namespace = policy.metadata.namespace ?? 'default';
  const name = policy.metadata.name ?? '';
  const spec = policy.spec;
  const mode = spec.mode ?? 'Enforce';
  const problems: Problem[] = [];
  const foreign: Problem[] = [];
  const owner = policyOwner(policy);
  const labels = { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_POLICY]: labelValue(name) };
  const podSelector = andLabels(spec.agentSelector, INJECT);
  const expired = spec.expiresAt !== undefined && Date.parse(spec.expiresAt) <= options.now.getTime();

  const egress: EntitlementEgressRule[] = [];
  const ingress: EntitlementIngressRule[] = [];
  const calleeGrants: PolicyResult['calleeGrants'] = [];
  const npEgress: NetworkPolicyEgressRule[] = [];
  const npIngress: NetworkPolicyIngressRule[] = [];
  const preGateIngress: NetworkPolicyIngressRule[] = [];
  const ciliumEgress: CiliumEgressRule[] = [];
  const calleePolicies: NetworkPolicy[] = [];

  const selected = expired ? [] : (index.agents.get(namespace)?.select(spec.agentSelector) ?? []);
  const preGate = preGatePods(selected);
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
    preGate = false,
  ): NetworkPolicy => {
    // Cross-namespace ownerReferences are invalid (the garbage collector treats the owner as absent and
    // deletes the object): outside the policy's namespace the labels are what ties the object to its policy.
    const sameNamespace = calleeNamespace === namespace;
    return {
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: {
        name: calleeIngressName(namespace, name, ruleName, serviceName, preGate),
        namespace: calleeNamespace,
        labels: sameNamespace ? labels : { ...labels, [LABEL_POLICY_NAMESPACE]: namespace },
        ...(sameNamespace && owner ? { ownerReferences: owner } : {}),
      },
      spec: {
        podSelector: preGate ? preGateSelector(calleeSelector) : calleeSelector,
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

  /** The inbound side of a same-namespace agent grant: the callees' gates admit exactly these callers. */
  const grantCallees = (
    callees: readonly IndexedPod[],
    ruleName: string,
    ports: { port: number }[],
    http?: HTTPRule[],
  ): void => {
    if (selected.length === 0) return;
    const rule: EntitlementIngressRule = {
      policy: name,
      rule: ruleName,
      mode,
      ports: normalizePorts(ports),
      agents: allowedCallers(selected, options.trustDomain),
      // The callee's gate checks the same methods and paths as the caller's sidecar: neither trusts the other.
      ...(http ? { http: canonicalHttp(http) } : {}),
      ...(spec.expiresAt !== undefined ? { expiresAt: spec.expiresAt } : {}),
    };
    for (const pod of callees) calleeGrants.push({ pod, rule });
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
    const peers: AgentPeerAddress[] = [];
    const problem = (reason: Problem['reason'], message: string): void =>
      void problems.push({ reason, rule: rule.name, message });
    const foreignProblem = (reason: Problem['reason'], message: string): void =>
      void foreign.push({ reason, rule: rule.name, message });

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
        const serviceNamespace = ref.namespace ?? namespace;
        if (target.agentBackends && serviceNamespace !== namespace) {
          // The Service's pods are agents of another namespace: granted only if that namespace opens all of them.
          const backends = index.agents.get(serviceNamespace)?.select({ matchLabels: target.selector }) ?? [];
          const opened = consentedCallees(index, namespace, selected, serviceNamespace, options.now);
          if (!backends.every((b) => opened.has(b))) {
            reportNotConsented([serviceNamespace], [serviceNamespace], problem, foreignProblem);
            continue;
          }
        }
        hosts.push(...target.hosts);
        cidrs.push(...target.cidrs);
        fqdns.push(...target.fqdns);
        if (target.agentBackends) {
          // Requests to the Service's addresses carry a token for its agents' identity (one identity only:
          // a Service in front of several agents cannot name one audience, so it gets none and says why).
          const backends = (index.agents.get(serviceNamespace)?.select({ matchLabels: target.selector }) ?? []).filter(
            (b) => b.namespace === serviceNamespace,
          );
          const ids = sortedUnique(backends.map((b) => spiffeOf(b, options.trustDomain)));
          if (ids.length === 1 && ids[0]) {
            for (const cidr of target.cidrs) peers.push({ cidr, spiffeID: ids[0] });
          } else if (ids.length > 1) {
            problem(
              'ServiceSpansAgents',
              `Service ${serviceNamespace}/${ref.name} is in front of ${ids.length} different agents: a call through it cannot carry one caller token; target the agents (to.agents) or give each agent its own Service`,
            );
          }
          if (serviceNamespace === namespace) {
            // Same namespace: the caller's grant admits it at the backends' gates, on the app ports the
            // Service's target ports land on.
            const appPorts = target.peers
              .flatMap((p) => p.ports)
              .flatMap((p) =>
                backends.flatMap((b) => {
                  const g = podGates(b).find((x) => x.gate === p.port);
                  return g ? [{ port: g.port }] : podGates(b).length === 0 ? [{ port: p.port ?? 0 }] : [];
                }),
              );
            if (appPorts.length > 0) grantCallees(backends, rule.name, appPorts, rule.http);
          }
        }
        for (const p of target.problems) {
          // Pods of another namespace are named only in the controller's log, not in this policy's status.
          if (serviceNamespace === namespace || (p.reason !== 'PodWithoutIP' && p.reason !== 'NamedPortUnresolved')) {
            problem(p.reason, p.message);
          } else {
            foreignProblem(p.reason, p.message);
            if (p.reason === 'NamedPortUnresolved') {
              problem(
                p.reason,
                `Service ${serviceNamespace}/${ref.name}: named target ports are not resolved on every pod`,
              );
            }
          }
        }
        for (const peer of target.peers) addEgress([peer.peer], peer.ports);
        if (target.agentBackends && serviceNamespace === namespace) {
          // The Service's pods are agents behind their own baseline: open their side too, on the target ports.
          // A TCP port that is no gate can only be a pre-gate pod's app port (services.ts opens no other on agent
          // pods): it is opened on pre-gate pods alone, never on a gated one.
          const targetPorts = toNetworkPolicyPorts(
            target.peers.flatMap((p) => p.ports).map((p) => ({ port: p.port ?? 0, protocol: p.protocol })),
          );
          const appPort = (p: NetworkPolicyPort): boolean => p.protocol === 'TCP' && !isGatePort(p.port ?? 0);
          const calleeSelector = andLabels({ matchLabels: target.selector }, INJECT);
          const calleeNs = ref.namespace ?? namespace;
          const gates = targetPorts.filter((p) => !appPort(p));
          const appPorts = targetPorts.filter(appPort);
          if (gates.length > 0)
            calleePolicies.push(calleeIngress(calleeNs, rule.name, calleeSelector, gates, ref.name));
          if (appPorts.length > 0)
            calleePolicies.push(calleeIngress(calleeNs, rule.name, calleeSelector, appPorts, ref.name, true));
        }
        if (target.extraPorts.length > 0) ports = normalizePorts([...ports, ...target.extraPorts]);
      }
    } else if (rule.to.agents) {
      const peer = rule.to.agents;
      const calleeMatch = compileSelector(peer.agentSelector);
      const reachable: string[] = [];
      const notConsented: string[] = [];
      let ownCallees = false;
      const allCallees: IndexedPod[] = [];
      for (const ns of index.selectNamespaces(namespace, peer.namespaceSelector)) {
        let callees = index.agents.get(ns)?.select(peer.agentSelector, calleeMatch) ?? [];
        if (ns !== namespace) {
          // Another namespace: only the callees its own policies open to these callers (see consent.ts).
          const opened = consentedCallees(index, namespace, selected, ns, options.now);
          const admitted = callees.filter((c) => opened.has(c));
          if (admitted.length < callees.length) notConsented.push(ns);
          callees = admitted;
          if (callees.length === 0) continue;
        } else ownCallees = callees.length > 0;
        reachable.push(ns);
        allCallees.push(...callees);
        for (const callee of callees) {
          if (callee.ips.length === 0) {
            const report = ns === namespace ? problem : foreignProblem;
            report('PodWithoutIP', `agent pod ${ns}/${callee.name} has no IP yet`);
          }
          cidrs.push(...callee.ips);
        }
      }
      // The caller's sidecar dials the callees' gates (their app ports are closed at L3).
      peers.push(...peerAddresses(allCallees, rule.ports, options.trustDomain));
      const agentPorts = calleeDialPorts(allCallees, rule.ports);
      // Caller egress only towards namespaces that are open to it: its own, and those that consented.
      addEgress(
        peer.namespaceSelector
          ? reachable.map((ns) => ({
              namespaceSelector: namespaceSelectorFor(ns),
              podSelector: andLabels(peer.agentSelector, INJECT),
            }))
          : [agentPeerSelectors(peer)],
        agentPorts,
      );
      reportNotConsented(notConsented, namedNamespaces(peer.namespaceSelector), problem, foreignProblem);
      // Both ends must allow: in its own namespace the policy opens the callee side from exactly these callers,
      // at L3 (their gates) and at the callees' gates (an inbound grant naming these callers' live pods).
      if (ownCallees) {
        const own = allCallees.filter((c) => c.namespace === namespace);
        const calleeSelector = andLabels(peer.agentSelector, INJECT);
        const gates = gatedPorts(own, rule.ports);
        if (gates.length > 0) calleePolicies.push(calleeIngress(namespace, rule.name, calleeSelector, gates));
        // Pre-gate callees keep their app ports, opened on them alone (never on a gated callee).
        if (preGatePods(own).length > 0) {
          calleePolicies.push(
            calleeIngress(namespace, rule.name, calleeSelector, toNetworkPolicyPorts(rule.ports), undefined, true),
          );
        }
        grantCallees(own, rule.name, rule.ports, rule.http);
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
      ...(cidrs.length > 0 ? { cidrs: boundedCidrs(cidrs, problem) } : {}),
      ports,
      ...(rule.http ? { http: canonicalHttp(rule.http) } : {}),
      ...(rule.mcp ? { mcp: { ...rule.mcp, tools: sortedUnique(rule.mcp.tools) } } : {}),
      ...(rule.audience !== undefined ? { audience: rule.audience } : {}),
      ...(peers.length > 0 ? { peers: peers.slice(0, MAX_RULE_CIDRS) } : {}),
      ...(spec.expiresAt !== undefined ? { expiresAt: spec.expiresAt } : {}),
      ...(rule.tls ? { tls: rule.tls } : {}),
      ...(rule.caBundle ? { caBundle: resolveCABundle(index, namespace, rule.caBundle, problem) } : {}),
      ...(rule.credentials ? { credentials: resolveCredentials(index, namespace, rule.credentials, problem) } : {}),
    });
  }

  for (const rule of expired ? [] : [...(spec.ingress ?? [])].sort((a, b) => compareStrings(a.name, b.name))) {
    const from = rule.from;
    const npPeers: NetworkPolicyPeer[] = from.users
      ? // Users come from anywhere their client runs (a front end, an ingress controller): the token decides.
        [{ podSelector: {}, namespaceSelector: {} }, { ipBlock: { cidr: '0.0.0.0/0' } }, { ipBlock: { cidr: '::/0' } }]
      : from.agents
        ? [agentPeerSelectors(from.agents)]
        : from.pods
          ? [
              {
                ...(from.pods.namespaceSelector ? { namespaceSelector: from.pods.namespaceSelector } : {}),
                podSelector: from.pods.podSelector,
              },
            ]
          : ipBlockPeers(sortedUnique((from.cidrs ?? []).filter((c) => parseCidr(c) !== undefined)));
    // Only the gates in front of the rule's app ports are opened; pre-gate pods' app ports by their own policy.
    const gates = gatedPorts(selected, rule.ports);
    if (npPeers.length > 0 && gates.length > 0) npIngress.push({ from: npPeers, ports: gates });
    if (npPeers.length > 0 && preGate.length > 0)
      preGateIngress.push({ from: npPeers, ports: toNetworkPolicyPorts(rule.ports) });
    ingress.push(
      compileIngressRule(
        rule,
        { name, namespace, mode, ...(spec.expiresAt !== undefined ? { expiresAt: spec.expiresAt } : {}) },
        index,
        options.trustDomain,
        rule.http ? canonicalHttp(rule.http) : undefined,
      ),
    );
  }

  if ((spec.ingress ?? []).length > 0) {
    for (const message of servicesBypassingGates(index, namespace, selected))
      problems.push({ reason: 'ServiceBypassesGate', message });
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
  // Pods injected before gates existed: their app ports, opened by a policy that selects only them.
  const preGatePolicy: NetworkPolicy[] =
    preGateIngress.length > 0
      ? [
          {
            apiVersion: 'networking.k8s.io/v1',
            kind: 'NetworkPolicy',
            metadata: { ...metadata, name: preGateObjectName(namespace, name) },
            spec: { podSelector: preGateSelector(podSelector), policyTypes: ['Ingress'], ingress: preGateIngress },
          },
        ]
      : [];
  const networkPolicies = [own, ...preGatePolicy, ...calleePolicies];
  const cilium: CiliumNetworkPolicy | undefined =
    ciliumEgress.length > 0
      ? {
          apiVersion: 'cilium.io/v2',
          kind: 'CiliumNetworkPolicy',
          metadata: { ...metadata, labels: { ...labels } },
          spec: { endpointSelector: podSelector, egress: [ciliumDnsRule(options.dns), ...ciliumEgress] },
        }
      : undefined;

  const ttl = parseDurationSeconds(spec.tokenTTL);
  return {
    calleeGrants,
    grant: {
      name,
      egress,
      ingress,
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
      foreign: dedupeProblems(foreign),
    },
  };
}

/** Namespaces a selector names explicitly (by the kubernetes.io/metadata.name label the API server sets). */
function namedNamespaces(selector: LabelSelector | undefined): string[] {
  if (!selector) return [];
  const named: string[] = [];
  const byLabel = selector.matchLabels?.[NAMESPACE_NAME_LABEL];
  if (byLabel) named.push(byLabel);
  for (const e of selector.matchExpressions ?? [])
    if (e.key === NAMESPACE_NAME_LABEL && e.operator === 'In') named.push(...(e.values ?? []));
  return named;
}

/**
 * Status names a namespace that has not consented only when the policy named it: listing every namespace a
 * broad selector happens to match would tell the policy's readers where other tenants run agents. Those go to
 * the controller's log instead.
 */
function reportNotConsented(
  namespaces: readonly string[],
  named: readonly string[],
  problem: (reason: Problem['reason'], message: string) => void,
  foreignProblem: (reason: Problem['reason'], message: string) => void,
): void {
  const consentRule =
    'an AgentPolicy there with an ingress rule whose from.agents selects this namespace and these agents';
  let unnamed = 0;
  for (const ns of namespaces) {
    const message = `namespace ${ns} has not consented (${consentRule}); nothing is opened there`;
    if (named.includes(ns)) problem('CalleeHasNotConsented', message);
    else {
      unnamed++;
      foreignProblem('CalleeHasNotConsented', message);
    }
  }
  if (unnamed > 0) {
    problem(
      'CalleeHasNotConsented',
      `agents in namespaces selected by namespaceSelector match this rule, but their namespaces have not consented (${consentRule}); nothing is opened there. Name a namespace (kubernetes.io/metadata.name) to see whether it consents`,
    );
  }
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

/**
 * HTTP rules as sets, the way the sidecar reads them (any listed shape, any listed method, any listed path): the
 * same grant in another order is the same entitlement, so a reordered list rewrites nothing and moves no revision.
 */
function canonicalHttp(rules: readonly HTTPRule[]): HTTPRule[] {
  const byJson = <T>(items: readonly T[]): T[] =>
    [...new Map(items.map((i) => [canonicalJSON(i), i])).entries()]
      .sort(([a], [b]) => compareStrings(a, b))
      .map(([, i]) => i);
  return byJson(
    rules.map((r) => ({
      ...r,
      ...(r.methods ? { methods: sortedUnique(r.methods) as NonNullable<HTTPRule['methods']> } : {}),
      ...(r.paths ? { paths: byJson(r.paths) } : {}),
    })),
  );
}

/**
 * A rule's upstream CA bundle: the PEM certificates in a ConfigMap of the policy's own namespace that opted in
 * with the agentfence.io/ca-bundle=true label. Anything else — missing, not opted in, no certificate, or a
 * private key beside them — compiles to '' (the sidecar then trusts nothing for this rule: fail closed, never
 * the public roots) and is reported.
 */
function resolveCABundle(
  index: ClusterIndex,
  namespace: string,
  ref: { configMap: string; key?: string },
  problem: (reason: Problem['reason'], message: string) => void,
): string {
  const key = ref.key ?? 'ca.crt';
  const cm = index.caBundles.get(`${namespace}/${ref.configMap}`);
  const pem = cm?.data?.[key];
  if (pem === undefined) {
    problem(
      'CABundleNotFound',
      `caBundle: no ConfigMap ${namespace}/${ref.configMap} labelled ${LABEL_CA_BUNDLE}=true with key ${key}; inspected HTTPS to this destination fails verification until it exists`,
    );
    return '';
  }
  if (pem.length > CA_BUNDLE_MAX_BYTES) {
    problem(
      'CABundleInvalid',
      `caBundle: ConfigMap ${namespace}/${ref.configMap} key ${key} is larger than ${CA_BUNDLE_MAX_BYTES} bytes: name only the CAs of this destination; inspected HTTPS to it fails verification until then`,
    );
    return '';
  }
  const blocks = [...pem.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g)];
  const certificates = blocks.filter((b) => b[1] === 'CERTIFICATE');
  const valid = certificates.filter((b) => {
    try {
      return new X509Certificate(b[0]).ca;
    } catch {
      return false;
    }
  });
  if (blocks.length !== certificates.length || valid.length === 0 || valid.length !== certificates.length) {
    problem(
      'CABundleInvalid',
      `caBundle: ConfigMap ${namespace}/${ref.configMap} key ${key} must hold only PEM CA certificates (found ${certificates.length} certificate(s), ${valid.length} of them CAs, ${blocks.length - certificates.length} other block(s)); inspected HTTPS to this destination fails verification until it does`,
    );
    return '';
  }
  return valid.map((b) => `${b[0]}\n`).join('');
}
