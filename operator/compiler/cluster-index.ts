/** The cluster state a compile reads, indexed once: pods by namespace and label, Services, namespace labels. */
import { indexCredentialSecrets, type CredentialSecretInput } from './credentials.ts';
import { LABEL_INJECT } from '../../lib/api/constants.ts';
import type { AgentPolicy, LabelSelector } from '../../lib/api/types.generated.ts';
import { byNamespaceAndName, compareStrings, sortedUnique } from './canonical.ts';
import { hostCidr } from '../../lib/ip.ts';
import { LabelIndex, compileSelector, type Labels } from './selectors.ts';
import type { CompileInput, ConfigMapInput, PodInput, Service, SkippedPod } from './types.ts';
import { LABEL_CA_BUNDLE } from '../../lib/api/constants.ts';

export const NAMESPACE_NAME_LABEL = 'kubernetes.io/metadata.name';

/** A pod as the compiler indexes it: the fields it needs, read once from its PodInput. */
export interface IndexedPod {
  namespace: string;
  name: string;
  uid: string;
  labels: Labels;
  /** Host CIDRs (/32, /128) of the pod's IPs; empty before the pod is scheduled. */
  ips: string[];
  pod: PodInput;
}

function indexPod(pod: PodInput): IndexedPod {
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
  readonly pods = new Map<string, LabelIndex<IndexedPod>>();
  readonly agents = new Map<string, LabelIndex<IndexedPod>>();
  readonly services = new Map<string, Service>();
  /** `namespace/name` → CA-bundle ConfigMap (opted in by label). */
  readonly caBundles = new Map<string, ConfigMapInput>();
  /** `namespace/name` → credential Secret (opted in by label; keys only, never values). */
  readonly credentialSecrets: ReadonlyMap<string, CredentialSecretInput>;
  /** Named Secrets known to exist without the label (the status then says to label them). */
  readonly unlabelledSecrets: ReadonlySet<string>;
  readonly namespaceLabels = new Map<string, Labels>();
  private readonly policiesByNamespace = new Map<string, AgentPolicy[]>();
  readonly skipped: SkippedPod[] = [];

  constructor(input: CompileInput) {
    this.credentialSecrets = indexCredentialSecrets(input.credentialSecrets);
    this.unlabelledSecrets = new Set(input.unlabelledCredentialSecrets ?? []);
    for (const ns of input.namespaces) {
      const name = ns.metadata.name ?? '';
      this.namespaceLabels.set(name, { ...ns.metadata.labels, [NAMESPACE_NAME_LABEL]: name });
    }
    for (const pod of [...input.pods].sort(byNamespaceAndName)) {
      const view = indexPod(pod);
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
    for (const cm of input.configMaps ?? []) {
      if (cm.metadata.labels?.[LABEL_CA_BUNDLE] !== 'true') continue;
      this.caBundles.set(`${cm.metadata.namespace ?? 'default'}/${cm.metadata.name ?? ''}`, cm);
    }
    for (const svc of input.services) {
      const ns = svc.metadata.namespace ?? 'default';
      this.services.set(`${ns}/${svc.metadata.name ?? ''}`, svc);
    }
    for (const p of [...input.policies].sort(byNamespaceAndName)) {
      const ns = p.metadata.namespace ?? 'default';
      this.knowNamespace(ns);
      const list = this.policiesByNamespace.get(ns);
      if (list) list.push(p);
      else this.policiesByNamespace.set(ns, [p]);
    }
  }

  /** The AgentPolicies of one namespace, sorted by name. */
  policiesIn(namespace: string): readonly AgentPolicy[] {
    return this.policiesByNamespace.get(namespace) ?? [];
  }

  private knowNamespace(name: string): void {
    // The API server labels every namespace with its name; a namespace we were not given still has that label.
    if (!this.namespaceLabels.has(name)) this.namespaceLabels.set(name, { [NAMESPACE_NAME_LABEL]: name });
  }

  private indexFor(map: Map<string, LabelIndex<IndexedPod>>, ns: string): LabelIndex<IndexedPod> {
    let index = map.get(ns);
    if (!index) map.set(ns, (index = new LabelIndex<IndexedPod>()));
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
